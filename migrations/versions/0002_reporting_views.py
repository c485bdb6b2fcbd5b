"""Reporting views for SQL and BI tools, with the same names and columns on every dialect.

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

from alembic import op

from qfsync.migrations.resumable import create_view

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The only dialect differences: how to name a month and how old a timestamp is, in seconds.
MONTH = {
    "postgresql": "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM')",
    "mysql": "DATE_FORMAT(created_at, '%Y-%m')",
    "sqlite": "strftime('%Y-%m', created_at)",
}
AGE_S = {
    "postgresql": "CAST(EXTRACT(EPOCH FROM (now() - {0})) AS BIGINT)",
    "mysql": "TIMESTAMPDIFF(SECOND, {0}, UTC_TIMESTAMP(6))",
    "sqlite": "CAST(ROUND((julianday('now') - julianday({0})) * 86400) AS INTEGER)",
}

CURRENT = """
SELECT job_id, name, description, model, train_mode, created_at,
       first_seen_at, last_seen_at, last_run_id
FROM finetuning_jobs
WHERE deleted_at IS NULL
"""

MONTHLY = """
SELECT {month} AS month, model, train_mode,
       COUNT(*) AS jobs_created,
       COUNT(CASE WHEN deleted_at IS NULL THEN 1 END) AS jobs_listed
FROM finetuning_jobs
GROUP BY {month}, model, train_mode
"""

LAST_SUCCESS = "(SELECT MAX(finished_at) FROM sync_runs WHERE status = 'succeeded')"
HEALTH = f"""
SELECT
  (SELECT MAX(id) FROM sync_runs) AS last_run_id,
  (SELECT status FROM sync_runs ORDER BY id DESC LIMIT 1) AS last_run_status,
  (SELECT started_at FROM sync_runs ORDER BY id DESC LIMIT 1) AS last_run_started_at,
  (SELECT MAX(id) FROM sync_runs WHERE status = 'succeeded') AS last_success_run_id,
  {LAST_SUCCESS} AS last_success_at,
  {{age}} AS last_success_age_s,
  (SELECT error FROM sync_runs WHERE status = 'failed' ORDER BY id DESC LIMIT 1) AS last_error,
  (SELECT COUNT(*) FROM sync_runs
   WHERE status = 'failed'
     AND id > COALESCE((SELECT MAX(id) FROM sync_runs WHERE status = 'succeeded'), 0)
  ) AS failures_since_success
"""

VIEWS = ("sync_health", "finetuning_jobs_monthly", "finetuning_jobs_current")


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    dialect = "mysql" if dialect == "mariadb" else dialect
    create_view("finetuning_jobs_current", CURRENT)
    create_view("finetuning_jobs_monthly", MONTHLY.format(month=MONTH[dialect]))
    create_view("sync_health", HEALTH.format(age=AGE_S[dialect].format(LAST_SUCCESS)))


def downgrade() -> None:
    for view in VIEWS:
        op.execute(f"DROP VIEW IF EXISTS {view}")
