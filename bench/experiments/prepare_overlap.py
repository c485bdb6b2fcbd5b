"""Prototype for issue 10: prepare the next page on the writing thread while PostgreSQL works.

Not part of qfsync and not run by `make bench`; it measured the design qfsync now has. A sync
prepared each page (hashes, JSON text, binary arrays) on a thread of its own, which took the
GIL just when the writing thread wanted it back from the server ("threads" here). Here the
writing thread itself prepares page N+1 between sending page N (psycopg's pipeline sends it at
once) and reading its result, so that the two overlap without a third thread ("overlapped").
Both variants walk the bench's fake API on a fetch thread, as a sync does, and write every
page in its own transaction with qfsync's PostgreSQL writer into a fresh database; they
alternate, and only their ratio in one session counts.

    bench/.venv/bin/python bench/experiments/prepare_overlap.py [JOBS] [ROUNDS]
"""

import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench  # noqa: E402  (bench/bench.py, beside this directory)
from qfsync import db, runs  # noqa: E402
from qfsync.client import Client, Credentials, JobQuery, walk  # noqa: E402
from qfsync.fake_api import DEMO_ACCESS_KEY, DEMO_SECRET_KEY  # noqa: E402
from qfsync.store import Scope  # noqa: E402
from qfsync.syncer import Prefetched  # noqa: E402
from qfsync.writers.postgresql import PostgresqlWriter  # noqa: E402


def sync(url: str, api_url: str, overlapped: bool) -> float:
    engine = db.connect(url)
    db.ensure_schema(engine, True)
    writer = PostgresqlWriter()
    halt = threading.Event()
    client = Client(Credentials(DEMO_ACCESS_KEY, DEMO_SECRET_KEY), api_url)
    with engine.connect() as connection:
        with connection.begin():
            run_id, _ = runs.start(connection, Scope(None, None), "full", 100, None)
        started = time.perf_counter()
        fetch = Prefetched(walk(client, JobQuery(), None, halt), halt, "fetch")
        if overlapped:
            pages: Iterator[Any] = fetch
            upcoming = [writer.prepare(next(pages).jobs)]

            def prepare_next() -> None:  # the writer's `meanwhile`: while the server works
                page = next(pages, None)
                upcoming.append(None if page is None else writer.prepare(page.jobs))

            while (prepared := upcoming.pop()) is not None:
                with connection.begin():
                    writer.write(connection, prepared, run_id, runs.utcnow(), "m", prepare_next)
        else:
            ready = Prefetched(map(lambda page: writer.prepare(page.jobs), fetch), halt, "prep")
            for prepared in ready:
                with connection.begin():
                    writer.write(connection, prepared, run_id, runs.utcnow(), "marker")
            halt.set()
            ready.close()
        wall = time.perf_counter() - started
        halt.set()
        fetch.close()
    client.close()
    engine.dispose()
    return wall


def main(jobs: int, rounds: int) -> None:
    postgres = bench.Postgres()
    fake = bench.Fake(jobs, 0)
    try:
        for round_ in range(rounds):
            for overlapped in (False, True) if round_ % 2 == 0 else (True, False):
                url = postgres.create("prepare_overlap")
                wall = sync(url, fake.url, overlapped)
                postgres.drop("prepare_overlap")
                name = "overlapped" if overlapped else "threads"
                print(f"{name:10s} {wall:6.2f} s, {1000 * wall / (jobs / 100):5.2f} ms a page")
    finally:
        fake.close()


if __name__ == "__main__":
    main(
        int(sys.argv[1]) if len(sys.argv) > 1 else 50_000,
        int(sys.argv[2]) if len(sys.argv) > 2 else 4,
    )
