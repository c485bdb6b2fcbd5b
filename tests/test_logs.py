"""Logs in a real process: with --log-format json every line on stderr is one JSON object with
the run's facts; --verbose adds a line per page; secrets appear in neither format."""

import io
import json
import logging
import os
import socket
import sqlite3
import subprocess
import sys

import pytest
from sqlalchemy.engine import make_url

from qfsync import api as qfsync_api
from qfsync.errors import UNSAFE
from qfsync.fake_api import DEMO_ACCESS_KEY, DEMO_SECRET_KEY, Faults
from qfsync.logs import JsonFormatter, RunContext, TextFormatter

WRONG_SECRET = "wrong-secret-Qm4xT7"
DB_PASSWORD = "db-password-Zr8wK2"
# What must never appear: both secret keys, any Authorization header value, the DB password.
SECRETS = (DEMO_SECRET_KEY, WRONG_SECRET, "bce-auth-v1", DB_PASSWORD)


def qfsync(*args: str, api, secret: str = DEMO_SECRET_KEY, python=("-m", "qfsync"), **env: str):
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("QFSYNC_", "QIANFAN_"))
    }
    environment |= {
        "QIANFAN_CONSOLE_API_BASE_URL": api.url,
        "QIANFAN_ACCESS_KEY": DEMO_ACCESS_KEY,
        "QIANFAN_SECRET_KEY": secret,
        **env,
    }
    return subprocess.run(
        [sys.executable, *python, *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


def json_lines(stderr: str) -> list[dict]:
    """Each line parsed on its own; a line that is not one JSON object fails the test."""
    entries = []
    for line in stderr.splitlines():
        entry = json.loads(line)
        assert isinstance(entry, dict) and {"time", "level", "message"} <= entry.keys(), line
        entries.append(entry)
    return entries


def with_password(url: str) -> str:
    """The URL with a password; the test server trusts loopback, so it is sent and ignored."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return url
    return parsed.set(password=DB_PASSWORD).render_as_string(hide_password=False)


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_json_logs_are_one_object_a_line_without_secrets(database_url, fake_api):
    """A sync with retries, one rejected by the API and one whose database is unreachable:
    every line on stderr is a JSON object; page lines carry page, marker, request id and run
    id, retry lines attempt, delay, error and request id, failures the error and exit code; no
    secret appears anywhere in the output."""
    api = fake_api(640, Faults(throttle_rate=0.3, retry_after_s=0))
    url = with_password(database_url)
    outputs = []

    synced = qfsync(
        "--log-format", "json", "--verbose", "sync", "--json", "--database-url", url, api=api
    )
    outputs.append(synced)
    assert synced.returncode == 0, synced.stderr
    run = json.loads(synced.stdout)
    entries = json_lines(synced.stderr)
    pages = [e for e in entries if e["logger"] == "qfsync.syncer" and "page" in e]
    assert [e["page"] for e in pages] == list(range(1, run["pages"] + 1))
    assert all(e["run_id"] == run["run_id"] and e["request_id"] for e in pages)
    assert all("marker" in e for e in pages[1:])
    retries = [e for e in entries if "attempt" in e]
    assert retries and all(
        {"delay_s", "error", "run_id"} <= e.keys() and e["level"] == "info" for e in retries
    )
    # a throttled request has the API's request id, which the provider's support asks for
    assert all(e["request_id"] for e in retries)
    assert len(retries) == api.request_count - run["pages"]

    rejected = qfsync(
        "--log-format", "json", "sync", "--database-url", url, api=api, secret=WRONG_SECRET
    )
    outputs.append(rejected)
    [error] = json_lines(rejected.stderr)
    assert rejected.returncode == error["exit_code"] == 1
    assert error["level"] == "error" and "SignatureDoesNotMatch" in error["error"]
    assert error["run_id"] == run["run_id"] + 1 and error["request_id"]

    unreachable = f"postgresql://qfsync:{DB_PASSWORD}@127.0.0.1:1/nowhere"
    offline = qfsync(
        "--verbose", "sync", "--database-url", unreachable, api=api, QFSYNC_LOG_FORMAT="json"
    )
    outputs.append(offline)
    entries = json_lines(offline.stderr)
    assert entries[-1]["level"] == "error" and "cannot connect" in entries[-1]["error"]
    assert "***" in entries[-1]["error"]

    for done in outputs:
        for secret in SECRETS:
            assert secret not in done.stdout + done.stderr


@pytest.mark.slow
def test_the_task_requests_retry_lines_name_the_run(tmp_path, fake_api):
    """With --tasks, the retry lines of the task requests, sent from the workers' threads, name
    the run as those of the jobs walk do."""
    api = fake_api(120, Faults(throttle_rate=0.3, retry_after_s=0))
    url = f"sqlite:///{tmp_path / 'q.db'}"
    # 25 attempts, not the default 8: one of this sync's hundred-odd task requests met eight
    # throttled answers in a row (0.3**8 each) about once in a hundred runs; 0.3**25 never.
    synced = qfsync(
        "--log-format",
        "json",
        "sync",
        "--tasks",
        "--max-attempts",
        "25",
        "--json",
        "--database-url",
        url,
        api=api,
    )
    assert synced.returncode == 0, synced.stderr
    run_id = json.loads(synced.stdout)["run_id"]
    retries = [e for e in json_lines(synced.stderr) if "attempt" in e]
    assert len(retries) > 20 and all(e.get("run_id") == run_id for e in retries)


@pytest.mark.slow
def test_default_logs_stay_human_readable(tmp_path, fake_api):
    """Without --log-format the error is one plain line; --verbose adds a plain line per page
    for sync and jobs alike; no secret appears."""
    api = fake_api(250)
    url = f"sqlite:///{tmp_path / 'q.db'}"
    synced = qfsync("--verbose", "sync", "--database-url", url, api=api)
    assert synced.returncode == 0, synced.stderr
    assert not any(line.startswith("{") for line in synced.stderr.splitlines())
    pages = [line for line in synced.stderr.splitlines() if " DEBUG qfsync.syncer: page " in line]
    assert [line.split(": ")[1] for line in pages] == ["page 1", "page 2", "page 3"]

    listed = qfsync("--verbose", "jobs", "--page-size", "50", api=api)
    assert listed.stdout.count("\n") == 250
    assert listed.stderr.count(" DEBUG qfsync.api: page ") == 5

    rejected = qfsync("--verbose", "sync", "--database-url", url, api=api, secret=WRONG_SECRET)
    assert rejected.returncode == 1
    assert rejected.stderr.splitlines()[-1].startswith(
        "qfsync: error: API error SignatureDoesNotMatch"
    )
    quiet = qfsync("sync", "--database-url", url, api=api, secret=WRONG_SECRET)
    assert quiet.stderr.count("\n") == 1 and quiet.stderr.startswith("qfsync: error: ")
    for done in (synced, listed, rejected, quiet):
        for secret in SECRETS:
            assert secret not in done.stdout + done.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "named", "help_of"),
    [
        (["sync", "--page-size", "0"], "--page-size", "qfsync sync"),
        (["jobs", "--bogus"], "--bogus", "qfsync jobs"),
        (["report", "--max-age", "soon"], "--max-age", "qfsync report"),
        (["nosuch"], "nosuch", "qfsync"),
        (["db", "nosuch"], "nosuch", "qfsync db"),
    ],
)
def test_json_usage_errors_are_one_object(fake_api, args, named, help_of):
    """With JSON logs a command line that does not parse, an unknown command included, is one
    JSON line with exit code 2, like every other failure, not click's plain-text usage block."""
    api = fake_api(10)
    done = qfsync("--log-format", "json", *args, api=api)
    [error] = json_lines(done.stderr)
    assert done.returncode == error["exit_code"] == 2
    assert error["level"] == "error" and named in error["message"]
    assert f"{help_of} --help" in error["message"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["--bogus", "runs"], {}, "--bogus"),
        (["--log-format", "xml", "runs"], {}, "'xml'"),
        (["--log-format"], {}, "requires an argument"),
        (["runs"], {"QFSYNC_LOG_FORMAT": ""}, "QFSYNC_LOG_FORMAT is set but empty"),
        (["--log-format", "json", "--bogus", "runs"], {}, "--bogus"),
        (["--log-format=json", "--bogus", "runs"], {}, "--bogus"),
        (["--bogus", "runs"], {"QFSYNC_LOG_FORMAT": "json"}, "--bogus"),
    ],
)
def test_top_level_usage_errors_are_one_line(fake_api, args, env, named):
    """An option of `qfsync` itself that does not parse, the log format's included, is one
    line with exit code 2 like any other usage error, a JSON object if JSON logs were asked
    for: not click's usage block, which comes before the log format is known."""
    done = qfsync(*args, api=fake_api(1), **env)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert named in done.stderr and "qfsync --help" in done.stderr
    if "json" in args + list(env.values()) or "--log-format=json" in args:
        [error] = json_lines(done.stderr)
        assert error["level"] == "error" and error["exit_code"] == 2
    else:
        assert done.stderr.startswith("qfsync: usage error: ")


@pytest.mark.slow
def test_json_fake_api_banner_is_one_object():
    """Even the fake API's banner is a JSON line under JSON logs, with its URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    environment = {k: v for k, v in os.environ.items() if not k.startswith("QFSYNC_")}
    server = subprocess.Popen(
        [sys.executable, "-m", "qfsync", "--log-format", "json", "fake-api", "--port", str(port)],
        env=environment,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        [banner] = json_lines(server.stderr.readline())
    finally:
        server.terminate()
        server.wait(timeout=30)
        server.stderr.close()
    assert banner["level"] == "info" and f"http://127.0.0.1:{port}" in banner["message"]


DIRTY = "t1\x00\x1b[2J\nforged WARNING line\u2028\u202eevil\ud800"


@pytest.mark.parametrize("formatter", [TextFormatter(), JsonFormatter()], ids=["text", "json"])
def test_a_servers_text_in_a_log_line_is_escaped(formatter) -> None:
    """A message quoting a server's text (a task id with a NUL, an ANSI escape, a newline, a
    line separator, a bidirectional override, a lone surrogate) stays one line that UTF-8 can
    write, in either format, and the facts in `extra` are escaped too."""
    record = logging.makeLogRecord(
        {"msg": "task %s is gone", "args": (DIRTY,), "levelname": "INFO", "marker": DIRTY}
    )
    line = formatter.format(record)
    assert len(line.splitlines()) == 1 and not UNSAFE.search(line)
    line.encode()  # no lone surrogate left
    assert "t1\\x00\\x1b[2J\\nforged WARNING line\\u2028\\u202eevil" in (
        line if isinstance(formatter, TextFormatter) else json.loads(line)["marker"]
    )


def test_another_librarys_extra_does_not_replace_a_json_lines_own_fields() -> None:
    """A record from a host or another library whose `extra=` (or record factory) names time,
    level or logger keeps the line's own: a log shipper reads those to place the line."""
    record = logging.makeLogRecord(
        {
            "name": "urllib3.connectionpool",
            "msg": "Connection pool is full",
            "levelname": "WARNING",
            "created": 0.0,
            "time": "later",
            "level": "debug",
            "logger": "someone",
            "pool": "api",
        }
    )
    entry = json.loads(JsonFormatter().format(record))
    assert entry["time"] == "1970-01-01T00:00:00.000+00:00" and entry["level"] == "warning"
    assert entry["logger"] == "urllib3.connectionpool" and entry["pool"] == "api"


# Every fact qfsync states in its log lines, which a host's own LogRecord factory may set too.
HOST_FIELDS = ("run_id", "request_id", "page", "marker", "next_marker", "attempt", "delay_s")


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_hosts_record_factory_with_the_same_fields_fails_nothing(database_url, fake_api):
    """A host whose LogRecord factory puts its own run_id, request_id and the like on every
    record: logging refuses an `extra=` key that a record already has, which failed the sync
    at its first retry or page line. The sync succeeds, and its JSON lines show qfsync's
    facts, not the host's."""
    api = fake_api(300, Faults(throttle_rate=0.3, retry_after_s=0))
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RunContext())
    logger = logging.getLogger("qfsync")
    level, host_factory = logger.level, logging.getLogRecordFactory()

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = host_factory(*args, **kwargs)
        for field in HOST_FIELDS:
            setattr(record, field, "host's")
        return record

    logging.setLogRecordFactory(factory)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        result = qfsync_api.sync(
            database_url,
            endpoint=api.url,
            access_key=DEMO_ACCESS_KEY,
            secret_key=DEMO_SECRET_KEY,
            max_retry_wait=5,
        )
    finally:
        logging.setLogRecordFactory(host_factory)
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert result.status == "succeeded" and result.jobs_inserted == 300
    entries = [json.loads(line) for line in stream.getvalue().splitlines()]
    pages = [e for e in entries if e["message"].startswith("page ")]
    assert [e["page"] for e in pages] == list(range(1, result.pages + 1))
    assert all(e["run_id"] == result.run_id and e["request_id"] != "host's" for e in pages)
    assert "marker" not in pages[0]  # the first page has none: not the host's either
    assert all(e["marker"] != "host's" for e in pages[1:])
    retries = [e for e in entries if e["logger"] == "qfsync.client"]
    assert retries and all(type(e["attempt"]) is int for e in retries)


# `qfsync` with a bug planted after the first page's commit: log_page divides by zero.
WITH_A_BUG = (
    "-c",
    "import sys, qfsync.syncer; from qfsync.cli import run; "
    "qfsync.syncer.log_page = lambda *page: 1 / 0; sys.argv[0] = 'qfsync'; run()",
)


def test_an_internal_errors_json_line_names_its_run(tmp_path, fake_api):
    """A bug inside a sync ends in one JSON line that says so and names the run it marked
    failed, as a qfsync error's line does."""
    api = fake_api(300)
    url = f"sqlite:///{tmp_path / 'q.db'}"
    result = qfsync(
        "--log-format", "json", "sync", "--database-url", url, api=api, python=WITH_A_BUG
    )
    assert result.returncode == 1, result.stderr
    last = json_lines(result.stderr)[-1]
    assert last["message"].startswith("internal error: ZeroDivisionError"), last
    with sqlite3.connect(tmp_path / "q.db") as connection:
        run_id, status = connection.execute("SELECT id, status FROM sync_runs").fetchone()
    assert status == "failed"
    assert last["run_id"] == run_id
