"""The floor of any client of this API: sign, fetch and decode every page, and nothing else.

    QIANFAN_CONSOLE_API_BASE_URL=... python bench/bare_walk.py

One requests.Session sending a copy of one prepared request (the cheapest way through requests,
and the way qfsync's client sends), qfsync's signer, orjson; no validation, no records, no
output. Prints the number of jobs it saw.
"""

import os

import orjson
import requests

from qfsync.fake_api import ACTION, ROUTE
from qfsync.signer import authorization, utc_timestamp


def main() -> None:
    base = os.environ["QIANFAN_CONSOLE_API_BASE_URL"].rstrip("/")
    access, secret = os.environ["QIANFAN_ACCESS_KEY"], os.environ["QIANFAN_SECRET_KEY"]
    host = base.split("://", 1)[1]
    session = requests.Session()
    session.trust_env = False
    template = session.prepare_request(
        requests.Request("POST", f"{base}{ROUTE}", params={"Action": ACTION})
    )
    marker, jobs = None, 0
    while True:
        body: dict[str, object] = {"maxKeys": 100, "pageReverse": False}
        if marker:
            body["marker"] = marker
        timestamp = utc_timestamp()
        headers = {"Host": host, "Content-Type": "application/json", "x-bce-date": timestamp}
        headers["Authorization"] = authorization(
            access, secret, "POST", ROUTE, {"Action": ACTION}, headers, timestamp
        )
        request = template.copy()
        data = orjson.dumps(body)
        request.headers.update(headers)
        request.headers["Content-Length"] = str(len(data))
        request.body = data
        response = session.send(request)
        result = orjson.loads(response.content)["result"]
        jobs += len(result["jobList"])
        if not result["pageInfo"]["isTruncated"]:
            break
        marker = result["pageInfo"]["nextMarker"]
    print(jobs)


if __name__ == "__main__":
    main()
