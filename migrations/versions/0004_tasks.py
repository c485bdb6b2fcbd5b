"""Tasks: each job's runs with their status and history, task counts on sync_runs, two views.

Revision ID: 0004
Revises: 0003
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from qfsync.migrations.resumable import add_column, create_index, create_table, create_view
from qfsync.schema import UtcDateTime

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TASK_COUNTS = (
    ("tasks_seen", "Tasks listed by the API for the jobs whose tasks this run fetched."),
    ("tasks_inserted", "Tasks new to the table."),
    ("tasks_updated", "Tasks whose item or progress changed, or that were listed again."),
    ("tasks_unchanged", "Tasks listed exactly as stored; only last_seen_at was touched."),
    ("tasks_deleted", "Stored tasks that a complete listing of their job no longer had."),
    ("task_requests", "Requests for tasks: task lists and running tasks' progress."),
)
MYSQL_TABLE = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}

# The one dialect difference: how to name the UTC month of a timestamp.
MONTH = {
    "postgresql": "to_char(t.created_at AT TIME ZONE 'UTC', 'YYYY-MM')",
    "mysql": "DATE_FORMAT(t.created_at, '%Y-%m')",
    "sqlite": "strftime('%Y-%m', t.created_at)",
}

CURRENT = """
SELECT t.task_id, t.job_id, j.name AS job_name, j.model, j.train_mode,
       t.parameter_scale, t.run_status, t.run_progress, t.created_at, t.finished_at,
       t.duration_s, t.first_seen_at, t.last_seen_at, t.last_run_id
FROM finetuning_tasks t
JOIN finetuning_jobs j ON j.job_id = t.job_id
WHERE t.deleted_at IS NULL AND j.deleted_at IS NULL
"""

OUTCOMES = """
SELECT {month} AS month, j.model, j.train_mode, t.run_status,
       COUNT(*) AS tasks,
       AVG(t.duration_s) AS avg_duration_s,
       MAX(t.duration_s) AS max_duration_s
FROM finetuning_tasks t
JOIN finetuning_jobs j ON j.job_id = t.job_id
GROUP BY {month}, j.model, j.train_mode, t.run_status
"""

VIEWS = ("finetuning_task_outcomes_monthly", "finetuning_tasks_current")


def create_tables() -> None:
    create_table(
        "finetuning_tasks",
        sa.Column("task_id", sa.String(length=128), nullable=False, comment="Qianfan taskId."),
        sa.Column(
            "job_id",
            sa.String(length=128),
            nullable=False,
            comment="The jobId the task belongs to.",
        ),
        sa.Column(
            "parameter_scale",
            sa.String(length=64),
            nullable=True,
            comment="parameterScale: FullFineTuning, LoRA or PromptTuning.",
        ),
        sa.Column(
            "run_status",
            sa.String(length=32),
            nullable=True,
            comment="runStatus: Running, Done, Stopped, Failed, Waiting; NULL if not started.",
        ),
        sa.Column(
            "run_progress",
            sa.Double(),
            nullable=True,
            comment="runProgress as a number from 0 to 100 while Running; NULL otherwise.",
        ),
        sa.Column(
            "created_at", UtcDateTime(), nullable=True, comment="createDate from the API, UTC."
        ),
        sa.Column(
            "finished_at",
            UtcDateTime(),
            nullable=True,
            comment="finishDate from the API, UTC; NULL while unfinished.",
        ),
        sa.Column(
            "duration_s",
            sa.Double(),
            nullable=True,
            comment="Seconds from created_at to finished_at; NULL while unfinished.",
        ),
        sa.Column(
            "raw", sa.JSON(), nullable=False, comment="The taskList item exactly as received."
        ),
        sa.Column(
            "content_hash",
            sa.String(length=64),
            nullable=False,
            comment="SHA-256 of the item and the progress, to tell unchanged tasks cheaply.",
        ),
        sa.Column(
            "first_seen_at",
            UtcDateTime(),
            nullable=False,
            comment="When a sync first stored the task.",
        ),
        sa.Column(
            "last_seen_at",
            UtcDateTime(),
            nullable=False,
            comment="When a sync last found the task listed.",
        ),
        sa.Column(
            "deleted_at",
            UtcDateTime(),
            nullable=True,
            comment=(
                "When a complete listing of its job's tasks first missed it; NULL while listed."
            ),
        ),
        sa.Column(
            "last_run_id",
            sa.Integer(),
            nullable=False,
            comment="The sync_runs.id that last inserted, changed, saw or deleted the task.",
        ),
        sa.PrimaryKeyConstraint("task_id", name=op.f("pk_finetuning_tasks")),
        comment="Every fine-tuning task (a run of a job) qfsync has seen, one row per task.",
        **MYSQL_TABLE,
    )
    for column in ("job_id", "run_status", "created_at", "finished_at"):
        create_index(op.f(f"ix_finetuning_tasks_{column}"), "finetuning_tasks", [column])

    create_table(
        "finetuning_task_versions",
        sa.Column("task_id", sa.String(length=128), nullable=False, comment="Qianfan taskId."),
        sa.Column(
            "version",
            sa.Integer(),
            autoincrement=False,
            nullable=False,
            comment="1 for the first version seen, then 2, 3, ...",
        ),
        sa.Column(
            "valid_from",
            UtcDateTime(),
            nullable=False,
            comment="When the sync first saw this version.",
        ),
        sa.Column(
            "valid_to",
            UtcDateTime(),
            nullable=True,
            comment="When it was replaced or the task disappeared; NULL for the current version.",
        ),
        sa.Column(
            "run_status",
            sa.String(length=32),
            nullable=True,
            comment="runStatus in this version; NULL if not started.",
        ),
        sa.Column(
            "finished_at", UtcDateTime(), nullable=True, comment="finishDate in this version, UTC."
        ),
        sa.Column(
            "run_id",
            sa.Integer(),
            nullable=False,
            comment="The sync_runs.id that opened the version.",
        ),
        sa.PrimaryKeyConstraint("task_id", "version", name=op.f("pk_finetuning_task_versions")),
        comment="History: one row per distinct (run_status, finished_at) of a task.",
        **MYSQL_TABLE,
    )
    create_index(
        op.f("ix_finetuning_task_versions_valid_from"), "finetuning_task_versions", ["valid_from"]
    )

    create_table(
        "finetuning_task_lists",
        sa.Column("job_id", sa.String(length=128), nullable=False, comment="Qianfan jobId."),
        sa.Column(
            "fetched_at",
            UtcDateTime(),
            nullable=False,
            comment="When a sync last listed all of the job's tasks.",
        ),
        sa.Column(
            "tasks", sa.Integer(), nullable=False, comment="How many tasks that listing held."
        ),
        sa.Column(
            "run_id", sa.Integer(), nullable=False, comment="The sync_runs.id that listed them."
        ),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_finetuning_task_lists")),
        comment="Bookkeeping: when each job's tasks were last listed, so a sync knows what is due.",
        **MYSQL_TABLE,
    )


def upgrade() -> None:
    create_tables()
    for name, comment in TASK_COUNTS:
        # A constant default lets SQLite add a NOT NULL column in place, without rebuilding
        # the table (which the sync_health view depends on); earlier runs count 0.
        add_column(
            "sync_runs",
            sa.Column(name, sa.Integer(), nullable=False, server_default="0", comment=comment),
        )
    dialect = op.get_bind().dialect.name
    dialect = "mysql" if dialect == "mariadb" else dialect
    create_view("finetuning_tasks_current", CURRENT)
    create_view("finetuning_task_outcomes_monthly", OUTCOMES.format(month=MONTH[dialect]))


def downgrade() -> None:
    for view in VIEWS:
        op.execute(f"DROP VIEW IF EXISTS {view}")
    for name, _ in reversed(TASK_COUNTS):
        op.drop_column("sync_runs", name)
    # Dropping a table drops its indexes too.
    for table in ("finetuning_task_lists", "finetuning_task_versions", "finetuning_tasks"):
        op.drop_table(table)
