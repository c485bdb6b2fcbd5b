"""qfsync as a library: `sync` runs one sync as `qfsync sync` does, `jobs` walks the API as
`qfsync jobs` does, `tasks` lists tasks as `qfsync tasks` does. The command line is a thin layer
over these.

Both take the command's options as keyword arguments (`--no-migrate` is `migrate=False`);
credentials, endpoint and database URL fall back to the same environment variables. Failures
raise the exceptions of `qfsync.errors`, which the command turns into its exit codes. Used as a
library, qfsync installs no signal handler and leaves logging to the application; its loggers
are named `qfsync.*`.
"""

import contextvars
import logging
import os
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import closing
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import logs
from .client import (
    DEFAULT_BASE_URL,
    MAX_PAGE_SIZE,
    Client,
    Credentials,
    JobQuery,
    Limits,
    RetryPolicy,
    walk,
)
from .errors import ConfigError, QfsyncError
from .guard import DEFAULT as DEFAULT_MAX_DELETE
from .guard import DeleteLimit
from .pages import Job, is_unicode
from .task_fetch import DEFAULT_CONCURRENCY, DEFAULT_MAX_AGE, TaskFetcher
from .task_pages import Task

# The database side (SQLAlchemy, about 0.2 s to import) loads with the first sync: `jobs`, and
# `qfsync jobs`, never need it.
if TYPE_CHECKING:
    from .syncer import StopFlag, SyncResult


def __getattr__(name: str) -> Any:
    if name in ("StopFlag", "SyncResult"):
        from . import syncer

        return getattr(syncer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())

# Where the command line and the library read the settings users keep in the environment.
ENV = {
    "database_url": "QFSYNC_DATABASE_URL",
    "endpoint": "QIANFAN_CONSOLE_API_BASE_URL",
    "access_key": "QIANFAN_ACCESS_KEY",
    "secret_key": "QIANFAN_SECRET_KEY",
}


# The longest wait or timeout a setting may ask for, in seconds: a year.
LONGEST_S = 365 * 86400


def setting(name: str, value: str | None, default: str | None = None) -> str | None:
    """The argument if given, else its environment variable, else the default."""
    return value if value is not None else os.environ.get(ENV[name], default)


def make_client(
    endpoint: str | None = None,
    access_key: str | None = None,
    secret_key: str | None = None,
    max_attempts: int = RetryPolicy.max_attempts,
    max_retry_wait: float = RetryPolicy.max_wait_s,
    timeout: float = RetryPolicy.read_timeout_s,
) -> Client:
    access_key = setting("access_key", access_key)
    secret_key = setting("secret_key", secret_key)
    if not access_key or not secret_key:
        raise ConfigError("no credentials: set QIANFAN_ACCESS_KEY and QIANFAN_SECRET_KEY")
    try:
        credentials = Credentials(access_key, secret_key)
    except ValueError as exc:
        raise ConfigError(f"QIANFAN_ACCESS_KEY or QIANFAN_SECRET_KEY: {exc}") from None
    # Written so that NaN fails too; infinity or 1e300 would overflow a socket's timeout.
    if not (max_attempts >= 1 and 0 <= max_retry_wait <= LONGEST_S and 0 < timeout <= LONGEST_S):
        raise ConfigError(
            "max_attempts must be at least 1, max_retry_wait and timeout numbers of seconds "
            "up to a year (timeout above 0)"
        )
    base_url = setting("endpoint", endpoint, DEFAULT_BASE_URL)
    if not base_url:  # given empty (a setting that lost its value), not left out
        raise ConfigError("endpoint (QIANFAN_CONSOLE_API_BASE_URL) is empty")
    try:
        return Client(
            credentials,
            base_url,
            RetryPolicy(
                max_attempts=max_attempts, max_wait_s=max_retry_wait, read_timeout_s=timeout
            ),
            # An attempt's deadline never cuts short a read the operator allowed more time.
            limits=Limits(deadline_s=max(Limits.deadline_s, timeout)),
        )
    except ValueError as exc:
        raise ConfigError(f"--endpoint: {exc}") from None


def job_query(
    train_mode: str | None, model: str | None, page_size: int, reverse: bool = False
) -> JobQuery:
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise ConfigError(f"page_size must be 1 to {MAX_PAGE_SIZE}, not {page_size}")
    for option, value in (("--train-mode", train_mode), ("--model", model)):
        if value is None:
            continue
        if not value.strip():
            # `--model "$MODEL"` with MODEL unset: the API lists every job for it, but the
            # run would record a scope of its own, one that never marks a deletion.
            raise ConfigError(f"{option} is empty: leave it out to take every job")
        if not is_unicode(value):  # bytes of another encoding on the command line
            raise ConfigError(f"{option} holds bytes that are not UTF-8")
    return JobQuery(train_mode, model, page_size, reverse)


def sync_settings(query: JobQuery, max_delete: str | DeleteLimit) -> DeleteLimit:
    """The checks a sync makes before it connects: filters its run row can record, and the
    deletion limit; returns that limit."""
    from . import fits
    from .schema import sync_runs

    for option, value, column in (
        ("--train-mode", query.train_mode, sync_runs.c.train_mode_filter),
        ("--model", query.model, sync_runs.c.model_filter),
    ):
        why = fits.check_filter(option, value, column)
        if why is not None:
            raise ConfigError(why)
    if isinstance(max_delete, DeleteLimit):
        return max_delete
    try:
        return DeleteLimit.parse(max_delete)
    except ValueError as exc:
        raise ConfigError(f"--max-delete: {exc}") from None


def jobs(
    *,
    endpoint: str | None = None,
    access_key: str | None = None,
    secret_key: str | None = None,
    train_mode: str | None = None,
    model: str | None = None,
    page_size: int = MAX_PAGE_SIZE,
    reverse: bool = False,
    max_attempts: int = RetryPolicy.max_attempts,
    max_retry_wait: float = RetryPolicy.max_wait_s,
    timeout: float = RetryPolicy.read_timeout_s,
) -> Iterator[Job]:
    """Every job the API lists, in its order (newest first with `reverse`), without touching a
    database. Settings are checked at once; requests start with the first job asked for."""
    query = job_query(train_mode, model, page_size, reverse)
    client = make_client(endpoint, access_key, secret_key, max_attempts, max_retry_wait, timeout)
    pages = job_pages(client, query)

    def generate() -> Iterator[Job]:
        # A generator of its own, not a chain of the pages: a caller that stops early can
        # close it, which closes the walk and its connection.
        with closing(pages):
            for page in pages:
                yield from page

    return generate()


def job_pages(client: Client, query: JobQuery) -> Generator[list[Job], None, None]:
    """The listing a page at a time, each page's jobs as one list (`qfsync jobs` writes a page
    in one go); the client is closed when the walk ends or is closed."""
    with client:
        for number, page in enumerate(walk(client, query), 1):
            log.debug(
                "page %d: %d jobs",
                number,
                len(page.jobs),
                extra=logs.facts(page=number, marker=page.marker, request_id=page.request_id),
            )
            yield page.jobs


def tasks(
    *,
    job_ids: Sequence[str] = (),
    endpoint: str | None = None,
    access_key: str | None = None,
    secret_key: str | None = None,
    train_mode: str | None = None,
    model: str | None = None,
    page_size: int = MAX_PAGE_SIZE,
    task_concurrency: int = DEFAULT_CONCURRENCY,
    max_attempts: int = RetryPolicy.max_attempts,
    max_retry_wait: float = RetryPolicy.max_wait_s,
    timeout: float = RetryPolicy.read_timeout_s,
) -> Iterator[Task]:
    """Every task of the jobs `job_ids` (or of every job the API lists, with the filters), a
    running one with its progress, without touching a database; up to `task_concurrency`
    requests in flight. Requests start with the first task asked for."""
    query = job_query(train_mode, model, page_size)
    if task_concurrency < 1:
        raise ConfigError(f"task_concurrency must be at least 1, not {task_concurrency}")
    client = make_client(endpoint, access_key, secret_key, max_attempts, max_retry_wait, timeout)

    def generate() -> Iterator[Task]:
        with client, TaskFetcher(client, task_concurrency) as fetcher:
            batches: Iterator[list[str]] = (
                iter([list(job_ids)])
                if job_ids
                else ([job.job_id for job in page.jobs] for page in walk(client, query))
            )
            for batch in batches:
                fetched = fetcher.fetch(batch)
                if job_ids and fetched.gone:
                    # A job asked for by name: the API's own answer says it best.
                    raise fetched.gone[0].refusal
                for gone in fetched.gone:
                    log.warning("%s", gone)
                for listed in fetched.tasks.values():
                    yield from listed

    return generate()


def name_run(failure: BaseException, run_id: int | None) -> None:
    """Say which run `failure` ended, None before its row existed (an exception raised again
    from an earlier sync must not keep that one's): a qfsync error in its `run_id`, any other
    exception (the host's own, or a bug) in `qfsync_run_id`, a name of qfsync's, as it keeps
    its type."""
    if isinstance(failure, QfsyncError):
        failure.run_id = run_id
        return
    try:
        failure.qfsync_run_id = run_id  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - an exception that refuses attributes goes without
        pass


def sync(
    database_url: str | None = None,
    *,
    endpoint: str | None = None,
    access_key: str | None = None,
    secret_key: str | None = None,
    train_mode: str | None = None,
    model: str | None = None,
    page_size: int = MAX_PAGE_SIZE,
    max_attempts: int = RetryPolicy.max_attempts,
    max_retry_wait: float = RetryPolicy.max_wait_s,
    timeout: float = RetryPolicy.read_timeout_s,
    incremental: bool = False,
    restart: bool = False,
    wait: float = 0.0,
    migrate: bool = True,
    max_delete: str | DeleteLimit = DEFAULT_MAX_DELETE,
    tasks: bool = False,
    tasks_max_age: timedelta = DEFAULT_MAX_AGE,
    task_concurrency: int = DEFAULT_CONCURRENCY,
    metrics_file: str | os.PathLike[str] | None = None,
    pushgateway: str | None = None,
    stop: "StopFlag | None" = None,
    progress: "Callable[[SyncResult], None] | None" = None,
    notify: Callable[[str], None] | None = None,
) -> "SyncResult":
    """Sync the jobs into the database (creating or upgrading its tables under the sync lock
    unless `migrate` is false) and return the run's result with its counts; write or push its
    metrics, also when it fails. `max_delete` (`200` jobs or `50%` of the scope's listed jobs)
    bounds what a complete walk may mark deleted. `stop.request(...)` from another thread ends
    it at the next page boundary; `progress` gets the result after each page, `notify` each
    note for the operator. With `tasks`, each listed job's tasks too
    (see `qfsync sync --help`)."""
    from . import db, runs
    from .metrics import Attempt, Outputs
    from .store import Scope
    from .syncer import Sync
    from .task_sync import TaskSync

    outputs = Outputs(Path(metrics_file) if metrics_file else None, pushgateway)
    attempt = Attempt(Scope(train_mode, model), runs.INCREMENTAL if incremental else runs.FULL)
    url = setting("database_url", database_url, db.DEFAULT_URL)

    def run() -> "SyncResult":
        engine = None
        try:
            # Before connecting, yet inside the attempt: a wrong setting (a cron line whose
            # environment changed) is a failure its metrics report like any other.
            if task_concurrency < 1:
                raise ConfigError(f"task_concurrency must be at least 1, not {task_concurrency}")
            if not url:  # given empty (a setting that lost its value), not left out
                raise ConfigError("database_url (QFSYNC_DATABASE_URL) is empty")
            query = job_query(train_mode, model, page_size)
            limit = sync_settings(query, max_delete)
            client = attempt.client = make_client(
                endpoint, access_key, secret_key, max_attempts, max_retry_wait, timeout
            )
            with client, TaskFetcher(client, task_concurrency) as fetcher:
                engine = db.connect(url)
                # Sync migrates the schema itself, under the lock.
                attempt.sync = Sync(
                    engine,
                    client,
                    query,
                    incremental=incremental,
                    restart=restart,
                    wait_s=wait,
                    stop=stop,
                    progress=progress,
                    notify=notify,
                    migrate=migrate,
                    max_delete=limit,
                    tasks=TaskSync(fetcher, None if incremental else tasks_max_age)
                    if tasks
                    else None,
                )
                result = attempt.sync.run()
            log.info(
                "run %d %s (%s): %d pages, %d jobs seen in %.1fs",
                result.run_id,
                result.status,
                result.mode,
                result.pages,
                result.jobs_seen,
                result.duration_s,
                extra=logs.facts(**result.to_json()),
            )
            return result
        except BaseException as exc:
            attempt.error = exc
            run = attempt.sync.result if attempt.sync else None
            name_run(exc, run.run_id if run else None)
            raise
        finally:
            outputs.write(attempt, engine)
            if engine is not None:
                engine.dispose()

    # A context of its own: the run id the sync sets for its log lines ends with it.
    return contextvars.copy_context().run(run)


__all__ = ["Job", "StopFlag", "SyncResult", "Task", "jobs", "sync", "tasks"]
