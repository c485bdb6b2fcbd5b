"""`qfsync report` and the reporting views: their numbers equal the fake's and the tables', on
every dialect, and the history a sync keeps (versions, deletions, failed walks) is exact."""

import csv
import io
import json
import re
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import Engine, func, select, text, update

from qfsync.cli import main
from qfsync.client import Client, Credentials, JobQuery, RetryPolicy
from qfsync.errors import RetriesExhausted
from qfsync.fake_api import DEMO_ACCESS_KEY, DEMO_SECRET_KEY, FakeApi, Faults
from qfsync.report import CSV_COLUMNS, format_age, parse_duration
from qfsync.runs import start
from qfsync.schema import finetuning_job_versions, finetuning_jobs, sync_runs
from qfsync.store import Scope
from qfsync.syncer import Sync, SyncResult

# A failing walk should fail fast: two attempts, hardly any backoff.
IMPATIENT = RetryPolicy(max_attempts=2, base_delay_s=0.001, max_wait_s=0.01)
ALL_JOBS = JobQuery()


def sync(engine: Engine, api: FakeApi, query: JobQuery = ALL_JOBS, **options) -> SyncResult:
    with Client(Credentials(DEMO_ACCESS_KEY, DEMO_SECRET_KEY), api.url, IMPATIENT) as client:
        return Sync(engine, client, query, **options).run()


def report(database_url: str, *args: str) -> Result:
    return CliRunner().invoke(main, ["report", "--database-url", database_url, *args])


def report_json(database_url: str) -> dict:
    result = report(database_url, "--format", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def by_model(jobs: list[dict]) -> dict[tuple[str, str], int]:
    return dict(Counter((job["model"], job["trainMode"]) for job in jobs))


def months(jobs: list[dict]) -> dict[str, int]:
    return dict(Counter(job["createTime"][:7] for job in jobs))


def reported_by_model(state: dict) -> dict[tuple[str, str], int]:
    return {(row["model"], row["train_mode"]): row["listed"] for row in state["by_model"]}


def spread(jobs: list[dict], count: int) -> list[str]:
    """`count` job ids spread over the whole listing, so that changes land on several pages."""
    step = len(jobs) // count
    return [job["jobId"] for job in jobs[::step][:count]]


def test_report_numbers_match_the_tables_and_the_fake(engine, database_url, fake_api):
    """After a sync, the report's totals, model and month counts equal the fake's listing and
    SQL over the tables; after the fake deletes 5 jobs and a second sync, 5 move from listed
    to deleted while the months still count them as created."""
    api = fake_api(jobs=300)
    sync(engine, api)
    listed = api.job_list()

    state = report_json(database_url)
    assert state["jobs"] == {"total": 300, "listed": 300, "deleted": 0}
    assert reported_by_model(state) == by_model(listed)
    assert {row["month"]: row["created"] for row in state["by_month"]} == months(listed)
    assert state["sync"]["last_run_status"] == "succeeded"
    assert state["sync"]["failures_since_success"] == 0

    api.delete(spread(listed, 5))
    sync(engine, api)
    still_listed = api.job_list()

    state = report_json(database_url)
    assert state["jobs"] == {"total": 300, "listed": 295, "deleted": 5}
    assert reported_by_model(state) == by_model(still_listed)
    assert {row["month"]: (row["created"], row["listed"]) for row in state["by_month"]} == {
        month: (created, months(still_listed).get(month, 0))
        for month, created in months(listed).items()
    }
    assert state["sync"]["last_run_id"] == state["sync"]["last_success_run_id"] == 2

    with engine.connect() as connection:
        jc = finetuning_jobs.c
        sql_by_model = connection.execute(
            select(jc.model, jc.train_mode, func.count())
            .where(jc.deleted_at.is_(None))
            .group_by(jc.model, jc.train_mode)
        ).all()
        total = connection.scalar(select(func.count()).select_from(finetuning_jobs))
    assert reported_by_model(state) == {(m, t): n for m, t, n in sql_by_model}
    assert state["jobs"]["total"] == total


# A BI tool's session may run in any time zone; UTC+8 moves the last hours of a month.
SESSION_TIME_ZONE = {
    "postgresql": "SET TIME ZONE 'Asia/Shanghai'",
    "mysql": "SET time_zone = '+08:00'",
}


def test_views_give_the_fakes_numbers(engine, fake_api):
    """finetuning_jobs_monthly holds, per UTC month, model and train mode, the jobs created and
    still listed, as computed from the fake's jobs, whatever the session's time zone;
    sync_health counts failures since the last success and keeps the last error."""
    # KTO jobs of 6000 span three months and include jobs in a month's last eight hours, at a
    # tenth of the cost of syncing them all.
    api = fake_api(jobs=6000)
    kto = JobQuery(train_mode="KTO")
    created = api.job_list(train_mode="KTO")
    sync(engine, api, query=kto)
    api.delete([job["jobId"] for job in created[::30]])
    sync(engine, api, query=kto)
    listed = {job["jobId"] for job in api.job_list(train_mode="KTO")}

    expected: dict[tuple, list[int]] = {}
    for job in created:
        key = (job["createTime"][:7], job["model"], job["trainMode"])
        counts = expected.setdefault(key, [0, 0])
        counts[0] += 1
        counts[1] += job["jobId"] in listed
    assert len({month for month, *_ in expected}) == 3
    with engine.connect() as connection:
        if engine.dialect.name in SESSION_TIME_ZONE:
            connection.execute(text(SESSION_TIME_ZONE[engine.dialect.name]))
        rows = connection.execute(
            text(
                "SELECT month, model, train_mode, jobs_created, jobs_listed"
                " FROM finetuning_jobs_monthly"
            )
        ).all()
    assert {(m, mo, t): [c, li] for m, mo, t, c, li in rows} == expected

    api.faults = Faults(fail_after_pages=0)
    for _ in range(2):
        with pytest.raises(RetriesExhausted):
            sync(engine, api, query=kto)
    with engine.connect() as connection:
        health = connection.execute(text("SELECT * FROM sync_health")).one()._asdict()
    assert health["last_run_id"] == 4 and health["last_run_status"] == "failed"
    assert health["last_success_run_id"] == 2
    assert health["failures_since_success"] == 2
    assert "InternalError" in health["last_error"]
    assert 0 <= health["last_success_age_s"] < 120


def test_csv_and_table_formats_render(engine, database_url, fake_api):
    """csv is one table with a section column that the csv module reads back to the JSON's
    numbers; table shows every section with its numbers."""
    api = fake_api(jobs=40)
    sync(engine, api)
    state = report_json(database_url)

    result = report(database_url, "--format", "csv")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert {row["section"] for row in rows} == {
        "jobs",
        "by_model",
        "by_month",
        "sync",
        "sync_full",
    }
    assert {r["metric"]: int(r["value"]) for r in rows if r["section"] == "jobs"} == state["jobs"]
    assert {
        (r["model"], r["train_mode"]): int(r["value"]) for r in rows if r["section"] == "by_model"
    } == reported_by_model(state)
    assert sum(int(r["value"]) for r in rows if r["metric"] == "created") == 40
    sync_rows = {r["metric"]: r["value"] for r in rows if r["section"] == "sync"}
    assert sync_rows["last_run_status"] == "succeeded"
    assert datetime.fromisoformat(sync_rows["last_success_at"]).tzinfo is not None

    result = report(database_url)
    assert result.exit_code == 0, result.output
    for title in ("Jobs", "by model and train mode", "per month", "Sync health"):
        assert title in result.stdout
    assert "40" in result.stdout.split("\n")[2]  # the totals row
    assert re.search(r"^last_run_status +succeeded$", result.stdout, re.MULTILINE)
    assert re.search(r"^full +1 +succeeded +1 ", result.stdout, re.MULTILINE)


FORMULAS = ("=1+1", "+cmd|' /C calc'!A0", "-2+3", "@SUM(A1)", "\tTAB")


def test_csv_cells_a_spreadsheet_would_run_are_written_as_text(engine, database_url, fake_api):
    """Model names are the API's text: one that starts like a formula (= + - @, a tab) is
    written with an apostrophe before it, which a spreadsheet shows as the text it is."""
    api = fake_api(jobs=10)
    for job, formula in zip(api.job_list(), FORMULAS, strict=False):
        api._change([job["jobId"]], lambda item, formula=formula: {**item, "model": formula})
    sync(engine, api)
    result = report(database_url, "--format", "csv")
    models = {row["model"] for row in csv.DictReader(io.StringIO(result.stdout))}
    assert {"'" + formula for formula in FORMULAS} <= models
    assert not any(model.startswith(("=", "+", "-", "@", "\t")) for model in models)


def test_help_documents_the_formats():
    """`report --help` names the csv columns and the --max-age units."""
    result = CliRunner().invoke(main, ["report", "--help"])
    assert result.exit_code == 0
    help_text = " ".join(result.stdout.split())
    assert "section, month, model, train_mode, metric, value, run_status" in help_text
    assert "90s, 30m, 26h, 7d" in help_text


def test_max_age_passes_after_a_sync_and_fails_once_it_is_old(engine, database_url, fake_api):
    """--max-age 1h exits 0 right after a sync; once the last success is two days old it
    still prints the report, then exits 4 with one line on stderr."""
    sync(engine, fake_api(jobs=10))
    fresh = report(database_url, "--max-age", "1h")
    assert fresh.exit_code == 0, fresh.output

    with engine.begin() as connection:
        connection.execute(
            update(sync_runs).values(finished_at=datetime.now(UTC) - timedelta(days=2))
        )
    stale = report(database_url, "--max-age", "1h", "--format", "json")
    assert stale.exit_code == 4
    assert json.loads(stale.stdout)["sync"]["last_success_age_s"] >= 2 * 86400 - 60
    assert stale.stderr.count("\n") == 1
    assert stale.stderr.startswith("qfsync: error: the last successful sync (run 1) finished 2d")
    assert report(database_url, "--max-age", "3d").exit_code == 0


def test_max_age_without_a_successful_sync_exits_4(engine, database_url):
    """With no sync at all, --max-age exits 4 after printing the report; without it, 0."""
    result = report(database_url, "--max-age", "7d")
    assert result.exit_code == 4
    assert "Sync health" in result.stdout
    assert result.stderr == (
        "qfsync: error: no sync has succeeded yet (allowed age 7d): run `qfsync sync`\n"
    )
    assert report(database_url).exit_code == 0


@pytest.mark.parametrize(
    "value",
    [
        "",
        "1",
        "1w",
        "-3h",
        "0s",
        "1.5h",
        "h",
        "1h30m",
        "99999999999999d",
        "hourly=1h",
        "full=",
        "=1h",
    ],
)
def test_bad_max_age_is_a_usage_error(value, tmp_path):
    """A --max-age that is not a positive number with one of s, m, h, d exits 2 with one
    line, before any database is touched."""
    result = report(f"sqlite:///{tmp_path / 'none.db'}", "--max-age", value)
    assert result.exit_code == 2
    [line] = result.stderr.splitlines()
    assert line.startswith("qfsync: usage error: ") and "--max-age" in line
    assert not (tmp_path / "none.db").exists()


def test_durations_and_ages():
    """Durations parse to timedeltas; ages print in their two largest units."""
    assert parse_duration("90s") == timedelta(seconds=90)
    assert parse_duration("30m") == timedelta(minutes=30)
    assert parse_duration("26h") == timedelta(hours=26)
    assert parse_duration(" 7d ") == timedelta(days=7)
    assert [format_age(s) for s in (0, 59, 61, 3600, 93_600, 172_799)] == [
        "0s",
        "59s",
        "1m 1s",
        "1h",
        "1d 2h",
        "1d 23h",
    ]


@pytest.mark.parametrize("text", ["36501d", "3000000d", "999999999d", "9" * 30 + "s"])
def test_a_duration_past_a_century_is_refused(text):
    """Counted back from now, such an age would pass the year 1 (an OverflowError inside a
    sync): refused where it is parsed, so that an option is a usage error."""
    with pytest.raises(ValueError, match="longer than any age a sync can have"):
        parse_duration(text)


def test_a_too_long_tasks_max_age_is_a_usage_error(fake_api, api_env, tmp_path):
    """--tasks-max-age past a century exits 2 before anything is written."""
    api_env(fake_api(5))
    done = CliRunner().invoke(
        main,
        [
            "sync",
            "--tasks",
            "--tasks-max-age",
            "3000000d",
            "--database-url",
            f"sqlite:///{tmp_path / 'q.db'}",
        ],
    )
    assert done.exit_code == 2 and "--tasks-max-age" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_database_without_the_schema(database_url):
    """A database qfsync never migrated gets the one-line 'run qfsync db upgrade' error."""
    result = report(database_url)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert "run `qfsync db upgrade" in result.stderr


def test_rename_delete_add_keeps_history(engine, fake_api):
    """A second sync after renaming 10, deleting 5 and adding 20 jobs counts 20 inserted,
    10 updated and 5 deleted (sync_runs agrees); renamed jobs get a second, open version and a
    closed first one; deleted jobs keep their row, with deleted_at set and no open version."""
    api = fake_api(jobs=300)
    first = sync(engine, api)
    jobs = api.job_list()
    renamed, deleted = spread(jobs[:150], 10), spread(jobs[150:], 5)
    api.rename(renamed, " (v2)")
    api.delete(deleted)
    added = api.add(20)

    second = sync(engine, api)
    counts = (second.jobs_inserted, second.jobs_updated, second.jobs_deleted)
    assert counts == (20, 10, 5)
    assert second.jobs_unchanged == 300 - 10 - 5
    vc, jc, rc = finetuning_job_versions.c, finetuning_jobs.c, sync_runs.c
    with engine.connect() as connection:
        run = connection.execute(select(sync_runs).where(rc.id == second.run_id)).one()
        assert (run.jobs_inserted, run.jobs_updated, run.jobs_deleted) == (20, 10, 5)
        assert (run.status, run.complete, run.jobs_seen) == ("succeeded", True, 315)

        names = {job["jobId"]: job["name"] for job in jobs}
        versions = connection.execute(
            select(vc.job_id, vc.version, vc.name, vc.valid_to, vc.run_id)
            .where(vc.job_id.in_(renamed))
            .order_by(vc.job_id, vc.version)
        ).all()
        assert len(versions) == 20
        for old, new in zip(versions[::2], versions[1::2], strict=True):
            assert (old.version, old.name, old.run_id) == (1, names[old.job_id], first.run_id)
            assert (new.version, new.name, new.run_id) == (2, names[old.job_id] + " (v2)", 2)
            assert old.valid_to is not None and new.valid_to is None

        gone = connection.execute(
            select(jc.job_id, jc.deleted_at, jc.name).where(jc.deleted_at.is_not(None))
        ).all()
        assert {row.job_id for row in gone} == set(deleted)
        assert all(row.name == names[row.job_id] for row in gone)
        open_versions = connection.scalar(
            select(func.count()).where(vc.job_id.in_(deleted), vc.valid_to.is_(None))
        )
        assert open_versions == 0
        new_ids = {job["jobId"] for job in added}
        assert connection.scalar(
            select(func.count()).where(vc.job_id.in_(new_ids), vc.version == 1)
        ) == len(new_ids)


def test_a_failed_walk_deletes_nothing(engine, fake_api):
    """A walk that fails after two pages marks no job deleted, even ones the API no longer
    lists; the next sync resumes, completes the walk and marks exactly those."""
    api = fake_api(jobs=300)
    sync(engine, api)
    jobs = api.job_list()
    late = [job["jobId"] for job in jobs[-3:]]
    api.delete(late)
    api.faults = Faults(fail_after_pages=2)
    with pytest.raises(RetriesExhausted):
        sync(engine, api)

    jc, rc = finetuning_jobs.c, sync_runs.c
    with engine.connect() as connection:
        failed = connection.execute(select(sync_runs).where(rc.id == 2)).one()
        assert (failed.status, failed.complete, failed.pages, failed.jobs_deleted) == (
            "failed",
            False,
            2,
            0,
        )
        assert connection.scalar(select(func.count()).where(jc.deleted_at.is_not(None))) == 0
        health = connection.execute(text("SELECT * FROM sync_health")).one()
        assert (health.failures_since_success, health.last_success_run_id) == (1, 1)

    api.faults = Faults()
    resumed = sync(engine, api)
    assert (resumed.resumed_from, resumed.jobs_deleted) == (2, 3)
    with engine.connect() as connection:
        gone = connection.scalars(select(jc.job_id).where(jc.deleted_at.is_not(None))).all()
        health = connection.execute(text("SELECT * FROM sync_health")).one()
    assert set(gone) == set(late)
    assert (health.failures_since_success, health.last_success_run_id) == (0, 3)


def test_a_deleted_job_that_comes_back_is_listed_again(engine, fake_api):
    """A job listed again after its deletion counts as updated, loses deleted_at and opens a
    new version; its earlier versions stay closed. (FakeApi cannot restore a deleted job, so a
    twin fake with the same seed plays the API after the job came back.)"""
    api = fake_api(jobs=30, seed=7)
    twin = fake_api(jobs=30, seed=7)
    back = spread(api.job_list(), 2)
    sync(engine, api)
    api.delete(back)
    assert sync(engine, api).jobs_deleted == 2

    again = sync(engine, twin)
    assert (again.jobs_inserted, again.jobs_updated, again.jobs_deleted) == (0, 2, 0)
    jc, vc = finetuning_jobs.c, finetuning_job_versions.c
    with engine.connect() as connection:
        assert connection.scalar(select(func.count()).where(jc.deleted_at.is_not(None))) == 0
        versions = connection.execute(
            select(vc.job_id, vc.version, vc.valid_to, vc.run_id)
            .where(vc.job_id.in_(back))
            .order_by(vc.job_id, vc.version)
        ).all()
    assert [(v.version, v.valid_to is None, v.run_id) for v in versions] == [
        (1, False, 1),
        (2, True, 3),
    ] * 2


def fail_full_runs(engine, times: int) -> None:
    """Record `times` failed full runs, as a nightly full sync that keeps failing would."""
    with engine.begin() as connection:
        for _ in range(times):
            run_id, _ = start(connection, Scope(), "full", 100, None)
            connection.execute(
                update(sync_runs)
                .where(sync_runs.c.id == run_id)
                .values(status="failed", finished_at=datetime.now(UTC), error="boom")
            )


def test_failing_full_syncs_show_beside_succeeding_incremental_ones(engine, database_url, fake_api):
    """A full sync that fails every night while incremental syncs succeed: sync_health and the
    per-scope view show the old full success and the failures since, and `--max-age
    full=26h` exits 4 while `--max-age 1h` (any mode) passes."""
    api = fake_api(jobs=30)
    full = sync(engine, api)
    with engine.begin() as connection:
        connection.execute(
            update(sync_runs)
            .where(sync_runs.c.id == full.run_id)
            .values(finished_at=datetime.now(UTC) - timedelta(days=3))
        )
    fail_full_runs(engine, 2)
    incremental = sync(engine, api, incremental=True)
    assert incremental.status == "succeeded"

    state = report_json(database_url)
    health = state["sync"]
    assert health["last_success_run_id"] == incremental.run_id
    assert health["last_full_success_run_id"] == full.run_id
    assert health["last_full_success_age_s"] >= 3 * 86400 - 60
    assert health["full_failures_since_success"] == 2
    by_mode = {scope["mode"]: scope for scope in state["scopes"]}
    assert by_mode["full"]["last_run_status"] == "failed"
    assert by_mode["full"]["last_success_run_id"] == full.run_id
    assert by_mode["full"]["failures_since_success"] == 2
    assert by_mode["incremental"]["last_success_run_id"] == incremental.run_id

    assert report(database_url, "--max-age", "1h").exit_code == 0
    stale = report(database_url, "--max-age", "1h", "--max-age", "full=26h")
    assert stale.exit_code == 4
    assert stale.stderr.startswith(
        f"qfsync: error: the last successful full sync (run {full.run_id}) finished 3d"
    )
    assert "(failed runs since: 2)" in stale.stderr and stale.stderr.count("\n") == 1
    assert report(database_url, "--max-age", "full=4d").exit_code == 0
    assert report(database_url, "--max-age", "incremental=1h").exit_code == 0


def test_abandoned_run_finished_when_it_last_made_progress(engine, fake_api):
    """A run left `running` by a dead process is closed by the next sync with the time of its
    last committed page as finished_at, not the time the next sync noticed it."""
    with engine.begin() as connection:
        run_id, started_at = start(connection, Scope(), "full", 100, None)
        last_progress = started_at - timedelta(hours=5)
        connection.execute(
            update(sync_runs).where(sync_runs.c.id == run_id).values(progress_at=last_progress)
        )
    sync(engine, fake_api(jobs=10))
    with engine.connect() as connection:
        row = connection.execute(select(sync_runs).where(sync_runs.c.id == run_id)).one()
    assert row.status == "failed" and "abandoned" in row.error
    assert row.finished_at == last_progress


def test_the_table_escapes_what_the_server_chose(engine, database_url, fake_api):
    """A model name with an ANSI escape and a newline (the server's text) is shown escaped in
    the table, as on a terminal: it can neither drive the terminal nor break the table's rows.
    (click keeps the escape when it writes to a terminal, hence color=True.)"""
    api = fake_api(5)
    job_id = api.job_list()[0]["jobId"]
    api._change([job_id], lambda job: {**job, "model": "evil\x1b[2J\nrow"})
    sync(engine, api)
    result = CliRunner().invoke(main, ["report", "--database-url", database_url], color=True)
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output
    assert "evil\\x1b[2J\\nrow" in result.output
