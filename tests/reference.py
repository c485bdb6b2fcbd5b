"""The plain page writer the fast ones are checked against: qfsync's first write path, kept
as it was (SQLAlchemy Core, one lookup, Python classification, then each kind of row), plus the
run's progress as `record_page` writes it, fenced as every writer's is."""

import hashlib
import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, insert, select, update
from sqlalchemy.dialects import mysql, postgresql, sqlite

from qfsync import runs
from qfsync.pages import Job
from qfsync.schema import VERSIONED_FIELDS, finetuning_job_versions, finetuning_jobs, sync_runs
from qfsync.store import Counts, among

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


def reference_hash(item: dict[str, Any]) -> str:
    """The content hash as qfsync first defined it."""
    canonical = json.dumps(item, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class ReferenceWriter:
    def prepare(self, jobs: Sequence[Job]) -> Sequence[Job]:
        return jobs

    def write(
        self,
        connection: Connection,
        jobs: Sequence[Job],
        run_id: int,
        now: datetime,
        next_marker: str | None,
        meanwhile: Callable[[], None] | None = None,
        commit: bool = False,  # the caller commits
    ) -> Counts:
        counts = write_jobs(connection, list(jobs), run_id, now)
        record_page(connection, run_id, len(jobs), counts, next_marker)
        return counts


def record_page(
    connection: Connection, run_id: int, seen: int, counts: Counts, next_marker: str | None
) -> None:
    """The page's progress, in the page's transaction; fenced, so a run that lost its lock
    writes no further page."""
    c = sync_runs.c
    updated = connection.execute(
        update(sync_runs)
        .where(runs.still_running(run_id))
        .values(
            pages=c.pages + 1,
            jobs_seen=c.jobs_seen + seen,
            jobs_inserted=c.jobs_inserted + counts.inserted,
            jobs_updated=c.jobs_updated + counts.updated,
            jobs_unchanged=c.jobs_unchanged + counts.unchanged,
            next_marker=next_marker,
            progress_at=runs.utcnow(),
        )
    )
    runs.check_fenced(updated.rowcount, run_id)


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
        elif row.deleted_at is not None or row.content_hash != reference_hash(job.raw):
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
                    "content_hash": reference_hash(job.raw),
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
