"""One sync run: lock the database, bring its schema to head, open the run row, walk the API,
commit each page with its bookkeeping, then mark deletions and finish the run.

API pages -> validated Jobs -> one transaction per page -> the run's row. A failure anywhere
after the run row exists marks it `failed` with the reason and leaves committed pages intact;
the next full sync of the scope resumes at the marker the last committed page recorded.
"""

import contextvars
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from itertools import chain
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection, Engine, inspect
from sqlalchemy.exc import SQLAlchemyError

from . import fits, logs, runs, store, writers
from .client import Client, JobQuery, walk
from .db import database_error, describe, ensure_schema
from .errors import (
    ApiError,
    DatabaseError,
    ForcedInterrupt,
    Interrupted,
    QfsyncError,
    SyncLocked,
    one_line,
)
from .guard import DEFAULT, DeleteLimit
from .lock import sync_lock
from .pages import Job, Page, excerpt
from .store import Counts, Scope
from .task_store import TaskCounts
from .task_sync import Listings, TaskSync

log = logging.getLogger(__name__)

PREFETCH_PAGES = 2
T = TypeVar("T")


def reason(failure: BaseException) -> str:
    """What `sync_runs.error` says of a failure: a qfsync error's own line, else its type too."""
    if isinstance(failure, QfsyncError):
        return str(failure)
    return one_line(f"{type(failure).__name__}: {failure}".rstrip(": "))


class StopFlag:
    """Set from a signal handler; the sync stops at the next page boundary."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.reason: Interrupted | None = None
        # Set while the sync must finish what it is doing however long it takes: a migration
        # (MariaDB cannot roll back DDL, so one cut short would leave a half-migrated schema).
        self.uninterruptible = False

    def request(self, reason: Interrupted) -> None:
        self.reason = reason
        self.event.set()


@dataclass
class SyncResult:
    run_id: int
    status: str
    mode: str
    pages: int = 0
    jobs_seen: int = 0
    jobs_inserted: int = 0
    jobs_updated: int = 0
    jobs_unchanged: int = 0
    jobs_deleted: int = 0
    tasks_seen: int = 0
    tasks_inserted: int = 0
    tasks_updated: int = 0
    tasks_unchanged: int = 0
    tasks_deleted: int = 0
    task_requests: int = 0
    duration_s: float = 0.0
    resumed_from: int | None = None
    requests: int = 0
    notes: list[str] = field(default_factory=list)

    def add(self, seen: int, counts: Counts) -> None:
        self.pages += 1
        self.jobs_seen += seen
        self.jobs_inserted += counts.inserted
        self.jobs_updated += counts.updated
        self.jobs_unchanged += counts.unchanged

    def add_tasks(self, counts: TaskCounts) -> None:
        for name, column in runs.TASK_COUNTS.items():
            setattr(self, column, getattr(self, column) + getattr(counts, name))

    def to_json(self) -> dict[str, Any]:
        """What `qfsync sync --json` prints: every field but the notes, which go to stderr."""
        return {key: value for key, value in asdict(self).items() if key != "notes"}


def log_page(number: int, page: Page, counts: Counts) -> None:
    """The --verbose line of a committed page."""
    log.debug(
        "page %d: %d jobs, %d inserted, %d updated, %d unchanged",
        number,
        len(page.jobs),
        counts.inserted,
        counts.updated,
        counts.unchanged,
        extra=logs.facts(
            page=number,
            marker=page.marker,
            next_marker=page.next_marker,
            request_id=page.request_id,
        ),
    )


def newest_first(jobs: list[Job], after: datetime | None = None) -> bool:
    """True when creation times never increase along the page (and from `after` on)."""
    times = [job.created_at for job in jobs if job.created_at is not None]
    if after is not None:
        times.insert(0, after)
    return all(a >= b for a, b in zip(times, times[1:], strict=False))


@dataclass(slots=True)
class Ready:
    """A page checked against its columns, with its values as the page writer sends them."""

    page: Page
    prepared: Any


_EMPTY = object()  # no item held
_DONE = object()  # the items ended


class Prefetched(Generic[T]):
    """The next items of `items`, taken in a thread of their own, started at once, while the
    caller works on this one. The thread stops when `halt` is set or the caller closes the
    stage; an exception it meets reaches the caller in the item's place."""

    def __init__(self, items: Iterator[T], halt: threading.Event, name: str):
        self._items = items
        self._halt = halt
        self._slots: queue.Queue[Any] = queue.Queue(maxsize=PREFETCH_PAGES)
        self._head: Any = _EMPTY  # taken from the queue, not yet handed on (the end stays)
        # Not `halt` itself: a stage that ends must not stop the stage that takes its items.
        self._closed = threading.Event()
        # In the caller's context, so that the fetch thread's log lines name the run too.
        self._thread = threading.Thread(
            target=contextvars.copy_context().run, args=(self._produce,), name=name, daemon=True
        )
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not (self._halt.is_set() or self._closed.is_set()):
            try:
                self._slots.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        try:
            for item in self._items:
                if not self._put(item):
                    return
            self._put(_DONE)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            self._put(exc)

    def __iter__(self) -> "Prefetched[T]":
        return self

    def __next__(self) -> T:
        """The next item, waiting for it; the end when the items end or `halt` is set."""
        while self._head is _EMPTY:
            try:
                self._head = self._slots.get(timeout=0.1)
            except queue.Empty:
                if self._halt.is_set():
                    raise StopIteration from None
        return self._take()

    def poll(self) -> T | None:
        """The next item if it has arrived, else None at once (also at the end)."""
        if self._head is _EMPTY:
            try:
                self._head = self._slots.get_nowait()
            except queue.Empty:
                return None
        return None if self._head is _DONE else self._take()

    def _take(self) -> T:
        item, self._head = self._head, _EMPTY
        if item is _DONE:
            self._head = _DONE  # it stays the end
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        """Stop the thread and wait for it (a request in flight ends with `halt`, not this)."""
        self._closed.set()
        self._thread.join(timeout=5)


class Upcoming:
    """The page after the one being written, prepared while the server works on that one if it
    has been fetched by then (a page writer that can calls this object: `meanwhile`), else once
    that one is committed, without holding its transaction open for the network. Whatever goes
    wrong meanwhile is kept until then too: a page is never failed by the page after it."""

    def __init__(self, pages: Prefetched[Page], ready: Callable[[Page], Ready]):
        self._pages, self._ready = pages, ready
        self._value: Ready | None = None
        self._error: BaseException | None = None

    def __call__(self) -> None:
        if self._value is not None or self._error is not None:
            return
        try:
            page = self._pages.poll()
            if page is not None:
                self._value = self._ready(page)
        except ForcedInterrupt:
            raise  # the second signal stops the sync where it is, this page's statement too
        except BaseException as exc:  # noqa: BLE001 - raised by `get`, after this page's commit
            self._error = exc

    def get(self) -> Ready | None:
        """The next page, ready to write; None if the walk was halted before it."""
        if self._error is not None:
            raise self._error
        if self._value is not None:
            return self._value
        page = next(self._pages, None)
        return None if page is None else self._ready(page)


class Sync:
    """Runs one sync of one scope; see `run`."""

    def __init__(
        self,
        engine: Engine,
        client: Client,
        query: JobQuery,
        incremental: bool = False,
        restart: bool = False,
        wait_s: float = 0.0,
        stop: StopFlag | None = None,
        progress: Callable[[SyncResult], None] | None = None,
        notify: Callable[[str], None] | None = None,
        migrate: bool = True,
        max_delete: DeleteLimit | None = None,
        tasks: TaskSync | None = None,
    ):
        self.engine, self.client, self.query = engine, client, query
        self.tasks = tasks  # also sync each listed job's tasks (`--tasks`)
        self.incremental, self.restart, self.wait_s = incremental, restart, wait_s
        self.migrate = migrate
        self.max_delete = max_delete or DeleteLimit.parse(DEFAULT)
        self.stop = stop or StopFlag()
        self.progress = progress or (lambda result: None)
        self.scope = Scope(query.train_mode, query.model)
        self.writer = writers.for_dialect(engine.dialect.name)
        self.notes: list[str] = []
        self.result: SyncResult | None = None  # as far as it got, also after a failure
        self._notify = notify or (lambda message: None)
        # Pages are written on one connection held for the walk: a checkout per page would cost
        # the pool's liveness ping, a round trip, on every page.
        self._pages: Connection | None = None
        # The earliest time a full walk's next page may record as its jobs' last_seen_at (see
        # `_page_time`); None outside a full walk.
        self._seen_floor: datetime | None = None

    def note(self, message: str) -> None:
        message = one_line(message)  # a note may quote a marker the server chose
        log.info(message)
        self.notes.append(message)
        self._notify(message)

    def run(self) -> SyncResult:
        try:
            with sync_lock(
                self.engine,
                self.wait_s,
                self.stop.event,
                lambda: self.note(f"{self._locked_message()}; waiting up to {self.wait_s:g}s"),
            ) as held:
                if self.stop.reason is not None:
                    raise self.stop.reason
                if not held:
                    raise SyncLocked(self._locked_message())
                # Under the lock, so that two first syncs never migrate at once, and a sync
                # never upgrades the schema under another one's feet.
                self.stop.uninterruptible = True
                try:
                    upgraded = ensure_schema(self.engine, self.migrate)
                finally:
                    self.stop.uninterruptible = False
                if upgraded:
                    self.note(upgraded)
                if self.stop.reason is not None:
                    raise self.stop.reason
                return self._run_locked()
        except SQLAlchemyError as exc:  # before the run row exists, or while marking it failed
            raise self._database_error(exc) from None

    def _database_error(self, exc: SQLAlchemyError) -> DatabaseError:
        return database_error(exc, self.engine.url)

    def _locked_message(self) -> str:
        """Who holds the database's lock; a sync of any scope does (see lock.py for why)."""
        with self.engine.connect() as connection:
            holder = (
                runs.running(connection)
                if inspect(connection).has_table(runs.sync_runs.name)
                else None
            )
        if holder is None:
            return "another sync is starting or migrating the schema; try again shortly"
        scope = Scope(holder.train_mode_filter, holder.model_filter).key
        return (
            f"another sync is running (run {holder.id}, {holder.mode} {scope}, started "
            f"{holder.started_at:%Y-%m-%d %H:%M:%S}Z, host {holder.host}, pid {holder.pid})"
        )

    def _run_locked(self) -> SyncResult:
        clock = time.monotonic()
        mode = runs.INCREMENTAL if self.incremental else runs.FULL
        with self.engine.begin() as connection:
            for run_id in runs.abandon_stale(connection):
                self.note(
                    f"run {run_id} was abandoned (its process died or lost the lock); marked failed"
                )
            resume = (
                None
                if self.incremental or self.restart
                else runs.resume_point(connection, self.scope)
            )
            run_id, started_at = runs.start(
                connection, self.scope, mode, self.query.page_size, resume
            )
        result = self.result = SyncResult(
            run_id, runs.RUNNING, mode, resumed_from=resume.run_id if resume else None
        )
        logs.run_id.set(run_id)
        if resume:
            # excerpt: a marker is the server's text, of any length.
            self.note(
                f"resuming the walk of run {resume.run_id} at marker {excerpt(resume.marker)}"
            )
        requests_before = self.client.requests_made
        try:
            if self.incremental:
                self._incremental(result, started_at)
            else:
                self._full(
                    result,
                    resume.marker if resume else None,
                    resume.walk_started_at if resume else started_at,
                    started_at,
                )
        except BaseException as exc:
            failure = self._explain(exc)
            self.stop.uninterruptible = True  # a forced stop must not cut this short
            # A page cut short by a forced stop may have left its connection mid-transaction,
            # holding the lock on the run's row that `fail` needs, in a state psycopg cannot
            # roll back: closing its socket makes the server roll it back.
            self._close_pages(invalidate=True)
            try:
                # The row's counts, not this result's: a stop that landed while a page's COMMIT
                # was on its way leaves that page committed but never added up here.
                for name, value in runs.fail(self.engine, run_id, reason(failure)).items():
                    setattr(result, name, value)
            except SQLAlchemyError as db_exc:
                raise DatabaseError(
                    f"{failure}; the run could not be marked failed either "
                    f"({describe(db_exc, self.engine.url)})"
                ) from None
            if failure is exc:
                raise
            raise failure from None
        finally:
            self.stop.event.set()  # halts the prefetch thread, if any
            self._close_pages()
            self.stop.uninterruptible = True  # the outcome is recorded: nothing left to force
        result.status = runs.SUCCEEDED
        result.requests = self.client.requests_made - requests_before
        result.duration_s = round(time.monotonic() - clock, 3)
        result.notes = self.notes
        return result

    def _close_pages(self, invalidate: bool = False) -> None:
        if self._pages is not None:
            if invalidate:
                self._pages.invalidate()
            self._pages.close()
            self._pages = None

    def _explain(self, exc: BaseException) -> BaseException:
        """The error to record and raise: the interruption if one was asked for, a database
        error without the driver's noise, or the error itself. Anything else reaches the caller
        as itself: it may be the host's own (Celery's SoftTimeLimitExceeded raised from a
        signal handler, Airflow's AirflowTaskTerminated), which the host must recognise; the
        command line calls the rest an internal error."""
        if self.stop.reason is not None:
            return self.stop.reason
        if isinstance(exc, SQLAlchemyError):
            return self._database_error(exc)
        return exc

    def _ready(self, page: Page) -> Ready:
        """Check the page against its columns and prepare it for the writer (in a full walk on
        PostgreSQL, while the server writes the page before it: see `Upcoming`)."""
        fits.check_page(page.jobs, page.next_marker, self.engine.dialect.name)
        return Ready(page, self.writer.prepare(page.jobs))

    def _write(
        self,
        result: SyncResult,
        ready: Ready,
        run_id: int,
        meanwhile: Callable[[], None] | None = None,
    ) -> Counts:
        """Commit one page, its jobs' tasks (with --tasks) and the run's progress in one
        transaction, through the database's page writer, which may call `meanwhile` while the
        server works on the page. The progress update is fenced: a run that lost its lock
        writes nothing more."""
        page = ready.page
        listings = self._fetch_tasks(page)
        if self._pages is None:
            self._pages = self.engine.connect()
        connection = self._pages
        with connection.begin():
            counts = self.writer.write(
                connection,
                ready.prepared,
                run_id,
                self._page_time(),
                page.next_marker,
                meanwhile,
                commit=listings is None,  # nothing else goes in this transaction
            )
            task_counts = self._write_tasks(connection, listings, run_id)
        result.add(len(page.jobs), counts)
        if task_counts is not None:
            result.add_tasks(task_counts)
        log_page(result.pages, page, counts)
        self.progress(result)
        return counts

    def _page_time(self) -> datetime:
        """Now, for a page's rows; in a full walk never before the walk started, nor before
        the page before. The walk's deletions are the jobs last seen before it started: with
        the wall clock stepped back (NTP, a resumed VM, a resume on a host whose clock is
        behind), jobs this very walk listed would otherwise count among them."""
        now = runs.utcnow()
        if self._seen_floor is not None:
            now = self._seen_floor = max(now, self._seen_floor)
        return now

    def _stop_if_asked(self) -> None:
        """Between pages only; never after the last, so a finished run stays finished."""
        if self.stop.reason is not None:
            raise self.stop.reason

    # --- tasks (`--tasks`): fetched before the page's transaction, written inside it

    def _fetch_tasks(self, page: Page) -> Listings | None:
        if self.tasks is None:
            return None
        job_ids = [job.job_id for job in page.jobs]
        return self.tasks.fetch(self.engine, job_ids, runs.utcnow(), self.stop.event)

    def _write_tasks(
        self, connection: Connection, listings: Listings | None, run_id: int
    ) -> TaskCounts | None:
        if self.tasks is None or listings is None:
            return None
        for gone in listings.gone:
            self.note(str(gone))
        counts = self.tasks.write(connection, listings, run_id, runs.utcnow())
        runs.record_tasks(connection, run_id, counts)
        return counts

    def _refresh_unfinished(self, result: SyncResult) -> None:
        """After an incremental walk, the unfinished tasks of jobs that it did not reach."""
        if self.tasks is None:
            return
        unfinished = self.tasks.unfinished(self.engine, self.scope, result.run_id, self.stop.event)
        for listings in unfinished:
            with self.engine.begin() as connection:
                counts = self._write_tasks(connection, listings, result.run_id)
            if counts is not None:
                result.add_tasks(counts)
            if self.stop.reason is not None:
                raise self.stop.reason

    def _first_page(
        self, query: JobQuery, marker: str | None, result: SyncResult, started_at: datetime
    ) -> tuple[Iterator[Page], datetime | None]:
        """Start the walk; a resume marker the API rejects (its job was deleted) restarts it."""
        pages = walk(self.client, query, marker, self.stop.event)
        try:
            return chain([next(pages)], pages), None
        except ApiError as exc:
            if marker is None or exc.code != "InvalidRequestArgumentError":
                raise
        self.note(
            f"the API rejected the saved marker {excerpt(marker)} (its job was probably deleted); "
            "walking from the start"
        )
        with self.engine.begin() as connection:
            runs.restart_walk(connection, result.run_id, started_at)
        result.resumed_from = None
        pages = walk(self.client, query, None, self.stop.event)
        return chain([next(pages)], pages), started_at

    def _full(
        self,
        result: SyncResult,
        marker: str | None,
        walk_started_at: datetime,
        started_at: datetime,
        query: JobQuery | None = None,
    ) -> None:
        query = query or self.query
        pages, restarted_at = self._first_page(query, marker, result, started_at)
        walk_started_at = restarted_at or walk_started_at
        self._seen_floor = walk_started_at
        first = next(pages)
        # The next pages are fetched on a thread of their own, so that the walk never waits
        # for the database; each is checked and prepared on this one, on PostgreSQL while the
        # server works on the page before it (a thread for that took the GIL just as the
        # writing thread needed it back from the server, which cost PostgreSQL a third of its
        # pace), elsewhere once that page is committed.
        halt = self.stop.event
        ahead = None if first.is_last else Prefetched(pages, halt, "qfsync-fetch")
        try:
            ready: Ready | None = self._ready(first)
            while ready is not None:
                upcoming = (
                    Upcoming(ahead, self._ready)
                    if ahead is not None and not ready.page.is_last
                    else None
                )
                self._write(result, ready, result.run_id, upcoming)
                if ready.page.is_last:
                    # The pages stay committed whatever happens here: a refused deletion fails
                    # the run, and the next full sync walks from the start.
                    with self.engine.begin() as connection:
                        result.jobs_deleted = store.mark_deleted(
                            connection,
                            self.scope,
                            walk_started_at,
                            result.run_id,
                            runs.utcnow(),
                            self.max_delete,
                        )
                        runs.succeed(
                            connection, result.run_id, complete=True, deleted=result.jobs_deleted
                        )
                    return
                self._stop_if_asked()
                assert upcoming is not None
                ready = upcoming.get()
        finally:
            # The stop event first: it ends the fetch stage, and a request in flight, at once.
            if ahead is not None:
                halt.set()
                ahead.close()
        # The prefetch stops early only when asked to; never report such a walk as finished.
        raise self.stop.reason or QfsyncError("the walk stopped before its last page")

    def _incremental(self, result: SyncResult, started_at: datetime) -> None:
        """Newest first until a page holds nothing new or changed; never deletes."""
        for reverse in (True, False):
            query = replace(self.query, reverse=reverse)
            pages, _ = self._first_page(query, None, result, started_at)
            first = next(pages)
            if sum(job.created_at is not None for job in first.jobs) < 2 and not first.is_last:
                # One dated job is in order with itself: such a page would pass for newest
                # first in any order, and the walk stop at the oldest job, unchanged.
                self._fall_back(
                    result,
                    started_at,
                    "a first page of fewer than two dated jobs cannot show "
                    "whether the listing is newest first",
                )
                return
            if newest_first(first.jobs):
                break
        else:
            self._fall_back(result, started_at, "neither order of the listing is newest first")
            return
        newest: datetime | None = None
        for page in chain([first], pages):
            if not newest_first(page.jobs, newest):
                self._fall_back(result, started_at, "the listing's pages are not newest first")
                return
            times = [job.created_at for job in page.jobs if job.created_at is not None]
            newest = times[-1] if times else newest
            done = page.is_last
            counts = self._write(result, self._ready(page), result.run_id)
            if counts.changed == 0 or done:
                self._refresh_unfinished(result)
                with self.engine.begin() as connection:
                    runs.succeed(connection, result.run_id, complete=done, deleted=0)
                return
            self._stop_if_asked()

    def _fall_back(self, result: SyncResult, started_at: datetime, why: str) -> None:
        self.note(f"{why}; falling back to a full walk")
        result.mode = runs.FULL
        with self.engine.begin() as connection:
            runs.fall_back_to_full(connection, result.run_id, started_at)
        self._full(result, None, started_at, started_at, replace(self.query, reverse=False))
