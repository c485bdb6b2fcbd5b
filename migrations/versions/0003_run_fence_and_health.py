"""Runs record their progress time and any marker; health per mode and scope.

- `sync_runs.progress_at`: when the run last made progress (its start, then each page), so
  that an abandoned run's `finished_at` is when it stopped, not when a later sync noticed.
- `sync_runs.next_marker` holds any marker (text instead of 255 characters).
- `sync_health` adds the last successful full walk; the new view `sync_scopes` has the last
  run and the last success of every mode and scope, so a full sync that fails every night
  shows even while incremental syncs succeed.

Revision ID: 0003
Revises: 0002
"""

import importlib.util
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import sqlalchemy as sa
from alembic import op

from qfsync.migrations.resumable import create_view, missing_column
from qfsync.schema import LongText, UtcDateTime

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _previous() -> ModuleType:
    """Migration 0002, for its dialect snippets and the sync_health a downgrade restores."""
    path = Path(__file__).with_name("0002_reporting_views.py")
    spec = importlib.util.spec_from_file_location("qfsync_migration_0002", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PROGRESS_COMMENT = "When the run last made progress: its start, then each committed page."
MARKER_COMMENT = "Marker of the next page after the last committed one; where a resume starts."
LAST_SUCCESS = "(SELECT MAX(finished_at) FROM sync_runs WHERE status = 'succeeded')"
LAST_FULL_SUCCESS = (
    "(SELECT MAX(finished_at) FROM sync_runs WHERE status = 'succeeded' AND mode = 'full')"
)
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
  ) AS failures_since_success,
  (SELECT MAX(id) FROM sync_runs WHERE status = 'succeeded' AND mode = 'full')
    AS last_full_success_run_id,
  {LAST_FULL_SUCCESS} AS last_full_success_at,
  {{full_age}} AS last_full_success_age_s,
  (SELECT COUNT(*) FROM sync_runs
   WHERE status = 'failed' AND mode = 'full'
     AND id > COALESCE(
       (SELECT MAX(id) FROM sync_runs WHERE status = 'succeeded' AND mode = 'full'), 0)
  ) AS full_failures_since_success
"""

# A scope's filters are NULL for "all"; COALESCE makes them comparable with `=` everywhere.
SAME_SCOPE = """
  f.mode = g.mode
  AND COALESCE(f.train_mode_filter, '') = COALESCE(g.train_mode_filter, '')
  AND COALESCE(f.model_filter, '') = COALESCE(g.model_filter, '')"""
SCOPES = f"""
SELECT g.mode, g.train_mode_filter, g.model_filter,
       g.last_run_id, last.status AS last_run_status, last.started_at AS last_run_started_at,
       g.last_success_run_id, ok.finished_at AS last_success_at,
       {{age}} AS last_success_age_s,
       failed.error AS last_error,
       (SELECT COUNT(*) FROM sync_runs f
        WHERE f.status = 'failed' AND {SAME_SCOPE}
          AND f.id > COALESCE(g.last_success_run_id, 0)) AS failures_since_success
FROM (SELECT mode, train_mode_filter, model_filter,
             MAX(id) AS last_run_id,
             MAX(CASE WHEN status = 'succeeded' THEN id END) AS last_success_run_id,
             MAX(CASE WHEN status = 'failed' THEN id END) AS last_failure_run_id
      FROM sync_runs
      GROUP BY mode, train_mode_filter, model_filter) g
JOIN sync_runs last ON last.id = g.last_run_id
LEFT JOIN sync_runs ok ON ok.id = g.last_success_run_id
LEFT JOIN sync_runs failed ON failed.id = g.last_failure_run_id
"""


def _dialect() -> str:
    name = op.get_bind().dialect.name
    return "mysql" if name == "mariadb" else name


@contextmanager
def _sqlite_views_and_triggers_set_aside() -> Iterator[None]:
    """Around this migration's work on sync_runs. On SQLite `batch_alter_table` builds a new
    table, copies the rows, drops the old one and renames the new: the old table's triggers
    go with it, and any view or trigger that reads it fails the rename ("no such table"). So
    every view and trigger (qfsync's own from 0002, a user's), but the views this migration
    replaces, is set aside until the work is done, then made again from its own SQL in the
    order it was made, as SQLite's own procedure for altering a table does. Meanwhile no
    user's trigger fires on the migration's own UPDATE, as none would on SQLite's ALTER."""
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        yield
        return
    kept = bind.exec_driver_sql(
        "SELECT type, name, sql FROM sqlite_master"
        " WHERE type IN ('view', 'trigger') AND sql IS NOT NULL"
        # The views this migration drops and makes itself, in both directions.
        " AND NOT (type = 'view' AND name IN ('sync_health', 'sync_scopes')) ORDER BY rowid"
    ).all()
    for kind, name, _ in kept:
        quoted = name.replace('"', '""')
        bind.exec_driver_sql(f'DROP {kind.upper()} IF EXISTS "{quoted}"')
    yield
    for _, _, sql in kept:
        bind.exec_driver_sql(sql)


def upgrade() -> None:
    age = _previous().AGE_S[_dialect()]
    with _sqlite_views_and_triggers_set_aside():
        # Made again below, with the new columns. (A failed run of this migration on MariaDB
        # may have dropped it already.)
        op.execute("DROP VIEW IF EXISTS sync_health")
        with op.batch_alter_table("sync_runs") as batch:
            if missing_column("sync_runs", "progress_at"):
                batch.add_column(
                    sa.Column(
                        "progress_at",
                        UtcDateTime(),
                        nullable=True,
                        comment=PROGRESS_COMMENT,
                    )
                )
            batch.alter_column(
                "next_marker",
                existing_type=sa.String(length=255),
                type_=LongText,
                existing_nullable=True,
                existing_comment=MARKER_COMMENT,
            )
        # Older runs recorded no progress time: their end (or start) is the best there is.
        op.execute(
            "UPDATE sync_runs SET progress_at = COALESCE(finished_at, started_at) "
            "WHERE progress_at IS NULL"
        )
        with op.batch_alter_table("sync_runs") as batch:
            batch.alter_column(
                "progress_at",
                existing_type=UtcDateTime(),
                nullable=False,
                existing_comment=PROGRESS_COMMENT,
            )
        create_view(
            "sync_health",
            HEALTH.format(age=age.format(LAST_SUCCESS), full_age=age.format(LAST_FULL_SUCCESS)),
        )
        create_view("sync_scopes", SCOPES.format(age=age.format("ok.finished_at")))


def downgrade() -> None:
    previous = _previous()
    with _sqlite_views_and_triggers_set_aside():
        op.execute("DROP VIEW IF EXISTS sync_scopes")
        op.execute("DROP VIEW IF EXISTS sync_health")
        with op.batch_alter_table("sync_runs") as batch:
            batch.drop_column("progress_at")
            batch.alter_column(
                "next_marker",
                existing_type=LongText,
                type_=sa.String(length=255),
                existing_nullable=True,
                existing_comment=MARKER_COMMENT,
            )
        age = previous.AGE_S[_dialect()]
        create_view("sync_health", previous.HEALTH.format(age=age.format(previous.LAST_SUCCESS)))
