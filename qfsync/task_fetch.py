"""Fetching tasks: the marker walk over one job's DescribeFineTuningTasks, each running task's
progress from DescribeFineTuningTask, and many jobs' task lists fetched side by side.

Task lists are independent of each other, so `TaskFetcher` fetches them with a bounded number
of requests in flight, each worker thread with a client of its own; a 429 with Retry-After
seen by any of them pauses them all (a shared `Throttle`). The jobs walk stays sequential.
"""

import contextvars
import logging
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Any

from .client import MAX_PAGE_SIZE, Client
from .errors import ApiError, MalformedResponse, PagingError, QfsyncError
from .pages import values_bound
from .task_pages import (
    DETAIL_ACTION,
    LIST_ACTION,
    RUNNING,
    Task,
    TaskPage,
    parse_progress,
    parse_task_page,
)
from .throttle import Throttle

DEFAULT_CONCURRENCY = 8
# A full --tasks sync relists a job whose tasks are all final once this has passed.
DEFAULT_MAX_AGE = timedelta(days=1)
# A job with this many pages of tasks (a million at 100 a page) is a server that never ends.
MAX_TASK_PAGES = 10_000
# A page's task lists are all held until the page's transaction. What they take in memory may
# not pass this (a real page's take well under a megabyte): each answer is capped by the
# client, but a hostile server could otherwise make one page of 100 jobs hold 100 answers at
# that cap, or one job an endless run of them.
MAX_HELD_BYTES = 64 * 2**20
# What a decoded value takes beyond its text, about (CPython: an empty list is 56 bytes, a
# short string 50, and the list or dict holding it 8 more): a task of 295 bytes holds 1,283
# once parsed, and 240 KB of `[],` hold 5 MB. The budget counts this, not answer bytes.
VALUE_BYTES = 64
# What the API answers for a jobId or taskId it does not know: a job or task deleted between
# being listed and being asked about. (qfsync sends no other argument it could refuse.)
UNKNOWN_ID = "InvalidRequestArgumentError"

log = logging.getLogger(__name__)


class JobGone(QfsyncError):
    """The API refused to list a job's tasks: the job was deleted after its page was listed.
    Its tasks are skipped this time (never marked deleted); the jobs walk notices the job."""

    def __init__(self, job_id: str, refusal: ApiError):
        self.job_id, self.refusal = job_id, refusal
        super().__init__(
            f"the tasks of job {job_id} could not be listed, probably deleted since its page "
            f"was listed ({refusal}); its tasks were skipped"
        )


def held_bytes(text: bytes) -> int:
    """About what an answer takes once decoded: its text, and VALUE_BYTES for each value it
    may hold (`values_bound`, which pages.decode bounds too).

    Python keeps each character of a string in one byte, or in four for a string that holds
    one character past U+FFFF (which a `\\u` escape can write in ASCII): the text of a string
    of 300 KB with one emoji takes 1.2 MB. So text that is not plain ASCII counts four times.
    """
    width = 1 if text.isascii() and b"\\u" not in text else 4
    return width * len(text) + VALUE_BYTES * values_bound(text)


class Budget:
    """The memory task list answers one fetch may hold (`held_bytes`), shared by its worker
    threads."""

    def __init__(self, limit: int = MAX_HELD_BYTES):
        self.limit, self.held = limit, 0
        self._lock = threading.Lock()

    def hold(self, size: int, job_id: str) -> None:
        with self._lock:
            self.held += size
            over = self.held > self.limit
        if over:
            raise PagingError(
                f"the task lists being fetched pass {self.limit:,} bytes (at job {job_id}); "
                "stopping rather than holding more"
            )


def walk_tasks(
    client: Client,
    job_id: str,
    page_size: int = MAX_PAGE_SIZE,
    stop: threading.Event | None = None,
    budget: Budget | None = None,
) -> Iterator[TaskPage]:
    """Yield each page of one job's task list, each task once, until the last page.

    As for jobs, the marker is taken to be inclusive, so a task repeated at a page boundary is
    dropped. A job's task list is short (and held whole by `job_tasks`), so every marker and
    every task id is kept: a cycle of any length is caught, and a task listed again on any
    later page is dropped too.
    """
    marker: str | None = None
    markers: set[str] = set()
    seen: set[str] = set()

    def parse(body: Any, text: bytes) -> TaskPage:
        try:
            page = parse_task_page(job_id, body, text)
        except MalformedResponse as exc:
            # Said of which listing: "a taskId appears twice in one page" alone reads as if a
            # page of jobs were at fault.
            raise MalformedResponse(
                f"the tasks of job {job_id}: {exc.problem}", exc.excerpt
            ) from None
        if budget is not None:
            budget.hold(held_bytes(text), job_id)
        return page

    for _ in range(MAX_TASK_PAGES):
        body: dict[str, Any] = {"jobId": job_id, "maxKeys": page_size, "pageReverse": False}
        if marker is not None:
            body["marker"] = marker
        page = client.call(LIST_ACTION, body, parse, stop)
        fresh = [task for task in page.tasks if task.task_id not in seen]
        seen.update(task.task_id for task in page.tasks)
        next_marker = page.next_marker
        # `markers` holds every marker followed so far, this page's own included.
        if next_marker is not None and next_marker in markers:
            raise PagingError(
                f"the tasks of job {job_id}: the API returned the marker {next_marker!r:.60} "
                "again; stopping rather than looping"
            )
        yield TaskPage(fresh, marker, next_marker)
        if next_marker is None:
            return
        markers.add(next_marker)
        marker = next_marker
    raise PagingError(f"the tasks of job {job_id} run past {MAX_TASK_PAGES} pages; stopping")


def job_tasks(
    client: Client,
    job_id: str,
    page_size: int = MAX_PAGE_SIZE,
    stop: threading.Event | None = None,
    budget: Budget | None = None,
) -> list[Task]:
    """Every task of one job, a running task with its progress: a complete listing, or
    JobGone when the API no longer knows the job."""
    try:
        tasks = [
            task
            for page in walk_tasks(client, job_id, page_size, stop, budget)
            for task in page.tasks
        ]
    except ApiError as exc:
        if exc.code != UNKNOWN_ID:
            raise
        raise JobGone(job_id, exc) from None
    return [with_progress(client, task, stop) for task in tasks]


def with_progress(client: Client, task: Task, stop: threading.Event | None = None) -> Task:
    """A running task with its progress from DescribeFineTuningTask; any other task as it is."""
    if task.run_status != RUNNING:
        return task
    try:
        progress = client.call(
            DETAIL_ACTION, {"taskId": task.task_id}, partial(parse_progress, task.task_id), stop
        )
    except ApiError as exc:
        if exc.code != UNKNOWN_ID:
            raise
        # Deleted (or its job) since it was listed: the listing stands, without a progress,
        # and the next listing of the job finds the task gone. Failing here would fail every
        # sync that meets such a race.
        log.info(
            "task %s of job %s is gone since it was listed: %s", task.task_id, task.job_id, exc
        )
        return task
    return task.with_progress(progress)


@dataclass(frozen=True)
class Fetched:
    """Complete task listings of some jobs, and the jobs whose tasks the API refused to list."""

    tasks: dict[str, list[Task]]
    gone: list[JobGone]


class TaskFetcher:
    """Many jobs' task lists at once, at most `concurrency` requests in flight."""

    def __init__(
        self,
        client: Client,
        concurrency: int = DEFAULT_CONCURRENCY,
        page_size: int = MAX_PAGE_SIZE,
        max_held_bytes: int = MAX_HELD_BYTES,
    ):
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency}")
        self.client, self.page_size, self.max_held_bytes = client, page_size, max_held_bytes
        self.throttle = Throttle()
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="qfsync-tasks")
        self._local = threading.local()
        self._workers: list[Client] = []
        self._workers_lock = threading.Lock()

    @property
    def requests_made(self) -> int:
        with self._workers_lock:
            return sum(worker.requests_made for worker in self._workers)

    def _client(self) -> Client:
        worker = getattr(self._local, "client", None)
        if worker is None:
            worker = self._local.client = self.client.worker(self.throttle)
            with self._workers_lock:
                self._workers.append(worker)
        return worker

    def _job_tasks(
        self, job_id: str, halt: threading.Event, budget: Budget
    ) -> list[Task] | JobGone:
        if halt.is_set():
            raise QfsyncError("stopped before fetching the tasks of job " + job_id)
        try:
            return job_tasks(self._client(), job_id, self.page_size, halt, budget)
        except JobGone as gone:
            return gone

    def fetch(self, job_ids: Sequence[str], stop: threading.Event | None = None) -> Fetched:
        """Every task of each job, in the order of `job_ids`, but for the jobs gone since; the
        first failure is raised once the requests in flight have ended, and no request starts
        after it (nor after `stop`)."""
        # Its own event per call: a failure here halts this call's fetches, not the next call's.
        halt = threading.Event()
        budget = Budget(self.max_held_bytes)
        # Each in a copy of this thread's context, so that the workers' log lines name the run
        # (logs.run_id) as this thread's do. (A context runs in one thread at a time: one each.)
        futures: dict[str, Future[list[Task] | JobGone]] = {
            job_id: self._pool.submit(
                contextvars.copy_context().run, self._job_tasks, job_id, halt, budget
            )
            for job_id in job_ids
        }
        pending = set(futures.values())
        first: BaseException | None = None
        try:
            while pending:
                done, pending = wait(pending, timeout=0.1, return_when=FIRST_EXCEPTION)
                if first is None:
                    first = next((f.exception() for f in done if f.exception() is not None), None)
                if first is not None or (stop is not None and stop.is_set()):
                    halt.set()
        except BaseException:
            # Interrupted in this thread (Ctrl-C, a host's signal handler): the workers' requests
            # and backoffs end at once, or closing the pool would wait out every retry.
            halt.set()
            raise
        if first is not None:
            raise first
        if halt.is_set():
            raise QfsyncError("stopped while fetching tasks")
        results = {job_id: future.result() for job_id, future in futures.items()}
        return Fetched(
            {job_id: found for job_id, found in results.items() if not isinstance(found, JobGone)},
            [found for found in results.values() if isinstance(found, JobGone)],
        )

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self._workers_lock:
            for worker in self._workers:
                worker.close()
            self._workers = []

    def __enter__(self) -> "TaskFetcher":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
