"""Prototype for issue 10: would dlt's way of loading cost PostgreSQL less than qfsync's?

Not part of qfsync and not run by `make bench`. dlt's first sync of 100k jobs costs the server
less than half of qfsync's. This measures the server's CPU (the backend's, from /proc) for the
same jobs loaded two ways, with nothing else running:
- **pages**: qfsync's page writer, every page in its own transaction into the real tables;
- **staging**: every page COPYed into an unlogged table without indexes, with the run's
  progress, in its own transaction; then one merge into the real tables (jobs and their
  first versions), as dlt merges its staging table once at the end.

    bench/.venv/bin/python bench/experiments/staging_merge.py [JOBS]
"""

import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench  # noqa: E402  (bench/bench.py, beside this directory)
from qfsync import db, runs  # noqa: E402
from qfsync.fake_api import FakeApi  # noqa: E402
from qfsync.pages import Job, content_hash, parse_job  # noqa: E402
from qfsync.store import Scope  # noqa: E402
from qfsync.writers import for_dialect, raw_text  # noqa: E402

STAGING = (
    "CREATE UNLOGGED TABLE staging (job_id text, name text, description text, model text,"
    " train_mode text, created_at timestamptz, raw text, content_hash text)"
)
STAGING_TYPES = ["text"] * 5 + ["timestamptz", "text", "text"]
MERGE = [
    "INSERT INTO finetuning_jobs (job_id, name, description, model, train_mode, created_at,"
    " first_seen_at, last_seen_at, raw, content_hash, last_run_id)"
    " SELECT job_id, name, description, model, train_mode, created_at, %(now)s, %(now)s,"
    " raw::json, content_hash, %(run_id)s FROM staging",
    "INSERT INTO finetuning_job_versions (job_id, version, valid_from, name, description,"
    " model, train_mode, run_id)"
    " SELECT job_id, 1, %(now)s, name, description, model, train_mode, %(run_id)s FROM staging",
    "TRUNCATE staging",
]
PROGRESS = "UPDATE sync_runs SET pages = pages + 1, next_marker = %s WHERE id = %s"


def backend_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / bench.TICK


def load(url: str, pages: list[list[Job]], staged: bool) -> tuple[float, float]:
    """The server's CPU for the pages, and for the merge (0 without staging)."""
    engine = db.connect(url)
    db.ensure_schema(engine, True)
    writer = for_dialect("postgresql")
    with engine.connect() as connection:
        driver: Any = connection.connection.driver_connection
        pid = driver.info.backend_pid
        if staged:
            driver.execute(STAGING)
        connection.commit()
        with connection.begin():
            run_id, _ = runs.start(connection, Scope(None, None), "full", 100, None)
        prepared = [writer.prepare(page) for page in pages]
        rows = [
            [
                (job.job_id, job.name, job.description, job.model, job.train_mode)
                + (job.created_at, raw_text(job.raw), content_hash(job.raw))
                for job in page
            ]
            for page in pages
        ]
        before = backend_cpu(pid)
        for page_rows, page in zip(rows, prepared, strict=True):
            if staged:
                with driver.cursor() as cursor:
                    with cursor.copy("COPY staging FROM STDIN (FORMAT BINARY)") as copy:
                        copy.set_types(STAGING_TYPES)
                        for row in page_rows:
                            copy.write_row(row)
                    cursor.execute(PROGRESS, ("marker", run_id))
                    cursor.execute("SET LOCAL synchronous_commit = off")
                driver.commit()
            else:
                with connection.begin():
                    writer.write(connection, page, run_id, runs.utcnow(), "marker")
        paged = backend_cpu(pid)
        if staged:
            for statement in MERGE:
                driver.execute(statement, {"now": datetime.now(UTC), "run_id": run_id})
            driver.commit()
        merged = backend_cpu(pid)
    engine.dispose()
    return paged - before, merged - paged


def main(jobs: int) -> None:
    postgres = bench.Postgres()
    items = FakeApi(jobs).job_list()
    pages = [
        [parse_job(item, i) for i, item in enumerate(items[start : start + 100])]
        for start in range(0, jobs, 100)
    ]
    for round_ in range(2):
        for staged in (False, True) if round_ == 0 else (True, False):
            url = postgres.create("staging_merge")
            started = time.perf_counter()
            paged, merged = load(url, pages, staged)
            wall = time.perf_counter() - started
            postgres.drop("staging_merge")
            name = "staging" if staged else "pages"
            print(
                f"{name:8s} server CPU {paged:5.2f} s for the pages + {merged:5.2f} s merging"
                f" = {1000 * (paged + merged) / len(pages):4.2f} ms a page ({wall:5.2f} s wall)"
            )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 30_000)
