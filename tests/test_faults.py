"""Faults and bad input: retries, resume, signals, SIGKILL, the lock, clear errors, no secrets."""

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select, text

from qfsync import cli, db
from qfsync.cli import main
from qfsync.client import Client, Credentials, JobQuery, RetryPolicy
from qfsync.errors import ForcedInterrupt, Interrupted, RetriesExhausted
from qfsync.fake_api import DEMO_ACCESS_KEY, DEMO_SECRET_KEY, DENIED_ACCESS_KEY, Faults
from qfsync.runs import COUNTS
from qfsync.schema import finetuning_jobs, sync_runs
from qfsync.syncer import StopFlag, Sync

JOBS = 2537
NO_RETRY = RetryPolicy(max_attempts=2, base_delay_s=0.001, max_delay_s=0.001)
WRONG_SECRET = "wrong-secret-7f3a9c"  # a value to search every output and table for


def job_ids(engine) -> list[str]:
    with engine.connect() as connection:
        return list(connection.scalars(select(finetuning_jobs.c.job_id)))


def runs_of(engine) -> list[dict]:
    with engine.connect() as connection:
        rows = connection.execute(select(sync_runs).order_by(sync_runs.c.id)).mappings()
        return [dict(row) for row in rows]


def assert_exact(engine, api) -> None:
    ids = job_ids(engine)
    assert len(ids) == len(set(ids))
    assert sorted(ids) == sorted(item["jobId"] for item in api.job_list())
    with engine.connect() as connection:
        listed = connection.scalar(
            select(func.count()).where(finetuning_jobs.c.deleted_at.is_(None))
        )
    assert listed == len(api.job_list())


def test_mixed_faults_end_with_exact_data(engine, fake_api, run_sync):
    """15% 500s, 10% 429 with Retry-After, 5% dropped connections and 3% malformed JSON: the sync
    still succeeds with exactly the API's jobs."""
    faults = Faults(
        error_rate=0.15, throttle_rate=0.10, retry_after_s=0, drop_rate=0.05, malformed_rate=0.03
    )
    api = fake_api(JOBS, faults=faults)
    result = run_sync(
        engine, api, retry=RetryPolicy(max_attempts=12, base_delay_s=0.001, max_delay_s=0.01)
    )
    assert result.status == "succeeded" and result.jobs_inserted == JOBS
    assert result.requests > 26  # the faults really happened
    assert_exact(engine, api)


def test_persistent_failure_then_resume_at_the_next_page(engine, fake_api, database_url, api_env):
    """Persistent failure after page 7: exit 1, the run `failed` with the reason, pages 1-7
    stored; once the fault clears, the next sync resumes at page 8 and ends exact."""
    api = fake_api(JOBS, faults=Faults(fail_after_pages=7))
    api_env(api)
    runner = CliRunner()
    args = ["sync", "--database-url", database_url, "--max-attempts", "2", "--json"]
    failed = runner.invoke(main, args)
    assert failed.exit_code == 1
    assert "InternalError" in failed.stderr and "Traceback" not in failed.output
    assert len(job_ids(engine)) == 700
    [run] = runs_of(engine)
    assert run["status"] == "failed" and "InternalError" in run["error"]
    assert run["pages"] == 7 and run["next_marker"] == api.job_list()[700]["jobId"]

    api.faults = Faults()
    api.reset_counters()
    resumed = runner.invoke(main, args)
    assert resumed.exit_code == 0, resumed.output
    result = json.loads(resumed.stdout)
    assert result["resumed_from"] == run["id"] and "resuming" in resumed.stderr
    assert api.request_count == 19 and api.bodies[0]["marker"] == run["next_marker"]
    assert (result["pages"], result["jobs_inserted"], result["jobs_deleted"]) == (19, 1837, 0)
    assert_exact(engine, api)


def test_rejected_resume_marker_walks_from_the_start(engine, fake_api, run_sync):
    """If the job behind the saved marker was deleted, the API rejects it: the sync says so and
    walks from the start, ending exact (the deleted job is marked deleted)."""
    api = fake_api(500, faults=Faults(fail_after_pages=2))
    with pytest.raises(RetriesExhausted):
        run_sync(engine, api, retry=NO_RETRY)
    marker = runs_of(engine)[0]["next_marker"]
    api.delete([marker])
    api.faults = Faults()
    result = run_sync(engine, api)
    assert any("rejected the saved marker" in note for note in result.notes)
    assert result.resumed_from is None and result.pages == 5 and result.jobs_deleted == 0
    assert_exact(engine, api)


def test_restart_ignores_the_failed_run(engine, fake_api, run_sync):
    """`--restart` walks from the first page even after a failed run."""
    api = fake_api(500, faults=Faults(fail_after_pages=2))
    with pytest.raises(RetriesExhausted):
        run_sync(engine, api, retry=NO_RETRY)
    api.faults = Faults()
    api.reset_counters()
    result = run_sync(engine, api, restart=True)
    assert result.resumed_from is None and "marker" not in api.bodies[0]
    assert result.pages == 5


def test_failed_walk_deletes_nothing(engine, fake_api, run_sync):
    """A walk that did not finish never marks a job deleted."""
    api = fake_api(500)
    run_sync(engine, api)
    api.delete([item["jobId"] for item in api.job_list()[:50]])
    api.faults = Faults(fail_after_pages=3)
    with pytest.raises(RetriesExhausted):
        run_sync(engine, api, retry=NO_RETRY)
    with engine.connect() as connection:
        deleted = connection.scalar(
            select(func.count()).where(finetuning_jobs.c.deleted_at.is_not(None))
        )
    assert deleted == 0


def subprocess_env(api, database_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QIANFAN_", "QFSYNC_"))}
    env.update(
        QIANFAN_CONSOLE_API_BASE_URL=api.url,
        QIANFAN_ACCESS_KEY=DEMO_ACCESS_KEY,
        QIANFAN_SECRET_KEY="qfsync-demo-sk",
        QFSYNC_DATABASE_URL=database_url,
        **extra,
    )
    return env


def start_sync(api, database_url: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "qfsync", "sync", *args],
        env=subprocess_env(api, database_url),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_pages(engine, pages: int, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        with engine.connect() as connection:
            done = connection.scalar(select(func.max(sync_runs.c.pages)))
        if done and done >= pages:
            return
        time.sleep(0.05)
    raise AssertionError(f"the sync did not reach {pages} pages")


@pytest.mark.slow
def test_sigkill_mid_run_then_resume(engine, database_url, fake_api):
    """A sync killed with SIGKILL leaves a `running` row; the next sync marks it failed as
    abandoned, resumes from its last page, and ends with exact data and no duplicates."""
    api = fake_api(JOBS, faults=Faults(latency_s=0.1))
    process = start_sync(api, database_url)
    wait_for_pages(engine, 5, process)
    process.kill()
    process.communicate()
    [dead] = runs_of(engine)
    assert dead["status"] == "running" and dead["pages"] >= 5
    api.faults = Faults()
    rerun = start_sync(api, database_url, "--json")
    out, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err
    assert f"run {dead['id']} was abandoned" in err
    assert json.loads(out)["resumed_from"] == dead["id"]
    first, second = runs_of(engine)
    assert first["status"] == "failed" and "abandoned" in first["error"]
    assert second["status"] == "succeeded"
    assert_exact(engine, api)


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_stops_cleanly_between_pages(engine, database_url, fake_api, signum, code):
    """SIGTERM or SIGINT: the page in flight is committed whole, the run is marked failed with
    'interrupted', and the exit code is 143 or 130."""
    api = fake_api(JOBS, faults=Faults(latency_s=0.1))
    process = start_sync(api, database_url)
    wait_for_pages(engine, 3, process)
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    assert process.returncode == code
    assert f"interrupted by {signal.Signals(signum).name}" in err and "Traceback" not in err
    [run] = runs_of(engine)
    assert run["status"] == "failed" and run["error"] == f"interrupted by {signum.name}"
    assert len(job_ids(engine)) == run["jobs_seen"] == run["pages"] * 100


@pytest.mark.slow
def test_two_syncs_at_once(engine, database_url, fake_api):
    """Two syncs started together: one runs, the other exits 3 naming the running one; the
    data is exact with no duplicate rows."""
    api = fake_api(JOBS, faults=Faults(latency_s=0.01))
    both = [start_sync(api, database_url) for _ in range(2)]
    outcomes = sorted((p.wait(timeout=120), p.communicate()[1]) for p in both)
    (ok, _), (locked, message) = outcomes
    assert (ok, locked) == (0, 3), outcomes
    assert "another sync is running (run " in message or "is starting" in message
    assert [run["status"] for run in runs_of(engine)] == ["succeeded"]
    assert_exact(engine, api)


def test_unreachable_database_is_one_line_without_password(fake_api, api_env):
    """An unreachable database: exit 1, one line on stderr, the password masked."""
    api_env(fake_api(10))
    url = "postgresql://qfsync:hunter2-secret@127.0.0.1:1/nowhere"
    result = CliRunner().invoke(main, ["sync", "--database-url", url])
    assert result.exit_code == 1
    assert len(result.stderr.splitlines()) == 1 and "cannot connect" in result.stderr
    assert "hunter2-secret" not in result.output and "***" in result.stderr


@pytest.mark.parametrize(
    "url", ["not a url", "nosuchdb://x/y", "postgresql://a:b@host:notaport/db"]
)
def test_malformed_database_url_is_a_usage_error(url, fake_api, api_env):
    """A malformed URL or unknown dialect: exit 2, one line, no traceback."""
    api_env(fake_api(10))
    result = CliRunner().invoke(main, ["sync", "--database-url", url])
    assert result.exit_code == 2, result.output
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.output


@pytest.mark.parametrize(
    "url",
    [
        "mysql://qfsync:hunter2-secret@127.0.0.1:1/db?nosuchoption=1",
        "mysql://qfsync:hunter2-secret@127.0.0.1:1/db?charset=nosuchcharset",
        "sqlite:///{tmp}/x.db?nosuchoption=1",
    ],
)
def test_url_options_the_driver_refuses_are_a_usage_error(url, fake_api, api_env, tmp_path):
    """Query options the driver does not take (PyMySQL raises TypeError or AttributeError,
    SQLAlchemy warns about SQLite's): exit 2, one line, no password, nothing written."""
    api_env(fake_api(10))
    result = CliRunner().invoke(main, ["sync", "--database-url", url.format(tmp=tmp_path)])
    assert result.exit_code == 2, result.output
    [line] = result.stderr.splitlines()
    assert "internal error" not in line and "hunter2-secret" not in line, line
    assert line.startswith("qfsync: error: the driver refuses the options of "), line
    assert not (tmp_path / "x.db").exists()


def test_database_failure_mid_run_keeps_earlier_pages(engine, fake_api, run_sync):
    """The database failing mid-run fails the run with the reason; committed pages stay."""
    api = fake_api(1000)

    def break_table(result):
        if result.pages == 3:
            with engine.begin() as connection:
                connection.execute(text("ALTER TABLE finetuning_jobs RENAME TO jobs_aside"))

    with pytest.raises(db.DatabaseError, match="database error"):
        run_sync(engine, api, progress=break_table)
    with engine.begin() as connection:
        connection.execute(text("ALTER TABLE jobs_aside RENAME TO finetuning_jobs"))
    assert len(job_ids(engine)) == 300
    [run] = runs_of(engine)
    assert run["status"] == "failed" and run["pages"] == 3 and "database error" in run["error"]


def test_secrets_appear_nowhere(engine, database_url, fake_api, api_env, caplog):
    """A wrong secret key fails with the hint to check the keys, and the secret appears in no
    output, log line at any level, --json output or table."""
    caplog.set_level(logging.DEBUG)
    api = fake_api(50)
    api_env(api)
    os.environ["QIANFAN_SECRET_KEY"] = WRONG_SECRET  # api_env's monkeypatch restores it
    runner = CliRunner()
    outputs = []
    for extra in ([], ["--json"]):
        result = runner.invoke(main, ["--verbose", "sync", "--database-url", database_url, *extra])
        assert result.exit_code == 1
        assert "SignatureDoesNotMatch" in result.stderr and "QIANFAN_SECRET_KEY" in result.stderr
        outputs += [result.stdout, result.stderr]
    outputs.append(runner.invoke(main, ["runs", "--database-url", database_url, "--json"]).stdout)
    outputs.append(caplog.text)
    with engine.connect() as connection:
        for table in ("sync_runs", "finetuning_jobs", "finetuning_job_versions"):
            outputs.append(repr(connection.execute(text(f"SELECT * FROM {table}")).all()))
    assert all(run["status"] == "failed" for run in runs_of(engine))
    assert not [text_ for text_ in outputs if WRONG_SECRET in text_]


@pytest.mark.parametrize(
    ("fake_options", "expected"),
    [
        (
            {"faults": Faults(malformed_rate=1.0)},
            "malformed response: the body is not JSON; got: {",
        ),
        ({"clock_offset_s": 3600}, "RequestExpired"),
        ({"faults": Faults(throttle_rate=1.0, retry_after_s=0)}, "HTTP 429"),
        ({"faults": Faults(error_rate=1.0)}, "HTTP 500 InternalError"),
    ],
)
def test_api_failures_are_one_clear_line(
    engine, database_url, fake_api, api_env, fake_options, expected
):
    """Malformed responses, a skewed clock, throttling and server errors that outlast the retry
    budget each end the sync with exit 1 and one line on stderr that says what happened (with
    an excerpt, or the clock hint), and leave the run `failed` with the same reason."""
    api_env(fake_api(50, **fake_options))
    args = ["sync", "--database-url", database_url, "--max-attempts", "2"]
    result = CliRunner().invoke(main, [*args, "--max-retry-wait", "1"])
    assert result.exit_code == 1
    [line] = result.stderr.splitlines()
    assert expected in line and "Traceback" not in result.output
    if "RequestExpired" in expected:
        assert "clock" in line
    [run] = runs_of(engine)
    assert run["status"] == "failed" and expected in run["error"]


def test_access_denied_names_the_policies(engine, database_url, fake_api, api_env, monkeypatch):
    """A key without permission: exit 1 and one line naming the policies that grant the action."""
    api_env(fake_api(10))
    monkeypatch.setenv("QIANFAN_ACCESS_KEY", DENIED_ACCESS_KEY)
    result = CliRunner().invoke(main, ["sync", "--database-url", database_url])
    assert result.exit_code == 1
    [line] = result.stderr.splitlines()
    assert "AccessDenied" in line and "QianfanReadAccessPolicy" in line


@pytest.mark.parametrize(
    "args",
    [
        ["--page-size", "0"],
        ["--page-size", "101"],
        ["--wait", "-1"],
        ["--max-attempts", "x"],
        ["--wait", "nan"],
        ["--timeout", "nan"],
        ["--timeout", "inf"],
        ["--timeout", "1e309"],
        ["--max-retry-wait", "nan"],
    ],
)
def test_bad_option_values_are_usage_errors(database_url, args):
    """A wrong option value exits 2 with one line, before anything runs."""
    result = CliRunner().invoke(main, ["sync", "--database-url", database_url, *args])
    assert result.exit_code == 2 and "Traceback" not in result.output
    [line] = result.stderr.splitlines()
    assert line.startswith("qfsync: usage error: ") and args[0] in line


def test_a_silent_postgresql_server_is_a_timeout_not_a_hang(monkeypatch):
    """A server that accepts the connection and never answers (a host half-way through a
    failover, a wrong port): a command fails with one line after the connect timeout
    instead of holding the cron slot for ever. (`runs`: `sync` installs signal handlers,
    which a thread cannot.)"""
    monkeypatch.setattr(db, "CONNECT_TIMEOUT_S", 1)
    with socket.create_server(("127.0.0.1", 0)) as silent:
        url = f"postgresql://qfsync@127.0.0.1:{silent.getsockname()[1]}/nowhere"
        outcome: list = []
        worker = threading.Thread(
            target=lambda: outcome.append(
                CliRunner().invoke(main, ["runs", "--database-url", url])
            ),
            daemon=True,
        )
        worker.start()
        worker.join(timeout=60)
    assert not worker.is_alive(), "the connection attempt hung"
    [result] = outcome
    assert result.exit_code == 1, result.output
    [line] = result.stderr.splitlines()
    assert line.startswith("qfsync: error: cannot connect to ") and "timeout" in line, line


class StopAfterCommit:
    """A page writer whose `nth` page is committed and then stopped by a forced stop, as when
    the second signal lands while the page's COMMIT is on its way (or, on PostgreSQL, while
    the page's pipeline, COMMIT included, waits for its results)."""

    def __init__(self, sync: Sync, nth: int):
        self.writer, self.stop, self.nth, self.pages = sync.writer, sync.stop, nth, 0

    def prepare(self, jobs):
        return self.writer.prepare(jobs)

    def write(self, connection, prepared, *args, **kwargs):
        counts = self.writer.write(connection, prepared, *args, **kwargs)
        self.pages += 1
        if self.pages == self.nth:
            self.stopped(connection)
        return counts

    def stopped(self, connection) -> None:
        connection.commit()
        self.force()

    def force(self) -> None:
        """The command line's two signals: the first asks to stop, the second forces it."""
        self.stop.request(Interrupted("SIGTERM", 143))
        raise ForcedInterrupt("SIGTERM", 143)


def demo_client(api) -> Client:
    return Client(Credentials(DEMO_ACCESS_KEY, DEMO_SECRET_KEY), api.url, NO_RETRY)


def test_a_stopped_runs_counts_are_those_it_committed(engine, fake_api):
    """A forced stop can land after a page is committed and before the sync has added it up:
    the failed run's result (the --json line, the metrics) still says what its row says."""
    with demo_client(fake_api(1000)) as client:
        sync = Sync(engine, client, JobQuery(page_size=100))
        sync.writer = StopAfterCommit(sync, nth=3)
        with pytest.raises(Interrupted, match="interrupted by SIGTERM"):
            sync.run()
    (run,) = runs_of(engine)
    assert run["status"] == "failed" and run["pages"] == 3 and run["jobs_inserted"] == 300
    assert {name: getattr(sync.result, name) for name in COUNTS} == {
        name: run[name] for name in COUNTS
    }


class RollbackImpossible(StopAfterCommit):
    """A page writer whose `nth` page is stopped before its commit, on a connection that can
    no longer roll back (psycopg after a forced stop cut its pipeline short): the page's
    transaction keeps the lock on the run's row."""

    def write(self, connection, prepared, *args, **kwargs):
        # The page's transaction left open, whichever writer: the caller commits.
        return super().write(connection, prepared, *args, **{**kwargs, "commit": False})

    def stopped(self, connection) -> None:
        driver = connection.connection.driver_connection

        def rollback():
            raise type(driver).InterfaceError("cannot roll back now")  # as psycopg's

        driver.rollback = rollback
        self.force()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_page_that_cannot_roll_back_does_not_block_marking_the_run_failed(engine, fake_api):
    """The page connection of a forced stop is dropped before the run is marked failed: the
    server rolls its transaction back, and `fail`, on another connection, does not wait for
    ever on the run row's lock."""
    client = demo_client(fake_api(500))
    sync = Sync(engine, client, JobQuery(page_size=100))
    sync.writer = RollbackImpossible(sync, nth=2)
    outcome: list[BaseException | None] = []
    thread = threading.Thread(target=lambda: outcome.append(catch(sync.run)), daemon=True)
    thread.start()
    thread.join(timeout=60)
    client.close()
    if thread.is_alive():  # blocked on the row lock: free it, so that the suite goes on
        with engine.connect() as connection:
            connection.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
        thread.join(timeout=30)
        pytest.fail("marking the run failed waited on the interrupted page's lock")
    assert isinstance(outcome[0], Interrupted), outcome
    (run,) = runs_of(engine)
    assert run["status"] == "failed" and run["error"] == "interrupted by SIGTERM"
    assert run["pages"] == sync.result.pages == 1


def catch(call) -> BaseException | None:
    try:
        call()
    except BaseException as exc:  # noqa: BLE001 - handed to the test's thread to check
        return exc
    return None


def test_a_second_signal_waits_until_the_grace_timer_has_started(monkeypatch):
    """The first signal starts the grace timer; a second one that arrives meanwhile forces
    the stop only once the timer's thread has started, never inside Thread.start()."""
    steps: list[str] = []

    class Timer(threading.Timer):
        def start(self) -> None:
            os.kill(os.getpid(), signal.SIGTERM)  # the second signal, while the timer starts
            steps.append("signalled")
            super().start()
            steps.append("started")

    monkeypatch.setattr(cli.threading, "Timer", Timer)
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        disarm = cli.install_signal_handlers(StopFlag())
        try:
            with pytest.raises(ForcedInterrupt, match="interrupted by SIGTERM"):
                os.kill(os.getpid(), signal.SIGTERM)  # the first: Python handles it at once
        finally:
            disarm()
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    assert steps == ["signalled", "started"]
