"""Writing jobs: one page of jobs with their versions, and the deletions after a complete walk.

Every function takes the caller's connection, so the sync decides the transaction: a page, its
versions and its progress in `sync_runs` are committed together or not at all.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ARRAY,
    Column,
    ColumnElement,
    Connection,
    String,
    and_,
    any_,
    bindparam,
    func,
    select,
    update,
)

from .errors import DeletionRefused
from .guard import DeleteLimit
from .schema import finetuning_job_versions, finetuning_jobs, sync_runs

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


def among(connection: Connection, column: Column[str], ids: Sequence[str]) -> ColumnElement[bool]:
    """`column IN ids`. On PostgreSQL as `= ANY(array)`: one parameter instead of one per id
    keeps the statement short enough for psycopg to cache its parsing, which otherwise costs
    more than the query itself."""
    if connection.dialect.name == "postgresql":
        return column == any_(bindparam(None, list(ids), type_=ARRAY(String)))
    return column.in_(ids)


def chunks(items: Sequence[Any], size: int = CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


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
    # The share is of the jobs listed before this walk: counting the ones it just stored would
    # let another account with as many jobs as ours pass as "half" and delete all of ours.
    listed = connection.scalar(
        select(func.count()).where(scope.jobs_clause(), jc.first_seen_at < walk_started_at)
    )
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
