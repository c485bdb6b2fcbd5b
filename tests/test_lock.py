"""One writer per database: the lock's identity is the database, every run row write is fenced,
the migration runs under the lock, and a signal ends a wait for it."""

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select, text, update
from sqlalchemy.engine import make_url
from test_faults import assert_exact, runs_of, subprocess_env, wait_for_pages

from qfsync import db, runs, writers
from qfsync.cli import main
from qfsync.errors import Interrupted, LockLost, SyncLocked
from qfsync.fake_api import FakeApi, Faults
from qfsync.lock import server_lock_key, server_lock_name, sync_lock
from qfsync.schema import finetuning_job_versions, sync_runs
from qfsync.store import Scope
from qfsync.syncer import StopFlag

JOBS = 1200


def other_spellings(url: str, tmp_path: Path) -> list[tuple[str, Path | None]]:
    """Other URLs of the same database, each with the working directory it is meant for."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = Path(parsed.database or "")
        link = tmp_path / "link.db"
        if not link.is_symlink():
            link.symlink_to(path)
        return [
            (f"sqlite:///{path.name}", path.parent),  # relative to the working directory
            (f"sqlite:///{path.parent}/../{path.parent.name}/{path.name}", None),
            (f"sqlite:///{link}", None),
            (f"sqlite:///file:{path}?uri=true", None),  # SQLite's URI form
        ]
    host = "localhost" if parsed.host == "127.0.0.1" else "127.0.0.1"
    spellings = [
        parsed.set(host=host),
        parsed.update_query_dict({"connect_timeout": "17"}),
        parsed.set(host=host).update_query_dict({"connect_timeout": "9"}),
    ]
    return [(spelling.render_as_string(hide_password=False), None) for spelling in spellings]


def in_directory(directory: Path | None):
    class Chdir:
        def __enter__(self):
            self.before = os.getcwd()
            os.chdir(directory or self.before)

        def __exit__(self, *exc):
            os.chdir(self.before)

    return Chdir()


def start_cli(database_url: str, api: FakeApi, *args: str, cwd: Path | None = None):
    return subprocess.Popen(
        [sys.executable, "-m", "qfsync", *args],
        env=subprocess_env(api, database_url),
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_every_spelling_of_the_database_meets_the_same_lock(engine, database_url, tmp_path):
    """A relative or absolute path, a symlink, localhost or 127.0.0.1, extra query options: while
    one spelling holds the lock, no other can take it; once released, each can."""
    with sync_lock(engine) as held:
        assert held
        for url, cwd in other_spellings(database_url, tmp_path):
            with in_directory(cwd), db.connected(url) as other, sync_lock(other) as also:
                assert not also, url
    for url, cwd in other_spellings(database_url, tmp_path):
        with in_directory(cwd), db.connected(url) as other, sync_lock(other) as free:
            assert free, url


@pytest.mark.slow
def test_a_sync_under_another_spelling_exits_3(engine, database_url, fake_api, tmp_path):
    """A real `qfsync sync` process given another spelling of the database finds the lock held
    and exits 3 without writing a run."""
    api = fake_api(10)
    [(url, cwd), *_] = other_spellings(database_url, tmp_path)
    with sync_lock(engine) as held:
        assert held
        process = start_cli(url, api, "sync", cwd=cwd)
        _, err = process.communicate(timeout=60)
    assert process.returncode == 3, err
    assert err.startswith("qfsync: error: another sync is") and err.count("\n") == 1
    assert runs_of(engine) == []


def test_the_lock_is_per_database_and_names_the_holder(engine, fake_api, run_sync):
    """While a sync of any scope holds the database, a sync of another scope fails with
    SyncLocked naming the running run and its scope; `wait_s` gives up after waiting."""
    api = fake_api(50)
    with engine.begin() as connection:
        runs.start(connection, Scope("SFT"), "full", 100, None)
        connection.execute(update(sync_runs).values(host="elsewhere"))
    with sync_lock(engine) as held:
        assert held
        with pytest.raises(
            SyncLocked,
            match=r"another sync is running \(run 1, full trainMode=SFT;model=\*, started .*"
            r"host elsewhere",
        ):
            run_sync(engine, api, wait_s=0.3)
    assert run_sync(engine, api, train_mode="DPO").status == "succeeded"


@pytest.mark.slow
def test_overlapping_scopes_started_together_both_end_correctly(engine, database_url, fake_api):
    """A full sync and a `--train-mode SFT` sync started together: one waits for the other,
    both succeed, and the history has one version per job (no duplicate key, no double row)."""
    api = fake_api(JOBS, faults=Faults(latency_s=0.01))
    both = [
        start_cli(database_url, api, "sync", "--wait", "120"),
        start_cli(database_url, api, "sync", "--wait", "120", "--train-mode", "SFT"),
    ]
    outcomes = [(p.wait(timeout=180), p.communicate()[1]) for p in both]
    assert [code for code, _ in outcomes] == [0, 0], outcomes
    assert all("Traceback" not in err and "Duplicate" not in err for _, err in outcomes)
    assert sorted(run["status"] for run in runs_of(engine)) == ["succeeded", "succeeded"]
    assert_exact(engine, api)
    with engine.connect() as connection:
        versions = connection.scalar(select(func.count()).select_from(finetuning_job_versions))
    assert versions == JOBS


@pytest.mark.slow
def test_two_first_syncs_on_an_empty_database(database_url, fake_api):
    """Two first syncs on an empty database started together: the schema is migrated once,
    under the lock, and both runs succeed."""
    api = fake_api(300)
    both = [start_cli(database_url, api, "sync", "--wait", "120") for _ in range(2)]
    outcomes = [(p.wait(timeout=180), p.communicate()[1]) for p in both]
    assert [code for code, _ in outcomes] == [0, 0], outcomes
    assert sum("upgraded the database schema" in err for _, err in outcomes) == 1
    with db.connected(database_url) as engine:
        assert db.current_revision(engine) == db.SCHEMA_HEAD
        assert [run["status"] for run in runs_of(engine)] == ["succeeded", "succeeded"]
        assert_exact(engine, api)


def test_db_upgrade_takes_the_lock(database_url):
    """`qfsync db upgrade` migrates only under the lock: while a sync holds it, it exits 3 and
    leaves the schema alone."""
    with db.connected(database_url) as engine, sync_lock(engine) as held:
        assert held
        result = CliRunner().invoke(main, ["db", "upgrade", "--database-url", database_url])
        assert result.exit_code == 3, result.output
        assert "a sync is running" in result.stderr
        assert db.current_revision(engine) is None


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_ends_the_wait_for_the_lock(engine, database_url, fake_api, signum, code):
    """A sync waiting for the lock with --wait 600 says it waits, and a signal ends it at once
    with the signal's exit code, without a run row."""
    api = fake_api(10)
    with sync_lock(engine) as held:
        assert held
        process = start_cli(database_url, api, "sync", "--wait", "600")
        assert process.stderr is not None
        line = process.stderr.readline()
        assert "waiting up to 600s" in line, line
        process.send_signal(signum)
        _, err = process.communicate(timeout=30)  # the wait would be 600 s without the fix
    assert process.returncode == code, err
    assert f"interrupted by {signal.Signals(signum).name}" in err
    assert runs_of(engine) == []


def test_a_signal_after_the_last_commit_keeps_the_run_succeeded(engine, fake_api, run_sync):
    """A stop asked for right after the last page committed changes nothing: the run is
    `succeeded` in the result and in its row."""
    stop = StopFlag()

    def signal_after_last_page(result):
        if result.pages == 3:
            stop.request(Interrupted("SIGTERM", 143))

    result = run_sync(engine, fake_api(250), stop=stop, progress=signal_after_last_page)
    assert result.status == "succeeded" and result.pages == 3
    [run] = runs_of(engine)
    assert run["status"] == "succeeded" and run["error"] is None


def test_a_closed_run_is_never_rewritten(engine):
    """Writes to a run's row are fenced on `running`: a page or a success of a run that another
    sync marked abandoned raises LockLost, and marking a succeeded run failed changes nothing."""
    with engine.begin() as connection:
        run_id, _ = runs.start(connection, Scope(), "full", 100, None)
        runs.abandon_stale(connection)
    with pytest.raises(LockLost, match="the sync lock was lost"), engine.begin() as c:
        writer = writers.for_dialect(engine.dialect.name)
        writer.write(c, writer.prepare([]), run_id, runs.utcnow(), "m")
    with pytest.raises(LockLost), engine.begin() as connection:
        runs.succeed(connection, run_id, complete=True, deleted=0)
    [run] = runs_of(engine)
    assert (run["status"], run["pages"], run["error"]) == ("failed", 0, runs.ABANDONED)

    with engine.begin() as connection:
        done, _ = runs.start(connection, Scope(), "full", 100, None)
        runs.succeed(connection, done, complete=True, deleted=0)
    runs.fail(engine, done, "interrupted by SIGTERM")
    assert runs_of(engine)[-1]["status"] == "succeeded"


class GatedApi(FakeApi):
    """The fake API, holding every answer after the first `open_pages` until `gate` is set."""

    def __init__(self, jobs: int, open_pages: int):
        super().__init__(jobs)
        self.open_pages, self.answered = open_pages, 0
        self.gate = threading.Event()

    def _describe(self, *args, **kwargs):
        self.answered += 1
        if self.answered > self.open_pages:
            self.gate.wait(120)
        return super()._describe(*args, **kwargs)


def release(gated: "GatedApi", sync: subprocess.Popen) -> None:
    """Open the gate, make sure the sync under test has exited, and stop the API."""
    gated.gate.set()
    if sync.poll() is None:
        sync.kill()
        sync.communicate()
    gated.stop()


def kill_lock_session(engine) -> None:
    """End the session that holds the database's lock, as a server restart would."""
    with engine.connect() as connection:
        key = server_lock_key(connection)
        if engine.dialect.name == "postgresql":
            # The lock's signed 64-bit key, shown by pg_locks as two unsigned 32-bit halves.
            key_bits = (int(key[:16], 16) - 2**63) & (2**64 - 1)
            pid = connection.scalar(
                text(
                    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
                    " AND database = (SELECT oid FROM pg_database"
                    "                 WHERE datname = current_database())"
                    " AND classid::text::bigint = :high AND objid::text::bigint = :low"
                ),
                {"high": key_bits >> 32, "low": key_bits & 0xFFFFFFFF},
            )
            assert pid, "no session holds the lock"
            connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        else:
            holder = connection.scalar(
                text("SELECT IS_USED_LOCK(:n)"), {"n": server_lock_name(key)}
            )
            assert holder, "no session holds the lock"
            connection.execute(text(f"KILL {int(holder)}"))
        connection.commit()


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["postgresql", "mysql"], indirect=True)
def test_a_sync_that_lost_its_lock_writes_no_further_page(engine, database_url, fake_api):
    """The lock's session dies mid-run (killed on the server, as in a restart); a second sync
    takes the lock, marks the first run abandoned and syncs everything. The first sync then
    fails at its next page with one line, without writing it; its row stays abandoned."""
    gated = GatedApi(JOBS, open_pages=3).start()
    try:
        first = start_cli(database_url, gated, "sync", "--page-size", "100")
        wait_for_pages(engine, 3, first)  # the fourth answer is held at the gate
        kill_lock_session(engine)
        second_api = fake_api(JOBS)  # the same seed: the same jobs
        second = start_cli(database_url, second_api, "sync")
        _, err = second.communicate(timeout=120)
        assert second.returncode == 0, err
        [abandoned, done] = runs_of(engine)
        assert abandoned["status"] == "failed" and abandoned["error"] == runs.ABANDONED
        gated.gate.set()
        _, err = first.communicate(timeout=60)
    finally:
        release(gated, first)
    assert first.returncode == 1, err
    [line] = err.splitlines()
    assert line.startswith("qfsync: error: the sync lock was lost: run 1 ")
    after = runs_of(engine)
    assert after[0] == abandoned and after[0]["pages"] == 3
    assert done["status"] == "succeeded"
    assert_exact(engine, second_api)


@pytest.mark.slow
def test_a_signal_during_the_migration_stops_before_the_walk(database_url, fake_api):
    """SIGTERM while the sync migrates (held up here by a transaction that writes sync_runs):
    the migration completes whole, then the sync stops with 143 before it opens a run."""
    from alembic import command

    with db.connected(database_url) as engine:
        command.upgrade(db.alembic_config(engine), "0002")
        with engine.connect() as blocker:
            blocker.execute(update(sync_runs).values(pages=0))  # holds its lock until rollback
            process = start_cli(database_url, fake_api(10), "--verbose", "sync")
            assert process.stderr is not None
            for line in process.stderr:
                if "Running upgrade 0002 -> 0003" in line:
                    break
            process.send_signal(signal.SIGTERM)
            blocker.rollback()
        _, err = process.communicate(timeout=60)
        assert process.returncode == 143, err
        assert "interrupted by SIGTERM" in err
        assert db.current_revision(engine) == db.SCHEMA_HEAD
        assert runs_of(engine) == []


@pytest.mark.parametrize("database_url", ["postgresql", "mysql"], indirect=True)
def test_releasing_a_lock_on_a_dead_session_raises_nothing(engine):
    """The lock's session killed while held: leaving the lock neither raises (which would turn
    a finished run into a failure, or hide the real error) nor leaves the lock taken."""
    with sync_lock(engine) as held:
        assert held
        kill_lock_session(engine)
    with sync_lock(engine) as again:
        assert again


def waiting_on_a_lock(engine) -> bool:
    """Whether another session waits on a lock on this server (the sync's page write)."""
    with engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            query = (
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND pid <> pg_backend_pid() AND datname = current_database()"
            )
        else:
            query = (
                "SELECT count(*) FROM information_schema.processlist"
                " WHERE state LIKE 'Waiting for table%' AND db = DATABASE()"
            )
        return bool(connection.scalar(text(query)))


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["postgresql", "mysql"], indirect=True)
def test_a_signal_ends_a_page_write_stuck_on_a_database_lock(engine, database_url, fake_api):
    """A page write waits on a table another session keeps locked (a BI tool, an operator):
    SIGTERM still ends the sync with 143, while that lock is held, and the run is recorded
    as interrupted; the statement is cancelled, not left waiting on the server."""
    api = fake_api(50)
    process = start_cli(database_url, api, "sync")
    process.communicate(timeout=60)  # creates the tables
    with engine.connect() as blocker:
        if engine.dialect.name == "postgresql":
            blocker.execute(text("LOCK TABLE finetuning_jobs IN ACCESS EXCLUSIVE MODE"))
        else:
            blocker.execute(text("LOCK TABLES finetuning_jobs WRITE"))
        process = start_cli(database_url, api, "sync")
        try:
            for _ in range(600):
                if waiting_on_a_lock(engine):
                    break
                threading.Event().wait(0.1)
            else:
                raise AssertionError("the sync never waited on the lock")
            process.send_signal(signal.SIGTERM)
            _, err = process.communicate(timeout=60)  # the lock is held for the whole wait
            if engine.dialect.name == "postgresql":  # MariaDB notices a closed client later
                assert not waiting_on_a_lock(engine)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
            if engine.dialect.name == "mysql":
                blocker.execute(text("UNLOCK TABLES"))
            blocker.rollback()
    assert process.returncode == 143, err
    assert err.splitlines()[-1] == "qfsync: error: interrupted by SIGTERM"
    assert runs_of(engine)[-1]["error"] == "interrupted by SIGTERM"


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_sessions_killed_mid_walk_are_one_line(engine, database_url):
    """Every session of the sync is ended on the server mid-walk (a restart): one line on
    stderr, without psycopg's own warning about the pipeline it could not close."""
    gated = GatedApi(JOBS, open_pages=3).start()
    with engine.connect() as connection:
        before = connection.scalar(text("SELECT clock_timestamp()"))
    try:
        first = start_cli(database_url, gated, "sync", "--page-size", "100")
        wait_for_pages(engine, 3, first)  # the fourth answer is held at the gate
        with engine.connect() as connection:
            # The sync's sessions: those that began after it was started, but this one.
            connection.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    " AND backend_start > :before"
                ),
                {"before": before},
            )
            connection.commit()
        gated.gate.set()
        _, err = first.communicate(timeout=60)
    finally:
        release(gated, first)
    assert first.returncode == 1, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("qfsync: error: "), err
