"""The `sync_runs` state table: a run's row from start to finish, and what later runs read of it."""

import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, insert, select, update

from . import __version__
from .errors import LockLost
from .schema import sync_runs
from .store import Scope
from .task_store import TaskCounts

RUNNING, SUCCEEDED, FAILED = "running", "succeeded", "failed"
FULL, INCREMENTAL = "full", "incremental"
# TaskCounts' fields as sync_runs names them.
TASK_COUNTS = {
    "seen": "tasks_seen",
    "inserted": "tasks_inserted",
    "updated": "tasks_updated",
    "unchanged": "tasks_unchanged",
    "deleted": "tasks_deleted",
    "requests": "task_requests",
}
COUNTS = (
    "pages",
    "jobs_seen",
    "jobs_inserted",
    "jobs_updated",
    "jobs_unchanged",
    "jobs_deleted",
    *TASK_COUNTS.values(),
)
ABANDONED = (
    "abandoned: its process ended, or lost the sync lock, without finishing the run "
    "(the lock was free)"
)
ERROR_CHARS = 2000


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class ResumePoint:
    run_id: int
    marker: str
    walk_started_at: datetime


def abandon_stale(connection: Connection) -> list[int]:
    """Rows still `running` although the database's lock was free: their process is gone (or
    lost the lock, and its next commit will find its row closed). Such a run finished when it
    last made progress, not now."""
    c = sync_runs.c
    stale = list(connection.scalars(select(c.id).where(c.status == RUNNING)))
    if stale:
        connection.execute(
            update(sync_runs)
            .where(c.id.in_(stale), c.status == RUNNING)
            .values(status=FAILED, finished_at=c.progress_at, error=ABANDONED)
        )
    return stale


def resume_point(connection: Connection, scope: Scope) -> ResumePoint | None:
    """Where the scope's last full walk stopped, if it failed with pages still to fetch."""
    last = connection.execute(
        select(sync_runs)
        .where(scope.runs_clause(), sync_runs.c.mode == FULL)
        .order_by(sync_runs.c.id.desc())
        .limit(1)
    ).first()
    if last is None or last.status != FAILED or last.complete or not last.next_marker:
        return None
    return ResumePoint(last.id, last.next_marker, last.walk_started_at)


def start(
    connection: Connection, scope: Scope, mode: str, page_size: int, resume: ResumePoint | None
) -> tuple[int, datetime]:
    started_at = utcnow()
    run_id = connection.execute(
        insert(sync_runs).values(
            started_at=started_at,
            status=RUNNING,
            mode=mode,
            train_mode_filter=scope.train_mode,
            model_filter=scope.model,
            page_size=page_size,
            pages=0,
            jobs_seen=0,
            jobs_inserted=0,
            jobs_updated=0,
            jobs_unchanged=0,
            jobs_deleted=0,
            complete=False,
            next_marker=resume.marker if resume else None,
            resumed_from=resume.run_id if resume else None,
            walk_started_at=resume.walk_started_at if resume else started_at,
            progress_at=started_at,
            host=socket.gethostname()[:255],
            pid=os.getpid(),
            qfsync_version=__version__,
        )
    ).inserted_primary_key
    assert run_id is not None
    return run_id[0], started_at


def still_running(run_id: int) -> Any:
    """The fence of every write to a run's row: the row is this run's only while it is still
    `running`. Another sync that took the lock (because this one's lock session died) marks it
    failed first, and from then on each fenced UPDATE matches no row."""
    return (sync_runs.c.id == run_id) & (sync_runs.c.status == RUNNING)


def check_fenced(rowcount: int, run_id: int) -> None:
    """Raise LockLost, rolling back the caller's transaction, when a fenced UPDATE missed."""
    if rowcount != 1:
        raise LockLost(
            f"the sync lock was lost: run {run_id} is no longer `running` (another sync took "
            "the lock and closed it, e.g. after the database restarted); stopping without "
            "writing this page"
        )


def record_tasks(connection: Connection, run_id: int, counts: TaskCounts) -> None:
    """Add task counts to the run, in the transaction that wrote the tasks; fenced like a
    page's progress."""
    c = sync_runs.c
    updated = connection.execute(
        update(sync_runs)
        .where(still_running(run_id))
        .values(
            {c[column]: c[column] + getattr(counts, name) for name, column in TASK_COUNTS.items()}
            | {c.progress_at: utcnow()}
        )
    )
    check_fenced(updated.rowcount, run_id)


def restart_walk(connection: Connection, run_id: int, walk_started_at: datetime) -> None:
    """The saved marker was rejected: this run now walks from the start on its own."""
    connection.execute(
        update(sync_runs)
        .where(sync_runs.c.id == run_id)
        .values(resumed_from=None, next_marker=None, walk_started_at=walk_started_at)
    )


def fall_back_to_full(connection: Connection, run_id: int, walk_started_at: datetime) -> None:
    """An incremental run that now walks the whole listing from the start. The marker its
    newest-first pages saved is no place in that walk: were the run to fail before the walk's
    first page, the next full sync would resume from it and take every job it skipped for
    deleted. So it is cleared with the mode."""
    connection.execute(
        update(sync_runs)
        .where(sync_runs.c.id == run_id)
        .values(mode=FULL, next_marker=None, walk_started_at=walk_started_at)
    )


def succeed(connection: Connection, run_id: int, complete: bool, deleted: int) -> None:
    """Fenced: a run that another sync marked abandoned can never become `succeeded`."""
    now = utcnow()
    updated = connection.execute(
        update(sync_runs)
        .where(still_running(run_id))
        .values(
            status=SUCCEEDED,
            finished_at=now,
            progress_at=now,
            complete=complete,
            jobs_deleted=deleted,
        )
    )
    check_fenced(updated.rowcount, run_id)


def fail(engine: Engine, run_id: int, error: str) -> dict[str, int]:
    """Fenced too: a row already closed (succeeded, or failed by another sync) stays as is.
    Returns the run's counts as its row holds them, the sum of the pages it committed."""
    with engine.begin() as connection:
        connection.execute(
            update(sync_runs)
            .where(still_running(run_id))
            .values(status=FAILED, finished_at=utcnow(), error=error[:ERROR_CHARS])
        )
        row = connection.execute(
            select(*(sync_runs.c[name] for name in COUNTS)).where(sync_runs.c.id == run_id)
        ).one()
    return dict(row._mapping)


def running(connection: Connection) -> Any:
    """The run that holds the database now, for the 'another sync is running' message."""
    c = sync_runs.c
    return connection.execute(
        select(c.id, c.started_at, c.host, c.pid, c.mode, c.train_mode_filter, c.model_filter)
        .where(c.status == RUNNING)
        .order_by(c.id.desc())
        .limit(1)
    ).first()


def history(connection: Connection, limit: int) -> list[dict[str, Any]]:
    rows = connection.execute(select(sync_runs).order_by(sync_runs.c.id.desc()).limit(limit))
    return [dict(row._mapping) for row in rows]
