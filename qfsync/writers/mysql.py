"""MariaDB/MySQL: PyMySQL's `executemany` sends an INSERT's rows as one multi-row statement.

Times go in as naive UTC datetimes, which PyMySQL renders with microseconds for DATETIME(6).
"""

from .rows import RowWriter


class MysqlWriter(RowWriter):
    placeholder = "%s"
    upsert_sql = (
        "INSERT INTO finetuning_jobs (job_id, name, description, model, train_mode, created_at,"
        " first_seen_at, last_seen_at, raw, content_hash, last_run_id)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON DUPLICATE KEY UPDATE name = VALUES(name), description = VALUES(description),"
        " model = VALUES(model), train_mode = VALUES(train_mode),"
        " created_at = VALUES(created_at), raw = VALUES(raw),"
        " content_hash = VALUES(content_hash), last_seen_at = VALUES(last_seen_at),"
        " deleted_at = NULL, last_run_id = VALUES(last_run_id)"
    )
