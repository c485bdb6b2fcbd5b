"""The Python API: `qfsync.sync` and `qfsync.jobs` do what the commands do, raise what the
commands translate, and leave the host application's signals and logging alone."""

import gc
import json
import logging
import signal
import socket
import subprocess
import sys

import pytest
from click.testing import CliRunner
from sqlalchemy import text

import qfsync
from qfsync import db
from qfsync.cli import main
from qfsync.errors import ApiError, ConfigError, SyncLocked
from qfsync.fake_api import DEMO_ACCESS_KEY, DEMO_SECRET_KEY
from qfsync.lock import sync_lock

# Per run: what differs between two runs that did the same work.
PER_RUN = {"run_id", "duration_s"}


def credentials(api) -> dict[str, str]:
    return {"endpoint": api.url, "access_key": DEMO_ACCESS_KEY, "secret_key": DEMO_SECRET_KEY}


def counts(result: dict) -> dict:
    return {key: value for key, value in result.items() if key not in PER_RUN}


def change(api) -> None:
    """Renames, deletions and additions, so that every count of the next sync is non-zero."""
    ids = [job["jobId"] for job in api.job_list()]
    api.rename(ids[:7])
    api.delete(ids[-4:])
    api.add(12)


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_sync_counts_equal_the_cli(database_url, other_database_url, fake_api, api_env):
    """The same syncs, once through qfsync.sync and once through `qfsync sync --json`, each
    into its own database: the results and their counts are equal, run after run."""
    library_api, cli_api = fake_api(345), fake_api(345)
    api_env(cli_api)
    library, command = [], []
    for step in range(3):
        library.append(qfsync.sync(database_url, **credentials(library_api)).to_json())
        done = CliRunner().invoke(main, ["sync", "--json", "--database-url", other_database_url])
        assert done.exit_code == 0, done.output
        command.append(json.loads(done.stdout))
        if step == 0:
            change(library_api)
            change(cli_api)
    assert [counts(result) for result in library] == [counts(result) for result in command]
    assert library[1]["jobs_deleted"] == 4 and library[1]["jobs_updated"] == 7
    assert library[2]["jobs_unchanged"] == library[2]["jobs_seen"] == 353


def test_incremental_and_filters_reach_the_sync(tmp_path, fake_api):
    """Keyword arguments are the command's options: a filtered incremental sync stores only
    its scope's jobs and records its mode."""
    api = fake_api(300)
    url = f"sqlite:///{tmp_path / 'q.db'}"
    sft = [job for job in api.job_list() if job["trainMode"] == "SFT"]
    result = qfsync.sync(url, train_mode="SFT", incremental=True, page_size=50, **credentials(api))
    assert (result.mode, result.status, result.jobs_seen) == ("incremental", "succeeded", len(sft))
    assert api.bodies and all(body.get("trainMode") == "SFT" for body in api.bodies)


def test_failures_raise_the_exceptions_the_cli_translates(tmp_path, fake_api, monkeypatch):
    """No credentials, a wrong secret and a held lock raise ConfigError, ApiError and
    SyncLocked, with the exit codes the command gives them."""
    api = fake_api(10)
    url = f"sqlite:///{tmp_path / 'q.db'}"
    for name in ("QIANFAN_ACCESS_KEY", "QIANFAN_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError) as missing:
        qfsync.sync(url, endpoint=api.url)
    assert missing.value.exit_code == 2
    with pytest.raises(ApiError, match="SignatureDoesNotMatch") as wrong:
        qfsync.sync(url, endpoint=api.url, access_key=DEMO_ACCESS_KEY, secret_key="wrong")
    assert wrong.value.exit_code == 1 and wrong.value.run_id == 1
    engine = db.connect(url)
    try:
        with sync_lock(engine) as held:
            assert held
            with pytest.raises(SyncLocked) as locked:
                qfsync.sync(url, **credentials(api))
    finally:
        engine.dispose()
    assert locked.value.exit_code == 3
    with pytest.raises(ConfigError, match="page_size"):
        qfsync.sync(url, page_size=101, **credentials(api))


@pytest.mark.parametrize(
    "settings",
    [
        {"timeout": float("inf")},
        {"timeout": float("nan")},
        {"timeout": 1e300},
        {"max_retry_wait": float("nan")},
        {"max_retry_wait": float("inf")},
    ],
    ids=["timeout inf", "timeout nan", "timeout 1e300", "wait nan", "wait inf"],
)
def test_a_wait_or_timeout_no_socket_takes_is_a_config_error(tmp_path, fake_api, settings):
    """What the command line's options refuse, the library refuses too, before connecting:
    not an OverflowError inside the sync, a failed run, an internal error."""
    api = fake_api(10)
    with pytest.raises(ConfigError, match="up to a year"):
        qfsync.sync(f"sqlite:///{tmp_path / 'q.db'}", **settings, **credentials(api))
    assert list(tmp_path.iterdir()) == []


def test_an_empty_database_url_is_a_config_error(tmp_path, fake_api, monkeypatch):
    """database_url='' (a setting that lost its value) is refused, not taken for the default
    ./qfsync.db."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="database_url"):
        qfsync.sync("", **credentials(fake_api(10)))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("given", ["argument", "environment"])
def test_an_empty_endpoint_is_a_config_error(monkeypatch, given):
    """An endpoint given empty, as an argument or in the environment, is refused, not taken for
    the default (the real API), as the command line refuses it."""
    monkeypatch.setenv("QIANFAN_ACCESS_KEY", DEMO_ACCESS_KEY)
    monkeypatch.setenv("QIANFAN_SECRET_KEY", DEMO_SECRET_KEY)
    monkeypatch.setenv("QIANFAN_CONSOLE_API_BASE_URL", "" if given == "environment" else "x")
    with pytest.raises(ConfigError, match="endpoint .* is empty"):
        qfsync.jobs(endpoint="" if given == "argument" else None)


class HostTerminated(BaseException):
    """What a host raises to end a task, as Airflow's AirflowTaskTerminated does."""


class SoftTimeLimit(Exception):
    """What a host raises to end a task, as Celery's SoftTimeLimitExceeded does (from a signal
    handler, so wherever the sync happens to be)."""


@pytest.mark.parametrize("ending", [HostTerminated, SoftTimeLimit])
def test_a_host_termination_passes_through_and_fails_the_run(tmp_path, fake_api, ending):
    """An exception of the host's, inside Exception or outside it, raised by the host from a
    callback, reaches the host as itself (not as a qfsync "internal error"), and the run is
    recorded failed with its name, which the exception's `qfsync_run_id` gives."""
    api = fake_api(300)
    url = f"sqlite:///{tmp_path / 'q.db'}"

    def terminate(result):
        raise ending("the scheduler ended the task")

    with pytest.raises(ending) as raised:
        qfsync.sync(url, page_size=50, progress=terminate, **credentials(api))
    engine = db.connect(url)
    try:
        with engine.connect() as connection:
            run_id, status, error = connection.execute(
                text("SELECT id, status, error FROM sync_runs")
            ).one()
    finally:
        engine.dispose()
    assert raised.value.qfsync_run_id == run_id
    assert status == "failed"
    assert ending.__name__ in error and "internal error" not in error


class Immutable(Exception):
    """A host's exception that refuses attributes of its own."""

    def __setattr__(self, name, value):
        if not name.startswith("__"):
            raise TypeError(f"{type(self).__name__} is immutable")
        super().__setattr__(name, value)


def test_a_host_exception_that_refuses_attributes_reaches_it_as_itself(tmp_path, fake_api):
    """qfsync cannot name the run in such an exception; the host gets it all the same."""
    api = fake_api(300)

    def cancel(result):
        raise Immutable("cancelled")

    with pytest.raises(Immutable):
        qfsync.sync(f"sqlite:///{tmp_path / 'q.db'}", progress=cancel, **credentials(api))


def test_an_exception_raised_again_does_not_keep_an_earlier_syncs_run(tmp_path, fake_api):
    """The same exception object, raised in one sync after its run row existed and then in a
    sync of another database before its row did, names no run the second time."""
    api = fake_api(300)
    cancel = SoftTimeLimit("cancelled")

    def raise_cancel(*args):
        raise cancel

    with pytest.raises(SoftTimeLimit):
        qfsync.sync(f"sqlite:///{tmp_path / 'a.db'}", progress=raise_cancel, **credentials(api))
    assert cancel.qfsync_run_id == 1
    # A new file's schema is created before its run row, and the sync says so in a note.
    with pytest.raises(SoftTimeLimit):
        qfsync.sync(f"sqlite:///{tmp_path / 'b.db'}", notify=raise_cancel, **credentials(api))
    assert cancel.qfsync_run_id is None


def test_library_use_leaves_signals_and_logging_alone(tmp_path, fake_api, monkeypatch):
    """A sync in-process (settings from the environment, as the command reads them) installs
    no signal handler and changes no logger's level or handlers."""
    api = fake_api(150)
    monkeypatch.setenv("QIANFAN_CONSOLE_API_BASE_URL", api.url)
    monkeypatch.setenv("QIANFAN_ACCESS_KEY", DEMO_ACCESS_KEY)
    monkeypatch.setenv("QIANFAN_SECRET_KEY", DEMO_SECRET_KEY)
    monkeypatch.setenv("QFSYNC_DATABASE_URL", f"sqlite:///{tmp_path / 'env.db'}")
    loggers = [logging.getLogger(), logging.getLogger("qfsync"), logging.getLogger("urllib3")]

    def state():
        return (
            signal.getsignal(signal.SIGINT),
            signal.getsignal(signal.SIGTERM),
            [(logger.level, list(logger.handlers), logger.disabled) for logger in loggers],
        )

    before = state()
    result = qfsync.sync()
    assert result.jobs_inserted == 150
    assert (tmp_path / "env.db").exists()
    assert state() == before


def test_jobs_yields_every_job_in_order(fake_api, monkeypatch):
    """qfsync.jobs yields the API's jobs in order, newest first with reverse=True; missing
    credentials fail at the call, before any request."""
    api = fake_api(234)
    listed = [job.job_id for job in qfsync.jobs(page_size=40, **credentials(api))]
    assert listed == [job["jobId"] for job in api.job_list()]
    newest = [job.job_id for job in qfsync.jobs(reverse=True, **credentials(api))]
    assert newest == listed[::-1]
    for name in ("QIANFAN_ACCESS_KEY", "QIANFAN_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    requests = api.request_count
    with pytest.raises(ConfigError, match="no credentials"):
        qfsync.jobs(endpoint=api.url)
    assert api.request_count == requests


def sockets_to(api) -> list[socket.socket]:
    """This process's open sockets connected to the fake API (not its own accepted ones)."""
    port = int(api.url.rsplit(":", 1)[1])
    found = []
    for candidate in gc.get_objects():
        if isinstance(candidate, socket.socket) and candidate.fileno() != -1:
            try:
                if candidate.getpeername()[1] == port and candidate.getsockname()[1] != port:
                    found.append(candidate)
            except OSError:
                pass  # not connected
    return found


def test_jobs_left_early_can_be_closed(fake_api):
    """A caller that stops after the first job can close the walk, as any generator: its
    connection closes at once and no further page is asked for."""
    api = fake_api(250)
    walk = qfsync.jobs(page_size=100, **credentials(api))
    assert next(walk).job_id == api.job_list()[0]["jobId"]
    requests = api.request_count
    walk.close()
    assert sockets_to(api) == []
    assert list(walk) == [] and api.request_count == requests


def test_a_failed_call_leaves_no_connection_open(tmp_path, fake_api):
    """A sync or walk the API refuses closes its connection as it returns, not when the
    garbage collector reaches the exception's frames (urllib3 2 leaves a forgotten pool's
    sockets to its finalizer, and a traceback a host keeps, or a cycle, holds it)."""
    api = fake_api(20)
    refused = {**credentials(api), "secret_key": "wrong-secret"}
    gc.disable()
    try:
        with pytest.raises(ApiError) as failed_sync:
            qfsync.sync(f"sqlite:///{tmp_path / 'q.db'}", **refused)
        with pytest.raises(ApiError) as failed_walk:
            list(qfsync.jobs(**refused))
        assert sockets_to(api) == []
        assert failed_sync.value and failed_walk.value  # still held, with their frames
    finally:
        gc.enable()


def test_import_qfsync_is_light():
    """`import qfsync` loads no database, HTTP or metrics library; `qfsync.sync` loads the API
    on first use, and a sync without metrics still leaves prometheus_client unloaded."""
    heavy = ("sqlalchemy", "requests", "prometheus_client", "qfsync.api")
    script = (
        "import sys, qfsync\n"
        f"print(sorted(m for m in sys.modules if m.startswith({heavy!r})))\n"
        "qfsync.sync\n"
        "print('qfsync.api' in sys.modules, 'prometheus_client' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.splitlines() == ["[]", "True False"]
    assert sorted(qfsync.__all__) == sorted(set(qfsync.__all__) & set(dir(qfsync)))
