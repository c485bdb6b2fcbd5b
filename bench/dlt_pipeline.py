"""The reference: the same fake API into the same database, through dlt's rest_api source.

    python bench/dlt_pipeline.py ENDPOINT DATABASE_URL PIPELINES_DIR

Loads every job into the table `finetuning_jobs` with write disposition `merge` on `jobId`, the
way a dlt user would write it, and prints the load's row counts as one JSON object. The bench
runs it in its own process, so its wall time and peak RSS are dlt's alone.
"""

import json
import sys
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import dlt
from dlt.common.configuration import configspec
from dlt.common.typing import TSecretStrValue
from dlt.sources.helpers.rest_client.auth import AuthConfigBase
from dlt.sources.helpers.rest_client.paginators import JSONResponseCursorPaginator
from dlt.sources.rest_api import rest_api_source
from requests import PreparedRequest
from sqlalchemy.engine import make_url

from qfsync import signer

ACCESS_KEY, SECRET_KEY = "qfsync-demo-ak", "qfsync-demo-sk"  # the fake's public demo keys
TABLE = "finetuning_jobs"


@configspec
class BceAuth(AuthConfigBase):
    """bce-auth-v1 exactly as qfsync's client signs: Host, Content-Type and x-bce-date."""

    access_key: str = None
    secret_key: TSecretStrValue = None

    def __call__(self, request: PreparedRequest) -> PreparedRequest:
        url = urlsplit(request.url)
        timestamp = signer.utc_timestamp()
        request.headers["Host"] = url.netloc
        request.headers["Content-Type"] = "application/json"
        request.headers["x-bce-date"] = timestamp
        request.headers["Authorization"] = signer.authorization(
            self.access_key,
            self.secret_key,
            request.method,
            url.path,
            dict(parse_qsl(url.query)),
            request.headers,
            timestamp,
        )
        return request


def source(endpoint: str) -> Any:
    return rest_api_source(
        {
            "client": {
                "base_url": endpoint,
                "auth": BceAuth(access_key=ACCESS_KEY, secret_key=SECRET_KEY),
                # The marker goes into the JSON body, as DescribeFineTuningJobs expects.
                "paginator": JSONResponseCursorPaginator(
                    cursor_path="result.pageInfo.nextMarker", cursor_body_path="marker"
                ),
            },
            "resources": [
                {
                    "name": TABLE,
                    "primary_key": "jobId",
                    "write_disposition": "merge",
                    "endpoint": {
                        "path": "v2/finetuning",
                        "method": "POST",
                        "params": {"Action": "DescribeFineTuningJobs"},
                        "json": {"maxKeys": 100},
                        "data_selector": "result.jobList",
                    },
                }
            ],
        }
    )


def destination(database_url: str) -> Any:
    url = make_url(database_url)
    if url.get_backend_name() == "postgresql":
        # dlt's postgres credentials insist on a password; an empty one suits trust auth.
        url = url.set(drivername="postgresql", password=url.password or "")
        return dlt.destinations.postgres(credentials=url.render_as_string(hide_password=False))
    # SQLite through dlt's sqlalchemy destination. Its merge deletes the stored rows whose key
    # is in the staging table; without an index on the staging key that is a scan of staging
    # per stored row. create_primary_keys makes dlt declare jobId the PRIMARY KEY of both the
    # table and its staging copy, and SQLite indexes a primary key.
    return dlt.destinations.sqlalchemy(credentials=database_url, create_primary_keys=True)


def main(endpoint: str, database_url: str, pipelines_dir: str) -> None:
    pipeline = dlt.pipeline(
        pipeline_name="qfsync_bench",
        pipelines_dir=pipelines_dir,
        destination=destination(database_url),
        dataset_name="dlt_jobs",
        progress=None,
    )
    info = pipeline.run(source(endpoint))
    info.raise_on_failed_jobs()
    rows = pipeline.last_trace.last_normalize_info.row_counts
    print(json.dumps({"rows": rows.get(TABLE, 0)}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
