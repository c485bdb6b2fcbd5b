"""SQLite: short statements through `executemany`, which sqlite3 prepares once per page.

Times are stored as SQLAlchemy's SQLite DATETIME stores them (naive UTC text with
microseconds), so rows written here read back exactly like rows written through SQLAlchemy.
"""

from datetime import UTC, datetime

from .rows import RowWriter


class SqliteWriter(RowWriter):
    placeholder = "?"
    upsert_sql = (
        "INSERT INTO finetuning_jobs (job_id, name, description, model, train_mode, created_at,"
        " first_seen_at, last_seen_at, raw, content_hash, last_run_id)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (job_id) DO UPDATE SET name = excluded.name,"
        " description = excluded.description, model = excluded.model,"
        " train_mode = excluded.train_mode, created_at = excluded.created_at,"
        " raw = excluded.raw, content_hash = excluded.content_hash,"
        " last_seen_at = excluded.last_seen_at, deleted_at = NULL,"
        " last_run_id = excluded.last_run_id"
    )

    def stored_time(self, value: datetime) -> str:
        # isoformat is several times faster than strftime and gives the same text here.
        return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")
