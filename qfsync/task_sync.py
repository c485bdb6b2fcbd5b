"""The `--tasks` part of a sync: which of a page's jobs need their tasks fetched, fetching them
side by side, and writing them in the page's transaction.

A full sync fetches the tasks of jobs never listed before, of jobs with an unfinished task, and
of the others once their tasks were last listed longer ago than `max_age`; an incremental sync
(`max_age` None) only the first two, and then every other job with an unfinished task.
"""

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine

from . import fits, task_store
from .store import Scope
from .task_fetch import DEFAULT_MAX_AGE, JobGone, TaskFetcher
from .task_pages import Task
from .task_store import TaskCounts

# Jobs per transaction when refreshing unfinished tasks outside the walked pages.
BATCH = 100


@dataclass(frozen=True)
class Listings:
    """Complete task lists of some jobs, the requests they took, and the jobs whose tasks
    the API refused to list (deleted since their page was listed)."""

    tasks: dict[str, list[Task]]
    requests: int
    gone: list[JobGone] = field(default_factory=list)


class TaskSync:
    def __init__(self, fetcher: TaskFetcher, max_age: timedelta | None = DEFAULT_MAX_AGE):
        self.fetcher, self.max_age = fetcher, max_age

    def _fetch(self, job_ids: Sequence[str], stop: threading.Event | None) -> Listings:
        before = self.fetcher.requests_made
        fetched = self.fetcher.fetch(job_ids, stop)
        return Listings(fetched.tasks, self.fetcher.requests_made - before, fetched.gone)

    def fetch(
        self,
        engine: Engine,
        job_ids: Sequence[str],
        now: datetime,
        stop: threading.Event | None = None,
    ) -> Listings:
        """The tasks of those of `job_ids` that are due, fetched outside any transaction."""
        older_than = None if self.max_age is None else now - self.max_age
        with engine.connect() as connection:
            wanted = task_store.due(connection, job_ids, older_than)
        return self._fetch(wanted, stop)

    def write(
        self, connection: Connection, listings: Listings, run_id: int, now: datetime
    ) -> TaskCounts:
        fits.check_tasks(
            (task for listed in listings.tasks.values() for task in listed),
            connection.dialect.name,
        )
        counts = task_store.write_tasks(connection, listings.tasks, run_id, now)
        counts.requests = listings.requests
        return counts

    def unfinished(
        self, engine: Engine, scope: Scope, run_id: int, stop: threading.Event | None = None
    ) -> Iterator[Listings]:
        """After an incremental walk: the jobs with unfinished tasks that it did not reach,
        fetched in batches (each to be written in a transaction of its own)."""
        with engine.connect() as connection:
            job_ids = task_store.unfinished_jobs(connection, scope, run_id)
        for start in range(0, len(job_ids), BATCH):
            yield self._fetch(job_ids[start : start + BATCH], stop)
