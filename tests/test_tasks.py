"""sync --tasks on every dialect, over loopback HTTP: tasks stored exactly as listed, their
history as time passes, exact counts, and only the task requests a sync needs."""

import json
import os
import subprocess
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select
from test_cli_jobs import qfsync_command

import qfsync
from qfsync import runs
from qfsync.cli import main
from qfsync.client import RetryPolicy
from qfsync.errors import RetriesExhausted
from qfsync.fake_api import DEMO_ACCESS_KEY, DEMO_SECRET_KEY, Faults
from qfsync.pages import parse_time
from qfsync.schema import (
    finetuning_jobs,
    finetuning_task_lists,
    finetuning_task_versions,
    finetuning_tasks,
    sync_runs,
)
from qfsync.store import Scope
from qfsync.task_pages import FINAL_STATUSES, ZERO_DATE, parse_task
from qfsync.task_store import write_tasks

JOBS = 250
TASK_COUNT_COLUMNS = (
    "tasks_seen",
    "tasks_inserted",
    "tasks_updated",
    "tasks_unchanged",
    "tasks_deleted",
    "task_requests",
)
EVERY_TIME = timedelta(0)  # --tasks-max-age 0: list every job's tasks again


def listed(api) -> dict[str, tuple[dict, float | None]]:
    """Every task the fake lists now, with the progress DescribeFineTuningTask gives it."""
    found = {}
    for job in api.job_list():
        for item in api.task_list(job["jobId"]):
            progress = None
            if item["runStatus"] == "Running":
                progress = float(api.task_detail(item["taskId"])["runProgress"].rstrip("%"))
            found[item["taskId"]] = (item, progress)
    return found


def unfinished_jobs(api) -> set[str]:
    """Jobs with a task that is not Done, Failed or Stopped (an empty status included)."""
    return {
        item["jobId"] for item, _ in listed(api).values() if item["runStatus"] not in FINAL_STATUSES
    }


def stored(engine) -> dict[str, dict]:
    with engine.connect() as connection:
        return {
            row["task_id"]: dict(row)
            for row in connection.execute(select(finetuning_tasks)).mappings()
        }


def expected_row(item: dict, progress: float | None) -> dict:
    created = parse_time(item["createDate"])
    finished = None if item["finishDate"] == ZERO_DATE else parse_time(item["finishDate"])
    return {
        "task_id": item["taskId"],
        "job_id": item["jobId"],
        "parameter_scale": item["parameterScale"],
        "run_status": item["runStatus"] or None,
        "run_progress": progress,
        "created_at": created,
        "finished_at": finished,
        "duration_s": (finished - created).total_seconds() if finished else None,
        "raw": item,
        "deleted_at": None,
    }


def assert_stored_as_listed(engine, api) -> dict[str, tuple[dict, float | None]]:
    now = listed(api)
    rows = stored(engine)
    live = {task_id: row for task_id, row in rows.items() if row["deleted_at"] is None}
    assert live.keys() == now.keys()
    for task_id, (item, progress) in now.items():
        row = live[task_id]
        assert {key: row[key] for key in expected_row(item, progress)} == expected_row(
            item, progress
        )
    return now


def versions(engine) -> list[tuple]:
    vc = finetuning_task_versions.c
    with engine.connect() as connection:
        return list(
            connection.execute(
                select(vc.task_id, vc.version, vc.run_status, vc.finished_at, vc.valid_to).order_by(
                    vc.task_id, vc.version
                )
            ).all()
        )


def test_first_sync_stores_every_task_exactly_as_listed(engine, fake_api, run_sync):
    """After one `--tasks` sync, finetuning_tasks holds every task of every job field for
    field (progress for running tasks, NULL finish while unfinished), one open version each,
    and the run's task counts and requests are exact."""
    api = fake_api(JOBS)
    result = run_sync(engine, api, tasks=True)
    now = assert_stored_as_listed(engine, api)
    statuses = {item["runStatus"] for item, _ in now.values()}
    assert {"Done", "Running"} <= statuses  # the fake's data exercises both kinds
    running = sum(item["runStatus"] == "Running" for item, _ in now.values())
    assert (result.tasks_seen, result.tasks_inserted, result.tasks_updated) == (
        len(now),
        len(now),
        0,
    )
    assert result.task_requests == JOBS + running
    assert api.requests_by_action["DescribeFineTuningTasks"] == JOBS
    assert api.requests_by_action["DescribeFineTuningTask"] == running
    with engine.connect() as connection:
        run = connection.execute(select(sync_runs)).mappings().one()
        assert connection.scalar(select(func.count()).select_from(finetuning_task_lists)) == JOBS
    assert (run["tasks_seen"], run["tasks_inserted"], run["task_requests"]) == (
        len(now),
        len(now),
        JOBS + running,
    )
    assert len(versions(engine)) == len(now)
    assert all(valid_to is None for *_, valid_to in versions(engine))


def test_time_passing_is_recorded_as_versions_with_exact_counts(engine, fake_api, run_sync):
    """After the fake's clock moves on (tasks progress and finish, new tasks on old jobs, one
    deleted), a sync that lists every job's tasks again stores the new state, opens a version
    per status change, marks the deleted task, and counts each kind exactly."""
    api = fake_api(JOBS)
    run_sync(engine, api, tasks=True)
    before = listed(api)
    changed = api.advance(3 * 3600)
    after = listed(api)
    assert changed["added"] and changed["deleted"]
    result = run_sync(engine, api, tasks=True, tasks_max_age=EVERY_TIME)

    assert_stored_as_listed(engine, api)
    new = after.keys() - before.keys()
    gone = before.keys() - after.keys()
    both = after.keys() & before.keys()
    updated = {t for t in both if after[t] != before[t]}
    status_changed = {
        t
        for t in both
        if (after[t][0]["runStatus"], after[t][0]["finishDate"])
        != (before[t][0]["runStatus"], before[t][0]["finishDate"])
    }
    assert new == set(changed["added"]) and gone == set(changed["deleted"])
    assert status_changed, "three hours must finish or start some task"
    assert (
        result.tasks_seen,
        result.tasks_inserted,
        result.tasks_updated,
        result.tasks_unchanged,
        result.tasks_deleted,
    ) == (len(after), len(new), len(updated), len(both) - len(updated), len(gone))
    with engine.connect() as connection:
        run = connection.execute(select(sync_runs).where(sync_runs.c.id == result.run_id))
        recorded = run.mappings().one()
    assert {name: recorded[name] for name in TASK_COUNT_COLUMNS} == {
        name: getattr(result, name) for name in TASK_COUNT_COLUMNS
    }

    rows = stored(engine)
    (deleted,) = gone
    assert rows[deleted]["deleted_at"] is not None
    history = versions(engine)
    assert len(history) == len(before) + len(new) + len(status_changed)
    by_task: dict[str, list[tuple]] = {}
    for task_id, version, status, finished_at, valid_to in history:
        by_task.setdefault(task_id, []).append((version, status, finished_at, valid_to))
    for task_id in status_changed:
        (v1, old, _, closed), (v2, current, _, still_open) = by_task[task_id]
        assert (v1, v2, old, current) == (
            1,
            2,
            before[task_id][0]["runStatus"] or None,
            after[task_id][0]["runStatus"] or None,
        )
        assert closed is not None and still_open is None
    assert by_task[deleted][-1][3] is not None  # a deleted task's version is closed


def test_incremental_asks_only_for_new_jobs_and_unfinished_tasks(engine, fake_api, run_sync):
    """`--incremental --tasks` lists the tasks of the new jobs and of the jobs with an
    unfinished task, and describes each running one: no other task request."""
    api = fake_api(JOBS)
    run_sync(engine, api, tasks=True)
    unfinished = unfinished_jobs(api)
    assert unfinished
    new = [job["jobId"] for job in api.add(5)]
    api.advance(4 * 3600)  # the new jobs get tasks; some old jobs get new ones (not looked at)
    api.reset_counters()
    result = run_sync(engine, api, tasks=True, incremental=True)

    asked = set(new) | unfinished
    running = sum(item["runStatus"] == "Running" for job in asked for item in api.task_list(job))
    assert api.requests_by_action["DescribeFineTuningTasks"] == len(asked)
    assert api.requests_by_action["DescribeFineTuningTask"] == running
    assert result.task_requests == len(asked) + running
    assert result.jobs_inserted == 5 and result.mode == "incremental"
    with engine.connect() as connection:
        refreshed = set(
            connection.scalars(
                select(finetuning_task_lists.c.job_id).where(
                    finetuning_task_lists.c.run_id == result.run_id
                )
            )
        )
    assert refreshed == asked


def test_full_sync_lists_old_finished_jobs_only_once_max_age_passed(engine, fake_api, run_sync):
    """With the default --tasks-max-age, a second full sync lists only the jobs with an
    unfinished task; with a max age already passed, every job."""
    api = fake_api(JOBS)
    first = run_sync(engine, api, tasks=True)
    busy = len(unfinished_jobs(api))
    api.reset_counters()
    second = run_sync(engine, api, tasks=True)
    assert api.requests_by_action["DescribeFineTuningTasks"] == busy < JOBS
    assert second.tasks_inserted == 0 and second.tasks_seen < first.tasks_seen
    api.reset_counters()
    run_sync(engine, api, tasks=True, tasks_max_age=EVERY_TIME)
    assert api.requests_by_action["DescribeFineTuningTasks"] == JOBS


def test_a_deleted_job_keeps_its_tasks(engine, fake_api, run_sync):
    """When a job disappears, its tasks keep their rows (not marked deleted) and leave the
    finetuning_tasks_current view with it."""
    api = fake_api(JOBS)
    run_sync(engine, api, tasks=True)
    job = next(j["jobId"] for j in api.job_list() if len(api.task_list(j["jobId"])) >= 2)
    tasks = {item["taskId"] for item in api.task_list(job)}
    api.delete([job])
    result = run_sync(engine, api, tasks=True, tasks_max_age=EVERY_TIME)
    assert result.jobs_deleted == 1 and result.tasks_deleted == 0
    rows = stored(engine)
    assert all(rows[t]["deleted_at"] is None for t in tasks)
    with engine.connect() as connection:
        assert (
            connection.scalar(
                select(finetuning_jobs.c.deleted_at).where(finetuning_jobs.c.job_id == job)
            )
            is not None
        )
        current = set(
            connection.execute(
                select(finetuning_tasks.c.task_id).select_from(finetuning_tasks)
            ).scalars()
        )
        in_view = set(
            connection.exec_driver_sql("SELECT task_id FROM finetuning_tasks_current").scalars()
        )
    assert tasks <= current and not tasks & in_view
    assert len(in_view) == len(current) - len(tasks)


def test_failed_walk_keeps_each_committed_page_with_its_tasks(engine, fake_api, run_sync):
    """A walk that fails midway leaves every committed job with its tasks (page, tasks and
    counts commit together); the resumed sync completes them, exactly as listed."""
    api = fake_api(JOBS)
    api.faults = Faults(fail_after_pages=150)  # past the first page's 100 task lists
    with pytest.raises(RetriesExhausted):
        run_sync(engine, api, tasks=True, task_concurrency=1)
    with engine.connect() as connection:
        jobs = set(connection.scalars(select(finetuning_jobs.c.job_id)))
        listed_jobs = set(connection.scalars(select(finetuning_task_lists.c.job_id)))
        run = connection.execute(select(sync_runs)).mappings().one()
        task_count = connection.scalar(select(func.count()).select_from(finetuning_tasks))
    assert jobs and jobs == listed_jobs and len(jobs) < JOBS
    assert run["status"] == "failed" and run["tasks_inserted"] == task_count
    api.faults = Faults()
    resumed = run_sync(engine, api, tasks=True)
    assert resumed.resumed_from == run["id"]
    assert_stored_as_listed(engine, api)


def test_throttling_on_task_requests_is_retried(engine, fake_api, run_sync):
    """With a third of all requests answered 429 (Retry-After 0), every task is still stored
    exactly, and the fetches ran side by side within the bound."""
    api = fake_api(120, faults=Faults(throttle_rate=0.3, retry_after_s=0, latency_s=0.02))
    # 25 attempts, not the suite's 10: at this rate, ten throttled attempts in a row befell one
    # of the few hundred requests in one run of several hundred (0.3**10 each); 0.3**25 never.
    patient = RetryPolicy(base_delay_s=0.001, max_delay_s=0.01, max_attempts=25)
    run_sync(engine, api, retry=patient, tasks=True, task_concurrency=4)
    api.faults = Faults()
    assert_stored_as_listed(engine, api)
    assert 2 <= api.max_in_flight <= 4 + 1  # four task fetches and the prefetched jobs page


def test_cli_sync_tasks_json_and_tasks_command(database_url, fake_api, api_env):
    """`sync --tasks --json` prints the task counts; `qfsync tasks` prints every task as JSON
    Lines without a database, the same records a sync stores."""
    api = fake_api(120)
    api_env(api)
    runner = CliRunner()
    synced = runner.invoke(main, ["sync", "--tasks", "--json", "--database-url", database_url])
    assert synced.exit_code == 0, synced.output
    summary = json.loads(synced.stdout)
    now = listed(api)
    assert summary["tasks_seen"] == summary["tasks_inserted"] == len(now)
    assert summary["task_requests"] > 0 and summary["tasks_deleted"] == 0
    printed = runner.invoke(main, ["tasks", "--task-concurrency", "3"])
    assert printed.exit_code == 0, printed.output
    records = [json.loads(line) for line in printed.stdout.splitlines()]
    assert {r["task_id"] for r in records} == now.keys()
    for record in records:
        item, progress = now[record["task_id"]]
        assert record["raw"] == item and record["run_progress"] == progress
    job = records[0]["job_id"]
    one = runner.invoke(main, ["tasks", "--job-id", job])
    assert [json.loads(line)["job_id"] for line in one.stdout.splitlines()] == [
        job for item, _ in now.values() if item["jobId"] == job
    ]


@pytest.mark.slow
def test_tasks_into_a_closed_pipe_ends_quietly(fake_api, tmp_path):
    """`qfsync tasks | head -1`: when the reader closes the pipe after one line, qfsync stops
    with the status of a tool killed by SIGPIPE (141) and nothing on stderr, as `jobs` does."""
    api = fake_api(3000)  # megabytes of output: far more than a pipe's buffer holds
    env = {
        **os.environ,
        "QIANFAN_ACCESS_KEY": DEMO_ACCESS_KEY,
        "QIANFAN_SECRET_KEY": DEMO_SECRET_KEY,
        "QIANFAN_CONSOLE_API_BASE_URL": api.url,
    }
    with subprocess.Popen(
        [qfsync_command(), "tasks"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as listing:
        assert listing.stdout is not None and listing.stderr is not None
        first = listing.stdout.readline()
        listing.stdout.close()
        stderr = listing.stderr.read()
        listing.wait(timeout=60)
    assert "task_id" in json.loads(first)
    assert (listing.returncode, stderr) == (141, b"")
    assert api.requests_by_action["DescribeFineTuningTasks"] < 3000  # it stopped early


def test_tasks_of_an_unknown_job_is_one_line(fake_api, api_env):
    """Asking for the tasks of a job the API does not know is the API's error, on one line."""
    api_env(fake_api(10))
    result = CliRunner().invoke(main, ["tasks", "--job-id", "job-nosuchjob"])
    assert result.exit_code == 1
    assert "InvalidRequestArgumentError" in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_report_tasks_section(database_url, fake_api, api_env):
    """`qfsync report` counts the tasks running and waiting now, the outcomes of the last 7
    days with their durations, and the failure share by model, as the fake lists them; the
    table and csv formats show the same sections."""
    api = fake_api(400, now=datetime.now(UTC))
    api_env(api)
    runner = CliRunner()
    assert runner.invoke(main, ["sync", "--tasks", "--database-url", database_url]).exit_code == 0
    # The report's "last 7 days" starts between these two: a task finishing in that second
    # may be counted either way.
    cutoffs = [datetime.now(UTC) - timedelta(days=7)]
    reported = json.loads(
        runner.invoke(main, ["report", "--format", "json", "--database-url", database_url]).stdout
    )["tasks"]
    cutoffs.append(datetime.now(UTC) - timedelta(days=7))
    models = {job["jobId"]: job["model"] for job in api.job_list()}
    items = [item for item, _ in listed(api).values()]
    active = Counter(i["runStatus"] or None for i in items if i["runStatus"] not in FINAL_STATUSES)
    assert {r["run_status"]: r["tasks"] for r in reported["active"]} == active

    def finished_since(cutoff: datetime) -> dict[str, tuple[int, float, float]]:
        durations: dict[str, list[float]] = {}
        for i in items:
            if i["finishDate"] != ZERO_DATE and parse_time(i["finishDate"]) >= cutoff:
                seconds = (
                    parse_time(i["finishDate"]) - parse_time(i["createDate"])
                ).total_seconds()
                durations.setdefault(i["runStatus"], []).append(seconds)
        return {s: (len(d), round(sum(d) / len(d), 1), max(d)) for s, d in durations.items()}

    outcomes = {
        r["run_status"]: (r["tasks"], r["avg_duration_s"], r["max_duration_s"])
        for r in reported["last_7_days"]
    }
    assert outcomes, "the dated fake has tasks finished in the last week"
    assert outcomes in [finished_since(cutoff) for cutoff in cutoffs]
    finished = Counter(models[i["jobId"]] for i in items if i["runStatus"] in FINAL_STATUSES)
    failed = Counter(models[i["jobId"]] for i in items if i["runStatus"] == "Failed")
    assert {r["model"]: (r["finished"], r["failed"]) for r in reported["by_model"]} == {
        model: (count, failed[model]) for model, count in finished.items()
    }
    table = runner.invoke(main, ["report", "--database-url", database_url]).stdout
    for title in ("Tasks running or waiting now", "last 7 days", "failure share by model"):
        assert title in table
    csv_text = runner.invoke(
        main, ["report", "--format", "csv", "--database-url", database_url]
    ).stdout
    sections = {line.split(",")[0] for line in csv_text.splitlines()[1:]}
    assert {"tasks_active", "tasks_last_7_days", "tasks_by_model"} <= sections


def test_library_tasks_and_sync_with_tasks(database_url, fake_api):
    """`qfsync.tasks` yields the records `qfsync tasks` prints, for some jobs or all, and
    `qfsync.sync(tasks=True)` counts what it stored."""
    api = fake_api(150)
    login = {"endpoint": api.url, "access_key": DEMO_ACCESS_KEY, "secret_key": DEMO_SECRET_KEY}
    now = listed(api)
    assert {task.task_id for task in qfsync.tasks(**login)} == now.keys()
    job = next(item["jobId"] for item, _ in now.values())
    assert [task.raw for task in qfsync.tasks(job_ids=[job], task_concurrency=2, **login)] == (
        api.task_list(job)
    )
    result = qfsync.sync(database_url, tasks=True, **login)
    assert (result.tasks_seen, result.tasks_inserted) == (len(now), len(now))


def test_a_job_deleted_since_the_last_sync_does_not_fail_incremental(engine, fake_api, run_sync):
    """A job deleted in the API while one of its tasks was unfinished: an incremental sync
    (which never marks jobs deleted) skips its tasks instead of failing on the API's
    InvalidRequestArgumentError, and the job's tasks keep their rows untouched."""
    api = fake_api(JOBS)
    run_sync(engine, api, tasks=True)
    job = sorted(unfinished_jobs(api))[0]
    tasks = {item["taskId"] for item in api.task_list(job)}
    before = {task_id: stored(engine)[task_id] for task_id in tasks}
    api.delete([job])
    result = run_sync(engine, api, tasks=True, incremental=True)
    assert result.status == "succeeded" and result.tasks_deleted == 0
    assert {task_id: stored(engine)[task_id] for task_id in tasks} == before
    assert any(job in note and "skipped" in note for note in result.notes)


# A BI tool's session may run in any time zone; UTC+8 moves the last hours of a month.
SESSION_TIME_ZONE = {
    "postgresql": "SET TIME ZONE 'Asia/Shanghai'",
    "mysql": "SET time_zone = '+08:00'",
}


def test_outcomes_monthly_view_gives_the_fakes_numbers(engine, fake_api, run_sync):
    """finetuning_task_outcomes_monthly holds, per UTC month of creation, model, train mode
    and status, the tasks and their average and longest durations, as computed from the
    fake's tasks, whatever the session's time zone."""
    # Dated so that the tasks straddle a month's end, some in its last eight hours.
    api = fake_api(JOBS, now=datetime(2024, 3, 1, 6, tzinfo=UTC))
    run_sync(engine, api, tasks=True)
    jobs = {job["jobId"]: job for job in api.job_list()}
    expected: dict[tuple, list[float | None]] = {}
    for item, _ in listed(api).values():
        job = jobs[item["jobId"]]
        key = (item["createDate"][:7], job["model"], job["trainMode"], item["runStatus"] or None)
        finished = item["finishDate"] != ZERO_DATE
        seconds = (
            (parse_time(item["finishDate"]) - parse_time(item["createDate"])).total_seconds()
            if finished
            else None
        )
        expected.setdefault(key, []).append(seconds)
    late_february = [
        item
        for item, _ in listed(api).values()
        if item["createDate"] >= "2024-02-29T16:00:00Z" and item["createDate"] < "2024-03"
    ]
    assert late_february and {month for month, *_ in expected} == {"2024-02", "2024-03"}
    with engine.connect() as connection:
        if engine.dialect.name in SESSION_TIME_ZONE:
            connection.exec_driver_sql(SESSION_TIME_ZONE[engine.dialect.name])
        rows = connection.exec_driver_sql(
            "SELECT month, model, train_mode, run_status, tasks, avg_duration_s, max_duration_s"
            " FROM finetuning_task_outcomes_monthly"
        ).all()
    found = {(m, mo, tm, s): (int(n), avg, longest) for m, mo, tm, s, n, avg, longest in rows}
    assert found.keys() == expected.keys()
    for key, durations in expected.items():
        known = [d for d in durations if d is not None]
        count, avg, longest = found[key]
        assert count == len(durations), key
        if known:
            assert float(avg) == pytest.approx(sum(known) / len(known)), key
            assert float(longest) == max(known), key
        else:
            assert avg is None and longest is None, key


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_loses_and_double_counts_no_task(
    engine, database_url, fake_api
):
    """A `sync --tasks` killed with SIGKILL has committed each page with its tasks and their
    counts; the resumed run completes them: every task stored as listed, each inserted by
    exactly one of the two runs, one version each."""
    from test_faults import start_sync, wait_for_pages

    api = fake_api(1000, faults=Faults(latency_s=0.01))
    process = start_sync(api, database_url, "--tasks")
    wait_for_pages(engine, 3, process)
    process.kill()
    process.communicate()
    with engine.connect() as connection:
        (dead,) = connection.execute(select(sync_runs)).mappings().all()
        committed = connection.scalar(select(func.count()).select_from(finetuning_tasks))
    assert dead["status"] == "running" and dead["pages"] < 10
    assert dead["tasks_inserted"] == dead["tasks_seen"] == committed > 0
    api.faults = Faults()
    rerun = start_sync(api, database_url, "--tasks", "--json")
    out, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err
    resumed = json.loads(out)
    assert resumed["resumed_from"] == dead["id"]
    now = assert_stored_as_listed(engine, api)
    assert dead["tasks_inserted"] + resumed["tasks_inserted"] == len(now)
    assert resumed["tasks_updated"] + resumed["tasks_deleted"] == 0
    assert len(versions(engine)) == len(now)


def test_a_job_with_more_tasks_than_a_statement_takes_parameters(engine):
    """One job listing 66,000 tasks, past PostgreSQL's 65,535 parameters a statement: stored
    whole on every database, then found unchanged, not inserted again."""
    created = datetime(2024, 1, 2, tzinfo=UTC)
    listed = [
        parse_task(
            {
                "taskId": f"task-{n:05}",
                "jobId": "job-a",
                "runStatus": "Done",
                "createDate": "2024-01-02T00:00:00Z",
                "finishDate": "2024-01-02T01:00:00Z",
            },
            f"taskList[{n}]",
        )
        for n in range(66_000)
    ]
    counts = []
    for _ in range(2):
        with engine.begin() as connection:
            run_id, _ = runs.start(connection, Scope(None, None), runs.FULL, 100, None)
            counts.append(write_tasks(connection, {"job-a": listed}, run_id, created))
    assert (counts[0].inserted, counts[1].unchanged, counts[1].inserted) == (66_000, 66_000, 0)
    with engine.connect() as connection:
        assert connection.scalar(select(func.count()).select_from(finetuning_tasks)) == 66_000
