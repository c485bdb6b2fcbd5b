"""Migrations: head matches the MetaData on every dialect, and an installed wheel can migrate."""

import os
import re
import subprocess
import sys
import threading
import uuid
import venv
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.resources import files
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from click.testing import CliRunner
from sqlalchemy import create_engine, event, inspect, text

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


# What makes 0003 fail where it rolls back: PostgreSQL cannot change the type of a column that
# a view reads; on SQLite a user's view of a name 0003 creates, found after sync_runs is rebuilt.
BLOCKERS = {
    "sqlite": ("CREATE VIEW sync_scopes AS SELECT 1 AS mine", "DROP VIEW sync_scopes"),
    "postgresql": (
        "CREATE VIEW my_runs AS SELECT id, next_marker FROM sync_runs",
        "DROP VIEW my_runs",
    ),
}


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_a_failed_upgrade_is_rolled_back_whole(database_url):
    """A user's view makes 0003 fail (see BLOCKERS). The failed revision is rolled back whole:
    the schema stays at 0002 with its views, without 0003's column or a half-built table, and
    once the user's view is gone the next upgrade succeeds. (pysqlite committed each DDL
    statement on its own, which left the schema broken for good.)"""
    engine = migrated_by_alembic(database_url, "0002")
    create, drop = BLOCKERS[engine.dialect.name]
    try:
        with engine.begin() as connection:
            connection.execute(text(create))
        with pytest.raises(db.DatabaseError, match="upgrading the schema from 0002 to 0005"):
            db.ensure_schema(engine, migrate=True)
        assert db.current_revision(engine) == "0002"
        inspector = inspect(engine)
        names = set(inspector.get_table_names()) | set(inspector.get_view_names())
        assert "sync_health" in names and not [n for n in names if "alembic_tmp" in n]
        assert "progress_at" not in {
            column["name"] for column in inspector.get_columns("sync_runs")
        }
        with engine.begin() as connection:
            connection.execute(text(drop))
        db.upgrade(engine)
        assert db.current_revision(engine) == db.SCHEMA_HEAD
    finally:
        engine.dispose()


# A user's objects at 0002, which 0003's rebuild of sync_runs on SQLite must leave as they were.
USERS_OBJECTS = (
    "CREATE TABLE run_audit (run_id INTEGER, event TEXT)",
    "CREATE TRIGGER audit_inserts AFTER INSERT ON sync_runs"
    " BEGIN INSERT INTO run_audit VALUES (new.id, new.status); END",
    # Reads sync_health, which 0003 drops and makes again after its UPDATE of every run.
    "CREATE TRIGGER audit_updates AFTER UPDATE ON sync_runs"
    " BEGIN INSERT INTO run_audit SELECT new.id, last_run_status FROM sync_health; END",
    "CREATE VIEW my_runs AS SELECT id, next_marker FROM sync_runs",
    'CREATE TRIGGER "health, written" INSTEAD OF INSERT ON sync_health BEGIN SELECT 1; END',
)
USERS_NAMES = ("audit_inserts", "audit_updates", "my_runs", "health, written")
OLD_RUN = (
    "INSERT INTO sync_runs (started_at, finished_at, status, mode, page_size, pages, jobs_seen,"
    " jobs_inserted, jobs_updated, jobs_unchanged, jobs_deleted, walk_started_at, complete,"
    " qfsync_version) VALUES ('2026-01-01 00:00:00', '2026-01-01 00:01:00', 'succeeded',"
    " 'full', 100, 1, 0, 0, 0, 0, 0, '2026-01-01 00:00:00', 1, 'old')"
)


def users_objects(connection) -> list:
    query = "SELECT type, name, sql FROM sqlite_master WHERE name IN ({})".format(
        ", ".join("?" * len(USERS_NAMES))
    )
    return sorted(connection.exec_driver_sql(query, USERS_NAMES).all())


def test_a_sqlite_upgrade_that_rebuilds_sync_runs_keeps_a_users_views_and_triggers(
    tmp_path, fake_api, run_sync
):
    """0003 rebuilds sync_runs on SQLite, which dropped a user's triggers on it and failed on
    a user's view of it. They are made again as they were, and work: the insert trigger fires
    for the next sync's run, and the view reads the new table. None fires on the migration's
    own UPDATE of the runs before it (the update trigger reads sync_health, which 0003 has
    dropped by then), and an INSTEAD OF trigger on sync_health, a view 0003 replaces, is kept."""
    url = f"sqlite:///{tmp_path / 'q.db'}"
    engine = migrated_by_alembic(url, "0002")
    try:
        with engine.begin() as connection:
            connection.execute(text(OLD_RUN))
            for statement in USERS_OBJECTS:
                connection.exec_driver_sql(statement)
            before = users_objects(connection)
        assert len(before) == len(USERS_NAMES)
        result = run_sync(engine, fake_api(120))  # the sync upgrades the schema first
        with engine.connect() as connection:
            assert users_objects(connection) == before
            audited = connection.execute(text("SELECT run_id, event FROM run_audit")).all()
            mine = connection.execute(text("SELECT id FROM my_runs")).scalars().all()
        # The sync's own updates of its run fire the update trigger; the migration's did not.
        assert audited[0] == (result.run_id, "running")
        assert {run_id for run_id, _ in audited} == {result.run_id}
        assert mine == [1, result.run_id]
        assert db.current_revision(engine) == db.SCHEMA_HEAD
    finally:
        engine.dispose()


def test_alembic_run_by_hand_on_sqlite_rolls_a_failed_revision_back_whole(tmp_path, monkeypatch):
    """`alembic downgrade` run by hand (migrations/env.py's own engine) migrates in
    transactions that hold DDL, as qfsync does: a downgrade of 0003 that fails (a table left
    by an earlier failed rebuild is in its way) leaves every view and trigger, the user's and
    qfsync's, as they were. On plain pysqlite each DROP committed at once, and they were lost."""
    from alembic import command

    url = f"sqlite:///{tmp_path / 'q.db'}"
    engine = migrated_by_alembic(url, "0003")
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql("CREATE TABLE _alembic_tmp_sync_runs (id INTEGER)")
            connection.exec_driver_sql(USERS_OBJECTS[0])
            connection.exec_driver_sql(USERS_OBJECTS[1])
            connection.exec_driver_sql(USERS_OBJECTS[3])
            everything = "SELECT type, name, sql FROM sqlite_master ORDER BY name"
            before = connection.exec_driver_sql(everything).all()
        monkeypatch.setenv("QFSYNC_DATABASE_URL", url)
        with pytest.raises(Exception, match="_alembic_tmp_sync_runs already exists"):
            command.downgrade(db.alembic_config(), "0002")
        with engine.connect() as connection:
            assert connection.exec_driver_sql(everything).all() == before
        assert db.current_revision(engine) == "0003"
    finally:
        engine.dispose()


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_a_users_view_of_a_name_a_migration_creates_fails_it(database_url):
    """Where a failed migration rolls back whole, a view it finds already there is not one it
    left behind: it is the user's, and the migration fails rather than replace it (as it
    failed before the migrations were made resumable for MariaDB)."""
    engine = migrated_by_alembic(database_url, "0003")
    try:
        with engine.begin() as connection:
            connection.execute(text("CREATE VIEW finetuning_tasks_current AS SELECT 1 AS mine"))
        with pytest.raises(db.DatabaseError, match="from 0003 to .*finetuning_tasks_current"):
            db.ensure_schema(engine, migrate=True)
        assert db.current_revision(engine) == "0003"
        with engine.connect() as connection:
            mine = connection.execute(text("SELECT * FROM finetuning_tasks_current"))
            assert list(mine.keys()) == ["mine"]
    finally:
        engine.dispose()


def migrated_by_alembic(url: str, revision: str = "head"):
    """An engine on the database at `url` brought to `revision` by the migrations themselves
    (a new SQLite file would otherwise get the schema file, not the migrations)."""
    from alembic import command

    engine = db.connect(url)
    command.upgrade(db.alembic_config(engine), revision)
    return engine


def test_the_sqlite_schema_file_is_what_the_migrations_build(tmp_path):
    """sqlite_schema.sql, which new SQLite files are created from, is the migrations' schema
    at head, statement for statement (`python -m qfsync.sqlite_schema` writes it again)."""
    engine = migrated_by_alembic(f"sqlite:///{tmp_path / 'migrated.db'}")
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
    migrated = migrated_by_alembic(f"sqlite:///{tmp_path / 'migrated.db'}")
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
        with pytest.raises(db.DatabaseError, match="from empty to .*sync_runs"):
            db.ensure_schema(engine, migrate=True)
        assert inspect(engine).get_table_names() == ["sync_runs"]
        assert inspect(engine).get_view_names() == []
        with engine.begin() as connection:
            connection.execute(text("DROP TABLE sync_runs"))
        db.upgrade(engine)
        assert db.current_revision(engine) == db.SCHEMA_HEAD
    finally:
        engine.dispose()


def test_a_sqlite_file_downgraded_to_base_is_upgraded_by_the_migrations(tmp_path):
    """`alembic downgrade base` leaves alembic_version empty: the file has no revision, yet it
    is not new. The migrations upgrade it, as before; the schema file, whose first statement
    creates alembic_version, failed on every later sync ("table alembic_version already
    exists")."""
    from alembic import command

    engine = migrated_by_alembic(f"sqlite:///{tmp_path / 'q.db'}")
    try:
        command.downgrade(db.alembic_config(engine), "base")
        assert db.current_revision(engine) is None
        assert db.ensure_schema(engine, migrate=True) == (
            f"upgraded the database schema from empty to {db.SCHEMA_HEAD}"
        )
        assert db.current_revision(engine) == db.SCHEMA_HEAD
        assert VIEWS <= set(inspect(engine).get_view_names())
    finally:
        engine.dispose()


@contextmanager
def mariadb_user_without(database_url: str, privilege: str) -> Iterator[tuple[str, Callable]]:
    """A user with every privilege on the database but one; yields its URL and a function
    that grants that one too. The user is dropped afterwards."""
    url = db.parse_url(database_url)
    user = f"qfsync_t_{uuid.uuid4().hex[:8]}"
    on, to = f"ON `{url.database}`.*", f"'{user}'@'%'"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")

    def grant() -> None:
        with admin.connect() as connection:
            connection.execute(text(f"GRANT {privilege} {on} TO {to}"))

    try:
        with admin.connect() as connection:
            connection.execute(text(f"CREATE USER {to} IDENTIFIED BY '{user}'"))
            connection.execute(text(f"GRANT ALL PRIVILEGES {on} TO {to}"))
            connection.execute(text(f"REVOKE {privilege} {on} FROM {to}"))
        yield url.set(username=user, password=user).render_as_string(hide_password=False), grant
    finally:
        with admin.connect() as connection:
            connection.execute(text(f"DROP USER IF EXISTS {to}"))
        admin.dispose()


def write_rows_of_0002(engine) -> None:
    """A job and the run that stored it, as qfsync wrote them at revision 0002."""
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO sync_runs (id, started_at, finished_at, status, mode, page_size, "
                "pages, jobs_seen, jobs_inserted, jobs_updated, jobs_unchanged, jobs_deleted, "
                "walk_started_at, complete, qfsync_version) VALUES (1, '2024-05-01 10:00:00', "
                "'2024-05-01 10:01:00', 'succeeded', 'full', 100, 1, 1, 1, 0, 0, 0, "
                "'2024-05-01 10:00:00', 1, '0.9')"
            )
        )
        connection.execute(
            text(
                "INSERT INTO finetuning_jobs (job_id, name, first_seen_at, last_seen_at, raw, "
                "content_hash, last_run_id) VALUES ('job-before', 'kept', "
                "'2024-05-01 10:00:30', '2024-05-01 10:00:30', '{}', :hash, 1)"
            ),
            {"hash": "0" * 64},
        )


@pytest.mark.parametrize(
    ("start", "privilege"),
    [
        (None, "INDEX"),  # 0001 stops after its first table
        ("0002", "CREATE VIEW"),  # 0003 after dropping sync_health and altering sync_runs
        ("0003", "CREATE VIEW"),  # 0004 after its tables, their indexes and its columns
        ("0003", "ALTER"),  # 0004 after its tables and their indexes
    ],
)
@pytest.mark.parametrize("database_url", ["mysql"], indirect=True)
def test_a_mariadb_sync_denied_partway_through_a_migration_carries_on_once_granted(
    database_url, start, privilege, fake_api, api_env
):
    """MariaDB keeps the DDL a migration ran before a statement its user may not run. The
    sync fails with one line that says so; once the privilege is granted the next sync
    upgrades to head over what the failed one left, and the rows written before are kept."""
    from alembic import command

    api_env(fake_api(jobs=5))
    root = db.connect(database_url)
    try:
        if start is not None:
            command.upgrade(db.alembic_config(root), "0002")
            write_rows_of_0002(root)
            command.upgrade(db.alembic_config(root), start)
        with mariadb_user_without(database_url, privilege) as (url, grant):
            denied = CliRunner().invoke(main, ["sync", "--tasks", "--database-url", url])
            assert denied.exit_code == 1, denied.output
            [line] = denied.stderr.splitlines()
            assert f"upgrading the schema from {start or 'empty'} to {db.SCHEMA_HEAD}" in line
            assert f"{privilege} command denied" in line and "carries on" in line, line
            assert db.current_revision(root) == start
            grant()
            synced = CliRunner().invoke(main, ["sync", "--tasks", "--database-url", url])
            assert synced.exit_code == 0, synced.output
        assert db.current_revision(root) == db.SCHEMA_HEAD
        with root.connect() as connection:
            assert compare_metadata(MigrationContext.configure(connection), metadata) == []
            assert VIEWS <= set(inspect(connection).get_view_names())
            jobs = connection.scalar(text("SELECT COUNT(*) FROM finetuning_jobs"))
            runs = connection.execute(text("SELECT id, status FROM sync_runs ORDER BY id")).all()
            kept = connection.execute(
                text("SELECT name FROM finetuning_jobs WHERE job_id = 'job-before'")
            ).all()
        if start is None:
            assert (jobs, runs) == (5, [(1, "succeeded")])
        else:
            assert (jobs, kept) == (6, [("kept",)])
            assert runs == [(1, "succeeded"), (2, "succeeded")]
    finally:
        root.dispose()


class Cut:
    """Watches an engine's statements that change the database (the inspector's only read),
    counting them, noting the revision each alembic_version write records, and killing the
    connection, as a server restart or a DBA would, just before the `at`-th if set."""

    WRITES = ("CREATE", "ALTER", "DROP", "INSERT", "UPDATE", "DELETE")

    def __init__(self, engine, admin) -> None:
        self.admin = admin
        self.arm(None)
        event.listen(engine, "before_cursor_execute", self.before)

    def arm(self, at: int | None) -> None:
        self.at, self.sent, self.recorded = at, 0, []

    def before(self, connection, cursor, statement, *_) -> None:
        if not statement.lstrip().upper().startswith(self.WRITES):
            return
        self.sent += 1
        if self.sent == self.at:
            with self.admin.connect() as other:
                other.execute(text(f"KILL CONNECTION {cursor.connection.thread_id()}"))
        elif statement.startswith(("INSERT INTO alembic_version", "UPDATE alembic_version")):
            # ... VALUES ('0001') ... or ... SET version_num='0002' WHERE ...
            self.recorded.append((self.sent, re.search(r"'(\w+)'", statement)[1]))


def mariadb_schema(engine) -> dict[str, str]:
    """Every table and view as the server shows its CREATE statement."""
    with engine.connect() as connection:
        shown = {}
        for name, kind in connection.execute(text("SHOW FULL TABLES")).all():
            show = "VIEW" if kind == "VIEW" else "TABLE"
            shown[name] = connection.execute(text(f"SHOW CREATE {show} `{name}`")).one()[1]
        return shown


@pytest.mark.parametrize("database_url", ["mysql"], indirect=True)
def test_a_mariadb_upgrade_cut_short_before_any_statement_is_carried_on(database_url):
    """An upgrade of an empty database loses its connection just before each statement that
    changes the schema, in turn. MariaDB keeps what ran before it; every revision done is
    recorded; and the next upgrade leaves exactly the schema an uninterrupted one makes.
    (Every statement of every migration: a new one written with plain `op` fails here.)"""
    url = db.parse_url(database_url)
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    engine = db.connect(database_url)
    cut = Cut(engine, admin)
    try:
        db.upgrade(engine)
        whole, statements, recorded = mariadb_schema(engine), cut.sent, cut.recorded
        stuck = []
        for at in range(1, statements + 1):
            with admin.connect() as connection:
                connection.execute(text(f"DROP DATABASE `{url.database}`"))
                connection.execute(text(f"CREATE DATABASE `{url.database}` CHARACTER SET utf8mb4"))
            cut.arm(at)
            with pytest.raises(db.DatabaseError, match="Lost connection|gone away"):
                db.ensure_schema(engine, migrate=True)
            cut.arm(None)
            done = [None] + [revision for sent, revision in recorded if sent < at]
            if db.current_revision(engine) != done[-1]:
                stuck.append((at, f"at {db.current_revision(engine)}, not {done[-1]}"))
            try:
                db.ensure_schema(engine, migrate=True)
            except db.DatabaseError as exc:
                stuck.append((at, str(exc)))
                continue
            if mariadb_schema(engine) != whole:
                stuck.append((at, "a schema unlike the uninterrupted upgrade's"))
        assert stuck == []
    finally:
        engine.dispose()
        admin.dispose()


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
    engines = [migrated_by_alembic(f"sqlite:///{tmp_path / f'q{n}.db'}", "0001") for n in range(4)]
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
