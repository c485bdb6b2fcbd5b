"""The tables, as one SQLAlchemy Core MetaData: the single source for migrations and queries.

Table and column names are a public interface: reports and BI dashboards are built on them.
"""

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Double,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# Options of one dialect (MariaDB's utf8mb4 and utf8mb4_bin, PostgreSQL's fillfactor) are set
# by the migrations alone: given here, they would make SQLAlchemy load every dialect named, about
# 85 ms and 4 MB on every sync of a database of another kind. docs/schema.md describes them.


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on every dialect.

    PostgreSQL stores `timestamptz`; SQLite and MariaDB have no zone, so UTC is stored naive
    there, with microseconds (MariaDB's DATETIME would otherwise drop them).
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        if dialect.name in ("mysql", "mariadb"):
            from sqlalchemy.dialects.mysql import DATETIME

            return dialect.type_descriptor(DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("qfsync stores aware datetimes only")
        value = value.astimezone(UTC)
        return value if dialect.name == "postgresql" else value.replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class LongText(TypeDecorator[str]):
    """Text of any length: MariaDB's TEXT holds only 64 KB, so LONGTEXT there."""

    impl = Text
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        if dialect.name in ("mysql", "mariadb"):
            from sqlalchemy.dialects.mysql import LONGTEXT

            return dialect.type_descriptor(LONGTEXT())
        return super().load_dialect_impl(dialect)


JobId = String(128)


sync_runs = Table(
    "sync_runs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True, comment="Run number."),
    Column("started_at", UtcDateTime, nullable=False, comment="When the run started (UTC)."),
    Column("finished_at", UtcDateTime, comment="When the run ended (UTC); NULL while running."),
    Column("status", String(16), nullable=False, comment="running, succeeded or failed."),
    Column(
        "mode",
        String(16),
        nullable=False,
        default="full",
        comment="full (a complete walk) or incremental (newest first, stops at known jobs).",
    ),
    Column("train_mode_filter", String(128), comment="The trainMode filter; NULL for all."),
    Column("model_filter", String(255), comment="The model filter; NULL for all."),
    Column("page_size", Integer, nullable=False, comment="maxKeys sent on every request."),
    Column("pages", Integer, nullable=False, default=0, comment="Pages committed by this run."),
    Column("jobs_seen", Integer, nullable=False, default=0, comment="Jobs listed by the API."),
    Column("jobs_inserted", Integer, nullable=False, default=0, comment="Jobs new to the table."),
    Column(
        "jobs_updated",
        Integer,
        nullable=False,
        default=0,
        comment="Jobs whose stored fields changed, including jobs listed again after deletion.",
    ),
    Column(
        "jobs_unchanged",
        Integer,
        nullable=False,
        default=0,
        comment="Jobs listed exactly as stored; only last_seen_at was touched.",
    ),
    Column(
        "jobs_deleted",
        Integer,
        nullable=False,
        default=0,
        comment="Stored jobs of this scope that a complete walk no longer found.",
    ),
    Column(
        "next_marker",
        LongText,
        comment="Marker of the next page after the last committed one; where a resume starts.",
    ),
    Column("resumed_from", Integer, comment="The failed run whose walk this run continued."),
    Column(
        "walk_started_at",
        UtcDateTime,
        nullable=False,
        comment="Start of the walk this run belongs to (earlier than started_at if resumed).",
    ),
    Column(
        "complete",
        Boolean,
        nullable=False,
        default=False,
        comment="True when the walk reached the last page.",
    ),
    Column(
        "progress_at",
        UtcDateTime,
        nullable=False,
        comment="When the run last made progress: its start, then each committed page.",
    ),
    Column("error", LongText, comment="Why the run failed; NULL otherwise."),
    Column("host", String(255), comment="Host name of the machine that ran the sync."),
    Column("pid", Integer, comment="Process id of the sync."),
    Column("qfsync_version", String(32), nullable=False, comment="qfsync version that ran."),
    *(
        Column(name, Integer, nullable=False, default=0, server_default="0", comment=comment)
        for name, comment in (
            ("tasks_seen", "Tasks listed by the API for the jobs whose tasks this run fetched."),
            ("tasks_inserted", "Tasks new to the table."),
            ("tasks_updated", "Tasks whose item or progress changed, or that were listed again."),
            ("tasks_unchanged", "Tasks listed exactly as stored; only last_seen_at was touched."),
            ("tasks_deleted", "Stored tasks that a complete listing of their job no longer had."),
            ("task_requests", "Requests for tasks: task lists and running tasks' progress."),
        )
    ),
    Index(None, "started_at"),
    Index(None, "status", "finished_at"),
    Index(None, "train_mode_filter", "model_filter", "mode", "started_at"),
    comment="One row per qfsync sync run: its scope, progress, counts and outcome.",
)

finetuning_jobs = Table(
    "finetuning_jobs",
    metadata,
    Column("job_id", JobId, primary_key=True, comment="Qianfan jobId."),
    Column("name", LongText, comment="Job name as listed."),
    Column("description", LongText, comment="Job description as listed."),
    Column("model", String(255), comment="Base model version, e.g. ERNIE-Speed-8K."),
    Column("train_mode", String(128), comment="Training mode, e.g. SFT, PostPretrain, DPO, KTO."),
    Column("created_at", UtcDateTime, comment="createTime (or createDate) from the API, UTC."),
    Column(
        "first_seen_at", UtcDateTime, nullable=False, comment="When a sync first stored the job."
    ),
    Column(
        "last_seen_at",
        UtcDateTime,
        nullable=False,
        comment="When a sync last found the job listed.",
    ),
    Column(
        "deleted_at",
        UtcDateTime,
        comment="When a complete walk first missed the job; NULL while the API lists it.",
    ),
    Column("raw", JSON, nullable=False, comment="The jobList item exactly as received."),
    Column(
        "content_hash",
        String(64),
        nullable=False,
        comment="SHA-256 of the item, to tell unchanged jobs without comparing every field.",
    ),
    Column(
        "last_run_id",
        Integer,
        nullable=False,
        comment="The sync_runs.id that last inserted, changed, saw or deleted the job.",
    ),
    Index(None, "model", "train_mode"),
    Index(None, "created_at"),
    Index(None, "deleted_at"),
    comment="Every fine-tuning job qfsync has seen, one row per job, current state.",
    # On PostgreSQL with fillfactor 50 (migration 0005): every sync touches every listed job's
    # last_seen_at, and with that column unindexed and room left in each page for a new version
    # of each of its rows, PostgreSQL updates the row in place (a HOT update) instead of writing
    # a new tuple and an entry in every index.
)

finetuning_job_versions = Table(
    "finetuning_job_versions",
    metadata,
    Column("job_id", JobId, primary_key=True, comment="Qianfan jobId."),
    Column(
        "version",
        Integer,
        primary_key=True,
        autoincrement=False,
        comment="1 for the first version seen, then 2, 3, ...",
    ),
    Column(
        "valid_from", UtcDateTime, nullable=False, comment="When the sync first saw this version."
    ),
    Column(
        "valid_to",
        UtcDateTime,
        comment="When it was replaced or the job disappeared; NULL for the current version.",
    ),
    Column("name", LongText, comment="Job name in this version."),
    Column("description", LongText, comment="Job description in this version."),
    Column("model", String(255), comment="Base model in this version."),
    Column("train_mode", String(128), comment="Training mode in this version."),
    Column("run_id", Integer, nullable=False, comment="The sync_runs.id that opened the version."),
    Index(None, "valid_from"),
    comment="History: one row per distinct (name, description, model, train_mode) of a job.",
)

VERSIONED_FIELDS = ("name", "description", "model", "train_mode")

TaskId = String(128)

finetuning_tasks = Table(
    "finetuning_tasks",
    metadata,
    Column("task_id", TaskId, primary_key=True, comment="Qianfan taskId."),
    Column("job_id", JobId, nullable=False, comment="The jobId the task belongs to."),
    Column(
        "parameter_scale",
        String(64),
        comment="parameterScale: FullFineTuning, LoRA or PromptTuning.",
    ),
    Column(
        "run_status",
        String(32),
        comment="runStatus: Running, Done, Stopped, Failed, Waiting; NULL if not started.",
    ),
    Column(
        "run_progress",
        Double,
        comment="runProgress as a number from 0 to 100 while Running; NULL otherwise.",
    ),
    Column("created_at", UtcDateTime, comment="createDate from the API, UTC."),
    Column(
        "finished_at", UtcDateTime, comment="finishDate from the API, UTC; NULL while unfinished."
    ),
    Column(
        "duration_s",
        Double,
        comment="Seconds from created_at to finished_at; NULL while unfinished.",
    ),
    Column("raw", JSON, nullable=False, comment="The taskList item exactly as received."),
    Column(
        "content_hash",
        String(64),
        nullable=False,
        comment="SHA-256 of the item and the progress, to tell unchanged tasks cheaply.",
    ),
    Column(
        "first_seen_at", UtcDateTime, nullable=False, comment="When a sync first stored the task."
    ),
    Column(
        "last_seen_at",
        UtcDateTime,
        nullable=False,
        comment="When a sync last found the task listed.",
    ),
    Column(
        "deleted_at",
        UtcDateTime,
        comment="When a complete listing of its job's tasks first missed it; NULL while listed.",
    ),
    Column(
        "last_run_id",
        Integer,
        nullable=False,
        comment="The sync_runs.id that last inserted, changed, saw or deleted the task.",
    ),
    Index(None, "job_id"),
    Index(None, "run_status"),
    Index(None, "created_at"),
    Index(None, "finished_at"),
    comment="Every fine-tuning task (a run of a job) qfsync has seen, one row per task.",
)

finetuning_task_versions = Table(
    "finetuning_task_versions",
    metadata,
    Column("task_id", TaskId, primary_key=True, comment="Qianfan taskId."),
    Column(
        "version",
        Integer,
        primary_key=True,
        autoincrement=False,
        comment="1 for the first version seen, then 2, 3, ...",
    ),
    Column(
        "valid_from", UtcDateTime, nullable=False, comment="When the sync first saw this version."
    ),
    Column(
        "valid_to",
        UtcDateTime,
        comment="When it was replaced or the task disappeared; NULL for the current version.",
    ),
    Column("run_status", String(32), comment="runStatus in this version; NULL if not started."),
    Column("finished_at", UtcDateTime, comment="finishDate in this version, UTC."),
    Column("run_id", Integer, nullable=False, comment="The sync_runs.id that opened the version."),
    Index(None, "valid_from"),
    comment="History: one row per distinct (run_status, finished_at) of a task.",
)

finetuning_task_lists = Table(
    "finetuning_task_lists",
    metadata,
    Column("job_id", JobId, primary_key=True, comment="Qianfan jobId."),
    Column(
        "fetched_at",
        UtcDateTime,
        nullable=False,
        comment="When a sync last listed all of the job's tasks.",
    ),
    Column("tasks", Integer, nullable=False, comment="How many tasks that listing held."),
    Column("run_id", Integer, nullable=False, comment="The sync_runs.id that listed them."),
    comment="Bookkeeping: when each job's tasks were last listed, so a sync knows what is due.",
)

TASK_VERSIONED_FIELDS = ("run_status", "finished_at")
