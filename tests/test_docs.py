"""docs/schema.md and docs/bi.md: every SQL example runs and returns rows on its dialects, the
read-only logins work as written, and the schema reference names every table, view, column and
index qfsync creates."""

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Connection, Engine, inspect, text

from qfsync import db
from qfsync.client import Client, Credentials, JobQuery, RetryPolicy
from qfsync.errors import RetriesExhausted
from qfsync.fake_api import DEMO_ACCESS_KEY, DEMO_SECRET_KEY, FakeApi, Faults
from qfsync.schema import metadata
from qfsync.syncer import Sync
from qfsync.task_fetch import TaskFetcher
from qfsync.task_sync import TaskSync

DOCS = Path(__file__).resolve().parent.parent / "docs"
FENCE = re.compile(r"^```sql(?P<info>[^\n]*)\n(?P<sql>.*?)^```", re.MULTILINE | re.DOTALL)
# A ```sql fence runs on every dialect; ```sql <dialect> only on that one; ```sql role-<dialect>
# is administrator DDL, run by test_read_only_login.
DIALECT_TAGS = ("postgresql", "mariadb", "sqlite")
ROLE_TAGS = tuple(f"role-{dialect}" for dialect in ("postgresql", "mariadb"))
VIEWS = (
    "finetuning_jobs_current",
    "finetuning_jobs_monthly",
    "sync_health",
    "sync_scopes",
    "finetuning_tasks_current",
    "finetuning_task_outcomes_monthly",
)


@dataclass(frozen=True)
class Example:
    where: str
    tag: str
    sql: str


def examples(*names: str) -> list[Example]:
    found = []
    for name in names:
        doc = (DOCS / name).read_text()
        for match in FENCE.finditer(doc):
            line = doc.count("\n", 0, match.start()) + 1
            found.append(Example(f"{name}:{line}", match["info"].strip(), match["sql"]))
    return found


def run(connection: Connection, sql: str) -> list[tuple]:
    """Run SQL the way a BI tool would: through the driver's own cursor, with no parameters, so
    that nothing (not even a % sign) is rewritten on the way."""
    cursor = connection.connection.cursor()
    try:
        cursor.execute(sql)
        return list(cursor.fetchall()) if cursor.description else []
    finally:
        cursor.close()


def doc_tag(engine: Engine) -> str:
    return "mariadb" if engine.dialect.name in ("mysql", "mariadb") else engine.dialect.name


def populate(engine: Engine, api: FakeApi) -> None:
    """Two syncs with tasks, with renames, deletions, additions and hours of the tasks' time
    between them, then a failed one: every example has rows to show."""
    retry = RetryPolicy(max_attempts=2, base_delay_s=0.001, max_wait_s=0.01)
    with (
        Client(Credentials(DEMO_ACCESS_KEY, DEMO_SECRET_KEY), api.url, retry) as client,
        TaskFetcher(client) as fetcher,
    ):
        Sync(engine, client, JobQuery(), tasks=TaskSync(fetcher)).run()
        jobs = [job["jobId"] for job in api.job_list()]
        api.rename(jobs[:4])
        api.delete(jobs[-3:])
        api.add(5)
        api.advance(6 * 3600)
        Sync(engine, client, JobQuery(), tasks=TaskSync(fetcher)).run()
        api.faults = Faults(fail_after_pages=0)
        with pytest.raises(RetriesExhausted):
            Sync(engine, client, JobQuery()).run()


def test_fences_are_tagged_consistently():
    """Every ```sql fence is untagged, a dialect or a role, and dialect variants come in full
    sets, so no dialect misses a question."""
    tags = [example.tag for example in examples("bi.md", "schema.md")]
    assert set(tags) <= {"", *DIALECT_TAGS, *ROLE_TAGS}
    assert len({tags.count(tag) for tag in DIALECT_TAGS}) == 1
    assert all(tags.count(tag) == 1 for tag in ROLE_TAGS)
    assert tags.count("") >= 8


def test_sql_examples_run_and_return_rows(engine, fake_api):
    """Each example for this dialect runs exactly as written, with no parameters, on a database
    filled by real syncs, and returns at least one row."""
    # Dated to now, so that "the last 7 days" holds tasks.
    populate(engine, fake_api(jobs=150, now=datetime.now(UTC)))
    mine = [e for e in examples("bi.md", "schema.md") if e.tag in ("", doc_tag(engine))]
    failures = []
    with engine.connect() as connection:
        for example in mine:
            try:
                found = run(connection, example.sql)
            except engine.dialect.loaded_dbapi.Error as exc:
                failures.append(f"{example.where}: {str(exc).splitlines()[0]}")
                connection.rollback()
                continue
            if not found:
                failures.append(f"{example.where}: no rows")
    assert not failures, "\n".join(failures)
    assert len(mine) >= 10


def statements(sql: str) -> list[str]:
    return [statement.strip() for statement in sql.split(";") if statement.strip()]


def login_url(engine: Engine, user: str, password: str) -> str:
    return engine.url.set(username=user, password=password).render_as_string(hide_password=False)


@pytest.mark.parametrize("database_url", ["postgresql", "mysql"], indirect=True)
def test_read_only_login(engine):
    """The documented login, created with the documented SQL (names swapped for the test's),
    reads every table and view, including one created after the grant, and cannot write; it
    is dropped afterwards."""
    tag = doc_tag(engine)
    (ddl,) = [e.sql for e in examples("bi.md") if e.tag == f"role-{tag}"]
    user = f"qfsync_reader_{uuid.uuid4().hex[:8]}"
    with engine.connect() as connection:
        names = {"qfsync_reader": user}
        if tag == "postgresql":
            database, schema, owner = connection.execute(
                text("SELECT current_database(), current_schema(), current_user")
            ).one()
            names |= {"analytics": database, "public": schema, "qfsync": owner}
        else:
            names["analytics"] = connection.scalar(text("SELECT DATABASE()"))
    for name, value in names.items():
        ddl = re.sub(rf"\b{name}\b", value, ddl)

    try:
        with engine.begin() as connection:
            for statement in statements(ddl):
                run(connection, statement)
            run(connection, "CREATE TABLE added_later (id INTEGER)")
        reader = db.connect(login_url(engine, user, "change-me"))
        try:
            with reader.connect() as connection:
                for name in [*metadata.tables, *VIEWS, "added_later"]:
                    assert run(connection, f"SELECT COUNT(*) FROM {name}")
                with pytest.raises(reader.dialect.loaded_dbapi.Error):
                    run(connection, "DELETE FROM sync_runs")
        finally:
            reader.dispose()
    finally:
        drop_login(engine, tag, user)


def drop_login(engine: Engine, tag: str, user: str) -> None:
    with engine.begin() as connection:
        if tag == "postgresql":
            exists = connection.scalar(
                text("SELECT count(*) FROM pg_roles WHERE rolname = :user"), {"user": user}
            )
            if exists:
                connection.exec_driver_sql(f"DROP OWNED BY {user}")
                connection.exec_driver_sql(f"DROP ROLE {user}")
        else:
            run(connection, f"DROP USER IF EXISTS '{user}'@'%'")


def sections(doc: str) -> dict[str, str]:
    """The text under each '### `name`' heading, up to the next heading."""
    parts = re.split(r"^#{2,3} ", doc, flags=re.MULTILINE)
    return {match[1]: part for part in parts if (match := re.match(r"`(\w+)`\n", part)) is not None}


def rows(section: str) -> dict[str, str]:
    """Table rows by the name in their first cell."""
    return {
        match[1]: line
        for line in section.splitlines()
        if (match := re.match(r"\| `(\w+)` \|", line)) is not None
    }


def view_columns(connection: Connection) -> dict[str, list[str]]:
    inspector = inspect(connection)
    return {view: [c["name"] for c in inspector.get_columns(view)] for view in VIEWS}


def test_schema_doc_names_everything(tmp_path):
    """docs/schema.md has a section for every table with each column's comment, a section for
    every view with each of its columns, and every index."""
    doc = (DOCS / "schema.md").read_text()
    described = sections(doc)
    for table in metadata.tables.values():
        section = described[table.name]
        assert table.comment in section
        documented = rows(section)
        assert list(documented) == [column.name for column in table.columns], table.name
        for column in table.columns:
            assert column.comment in documented[column.name], f"{table.name}.{column.name}"
        for index in table.indexes:
            assert f"`{index.name}`" in doc

    engine = db.connect(f"sqlite:///{tmp_path / 'views.db'}")
    try:
        db.upgrade(engine)
        with engine.connect() as connection:
            columns = view_columns(connection)
    finally:
        engine.dispose()
    for view, names in columns.items():
        assert list(rows(described[view])) == names, view


def test_views_have_the_documented_columns_on_every_dialect(engine):
    """Each view has, on this dialect, exactly the columns docs/schema.md lists, in order: a
    dashboard built on one database works on another."""
    described = sections((DOCS / "schema.md").read_text())
    with engine.connect() as connection:
        columns = view_columns(connection)
    for view, names in columns.items():
        assert names == list(rows(described[view])), view
