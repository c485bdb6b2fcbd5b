"""Migrations: head matches the MetaData on every dialect, and an installed wheel can migrate."""

import os
import subprocess
import sys
import threading
import venv
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from click.testing import CliRunner
from sqlalchemy import inspect, text
from sqlalchemy.exc import OperationalError

from qfsync import db
from qfsync.cli import main
from qfsync.schema import LongText, UtcDateTime, metadata

ROOT = Path(__file__).resolve().parent.parent
VIEWS = {
    "finetuning_jobs_current",
    "finetuning_jobs_monthly",
    "sync_health",
    "sync_scopes",
    "finetuning_tasks_current",
    "finetuning_task_outcomes_monthly",
}


def test_head_matches_metadata(engine):
    """An empty database upgraded to head has exactly the tables, columns and indexes of the
    MetaData (what `alembic check` verifies), plus the reporting views."""
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), metadata)
        assert diff == []
        assert VIEWS <= set(inspect(connection).get_view_names())


# What each dialect must store: unbounded text (MariaDB's TEXT stops at 64 KB) and UTC instants
# with microseconds. Written out rather than compiled from the MetaData, so that a type that
# changes on both sides at once (the MetaData and the migrations that use it) is still caught.
STORED_TYPES = {
    "postgresql": {LongText: "TEXT", UtcDateTime: "TIMESTAMP WITH TIME ZONE"},
    "sqlite": {LongText: "TEXT", UtcDateTime: "DATETIME"},
    "mysql": {LongText: "LONGTEXT", UtcDateTime: "DATETIME(6)"},
}


def test_columns_have_the_storage_types_of_their_dialect(engine):
    """Every long text and timestamp column, migrated to head, has the type its dialect needs."""
    expected = STORED_TYPES[engine.dialect.name]
    inspector = inspect(engine)
    checked = 0
    for table in metadata.tables.values():
        reflected = {column["name"]: column["type"] for column in inspector.get_columns(table.name)}
        for column in table.columns:
            if type(column.type) in expected:
                stored = reflected[column.name].compile(dialect=engine.dialect)
                assert stored == expected[type(column.type)], f"{table.name}.{column.name}"
                checked += 1
    assert checked > 20


def test_schema_head_is_the_newest_migration():
    """db.SCHEMA_HEAD names the head of migrations/versions, the revision a sync checks for."""
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory.from_config(db.alembic_config())
    assert scripts.get_heads() == [db.SCHEMA_HEAD]


def test_unknown_newer_revision_is_refused(engine):
    """A database migrated by a newer qfsync is refused with one clear error, not downgraded."""
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(db.DatabaseError, match="newer qfsync"):
        db.ensure_schema(engine, migrate=True)
    shown = CliRunner().invoke(main, ["db", "current", "--database-url", str(engine.url)])
    assert shown.stdout.startswith("9999 (head ") and "upgrade qfsync" in shown.stdout
    assert "run `qfsync db upgrade`" not in shown.stdout


def test_downgrade_to_base_and_back(engine):
    """Every migration can be undone and redone."""
    from alembic import command

    config = db.alembic_config(engine)
    command.downgrade(config, "base")
    assert db.current_revision(engine) is None
    assert not set(inspect(engine).get_table_names()) - {"alembic_version"}
    command.upgrade(config, "head")
    assert db.current_revision(engine) == db.SCHEMA_HEAD


def test_a_failed_sqlite_upgrade_is_rolled_back_whole(tmp_path):
    """A user's view on sync_runs makes 0003's rebuild of that table fail. The upgrade fails
    whole: the schema stays at 0002 with its views, no half-built table is left behind, and
    once the user's view is gone the next upgrade succeeds. (pysqlite committed each DDL
    statement on its own, which left the schema broken for good.)"""
    from alembic import command

    engine = db.connect(f"sqlite:///{tmp_path / 'q.db'}")
    try:
        command.upgrade(db.alembic_config(engine), "0002")
        with engine.begin() as connection:
            connection.execute(text("CREATE VIEW my_runs AS SELECT id FROM sync_runs"))
        with pytest.raises(OperationalError, match="my_runs"):
            db.upgrade(engine)
        assert db.current_revision(engine) == "0002"
        names = set(inspect(engine).get_table_names()) | set(inspect(engine).get_view_names())
        assert "sync_health" in names and not [n for n in names if "alembic_tmp" in n]
        with engine.begin() as connection:
            connection.execute(text("DROP VIEW my_runs"))
        db.upgrade(engine)
        assert db.current_revision(engine) == db.SCHEMA_HEAD
    finally:
        engine.dispose()


def test_db_commands(database_url):
    """`db current` reports an empty database as behind; `db upgrade` brings it to head."""
    runner = CliRunner()
    before = runner.invoke(main, ["db", "current", "--database-url", database_url])
    assert before.exit_code == 0, before.output
    assert before.stdout.startswith("empty") and "behind" in before.stdout
    upgraded = runner.invoke(main, ["db", "upgrade", "--database-url", database_url])
    assert upgraded.exit_code == 0, upgraded.output
    assert f"to {db.SCHEMA_HEAD}" in upgraded.stdout
    after = runner.invoke(main, ["db", "current", "--database-url", database_url])
    assert "up to date" in after.stdout
    again = runner.invoke(main, ["db", "upgrade", "--database-url", database_url])
    assert "already at" in again.stdout


@pytest.mark.slow
def test_wheel_carries_migrations(tmp_path):
    """A wheel built from the repo, installed in a fresh virtualenv outside the checkout, runs
    `qfsync db upgrade` on SQLite."""
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(ROOT)],
        check=True,
        capture_output=True,
    )
    wheel = next(dist.glob("qfsync-*.whl"))
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    pip = env_dir / "bin" / "pip"
    subprocess.run([pip, "install", "-q", str(wheel)], check=True, capture_output=True)
    work = tmp_path / "elsewhere"
    work.mkdir()
    clean_env = {k: v for k, v in os.environ.items() if not k.startswith(("QFSYNC_", "PYTHON"))}
    result = subprocess.run(
        [env_dir / "bin" / "qfsync", "db", "upgrade", "--database-url", "sqlite:///w.db"],
        cwd=work,
        env=clean_env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert f"to {db.SCHEMA_HEAD}" in result.stdout
    location = subprocess.run(
        [env_dir / "bin" / "python", "-c", "import qfsync.migrations as m; print(m.__file__)"],
        cwd=work,
        env=clean_env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert str(env_dir) in location


def test_new_databases_migrated_from_threads_of_one_process(tmp_path):
    """A host syncing four new databases from four threads: Alembic's proxies are global to
    the process, so unserialised migrations ran each other's DDL on the wrong connection
    (KeyError 'config', 'table already exists'). Each database ends at head, whole."""
    engines = [db.connect(f"sqlite:///{tmp_path / f'q{n}.db'}") for n in range(4)]
    failures: list[BaseException] = []

    def migrate(engine) -> None:
        try:
            db.upgrade(engine)
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=migrate, args=(engine,)) for engine in engines]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert failures == []
        for engine in engines:
            assert db.current_revision(engine) == db.SCHEMA_HEAD
            assert "sync_health" in inspect(engine).get_view_names()
    finally:
        for engine in engines:
            engine.dispose()
