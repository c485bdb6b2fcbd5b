"""Writing jobs: one page of jobs with their versions, and the deletions after a complete walk.

Every function takes the caller's connection, so the sync decides the transaction: a page, its
versions and its progress in `sync_runs` are committed together or not at all.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Column,
    ColumnElement,
    Connection,
    String,
    and_,
    any_,
    bindparam,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects import mysql, postgresql, sqlite

from .errors import DeletionRefused
from .guard import DeleteLimit
from .pages import Job
from .schema import VERSIONED_FIELDS, finetuning_job_versions, finetuning_jobs, sync_runs

# Columns an upsert rewrites for a new or changed job; first_seen_at stays as first written.
UPSERT_COLUMNS = (
    "name",
    "description",
    "model",
    "train_mode",
    "created_at",
    "raw",
    "content_hash",
    "last_seen_at",
    "deleted_at",
    "last_run_id",
)
CHUNK = 500  # ids per IN (...) list when a batch is not bounded by the page size


@dataclass
class Counts:
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0

    @property
    def changed(self) -> int:
        return self.inserted + self.updated


@dataclass(frozen=True)
class Scope:
    """The filters of a walk: what a complete walk of it may mark deleted."""

    train_mode: str | None = None
    model: str | None = None

    @property
    def key(self) -> str:
        return f"trainMode={self.train_mode or '*'};model={self.model or '*'}"

    def jobs_clause(self) -> ColumnElement[bool]:
        """Listed jobs inside the filters."""
        clauses: list[ColumnElement[bool]] = [finetuning_jobs.c.deleted_at.is_(None)]
        if self.train_mode is not None:
            clauses.append(finetuning_jobs.c.train_mode == self.train_mode)
        if self.model is not None:
            clauses.append(finetuning_jobs.c.model == self.model)
        return and_(*clauses)

    def runs_clause(self) -> ColumnElement[bool]:
        """Runs of exactly this scope."""
        return and_(
            sync_runs.c.train_mode_filter.is_not_distinct_from(self.train_mode),
            sync_runs.c.model_filter.is_not_distinct_from(self.model),
        )


def upsert(connection: Connection, rows: list[dict[str, Any]]) -> None:
    """One INSERT ... ON CONFLICT / ON DUPLICATE KEY statement for the whole batch."""
    dialect = connection.dialect.name
    if dialect in ("mysql", "mariadb"):
        on_key = mysql.insert(finetuning_jobs)
        new_values = {column: on_key.inserted[column] for column in UPSERT_COLUMNS}
        connection.execute(on_key.on_duplicate_key_update(new_values), rows)
        return
    on_conflict = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(finetuning_jobs)
    excluded = {column: on_conflict.excluded[column] for column in UPSERT_COLUMNS}
    # RETURNING makes SQLAlchemy render the batch as one multi-row VALUES statement
    # ("insertmanyvalues"); without it the driver would execute the statement once per row.
    connection.execute(
        on_conflict.on_conflict_do_update(
            index_elements=[finetuning_jobs.c.job_id], set_=excluded
        ).returning(finetuning_jobs.c.job_id),
        rows,
    )


def among(connection: Connection, column: Column[str], ids: Sequence[str]) -> ColumnElement[bool]:
    """`column IN ids`. On PostgreSQL as `= ANY(array)`: one parameter instead of one per id
    keeps the statement short enough for psycopg to cache its parsing, which otherwise costs
    more than the query itself."""
    if connection.dialect.name == "postgresql":
        return column == any_(bindparam(None, list(ids), type_=postgresql.ARRAY(String)))
    return column.in_(ids)


def chunks(items: Sequence[Any], size: int = CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def write_jobs(connection: Connection, jobs: list[Job], run_id: int, now: datetime) -> Counts:
    """Store one page: insert new jobs, update changed ones, touch unchanged ones, keep history."""
    counts = Counts()
    if not jobs:
        return counts
    jc = finetuning_jobs.c
    stored = {
        row.job_id: row
        for row in connection.execute(
            select(jc.job_id, jc.content_hash, jc.deleted_at).where(
                among(connection, jc.job_id, [j.job_id for j in jobs])
            )
        )
    }
    new, changed, unchanged = [], [], []
    for job in jobs:
        row = stored.get(job.job_id)
        if row is None:
            new.append(job)
        elif row.deleted_at is not None or row.content_hash != job.content_hash:
            changed.append(job)
        else:
            unchanged.append(job.job_id)
    counts.inserted, counts.updated, counts.unchanged = len(new), len(changed), len(unchanged)

    if new or changed:
        upsert(
            connection,
            [
                {
                    "job_id": job.job_id,
                    "name": job.name,
                    "description": job.description,
                    "model": job.model,
                    "train_mode": job.train_mode,
                    "created_at": job.created_at,
                    "first_seen_at": now,
                    "last_seen_at": now,
                    "deleted_at": None,
                    "raw": job.raw,
                    "content_hash": job.content_hash,
                    "last_run_id": run_id,
                }
                for job in new + changed
            ],
        )
    if unchanged:
        # Only the bookkeeping moves: stored fields of an unchanged job are not rewritten.
        connection.execute(
            update(finetuning_jobs)
            .where(among(connection, jc.job_id, unchanged))
            .values(last_seen_at=now, last_run_id=run_id)
        )
    write_versions(connection, new, changed, run_id, now)
    return counts


def write_versions(
    connection: Connection, new: list[Job], changed: list[Job], run_id: int, now: datetime
) -> None:
    """Open version 1 for new jobs; for changed ones, close the current version and open the next
    when a versioned field differs or the job was deleted (its current version is then closed)."""
    vc = finetuning_job_versions.c
    opened = [(job, 1) for job in new]
    if changed:
        ids = [job.job_id for job in changed]
        current = {
            row.job_id: row
            for row in connection.execute(
                select(vc.job_id, vc.version, *(vc[f] for f in VERSIONED_FIELDS)).where(
                    among(connection, vc.job_id, ids), vc.valid_to.is_(None)
                )
            )
        }
        latest = {
            job_id: version
            for job_id, version in connection.execute(
                select(vc.job_id, func.max(vc.version))
                .where(among(connection, vc.job_id, ids))
                .group_by(vc.job_id)
            )
        }
        to_close = []
        for job in changed:
            row = current.get(job.job_id)
            if row is not None and all(
                getattr(row, f) == getattr(job, f) for f in VERSIONED_FIELDS
            ):
                continue  # only fields outside the version changed (e.g. createTime's format)
            if row is not None:
                to_close.append(job.job_id)
            opened.append((job, latest.get(job.job_id, 0) + 1))
        if to_close:
            connection.execute(
                update(finetuning_job_versions)
                .where(among(connection, vc.job_id, to_close), vc.valid_to.is_(None))
                .values(valid_to=now)
            )
    if opened:
        connection.execute(
            insert(finetuning_job_versions),
            [
                {
                    "job_id": job.job_id,
                    "version": version,
                    "valid_from": now,
                    "valid_to": None,
                    "name": job.name,
                    "description": job.description,
                    "model": job.model,
                    "train_mode": job.train_mode,
                    "run_id": run_id,
                }
                for job, version in opened
            ],
        )


def mark_deleted(
    connection: Connection,
    scope: Scope,
    walk_started_at: datetime,
    run_id: int,
    now: datetime,
    limit: DeleteLimit,
) -> int:
    """After a complete walk: jobs of the scope that the walk did not see are gone from the API.
    Raises DeletionRefused, writing nothing, when that is more than `limit` allows."""
    jc, vc = finetuning_jobs.c, finetuning_job_versions.c
    gone = list(
        connection.scalars(
            select(jc.job_id).where(scope.jobs_clause(), jc.last_seen_at < walk_started_at)
        )
    )
    if not gone:
        return 0
    listed = connection.scalar(select(func.count()).where(scope.jobs_clause()))
    refusal = limit.refusal(len(gone), listed or 0, scope.key)
    if refusal is not None:
        raise DeletionRefused(refusal)
    for ids in chunks(gone):
        connection.execute(
            update(finetuning_jobs)
            .where(among(connection, jc.job_id, ids))
            .values(deleted_at=now, last_run_id=run_id)
        )
        connection.execute(
            update(finetuning_job_versions)
            .where(among(connection, vc.job_id, ids), vc.valid_to.is_(None))
            .values(valid_to=now)
        )
    return len(gone)
