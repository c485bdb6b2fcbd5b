"""Initial schema: jobs, their versions, and sync runs.

Revision ID: 0001
Revises:
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from qfsync.migrations.resumable import create_index, create_table
from qfsync.schema import LongText, UtcDateTime

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    create_table(
        "finetuning_job_versions",
        sa.Column("job_id", sa.String(length=128), nullable=False, comment="Qianfan jobId."),
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
            comment="When it was replaced or the job disappeared; NULL for the current version.",
        ),
        sa.Column("name", LongText, nullable=True, comment="Job name in this version."),
        sa.Column(
            "description", LongText, nullable=True, comment="Job description in this version."
        ),
        sa.Column(
            "model", sa.String(length=255), nullable=True, comment="Base model in this version."
        ),
        sa.Column(
            "train_mode",
            sa.String(length=128),
            nullable=True,
            comment="Training mode in this version.",
        ),
        sa.Column(
            "run_id",
            sa.Integer(),
            nullable=False,
            comment="The sync_runs.id that opened the version.",
        ),
        sa.PrimaryKeyConstraint("job_id", "version", name=op.f("pk_finetuning_job_versions")),
        comment="History: one row per distinct (name, description, model, train_mode) of a job.",
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
    )
    create_index(
        op.f("ix_finetuning_job_versions_valid_from"), "finetuning_job_versions", ["valid_from"]
    )

    create_table(
        "finetuning_jobs",
        sa.Column("job_id", sa.String(length=128), nullable=False, comment="Qianfan jobId."),
        sa.Column("name", LongText, nullable=True, comment="Job name as listed."),
        sa.Column("description", LongText, nullable=True, comment="Job description as listed."),
        sa.Column(
            "model",
            sa.String(length=255),
            nullable=True,
            comment="Base model version, e.g. ERNIE-Speed-8K.",
        ),
        sa.Column(
            "train_mode",
            sa.String(length=128),
            nullable=True,
            comment="Training mode, e.g. SFT, PostPretrain, DPO, KTO.",
        ),
        sa.Column(
            "created_at",
            UtcDateTime(),
            nullable=True,
            comment="createTime (or createDate) from the API, UTC.",
        ),
        sa.Column(
            "first_seen_at",
            UtcDateTime(),
            nullable=False,
            comment="When a sync first stored the job.",
        ),
        sa.Column(
            "last_seen_at",
            UtcDateTime(),
            nullable=False,
            comment="When a sync last found the job listed.",
        ),
        sa.Column(
            "deleted_at",
            UtcDateTime(),
            nullable=True,
            comment="When a complete walk first missed the job; NULL while the API lists it.",
        ),
        sa.Column(
            "raw", sa.JSON(), nullable=False, comment="The jobList item exactly as received."
        ),
        sa.Column(
            "content_hash",
            sa.String(length=64),
            nullable=False,
            comment="SHA-256 of the item, to tell unchanged jobs without comparing every field.",
        ),
        sa.Column(
            "last_run_id",
            sa.Integer(),
            nullable=False,
            comment="The sync_runs.id that last inserted, changed, saw or deleted the job.",
        ),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_finetuning_jobs")),
        comment="Every fine-tuning job qfsync has seen, one row per job, current state.",
        postgresql_with={"fillfactor": 70},
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
    )
    create_index(op.f("ix_finetuning_jobs_created_at"), "finetuning_jobs", ["created_at"])
    create_index(op.f("ix_finetuning_jobs_deleted_at"), "finetuning_jobs", ["deleted_at"])
    create_index(
        op.f("ix_finetuning_jobs_model_train_mode"), "finetuning_jobs", ["model", "train_mode"]
    )

    create_table(
        "sync_runs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False, comment="Run number."),
        sa.Column(
            "started_at", UtcDateTime(), nullable=False, comment="When the run started (UTC)."
        ),
        sa.Column(
            "finished_at",
            UtcDateTime(),
            nullable=True,
            comment="When the run ended (UTC); NULL while running.",
        ),
        sa.Column(
            "status", sa.String(length=16), nullable=False, comment="running, succeeded or failed."
        ),
        sa.Column(
            "mode",
            sa.String(length=16),
            nullable=False,
            comment="full (a complete walk) or incremental (newest first, stops at known jobs).",
        ),
        sa.Column(
            "train_mode_filter",
            sa.String(length=128),
            nullable=True,
            comment="The trainMode filter; NULL for all.",
        ),
        sa.Column(
            "model_filter",
            sa.String(length=255),
            nullable=True,
            comment="The model filter; NULL for all.",
        ),
        sa.Column(
            "page_size", sa.Integer(), nullable=False, comment="maxKeys sent on every request."
        ),
        sa.Column("pages", sa.Integer(), nullable=False, comment="Pages committed by this run."),
        sa.Column("jobs_seen", sa.Integer(), nullable=False, comment="Jobs listed by the API."),
        sa.Column("jobs_inserted", sa.Integer(), nullable=False, comment="Jobs new to the table."),
        sa.Column(
            "jobs_updated",
            sa.Integer(),
            nullable=False,
            comment="Jobs whose stored fields changed, including jobs listed again after deletion.",
        ),
        sa.Column(
            "jobs_unchanged",
            sa.Integer(),
            nullable=False,
            comment="Jobs listed exactly as stored; only last_seen_at was touched.",
        ),
        sa.Column(
            "jobs_deleted",
            sa.Integer(),
            nullable=False,
            comment="Stored jobs of this scope that a complete walk no longer found.",
        ),
        sa.Column(
            "next_marker",
            sa.String(length=255),
            nullable=True,
            comment="Marker of the next page after the last committed one; where a resume starts.",
        ),
        sa.Column(
            "resumed_from",
            sa.Integer(),
            nullable=True,
            comment="The failed run whose walk this run continued.",
        ),
        sa.Column(
            "walk_started_at",
            UtcDateTime(),
            nullable=False,
            comment="Start of the walk this run belongs to (earlier than started_at if resumed).",
        ),
        sa.Column(
            "complete",
            sa.Boolean(),
            nullable=False,
            comment="True when the walk reached the last page.",
        ),
        sa.Column("error", LongText, nullable=True, comment="Why the run failed; NULL otherwise."),
        sa.Column(
            "host",
            sa.String(length=255),
            nullable=True,
            comment="Host name of the machine that ran the sync.",
        ),
        sa.Column("pid", sa.Integer(), nullable=True, comment="Process id of the sync."),
        sa.Column(
            "qfsync_version",
            sa.String(length=32),
            nullable=False,
            comment="qfsync version that ran.",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sync_runs")),
        comment="One row per qfsync sync run: its scope, progress, counts and outcome.",
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
    )
    create_index(op.f("ix_sync_runs_started_at"), "sync_runs", ["started_at"])
    create_index(op.f("ix_sync_runs_status_finished_at"), "sync_runs", ["status", "finished_at"])
    create_index(
        op.f("ix_sync_runs_train_mode_filter_model_filter_mode_started_at"),
        "sync_runs",
        ["train_mode_filter", "model_filter", "mode", "started_at"],
    )


def downgrade() -> None:
    # Dropping a table drops its indexes too.
    op.drop_table("sync_runs")
    op.drop_table("finetuning_jobs")
    op.drop_table("finetuning_job_versions")
