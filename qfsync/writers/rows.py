"""The page writer for drivers that take many rows per call (SQLite, MariaDB/MySQL).

Classifies the page in Python from one lookup of the stored hashes, then sends each kind of
row through one short statement with `executemany`, values already in the driver's types, on
the driver's own cursor: SQLAlchemy's per-parameter processing cost more than the database's
work. A dialect module supplies the upsert, how it stores a time, and its placeholder.
"""

from collections.abc import Callable, Sequence
from dataclasses import astuple, dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import Connection

from ..pages import Job, content_hash
from ..runs import check_fenced
from ..schema import VERSIONED_FIELDS
from ..store import Counts
from . import driver_errors, raw_text

VERSIONS_SQL = (
    "SELECT job_id, version, valid_to IS NULL, name, description, model, train_mode"
    " FROM finetuning_job_versions WHERE job_id IN ({ids})"
)
CLOSE_SQL = "UPDATE finetuning_job_versions SET valid_to = ? WHERE job_id = ? AND valid_to IS NULL"
# Placeholders only (valid_to is left to its NULL default): PyMySQL sends an executemany as one
# multi-row INSERT only when the VALUES list holds nothing else.
OPEN_SQL = (
    "INSERT INTO finetuning_job_versions"
    " (job_id, version, valid_from, name, description, model, train_mode, run_id)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
PROGRESS_SQL = (
    "UPDATE sync_runs SET pages = pages + 1, jobs_seen = jobs_seen + ?,"
    " jobs_inserted = jobs_inserted + ?, jobs_updated = jobs_updated + ?,"
    " jobs_unchanged = jobs_unchanged + ?, next_marker = ?, progress_at = ?"
    " WHERE id = ? AND status = 'running'"
)
# Stored hash, or '' for a deleted job, so that it counts as changed.
STORED_SQL = (
    "SELECT job_id, CASE WHEN deleted_at IS NULL THEN content_hash ELSE '' END"
    " FROM finetuning_jobs WHERE job_id IN ({ids})"
)
TOUCH_SQL = "UPDATE finetuning_jobs SET last_seen_at = ?, last_run_id = ? WHERE job_id IN ({ids})"


@dataclass(slots=True)
class Row:
    """A job with what its row needs beyond the job, computed by `prepare`."""

    job: Job
    digest: str
    raw: str
    created_at: Any


class RowWriter:
    placeholder: ClassVar[str] = "?"
    # INSERT of (job_id, name, description, model, train_mode, created_at, first_seen_at,
    # last_seen_at, raw, content_hash, last_run_id) that, for a stored job, rewrites all but
    # first_seen_at and clears deleted_at.
    upsert_sql: ClassVar[str]

    def stored_time(self, value: datetime) -> Any:
        """A UTC time as the column stores it (SQLite and MariaDB have no zone)."""
        return value.astimezone(UTC).replace(tzinfo=None)

    def sql(self, statement: str, ids: int = 0) -> str:
        marks = ", ".join("?" * ids)
        return statement.format(ids=marks).replace("?", self.placeholder)

    def prepare(self, jobs: Sequence[Job]) -> list[Row]:
        return [
            Row(
                job,
                content_hash(job.raw),
                raw_text(job.raw),
                None if job.created_at is None else self.stored_time(job.created_at),
            )
            for job in jobs
        ]

    def write(
        self,
        connection: Connection,
        rows: list[Row],
        run_id: int,
        now: datetime,
        next_marker: str | None,
        meanwhile: Callable[[], None] | None = None,
        commit: bool = False,
    ) -> Counts:
        driver = connection.connection.driver_connection
        assert driver is not None
        stored_now = self.stored_time(now)
        with driver_errors(connection):
            cursor = driver.cursor()
            try:
                counts = self._write(cursor, rows, run_id, stored_now)
                cursor.execute(
                    self.sql(PROGRESS_SQL),
                    (len(rows), *astuple(counts), next_marker, stored_now, run_id),
                )
                fenced = cursor.rowcount
            finally:
                cursor.close()
        check_fenced(fenced, run_id)
        # `meanwhile` and `commit` are left: sqlite3 and PyMySQL wait for each statement, so
        # neither would save any time.
        return counts

    def _write(self, cursor: Any, rows: list[Row], run_id: int, now: Any) -> Counts:
        if not rows:
            return Counts()
        ids = [row.job.job_id for row in rows]
        cursor.execute(self.sql(STORED_SQL, len(ids)), ids)
        stored = dict(cursor.fetchall())
        new, changed, unchanged = [], [], []
        for row in rows:
            known = stored.get(row.job.job_id)
            if known is None:
                new.append(row)
            elif known != row.digest:
                changed.append(row)
            else:
                unchanged.append(row.job.job_id)
        if new or changed:
            cursor.executemany(
                self.sql(self.upsert_sql),
                [
                    (
                        row.job.job_id,
                        row.job.name,
                        row.job.description,
                        row.job.model,
                        row.job.train_mode,
                        row.created_at,
                        now,
                        now,
                        row.raw,
                        row.digest,
                        run_id,
                    )
                    for row in new + changed
                ],
            )
        if unchanged:
            cursor.execute(self.sql(TOUCH_SQL, len(unchanged)), [now, run_id, *unchanged])
        opened = [(row.job, 1) for row in new]
        opened += self._next_versions(cursor, [row.job for row in changed], now)
        if opened:
            cursor.executemany(
                self.sql(OPEN_SQL),
                [
                    (
                        job.job_id,
                        version,
                        now,
                        job.name,
                        job.description,
                        job.model,
                        job.train_mode,
                        run_id,
                    )
                    for job, version in opened
                ],
            )
        return Counts(len(new), len(changed), len(unchanged))

    def _next_versions(self, cursor: Any, changed: list[Job], now: Any) -> list[tuple[Job, int]]:
        """Close the open version of each changed job whose versioned fields differ, and say
        which version each such job (and each deleted one listed again) opens next."""
        if not changed:
            return []
        cursor.execute(self.sql(VERSIONS_SQL, len(changed)), [job.job_id for job in changed])
        latest: dict[str, tuple[Any, ...]] = {}
        for row in cursor.fetchall():
            if row[0] not in latest or row[1] > latest[row[0]][1]:
                latest[row[0]] = row
        to_open, to_close = [], []
        for job in changed:
            row = latest.get(job.job_id)
            if row is not None and row[2]:  # its newest version is open
                if tuple(row[3:]) == tuple(getattr(job, f) for f in VERSIONED_FIELDS):
                    continue  # only fields outside the version changed (e.g. createTime's format)
                to_close.append((now, job.job_id))
            to_open.append((job, row[1] + 1 if row is not None else 1))
        if to_close:
            cursor.executemany(self.sql(CLOSE_SQL), to_close)
        return to_open
