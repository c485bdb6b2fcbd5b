"""`qfsync jobs` prints every job as JSON Lines; a failure is one line and an exit code."""

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from qfsync.cli import main
from qfsync.fake_api import DEMO_ACCESS_KEY, DEMO_SECRET_KEY, FakeApi, Faults

FakeFactory = Callable[..., FakeApi]
ApiEnv = Callable[[FakeApi], None]
WRONG_SECRET = "wrong-secret-Vb3k9QpX"
CREDENTIAL_VARS = ("QIANFAN_ACCESS_KEY", "QIANFAN_SECRET_KEY", "QIANFAN_CONSOLE_API_BASE_URL")
JOB_KEYS = {"job_id", "name", "description", "model", "train_mode", "created_at", "raw"}


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), prog_name="qfsync")


def lines(text: str) -> list[str]:
    # JSON escapes \n and \r, but not U+2028 and friends, which str.splitlines would split on.
    return text.split("\n")[:-1] if text.endswith("\n") else text.split("\n")


def closed_port() -> int:
    """A loopback port with nothing listening on it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- listing ----------------------------------------------------------------------------------


def test_jobs_prints_every_job_as_json_lines_in_order(
    fake_api: FakeFactory, api_env: ApiEnv
) -> None:
    """500 jobs become 500 JSON objects, one a line, in the API's order."""
    api = fake_api(500)
    api_env(api)
    result = run("jobs")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    records = [json.loads(line) for line in lines(result.stdout)]
    assert len(records) == 500
    assert all(set(record) == JOB_KEYS for record in records)
    assert [record["raw"] for record in records] == api.job_list()
    first, expected = records[0], api.job_list()[0]
    assert first["job_id"] == expected["jobId"]
    assert first["train_mode"] == expected["trainMode"]
    assert first["created_at"] == expected["createTime"].replace("Z", "+00:00")


def test_jobs_options_reach_the_api(fake_api: FakeFactory, api_env: ApiEnv) -> None:
    """--train-mode, --model, --page-size and --reverse are sent and select the jobs printed."""
    api = fake_api(500)
    api_env(api)
    result = run(
        "jobs", "--train-mode", "SFT", "--model", "ERNIE-Speed-8K", "--page-size", "7", "--reverse"
    )
    assert result.exit_code == 0, result.output
    expected = api.job_list(train_mode="SFT", model="ERNIE-Speed-8K", reverse=True)
    assert 7 < len(expected) < 500
    assert [json.loads(line)["raw"] for line in lines(result.stdout)] == expected
    assert len(api.bodies) == -(-len(expected) // 7)
    for body in api.bodies:
        assert (body["trainMode"], body["model"], body["maxKeys"], body["pageReverse"]) == (
            "SFT",
            "ERNIE-Speed-8K",
            7,
            True,
        )


# --- failures ---------------------------------------------------------------------------------


def test_missing_credentials_is_a_usage_error(
    fake_api: FakeFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No credentials: exit 2, one line naming QIANFAN_ACCESS_KEY, and no request sent."""
    api = fake_api(10)
    for name in CREDENTIAL_VARS:
        monkeypatch.delenv(name, raising=False)
    result = run("jobs", "--endpoint", api.url)
    assert result.exit_code == 2
    assert len(lines(result.stderr)) == 1
    assert "QIANFAN_ACCESS_KEY" in result.stderr
    assert result.stdout == ""
    assert api.request_count == 0


@pytest.mark.parametrize("verbose", [False, True], ids=["quiet", "verbose"])
def test_wrong_secret_is_one_line_without_the_secret(
    fake_api: FakeFactory,
    api_env: ApiEnv,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    verbose: bool,
) -> None:
    """A wrong SK: exit 1, SignatureDoesNotMatch on stderr, and the SK in no output or log."""
    caplog.set_level(logging.DEBUG)
    api = fake_api(10)
    api_env(api)
    monkeypatch.setenv("QIANFAN_SECRET_KEY", WRONG_SECRET)
    result = run(*(["--verbose"] if verbose else []), "jobs")
    assert result.exit_code == 1
    assert "SignatureDoesNotMatch" in result.stderr
    assert "QIANFAN_SECRET_KEY" in result.stderr
    assert WRONG_SECRET not in result.stdout + result.stderr + caplog.text
    if not verbose:
        assert len(lines(result.stderr)) == 1
        assert "Traceback" not in result.output
    assert api.request_count == 1


@pytest.mark.parametrize("page_size", ["0", "101"])
def test_page_size_out_of_range_is_a_usage_error(
    fake_api: FakeFactory, api_env: ApiEnv, page_size: str
) -> None:
    """--page-size outside 1..100 exits 2 naming the option, before any request."""
    api = fake_api(10)
    api_env(api)
    result = run("jobs", "--page-size", page_size)
    assert result.exit_code == 2
    assert "--page-size" in result.stderr
    assert api.request_count == 0


def test_unreachable_endpoint_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing listening: after --max-attempts 2, exit 1 and one line naming the endpoint."""
    endpoint = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("QIANFAN_ACCESS_KEY", DEMO_ACCESS_KEY)
    monkeypatch.setenv("QIANFAN_SECRET_KEY", DEMO_SECRET_KEY)
    result = run("jobs", "--endpoint", endpoint, "--max-attempts", "2")
    assert result.exit_code == 1
    [line] = lines(result.stderr)
    assert f"cannot reach {endpoint}" in line
    assert "2 attempts" in line
    assert "Traceback" not in result.output


PASSWORD = "s3cr3t-pw"
ENDPOINTS_WITH_USER_INFO = [
    "http://user:{password}@{host}",
    "http://:{password}@{host}",
    "https://us%40er:{password}@{host}/",
    "http://user:p@{password}@{host}",  # an unencoded @ in the password
    "ftp://user:{password}@{host}",
    "http://user:{password}@[::1",
    # A password holding / ? or # ends the host early; one slash is not a host at all.
    "http://user:{password}/x@{host}",
    "http://user:{password}?x@{host}",
    "http://user:{password}#x@{host}",
    "http:/user:{password}@{host}",
]


@pytest.mark.parametrize("template", ENDPOINTS_WITH_USER_INFO)
def test_endpoint_with_user_info_is_refused_without_showing_it(
    fake_api: FakeFactory, monkeypatch: pytest.MonkeyPatch, template: str
) -> None:
    """An --endpoint holding a user name or password exits 2 with one line that does not show
    the password, and sends nothing (requests would send it as Basic auth)."""
    api = fake_api(10)
    monkeypatch.setenv("QIANFAN_ACCESS_KEY", DEMO_ACCESS_KEY)
    monkeypatch.setenv("QIANFAN_SECRET_KEY", DEMO_SECRET_KEY)
    endpoint = template.format(password=PASSWORD, host=api.url.removeprefix("http://"))
    result = run("jobs", "--endpoint", endpoint)
    assert result.exit_code == 2, result.output
    [line] = lines(result.stderr)
    assert line.startswith("qfsync: error: --endpoint: ")
    assert PASSWORD not in result.output
    assert api.request_count == 0


BAD_ENDPOINTS = {
    "a host outside ASCII": "http://домен.рф",
    "a space in the host": "http://a b",
    "a tab": "http://127.0.0.1\t:8080",
    "a port that is no number": "http://127.0.0.1:abc",
    "a port past 65535": "http://127.0.0.1:70000",
    "a broken IPv6 address": "http://[::1",
}


@pytest.mark.parametrize("endpoint", BAD_ENDPOINTS.values(), ids=BAD_ENDPOINTS.keys())
def test_an_endpoint_that_cannot_be_sent_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, endpoint: str
) -> None:
    """An --endpoint no request can go to exits 2 with one line naming the option, before
    any request: not a retried transfer error, not an internal error."""
    monkeypatch.setenv("QIANFAN_ACCESS_KEY", DEMO_ACCESS_KEY)
    monkeypatch.setenv("QIANFAN_SECRET_KEY", DEMO_SECRET_KEY)
    result = run("jobs", "--endpoint", endpoint, "--max-attempts", "1")
    assert result.exit_code == 2, result.output
    [line] = lines(result.stderr)
    assert line.startswith("qfsync: error: --endpoint: ")


BAD_KEYS = {
    "access key ending in a newline": (DEMO_ACCESS_KEY + "\n", DEMO_SECRET_KEY),
    "access key outside ASCII": ("ключ-" + DEMO_ACCESS_KEY, DEMO_SECRET_KEY),
    "secret key ending in a newline": (DEMO_ACCESS_KEY, DEMO_SECRET_KEY + "\r\n"),
    "secret key with a space": (DEMO_ACCESS_KEY, "s3cret key"),
}


@pytest.mark.parametrize(("access", "secret"), BAD_KEYS.values(), ids=BAD_KEYS.keys())
def test_a_key_no_header_can_carry_is_a_usage_error_that_shows_neither(
    fake_api: FakeFactory, monkeypatch: pytest.MonkeyPatch, access: str, secret: str
) -> None:
    """A key with a newline (read from a file) or a character outside printable ASCII exits
    2 before any request, with one line that shows neither key: http.client would refuse the
    Authorization header and quote it, signature and all, in its error."""
    api = fake_api(10)
    monkeypatch.setenv("QIANFAN_ACCESS_KEY", access)
    monkeypatch.setenv("QIANFAN_SECRET_KEY", secret)
    result = run("jobs", "--endpoint", api.url)
    assert result.exit_code == 2, result.output
    [line] = lines(result.stderr)
    assert "QIANFAN_ACCESS_KEY or QIANFAN_SECRET_KEY" in line
    assert access.strip() not in result.output and secret.strip() not in result.output
    assert api.request_count == 0


def jobs_process(api: FakeApi, cwd: Path) -> subprocess.Popen[bytes]:
    """`qfsync jobs` against the fake in a process of its own, its output and errors piped."""
    env = {
        **os.environ,
        "QIANFAN_ACCESS_KEY": DEMO_ACCESS_KEY,
        "QIANFAN_SECRET_KEY": DEMO_SECRET_KEY,
        "QIANFAN_CONSOLE_API_BASE_URL": api.url,
    }
    command = [qfsync_command(), "jobs"]
    return subprocess.Popen(
        command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


@pytest.mark.slow
def test_jobs_into_a_closed_pipe_ends_quietly(fake_api: FakeFactory, tmp_path: Path) -> None:
    """`qfsync jobs | head -1`: when the reader closes the pipe after one line, qfsync stops
    with the status of a tool killed by SIGPIPE (141) and nothing on stderr."""
    api = fake_api(5000)  # megabytes of output: far more than a pipe's buffer holds
    with jobs_process(api, tmp_path) as listing:
        assert listing.stdout is not None and listing.stderr is not None
        first = listing.stdout.readline()
        listing.stdout.close()
        stderr = listing.stderr.read()
        listing.wait(timeout=60)
    assert json.loads(first).keys() == JOB_KEYS
    assert listing.returncode == 141
    assert stderr == b""
    assert api.request_count < 50  # it stopped, rather than walking all 50 pages


@pytest.mark.slow
def test_jobs_interrupted_by_sigint_says_so_in_one_line(
    fake_api: FakeFactory, tmp_path: Path
) -> None:
    """Ctrl-C during `qfsync jobs` ends it with 130 and one line, as it does a sync (not click's
    "Aborted!" with status 1)."""
    api = fake_api(5000, faults=Faults(latency_s=0.2))
    with jobs_process(api, tmp_path) as listing:
        assert listing.stdout is not None
        listing.stdout.readline()  # the walk is under way
        listing.send_signal(signal.SIGINT)
        _, stderr = listing.communicate(timeout=60)
    assert listing.returncode == 130
    assert stderr.decode().splitlines() == ["qfsync: error: interrupted by SIGINT"]


# --- help -------------------------------------------------------------------------------------

OPTION_ENVVARS = {
    "--access-key": "QIANFAN_ACCESS_KEY",
    "--secret-key": "QIANFAN_SECRET_KEY",
    "--endpoint": "QIANFAN_CONSOLE_API_BASE_URL",
    "--database-url": "QFSYNC_DATABASE_URL",
}
API_ENVVARS = {"QIANFAN_ACCESS_KEY", "QIANFAN_SECRET_KEY", "QIANFAN_CONSOLE_API_BASE_URL"}
# What each documented command must show at least; a command added later is checked by its options.
EXPECTED_ENVVARS: dict[tuple[str, ...], set[str]] = {
    (): {"QFSYNC_LOG_FORMAT"},
    ("jobs",): API_ENVVARS,
    ("tasks",): API_ENVVARS,
    ("sync",): API_ENVVARS | {"QFSYNC_DATABASE_URL"},
    ("runs",): {"QFSYNC_DATABASE_URL"},
    ("db",): set(),
    ("db", "upgrade"): {"QFSYNC_DATABASE_URL"},
    ("db", "current"): {"QFSYNC_DATABASE_URL"},
    ("fake-api",): set(),
}


def command_paths(command: click.Command, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield path
    if isinstance(command, click.Group):
        for name, sub in sorted(command.commands.items()):
            yield from command_paths(sub, (*path, name))


COMMANDS = list(command_paths(main))


def find(path: tuple[str, ...]) -> click.Command:
    command: click.Command = main
    for name in path:
        assert isinstance(command, click.Group)
        command = command.commands[name]
    return command


def test_every_documented_command_exists() -> None:
    """The commands the README documents are all registered."""
    assert set(EXPECTED_ENVVARS) <= set(COMMANDS)


@pytest.mark.parametrize("path", COMMANDS, ids=[" ".join(p) or "qfsync" for p in COMMANDS])
def test_help_shows_the_environment_variables(path: tuple[str, ...]) -> None:
    """Every command's --help exits 0 and names the environment variable of each option."""
    result = run(*path, "--help")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"Usage: {' '.join(('qfsync', *path))} [OPTIONS]")
    by_option = {
        OPTION_ENVVARS[option]
        for param in find(path).params
        for option in param.opts
        if option in OPTION_ENVVARS
    }
    for name in EXPECTED_ENVVARS.get(path, set()) | by_option:
        assert name in result.stdout, f"{name} missing from `qfsync {' '.join(path)} --help`"


# --- as a user runs it ------------------------------------------------------------------------


def qfsync_command() -> str:
    """The qfsync script installed beside this interpreter, else the one on PATH."""
    beside = Path(sys.executable).parent / "qfsync"
    found = str(beside) if beside.exists() else shutil.which("qfsync")
    assert found, "the qfsync script is not installed"
    return found


def wait_for_port(port: int, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert server.poll() is None, "the fake API exited before serving"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"nothing listened on port {port} within 30s")


def test_readme_check_against_a_fake_api_subprocess(tmp_path: Path) -> None:
    """The README's check: `qfsync fake-api --jobs 500` then `qfsync jobs` prints 500 lines."""
    qfsync = qfsync_command()
    port = closed_port()
    with subprocess.Popen(
        [qfsync, "fake-api", "--jobs", "500", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    ) as server:
        try:
            wait_for_port(port, server)
            env = {
                **os.environ,
                "QIANFAN_ACCESS_KEY": DEMO_ACCESS_KEY,
                "QIANFAN_SECRET_KEY": DEMO_SECRET_KEY,
                "QIANFAN_CONSOLE_API_BASE_URL": f"http://127.0.0.1:{port}",
            }
            listed = subprocess.run(
                [qfsync, "jobs"], env=env, cwd=tmp_path, capture_output=True, timeout=60
            )
        finally:
            server.terminate()
    stdout = listed.stdout.decode()
    assert listed.returncode == 0, listed.stderr.decode()
    assert len(lines(stdout)) == 500
    assert all(json.loads(line).keys() == JOB_KEYS for line in lines(stdout))


def test_verbose_wrong_secret_in_a_real_process_never_shows_the_secret(
    fake_api: FakeFactory, tmp_path: Path
) -> None:
    """With --verbose logging really on, a wrong SK still appears in neither stdout nor stderr."""
    api = fake_api(10)
    env = {
        **os.environ,
        "QIANFAN_ACCESS_KEY": DEMO_ACCESS_KEY,
        "QIANFAN_SECRET_KEY": WRONG_SECRET,
        "QIANFAN_CONSOLE_API_BASE_URL": api.url,
    }
    listed = subprocess.run(
        [qfsync_command(), "--verbose", "jobs"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        timeout=60,
    )
    stderr = listed.stderr.decode()
    assert listed.returncode == 1
    assert "SignatureDoesNotMatch" in stderr
    assert " DEBUG " in stderr  # the verbose log was on
    assert WRONG_SECRET not in listed.stdout.decode() + stderr
