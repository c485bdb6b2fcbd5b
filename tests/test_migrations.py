"""Migrations: head matches the MetaData on every dialect, and an installed wheel can migrate."""

import os
import subprocess
import sys
import threading
import venv
from importlib.resources import files
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from click.testing import CliRunner
from sqlalchemy import inspect, text
from sqlalchemy.exc import OperationalError

from qfsync import db, sqlite_schema
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


def migrated_by_alembic(path: Path, revision: str = "head"):
    """An engine on a new SQLite file brought to `revision` by the migrations themselves."""
    from alembic import command

    engine = db.connect(f"sqlite:///{path}")
    command.upgrade(db.alembic_config(engine), revision)
    return engine


def test_the_sqlite_schema_file_is_what_the_migrations_build(tmp_path):
    """sqlite_schema.sql, which new SQLite files are created from, is the migrations' schema
    at head, statement for statement (`python -m qfsync.sqlite_schema` writes it again)."""
    engine = migrated_by_alembic(tmp_path / "migrated.db")
    try:
        with engine.connect() as connection:
            rendered = sqlite_schema.render(connection)
    finally:
        engine.dispose()
    shipped = files("qfsync").joinpath(sqlite_schema.SCHEMA_FILE).read_text(encoding="utf-8")
    assert rendered == shipped
    assert f"VALUES ('{db.SCHEMA_HEAD}')" in shipped


def test_a_new_sqlite_file_is_created_as_the_migrations_would(tmp_path):
    """A new file created from the schema file holds the very objects, DDL for DDL, that the
    migrations make, and the revision at head, so later migrations apply to it as to any."""
    created = db.connect(f"sqlite:///{tmp_path / 'created.db'}")
    migrated = migrated_by_alembic(tmp_path / "migrated.db")
    query = text("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name")
    try:
        db.upgrade(created)
        with created.connect() as c, migrated.connect() as m:
            assert c.execute(query).all() == m.execute(query).all()
        assert db.current_revision(created) == db.SCHEMA_HEAD
    finally:
        created.dispose()
        migrated.dispose()


def test_a_failed_creation_of_a_new_sqlite_file_leaves_nothing(tmp_path):
    """The schema is created in one transaction: when a statement fails (here a user's table
    of the same name as one of qfsync's, in a file without qfsync's schema), nothing of it is
    left, and the next attempt, once the table is gone, succeeds."""
    engine = db.connect(f"sqlite:///{tmp_path / 'q.db'}")
    try:
        with engine.begin() as connection:
            connection.execute(text("CREATE TABLE sync_runs (mine INTEGER)"))
        with pytest.raises(OperationalError, match="sync_runs"):
            db.upgrade(engine)
        assert inspect(engine).get_table_names() == ["sync_runs"]
        assert inspect(engine).get_view_names() == []
        with engine.begin() as connection:
            connection.execute(text("DROP TABLE sync_runs"))
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
    `qfsync db upgrade` on a new SQLite file (from its schema file) and upgrades an old one
    (with its migrations)."""
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
    # The migrations themselves, from the wheel: an old database upgraded to head.
    upgraded = subprocess.run(
        [env_dir / "bin" / "python", "-c", UPGRADE_FROM_0001],
        cwd=work,
        env=clean_env,
        capture_output=True,
        text=True,
    )
    assert upgraded.returncode == 0, upgraded.stderr
    assert upgraded.stdout.strip() == db.SCHEMA_HEAD


UPGRADE_FROM_0001 = """
from alembic import command
from qfsync import db
engine = db.connect("sqlite:///old.db")
command.upgrade(db.alembic_config(engine), "0001")
db.upgrade(engine)
print(db.current_revision(engine))
"""


def test_databases_upgraded_from_threads_of_one_process(tmp_path):
    """A host syncing four old databases from four threads: Alembic's proxies are global to
    the process, so unserialised migrations ran each other's DDL on the wrong connection
    (KeyError 'config', 'table already exists'). Each database ends at head, whole."""
    # Old, not new: a new SQLite file is created without Alembic (sqlite_schema).
    engines = [migrated_by_alembic(tmp_path / f"q{n}.db", "0001") for n in range(4)]
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
