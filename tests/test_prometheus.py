"""The metrics and alert rules against the real Prometheus programs, from Debian's packages
(`.ci/run` installs them): promtool checks the output and runs the rules' unit tests; a node
exporter serves the textfile directory over HTTP; a Pushgateway receives a success and a
failure. The servers are started on free loopback ports and stopped after each test."""

import base64
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import unavailable
from prometheus_client.parser import text_string_to_metric_families

import qfsync
from qfsync.errors import DatabaseError, RetriesExhausted
from qfsync.fake_api import DEMO_ACCESS_KEY, DEMO_SECRET_KEY, Faults
from qfsync.store import Scope

MONITORING = Path(__file__).resolve().parent.parent / "monitoring"
ALL, SFT = Scope().key, Scope("SFT").key
# Debian's names for the programs; upstream's tarballs call them node_exporter and pushgateway.
PROGRAMS = {
    "promtool": ("promtool",),
    "node_exporter": ("prometheus-node-exporter", "node_exporter"),
    "pushgateway": ("prometheus-pushgateway", "pushgateway"),
}

pytestmark = pytest.mark.slow


def program(name: str) -> str:
    for candidate in PROGRAMS[name]:
        if found := shutil.which(candidate):
            return found
    unavailable(
        f"{name} is not installed (apt-get install prometheus prometheus-node-exporter "
        "prometheus-pushgateway; .ci/run does)"
    )
    raise AssertionError("unreachable")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get(url: str, headers: dict[str, str] | None = None) -> str:
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read().decode()


@contextmanager
def serving(command: list[str], port: int) -> Iterator[str]:
    """Run a server until it answers on its port; stop it afterwards."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                pytest.fail(f"{command[0]} exited: {process.stderr.read().decode()[-500:]}")
            try:
                get(f"{base}/metrics")
                break
            except urllib.error.HTTPError:  # it answers, if only to refuse
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"{command[0]} did not answer on port {port} within 30s")
                time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stderr.close()


def scrape(url: str, headers: dict[str, str] | None = None) -> dict[tuple[str, frozenset], float]:
    """Every sample of a /metrics page, by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(get(url, headers))
        for sample in family.samples
    }


def credentials(api) -> dict[str, str]:
    return {"endpoint": api.url, "access_key": DEMO_ACCESS_KEY, "secret_key": DEMO_SECRET_KEY}


def fail_sync(api, url: str, pages: int = 1, **kwargs) -> None:
    """A sync that fails after committing `pages` pages."""
    faults = api.faults
    api.faults = Faults(fail_after_pages=pages)
    with pytest.raises(RetriesExhausted):
        qfsync.sync(url, max_attempts=1, **kwargs, **credentials(api))
    api.faults = faults


def test_promtool_accepts_the_metrics_of_a_success_and_a_failure(tmp_path, fake_api):
    """`promtool check metrics` finds no problem (names, units, help) in either file."""
    promtool = program("promtool")
    api = fake_api(250)
    url = f"sqlite:///{tmp_path / 'q.db'}"
    success, failure = tmp_path / "success.prom", tmp_path / "failure.prom"
    qfsync.sync(url, metrics_file=success, **credentials(api))
    fail_sync(api, url, metrics_file=failure)
    for path in (success, failure):
        checked = subprocess.run(
            [promtool, "check", "metrics"],
            input=path.read_bytes(),
            capture_output=True,
            timeout=60,
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert checked.stdout + checked.stderr == b""


def test_alert_rules_pass_their_unit_tests():
    """The shipped rules are valid, and `promtool test rules` passes their unit tests."""
    promtool = program("promtool")
    for command in (["check", "rules", "alerts.yml"], ["test", "rules", "alerts.test.yml"]):
        done = subprocess.run(
            [promtool, *command], cwd=MONITORING, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "SUCCESS" in done.stdout


def test_node_exporter_serves_the_textfile(tmp_path, fake_api):
    """A node exporter reading the textfile directory serves a full and an incremental file
    side by side, with the values of the runs, and a failure with the success time kept."""
    textfiles = tmp_path / "textfile"
    textfiles.mkdir()
    api = fake_api(480)
    url = f"sqlite:///{tmp_path / 'q.db'}"
    full, incremental = textfiles / "qfsync-full.prom", textfiles / "qfsync-incremental.prom"
    first = qfsync.sync(url, metrics_file=full, **credentials(api))
    api.add(30)
    newer = qfsync.sync(url, incremental=True, metrics_file=incremental, **credentials(api))
    port = free_port()
    command = [
        program("node_exporter"),
        f"--web.listen-address=127.0.0.1:{port}",
        "--collector.disable-defaults",
        "--collector.textfile",
        f"--collector.textfile.directory={textfiles}",
    ]

    def at(mode: str, **labels: str) -> frozenset:
        return frozenset({"scope": ALL, "mode": mode, **labels}.items())

    with serving(command, port) as base:
        seen = scrape(f"{base}/metrics")
        assert seen[("node_textfile_scrape_error", frozenset())] == 0
        assert seen[("qfsync_last_run_jobs_inserted", at("full"))] == first.jobs_inserted
        assert seen[("qfsync_last_run_jobs_inserted", at("incremental"))] == 30
        assert seen[("qfsync_last_run_id", at("incremental"))] == newer.run_id
        assert seen[("qfsync_last_run_success", at("full"))] == 1
        assert seen[("qfsync_stored_jobs", at("full", state="listed"))] == 480
        success = seen[("qfsync_last_success_timestamp_seconds", at("full"))]

        fail_sync(api, url, metrics_file=full)
        seen = scrape(f"{base}/metrics")
        assert seen[("node_textfile_scrape_error", frozenset())] == 0
        assert seen[("qfsync_last_run_success", at("full"))] == 0
        assert seen[("qfsync_last_run_id", at("full"))] == newer.run_id + 1
        assert seen[("qfsync_last_success_timestamp_seconds", at("full"))] == success
        assert seen[("qfsync_last_run_success", at("incremental"))] == 1


def pushgateway(port: int, *options: str) -> list[str]:
    """A Pushgateway that keeps what it receives in memory only: Debian's build persists to
    /var/lib/prometheus/pushgateway.data by default, which would carry groups from one test
    run (or one concurrent run) into the next."""
    return [
        program("pushgateway"),
        f"--web.listen-address=127.0.0.1:{port}",
        "--persistence.file=",
        *options,
    ]


def test_pushgateway_receives_a_success_and_a_failure(tmp_path, fake_api):
    """Pushes are grouped by scope and mode: a failure replaces its group's status but keeps
    the last success time (also when the database is down and the push cannot send it), and
    other scopes' and modes' groups are left as they were."""
    api = fake_api(260)
    url = f"sqlite:///{tmp_path / 'q.db'}"
    port = free_port()
    command = pushgateway(port)

    def group(scope: str, mode: str, **labels: str) -> frozenset:
        return frozenset(
            {"job": "qfsync", "instance": "", "scope": scope, "mode": mode, **labels}.items()
        )

    with serving(command, port) as base:
        assert not [name for name, _ in scrape(f"{base}/metrics") if name.startswith("qfsync_")]
        first = qfsync.sync(url, pushgateway=base, **credentials(api))
        sft = qfsync.sync(url, pushgateway=base, train_mode="SFT", **credentials(api))
        seen = scrape(f"{base}/metrics")
        assert seen[("qfsync_last_run_success", group(ALL, "full"))] == 1
        assert seen[("qfsync_last_run_jobs_seen", group(ALL, "full"))] == 260
        assert seen[("qfsync_last_run_id", group(SFT, "full"))] == sft.run_id
        success = seen[("qfsync_last_success_timestamp_seconds", group(ALL, "full"))]

        fail_sync(api, url, pushgateway=base)
        fail_sync(api, url, pages=0, pushgateway=base, incremental=True)
        seen = scrape(f"{base}/metrics")
        assert seen[("qfsync_last_run_success", group(ALL, "full"))] == 0
        assert seen[("qfsync_last_run_exit_code", group(ALL, "full"))] == 1
        assert seen[("qfsync_last_run_id", group(ALL, "full"))] == sft.run_id + 1
        assert seen[("qfsync_last_success_timestamp_seconds", group(ALL, "full"))] == success
        assert seen[("qfsync_last_run_success", group(SFT, "full"))] == 1
        assert seen[("qfsync_last_run_success", group(ALL, "incremental"))] == 0
        # an incremental sync counts the full sync's success as its own freshness
        assert seen[("qfsync_last_success_timestamp_seconds", group(ALL, "incremental"))] == success

        # With the database down the last success cannot be read: the push leaves it out, and
        # the Pushgateway keeps the value it had, as it keeps the job counts.
        with pytest.raises(DatabaseError):
            qfsync.sync("postgresql://nobody@127.0.0.1:1/x", pushgateway=base, **credentials(api))
        seen = scrape(f"{base}/metrics")
        assert seen[("qfsync_last_run_id", group(ALL, "full"))] == 0
        assert seen[("qfsync_last_success_timestamp_seconds", group(ALL, "full"))] == success
        assert seen[("qfsync_stored_jobs", group(ALL, "full", state="listed"))] == 260
        # the Pushgateway accepted every push
        failures = [v for (name, _), v in seen.items() if name == "push_failure_time_seconds"]
        assert len(failures) == 3 and set(failures) == {0}
    assert first.status == "succeeded"


# A bcrypt hash of PUSH_PASSWORD, for the Pushgateway's --web.config.file.
PUSH_USER, PUSH_PASSWORD = "qfsync", "push-pw-Xk3"
PUSH_HASH = "$2b$04$NvaVRsYcVnm1D/5ceUhf3uQbJijOYq0vnBvUrvAVmXJ7TWP0t2tA."


def test_pushgateway_with_basic_auth_from_the_url(tmp_path, fake_api, caplog):
    """A Pushgateway that asks for basic auth gets the user and password of the URL, which
    no log line shows."""
    web_config = tmp_path / "web.yml"
    web_config.write_text(f"basic_auth_users:\n  {PUSH_USER}: {PUSH_HASH}\n")
    api = fake_api(40)
    port = free_port()
    command = pushgateway(port, f"--web.config.file={web_config}")
    with serving(command, port) as base:
        url = base.replace("://", f"://{PUSH_USER}:{PUSH_PASSWORD}@")
        result = qfsync.sync(f"sqlite:///{tmp_path / 'q.db'}", pushgateway=url, **credentials(api))
        token = base64.b64encode(f"{PUSH_USER}:{PUSH_PASSWORD}".encode()).decode()
        seen = scrape(f"{base}/metrics", {"Authorization": f"Basic {token}"})
    labels = {"job": "qfsync", "instance": "", "scope": ALL, "mode": "full"}
    assert seen[("qfsync_last_run_id", frozenset(labels.items()))] == result.run_id
    assert PUSH_PASSWORD not in caplog.text
