"""The `sync_runs` state table: a run's row from start to finish, and what later runs read of it."""

import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, insert, select, update

from . import __version__
from .schema import sync_runs
from .store import Counts, Scope

RUNNING, SUCCEEDED, FAILED = "running", "succeeded", "failed"
FULL, INCREMENTAL = "full", "incremental"
COUNTS = ("pages", "jobs_seen", "jobs_inserted", "jobs_updated", "jobs_unchanged", "jobs_deleted")
ABANDONED = "abandoned: its process ended without finishing the run (the sync lock was free)"
ERROR_CHARS = 2000


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class ResumePoint:
    run_id: int
    marker: str
    walk_started_at: datetime


def abandon_stale(connection: Connection, scope: Scope) -> list[int]:
    """Rows still `running` although their scope's lock was free: their process is gone."""
    stale = list(
        connection.scalars(
            select(sync_runs.c.id).where(scope.runs_clause(), sync_runs.c.status == RUNNING)
        )
    )
    if stale:
        connection.execute(
            update(sync_runs)
            .where(sync_runs.c.id.in_(stale))
            .values(status=FAILED, finished_at=utcnow(), error=ABANDONED)
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
            host=socket.gethostname()[:255],
            pid=os.getpid(),
            qfsync_version=__version__,
        )
    ).inserted_primary_key
    assert run_id is not None
    return run_id[0], started_at


def record_page(
    connection: Connection, run_id: int, seen: int, counts: Counts, next_marker: str | None
) -> None:
    c = sync_runs.c
    connection.execute(
        update(sync_runs)
        .where(c.id == run_id)
        .values(
            pages=c.pages + 1,
            jobs_seen=c.jobs_seen + seen,
            jobs_inserted=c.jobs_inserted + counts.inserted,
            jobs_updated=c.jobs_updated + counts.updated,
            jobs_unchanged=c.jobs_unchanged + counts.unchanged,
            next_marker=next_marker,
        )
    )


def restart_walk(connection: Connection, run_id: int, walk_started_at: datetime) -> None:
    """The saved marker was rejected: this run now walks from the start on its own."""
    connection.execute(
        update(sync_runs)
        .where(sync_runs.c.id == run_id)
        .values(resumed_from=None, next_marker=None, walk_started_at=walk_started_at)
    )


def set_mode(connection: Connection, run_id: int, mode: str) -> None:
    connection.execute(update(sync_runs).where(sync_runs.c.id == run_id).values(mode=mode))


def succeed(connection: Connection, run_id: int, complete: bool, deleted: int) -> None:
    connection.execute(
        update(sync_runs)
        .where(sync_runs.c.id == run_id)
        .values(status=SUCCEEDED, finished_at=utcnow(), complete=complete, jobs_deleted=deleted)
    )


def fail(engine: Engine, run_id: int, error: str) -> None:
    with engine.begin() as connection:
        connection.execute(
            update(sync_runs)
            .where(sync_runs.c.id == run_id)
            .values(status=FAILED, finished_at=utcnow(), error=error[:ERROR_CHARS])
        )


def running(connection: Connection, scope: Scope) -> Any:
    """The run that holds the scope now, for the 'another sync is running' message."""
    return connection.execute(
        select(sync_runs.c.id, sync_runs.c.started_at, sync_runs.c.host, sync_runs.c.pid)
        .where(scope.runs_clause(), sync_runs.c.status == RUNNING)
        .order_by(sync_runs.c.id.desc())
        .limit(1)
    ).first()


def history(connection: Connection, limit: int) -> list[dict[str, Any]]:
    rows = connection.execute(select(sync_runs).order_by(sync_runs.c.id.desc()).limit(limit))
    return [dict(row._mapping) for row in rows]
