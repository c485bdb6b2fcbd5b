"""The page writers of each dialect leave exactly the tables the plain reference writer leaves,
and the PostgreSQL statement keeps looking rows up by primary key however large the table."""

import copy
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from reference import ReferenceWriter
from sqlalchemy import Connection, Engine, delete, insert, select, text

from qfsync import writers
from qfsync.errors import LockLost
from qfsync.fake_api import FakeApi
from qfsync.guard import DeleteLimit
from qfsync.pages import Job, content_hash, parse_job
from qfsync.runs import COUNTS, RUNNING
from qfsync.schema import finetuning_job_versions, finetuning_jobs, sync_runs
from qfsync.store import Scope, mark_deleted
from qfsync.writers import PageWriter

PAGE = 100
EVERYTHING = DeleteLimit(percent=100)  # the history deletes every job in the end
T0 = datetime(2026, 3, 1, 8, 0, 0, 123456, tzinfo=UTC)
Items = list[dict[str, Any]]


def start_run(connection: Connection, run_id: int, now: datetime) -> None:
    """A run row with a fixed id, so two writers' tables can be compared column by column."""
    connection.execute(
        insert(sync_runs).values(
            id=run_id,
            started_at=now,
            status=RUNNING,
            mode="full",
            page_size=PAGE,
            walk_started_at=now,
            progress_at=now,
            qfsync_version="test",
            **dict.fromkeys(COUNTS, 0),
        )
    )


def sync(engine: Engine, writer: PageWriter, items: Items, run_id: int) -> list[tuple[int, ...]]:
    """One complete walk of `items` in pages, then the deletions; returns each page's counts."""
    now = T0 + timedelta(days=run_id, microseconds=run_id)
    with engine.begin() as connection:
        start_run(connection, run_id, now)
    counts = []
    for start in range(0, max(len(items), 1), PAGE):
        jobs = [parse_job(item, i) for i, item in enumerate(items[start : start + PAGE])]
        last = start + PAGE >= len(items)
        meanwhile: list[int] = []
        with engine.begin() as connection:
            written = writer.write(
                connection,
                writer.prepare(jobs),
                run_id,
                now,
                None if last else f"m{start}",
                lambda: meanwhile.append(start),  # noqa: B023 - called before the loop goes on
                commit=not last,  # as a sync does: the last page's deletions follow in it
            )
            counts.append((written.inserted, written.updated, written.unchanged))
            if last:
                mark_deleted(connection, Scope(), now, run_id, now, EVERYTHING)
        assert meanwhile in ([], [start])  # at most once a page
    return counts


def snapshot(engine: Engine) -> dict[str, Any]:
    with engine.connect() as connection:
        jobs = [
            dict(row._mapping)
            for row in connection.execute(select(finetuning_jobs).order_by("job_id"))
        ]
        versions = [
            dict(row._mapping)
            for row in connection.execute(
                select(finetuning_job_versions).order_by("job_id", "version")
            )
        ]
        runs = [
            dict(row._mapping)
            for row in connection.execute(
                select(
                    sync_runs.c.id, sync_runs.c.next_marker, *(sync_runs.c[c] for c in COUNTS)
                ).order_by("id")
            )
        ]
    return {"jobs": jobs, "versions": versions, "runs": runs}


def history() -> Iterator[Items]:
    """Listings of successive syncs: every kind of change a writer has to tell apart."""
    items = FakeApi(250).job_list()
    yield items  # first sync
    yield items  # unchanged re-sync
    items = copy.deepcopy(items)
    for item in items[::40]:
        item["name"] += " (renamed)"
    items[3]["description"] = "a new description, 描述 ✓"
    yield items  # renames
    items = copy.deepcopy(items)
    moment = datetime.fromisoformat(items[7]["createTime"])
    items[7]["createTime"] = moment.astimezone(timezone(timedelta(hours=8))).isoformat()
    items[8]["extra"] = {"nested": [1, 2.5, None]}
    yield items  # a change outside the versioned fields: updated, no new version
    gone = items[10:15] + items[200:]
    kept = [item for item in items if item not in gone]
    yield kept  # deletions
    relisted = copy.deepcopy(gone)
    relisted[0]["name"] += " back"
    yield kept + relisted  # relisted: updated, with a new version each
    yield []  # everything deleted, one empty page


@pytest.fixture
def compare(engine: Engine) -> Callable[[PageWriter], dict[str, Any]]:
    """Runs the whole history with a writer on emptied tables; returns counts and tables."""

    def run(writer: PageWriter) -> dict[str, Any]:
        with engine.begin() as connection:
            for table in (finetuning_job_versions, finetuning_jobs, sync_runs):
                connection.execute(delete(table))
        counts = [sync(engine, writer, items, n) for n, items in enumerate(history(), 1)]
        return {"counts": counts, **snapshot(engine)}

    return run


def test_writer_leaves_the_reference_tables(engine, compare):
    """First sync, unchanged re-sync, renames, a format-only change, deletions, relisting and
    an empty walk leave the same rows, columns and counts as the reference writer."""
    expected = compare(ReferenceWriter())
    got = compare(writers.for_dialect(engine.dialect.name))
    assert got["counts"] == expected["counts"]
    assert got["runs"] == expected["runs"]
    assert got["versions"] == expected["versions"]
    assert got["jobs"] == expected["jobs"]
    # The history did exercise each case: versions were opened, closed and kept.
    versions = expected["versions"]
    assert {v["version"] for v in versions} == {1, 2, 3}
    assert sum(v["valid_to"] is None for v in versions) == 0  # the last walk deleted all
    assert expected["counts"][3] == [(0, 2, 98), (0, 0, 100), (0, 0, 50)]


@pytest.mark.parametrize("commit", [False, True], ids=["caller-commits", "writer-commits"])
def test_a_run_no_longer_running_stops_the_page(engine, commit):
    """When another process has ended the run, the page is refused and nothing is written, also
    where the writer sends the COMMIT along with the page (PostgreSQL)."""
    writer = writers.for_dialect(engine.dialect.name)
    with engine.begin() as connection:
        start_run(connection, 1, T0)
        connection.execute(sync_runs.update().values(status="failed"))
    jobs = [parse_job(item, i) for i, item in enumerate(FakeApi(5).job_list())]
    with pytest.raises(LockLost, match="run 1 is no longer"), engine.begin() as connection:
        writer.write(connection, writer.prepare(jobs), 1, T0, None, commit=commit)
    with engine.connect() as connection:
        assert connection.scalar(select(text("count(*)")).select_from(finetuning_jobs)) == 0
        assert connection.scalar(select(sync_runs.c.pages)) == 0


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_the_postgresql_writer_commits_the_page_in_its_own_round_trip(engine):
    """Given `commit`, the PostgreSQL writer sends the COMMIT with the page: the page is
    committed when `write` returns, and the caller's commit finds nothing left to do."""
    writer = writers.for_dialect("postgresql")
    with engine.begin() as connection:
        start_run(connection, 1, T0)
    with engine.begin() as connection:
        writer.write(connection, writer.prepare(synthetic(5)), 1, T0, "m", commit=True)
        with engine.connect() as other:  # another session sees the page already
            assert other.scalar(select(text("count(*)")).select_from(finetuning_jobs)) == 5
            assert other.scalar(select(sync_runs.c.next_marker)) == "m"


def plan_nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from plan_nodes(child)


def synthetic(n: int, start: int = 0) -> list[Job]:
    return [
        parse_job(
            {"jobId": f"job-{i:08d}", "name": f"job {i}", "model": "m", "trainMode": "SFT"}, i
        )
        for i in range(start, start + n)
    ]


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_postgresql_page_stays_a_primary_key_lookup_as_the_table_grows(engine):
    """At page 500 of a 50k sync the page statement still reads stored rows through primary
    keys (no sequential scan, no hash or merge join over a table), so a page's cost does not
    grow with the table; checked on the plan, not the clock. The plan checked is the one the
    writer's prepared statement keeps: made once, at the first page, on empty tables."""
    import psycopg

    from qfsync.writers.postgresql import PLAN_SETTINGS

    writer = writers.for_dialect("postgresql")
    # Page 501: 10 changed names, 40 unchanged and 50 new jobs: every branch of the statement runs.
    jobs = synthetic(10, 0)
    jobs = [parse_job({**job.raw, "name": "renamed"}, i) for i, job in enumerate(jobs)]
    jobs += synthetic(40, 10) + synthetic(50, 50_000)
    # The statement's parameters in the order they first appear in it.
    params = [
        [j.job_id for j in jobs],
        [j.name for j in jobs],
        [j.description for j in jobs],
        [j.model for j in jobs],
        [j.train_mode for j in jobs],
        [j.created_at for j in jobs],
        [json.dumps(j.raw) for j in jobs],
        [content_hash(j.raw) for j in jobs],
        T0,
        1,
        "m",
    ]
    with engine.connect() as connection:
        with connection.begin():
            start_run(connection, 1, T0)
            # Statistics that say the tables are empty (as autovacuum may leave them early in a
            # first sync): the plan kept from the first page is made for empty tables.
            connection.execute(text("ANALYZE finetuning_jobs, finetuning_job_versions"))
        for page in range(500):
            with connection.begin():
                writer.write(connection, writer.prepare(synthetic(PAGE, page * PAGE)), 1, T0, "m")
        driver = connection.connection.driver_connection
        [(name, generic)] = driver.execute(
            "SELECT name, generic_plans FROM pg_prepared_statements"
            " WHERE statement LIKE '%%INSERT INTO finetuning_job_versions%%'"
        ).fetchall()
        assert generic == 500, generic  # every page ran the plan made at the first
        driver.execute(PLAN_SETTINGS)
        types = ["text[]"] * 5 + ["timestamptz[]"] + ["text[]"] * 2 + ["timestamptz", "int", "text"]
        marks = ", ".join(f"%s::{type_}" for type_ in types)
        # EXECUTE takes no parameters of its own: the client cursor writes them into the text.
        [[plans]] = (
            psycopg.ClientCursor(driver)
            .execute(f"EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE {name}({marks})", params)
            .fetchall()
        )
        connection.rollback()
    nodes = list(plan_nodes(plans[0]["Plan"]))
    big = {"finetuning_jobs", "finetuning_job_versions"}
    assert not [n for n in nodes if n["Node Type"] == "Seq Scan" and n["Relation Name"] in big]
    assert not [n for n in nodes if n["Node Type"] in ("Hash Join", "Merge Join")]
    scans = [n for n in nodes if n.get("Relation Name") in big and "Index" in n["Node Type"]]
    # The lookups of 100 ids each visit at most the rows they look for.
    assert scans and all(n["Actual Rows"] * n["Actual Loops"] <= 100 for n in scans)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_sqlite_lookups_search_the_primary_key(engine):
    """The SQLite writer's lookups and touches use the job id index, never a table scan."""
    from qfsync.writers.rows import STORED_SQL, TOUCH_SQL, VERSIONS_SQL

    writer = writers.for_dialect("sqlite")
    with engine.connect() as connection:
        cursor = connection.connection.driver_connection.cursor()
        for statement in (STORED_SQL, TOUCH_SQL, VERSIONS_SQL):
            sql = writer.sql(statement, 3)  # type: ignore[attr-defined]
            args = ["a", "b", "c"] if statement != TOUCH_SQL else ["t", 1, "a", "b", "c"]
            plan = " ".join(row[-1] for row in cursor.execute("EXPLAIN QUERY PLAN " + sql, args))
            assert "SEARCH" in plan and "SCAN" not in plan, plan


def test_mariadb_inserts_are_sent_as_multi_row_statements():
    """PyMySQL's executemany folds rows into one multi-row INSERT only for a statement its
    pattern recognises (placeholders alone in VALUES); both of the writer's inserts are such."""
    from pymysql.cursors import RE_INSERT_VALUES

    from qfsync.writers.mysql import MysqlWriter
    from qfsync.writers.rows import OPEN_SQL

    writer = MysqlWriter()
    for statement in (writer.upsert_sql, OPEN_SQL):
        assert RE_INSERT_VALUES.match(writer.sql(statement))


def test_postgresql_page_statement_is_short_enough_for_psycopg_to_cache():
    """psycopg converts a query's named placeholders once and caches the result only for a
    text within its limit; past it, every page pays for the conversion again."""
    from psycopg._queries import MAX_CACHED_STATEMENT_LENGTH

    from qfsync.writers.postgresql import PAGE_SQL, PLAN_SETTINGS

    for statement in (PAGE_SQL, PLAN_SETTINGS):
        assert len(statement.encode()) <= MAX_CACHED_STATEMENT_LENGTH


def test_postgresql_arrays_are_the_bytes_psycopg_itself_would_send():
    """The writer encodes the page's arrays itself (cheaper than psycopg's list dumpers); they
    must be byte for byte psycopg's own binary text[] and timestamptz[]."""
    from psycopg import adapt, postgres
    from psycopg.pq import Format

    from qfsync.writers.postgresql import text_array, timestamptz_array

    def psycopg_dump(values: list[Any], array_oid: int) -> bytes:
        dumper = postgres.adapters.get_dumper_by_oid(array_oid, Format.BINARY)
        return bytes(dumper(list, adapt.Transformer(postgres.adapters)).dump(values))

    texts = ["job-1", "", "安全对齐 lr=3e-5", "tab\tand\nnewline", "😀"]
    times = [
        T0,
        datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),  # before PostgreSQL's epoch
        datetime(2026, 3, 1, 16, 0, tzinfo=timezone(timedelta(hours=8))),
        datetime(1970, 1, 1, tzinfo=UTC),
    ]
    for values in (texts, [*texts, None], [None], []):
        assert bytes(text_array(values)) == psycopg_dump(values, 1009)
    for moments in (times, [None, *times], [None], []):
        assert bytes(timestamptz_array(moments)) == psycopg_dump(moments, 1185)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_postgresql_pages_commit_without_waiting_for_the_disk(engine):
    """A page's transaction commits with synchronous_commit off, and only that transaction: the
    run's end (deletions and `succeeded`, or `failed`) commits in one of its own, which waits
    for the disk and so makes every earlier page durable too."""
    writer = writers.for_dialect("postgresql")
    with engine.begin() as connection:
        start_run(connection, 1, T0)
    with engine.begin() as connection:
        writer.write(connection, writer.prepare(synthetic(5)), 1, T0, None)
        assert connection.scalar(text("SHOW synchronous_commit")) == "off"
    with engine.connect() as connection:  # SET LOCAL: nothing outlives the page's transaction
        assert connection.scalar(text("SHOW synchronous_commit")) == "on"


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_the_postgresql_writer_works_meanwhile_while_the_server_runs_the_page(engine):
    """The sync prepares the next page in `meanwhile`: on PostgreSQL it runs after the page's
    statement is sent and before its result is read, while the server is at work."""
    from psycopg.pq import TransactionStatus

    writer = writers.for_dialect("postgresql")
    with engine.begin() as connection:
        start_run(connection, 1, T0)
    seen = []
    with engine.begin() as connection:
        driver = connection.connection.driver_connection

        def meanwhile() -> None:
            seen.append(driver.info.transaction_status)

        written = writer.write(connection, writer.prepare(synthetic(PAGE)), 1, T0, "m", meanwhile)
    assert seen == [TransactionStatus.ACTIVE]  # a statement in progress, its result unread
    assert written.inserted == PAGE
