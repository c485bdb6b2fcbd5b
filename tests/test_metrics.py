"""Metrics of a sync: the file holds the run's values, a failure keeps the last success time,
retries are counted by reason, and the shipped alert rules use the names qfsync writes."""

import logging
import os
import re
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import FAST_RETRY
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

import qfsync
from qfsync import db, runs
from qfsync.cli import main
from qfsync.client import RETRY_REASONS, Client, Credentials, JobQuery, walk
from qfsync.errors import ConfigError, DatabaseError, RetriesExhausted, SyncLocked
from qfsync.fake_api import DEMO_ACCESS_KEY, DEMO_SECRET_KEY, Faults
from qfsync.lock import sync_lock
from qfsync.schema import sync_runs
from qfsync.store import Scope

ALERTS = Path(__file__).resolve().parent.parent / "monitoring" / "alerts.yml"
ALL = Scope().key


def credentials(api) -> dict[str, str]:
    return {"endpoint": api.url, "access_key": DEMO_ACCESS_KEY, "secret_key": DEMO_SECRET_KEY}


def read(path: Path) -> dict[str, dict]:
    """Metric families by name: {'help': ..., 'type': ..., 'samples': {labels: value}}."""
    families = {}
    for family in text_string_to_metric_families(path.read_text()):
        samples = {tuple(sorted(s.labels.items())): s.value for s in family.samples}
        families[family.name] = {
            "help": family.documentation,
            "type": family.type,
            "samples": samples,
        }
    return families


def value(families: dict, name: str, mode: str = "full", scope: str = ALL, **labels: str):
    key = tuple(sorted({"scope": scope, "mode": mode, **labels}.items()))
    return families[name]["samples"][key]


def finished_at(url: str, run_id: int) -> float:
    engine = db.connect(url)
    try:
        with engine.connect() as connection:
            when = connection.scalar(
                select(sync_runs.c.finished_at).where(sync_runs.c.id == run_id)
            )
    finally:
        engine.dispose()
    return when.timestamp()


def test_file_holds_the_values_of_the_run(tmp_path, fake_api):
    """After a sync the file has, labelled with scope and mode, the run's id, status, times,
    counts and requests, the last success time from sync_runs and the table's jobs; every
    metric is a gauge with help text."""
    api = fake_api(321)
    url, path = f"sqlite:///{tmp_path / 'q.db'}", tmp_path / "qfsync.prom"
    result = qfsync.sync(url, metrics_file=path, **credentials(api))
    found = read(path)
    assert all(f["type"] == "gauge" and f["help"] for f in found.values())
    for name in runs.COUNTS:
        assert value(found, f"qfsync_last_run_{name}") == getattr(result, name)
    assert value(found, "qfsync_last_run_id") == result.run_id
    assert value(found, "qfsync_last_run_success") == 1
    assert value(found, "qfsync_last_run_exit_code") == 0
    assert value(found, "qfsync_last_run_api_requests") == result.requests == api.request_count
    assert value(found, "qfsync_last_success_timestamp_seconds") == pytest.approx(
        finished_at(url, result.run_id), abs=1e-3
    )
    start = value(found, "qfsync_last_run_start_timestamp_seconds")
    end = value(found, "qfsync_last_run_end_timestamp_seconds")
    assert value(found, "qfsync_last_run_duration_seconds") == pytest.approx(end - start, abs=2e-3)
    assert start <= value(found, "qfsync_last_success_timestamp_seconds") <= end
    assert value(found, "qfsync_stored_jobs", state="listed") == 321
    assert value(found, "qfsync_stored_jobs", state="deleted") == 0
    assert {dict(key)["reason"] for key in found["qfsync_last_run_api_retries"]["samples"]} == set(
        RETRY_REASONS
    )


def test_file_is_readable_by_all_from_the_moment_it_appears(tmp_path, fake_api, monkeypatch):
    """Under a strict umask the file is renamed into place already readable by the node
    exporter's user, from a temporary file in the same directory that it does not read."""
    api = fake_api(20)
    path = tmp_path / "qfsync.prom"
    renamed = []
    rename = os.replace

    def watch(source, target):
        renamed.append((Path(source), stat.S_IMODE(os.stat(source).st_mode)))
        rename(source, target)

    monkeypatch.setattr(os, "replace", watch)
    old_umask = os.umask(0o077)
    try:
        qfsync.sync(f"sqlite:///{tmp_path / 'q.db'}", metrics_file=path, **credentials(api))
    finally:
        os.umask(old_umask)
    [(source, mode)] = [(s, m) for s, m in renamed if s.parent == tmp_path and s != path]
    assert mode == 0o644 and not source.name.endswith(".prom")
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir() if "prom" in p.name) == ["qfsync.prom"]


class HostExit(Exception):
    """A host's own exception that has an exit code of its own meaning."""

    exit_code = 0


def test_a_hosts_exception_is_a_failure_whatever_its_exit_code(tmp_path, fake_api):
    """A sync that a host's exception ends (here from the progress callback) is a failure in
    the metrics, though the exception says `exit_code = 0`."""
    api = fake_api(250)
    path = tmp_path / "qfsync.prom"

    def end(result):
        raise HostExit("the host ends it")

    with pytest.raises(HostExit):
        qfsync.sync(
            f"sqlite:///{tmp_path / 'q.db'}",
            page_size=100,
            progress=end,
            metrics_file=path,
            **credentials(api),
        )
    found = read(path)
    assert value(found, "qfsync_last_run_success") == 0
    assert value(found, "qfsync_last_run_exit_code") == 1


def test_counts_follow_the_run_counts_list():
    """Each count of runs.COUNTS has its metric, whose help text is its column's comment, so a
    count added to sync_runs is exported without touching the metrics code."""
    from qfsync.metrics import Attempt, Snapshot, registry_of

    snapshot = Snapshot.of(Attempt(Scope(), runs.FULL), None)
    families = {family.name: family.documentation for family in registry_of(snapshot, {}).collect()}
    for name in runs.COUNTS:
        assert sync_runs.c[name].comment in families[f"qfsync_last_run_{name}"]


def test_failure_keeps_the_last_success_time(database_url, tmp_path, fake_api):
    """A run that fails midway writes status 0, its exit code, its run id and the pages it
    committed, and the previous run's success time, read back from sync_runs."""
    api = fake_api(450)
    path = tmp_path / "full.prom"
    first = qfsync.sync(database_url, metrics_file=path, **credentials(api))
    api.faults = Faults(fail_after_pages=2)
    with pytest.raises(RetriesExhausted):
        qfsync.sync(database_url, metrics_file=path, max_attempts=2, **credentials(api))
    found = read(path)
    assert value(found, "qfsync_last_run_success") == 0
    assert value(found, "qfsync_last_run_exit_code") == 1
    assert value(found, "qfsync_last_run_id") == first.run_id + 1
    assert value(found, "qfsync_last_run_pages") == 2
    assert value(found, "qfsync_last_run_api_retries", reason="server_error") == 1
    assert value(found, "qfsync_last_success_timestamp_seconds") == pytest.approx(
        finished_at(database_url, first.run_id), abs=1e-3
    )


def test_share_deleted_is_of_the_scope_not_of_the_jobs_seen(tmp_path, fake_api):
    """A full sync that resumes a failed walk sees only its last pages but deletes for the whole
    walk: the listed jobs plus the deleted ones give the scope's size before the sync, which
    the deletion alert divides by, while the jobs seen would not."""
    api = fake_api(1000)
    url, path = f"sqlite:///{tmp_path / 'q.db'}", tmp_path / "full.prom"
    qfsync.sync(url, **credentials(api))
    api.faults = Faults(fail_after_pages=8)
    with pytest.raises(RetriesExhausted):
        qfsync.sync(url, metrics_file=path, max_attempts=1, **credentials(api))
    api.faults = Faults()
    api.delete([job["jobId"] for job in api.job_list()][-30:])
    resumed = qfsync.sync(url, metrics_file=path, **credentials(api))
    found = read(path)
    assert resumed.resumed_from and value(found, "qfsync_last_run_jobs_deleted") == 30
    assert value(found, "qfsync_last_run_jobs_seen") == 170
    listed = value(found, "qfsync_stored_jobs", state="listed")
    assert listed + value(found, "qfsync_last_run_jobs_deleted") == 1000


def test_incremental_success_counts_full_syncs_too(tmp_path, fake_api):
    """For mode incremental the last success is that of any sync of the scope (a full one
    saw every new job too); for mode full, only full syncs count."""
    api = fake_api(120)
    url = f"sqlite:///{tmp_path / 'q.db'}"
    full, incremental = tmp_path / "full.prom", tmp_path / "incremental.prom"
    first = qfsync.sync(url, metrics_file=full, **credentials(api))
    api.faults = Faults(fail_after_pages=0)
    with pytest.raises(RetriesExhausted):
        qfsync.sync(
            url, incremental=True, metrics_file=incremental, max_attempts=1, **credentials(api)
        )
    found = read(incremental)
    assert value(found, "qfsync_last_run_success", mode="incremental") == 0
    assert value(found, "qfsync_last_success_timestamp_seconds", mode="incremental") == (
        pytest.approx(finished_at(url, first.run_id), abs=1e-3)
    )
    api.faults = Faults()
    second = qfsync.sync(url, incremental=True, metrics_file=incremental, **credentials(api))
    qfsync.sync(url, restart=True, metrics_file=full, train_mode="SFT", **credentials(api))
    assert value(read(full), "qfsync_last_success_timestamp_seconds", scope="trainMode=SFT;model=*")
    api.faults = Faults(fail_after_pages=0)
    with pytest.raises(RetriesExhausted):
        qfsync.sync(url, metrics_file=full, max_attempts=1, **credentials(api))
    assert second.mode == "incremental"
    assert value(read(full), "qfsync_last_success_timestamp_seconds") == pytest.approx(
        finished_at(url, first.run_id), abs=1e-3
    )


def test_lock_held_is_a_failure_without_a_run(tmp_path, fake_api):
    """A sync that finds the database locked writes exit code 3 and run id 0, and still the last
    success time from the database."""
    api = fake_api(50)
    url, path = f"sqlite:///{tmp_path / 'q.db'}", tmp_path / "qfsync.prom"
    first = qfsync.sync(url, metrics_file=path, **credentials(api))
    engine = db.connect(url)
    try:
        with sync_lock(engine), pytest.raises(SyncLocked):
            qfsync.sync(url, metrics_file=path, **credentials(api))
    finally:
        engine.dispose()
    found = read(path)
    assert value(found, "qfsync_last_run_exit_code") == 3
    assert value(found, "qfsync_last_run_id") == 0
    assert value(found, "qfsync_last_run_pages") == 0
    assert value(found, "qfsync_last_success_timestamp_seconds") == pytest.approx(
        finished_at(url, first.run_id), abs=1e-3
    )


@pytest.mark.parametrize(
    "setting",
    [{"max_delete": "most"}, {"page_size": 0}, {"access_key": ""}],
    ids=["max-delete", "page-size", "no-credentials"],
)
def test_bad_settings_are_a_failure_in_the_file(tmp_path, fake_api, setting):
    """A setting that is wrong (a cron line's environment changed) is exit code 2 in the file,
    whichever check finds it, with the last success time kept: the alert on failures must not
    depend on where the setting is checked."""
    api = fake_api(20)
    url, path = f"sqlite:///{tmp_path / 'q.db'}", tmp_path / "qfsync.prom"
    qfsync.sync(url, metrics_file=path, **credentials(api))
    before = value(read(path), "qfsync_last_success_timestamp_seconds")
    with pytest.raises(ConfigError):
        qfsync.sync(url, metrics_file=path, **{**credentials(api), **setting})
    found = read(path)
    assert value(found, "qfsync_last_run_exit_code") == 2
    assert value(found, "qfsync_last_run_success") == 0
    assert value(found, "qfsync_last_success_timestamp_seconds") == before


def test_unreachable_database_keeps_the_success_time_of_the_file(tmp_path, fake_api, caplog):
    """When the database cannot be reached, the file still says the attempt failed, and keeps
    the last success time it held; the job counts it cannot know are left out."""
    api = fake_api(50)
    path = tmp_path / "qfsync.prom"
    qfsync.sync(f"sqlite:///{tmp_path / 'q.db'}", metrics_file=path, **credentials(api))
    before = value(read(path), "qfsync_last_success_timestamp_seconds")
    with pytest.raises(DatabaseError, match="cannot connect"):
        qfsync.sync("postgresql://nobody:pw@127.0.0.1:1/x", metrics_file=path, **credentials(api))
    found = read(path)
    assert value(found, "qfsync_last_run_success") == 0
    assert value(found, "qfsync_last_success_timestamp_seconds") == before
    assert "qfsync_stored_jobs" not in found


@pytest.mark.parametrize(
    ("faults", "reason"),
    [
        (Faults(throttle_rate=0.3, retry_after_s=0), "throttled"),
        (Faults(error_rate=0.3), "server_error"),
        (Faults(busy_rate=0.3), "server_error"),
        (Faults(drop_rate=0.3), "connection"),
        (Faults(malformed_rate=0.3), "malformed"),
    ],
    ids=["429", "500", "336100", "drop", "malformed"],
)
def test_client_counts_retries_by_reason(fake_api, faults, reason):
    """Every retried request is counted once under its reason, and the waits add up to the
    time the client slept."""
    api = fake_api(1000, faults)
    slept: list[float] = []
    with Client(
        Credentials(DEMO_ACCESS_KEY, DEMO_SECRET_KEY), api.url, FAST_RETRY, slept.append
    ) as client:
        pages = sum(1 for _ in walk(client, JobQuery()))
    retried = api.request_count - pages
    assert retried > 0
    assert client.stats.retries == {reason: retried}
    assert client.stats.waited_s == pytest.approx(sum(slept))


def test_push_failure_is_a_warning(tmp_path, fake_api, caplog):
    """A Pushgateway that cannot be reached costs a warning; the sync still succeeds."""
    api = fake_api(20)
    caplog.set_level(logging.WARNING)
    result = qfsync.sync(
        f"sqlite:///{tmp_path / 'q.db'}",
        pushgateway="http://nobody:hunter2@127.0.0.1:1",
        **credentials(api),
    )
    assert result.status == "succeeded"
    assert "metrics: cannot push to http://nobody:***@127.0.0.1:1" in caplog.text
    assert "hunter2" not in caplog.text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--metrics-file", "/nonexistent/dir/q.prom"], "--metrics-file: no directory"),
        (["--pushgateway", "pushgateway:9091"], "--pushgateway: not an http(s) URL"),
        (["--metrics-file", "qfsync.txt"], "--metrics-file: the node exporter reads only *.prom"),
        (["--pushgateway", "http://127.0.0.1:abc"], "--pushgateway: not a URL"),
        (["--pushgateway", "http://[::1"], "--pushgateway: not a URL"),
        (["--pushgateway", "http://127.0.0.1:9091 x"], "--pushgateway: the URL holds white"),
        (["--pushgateway", "http://домен.рф:9091"], "--pushgateway: the URL holds white"),
    ],
)
def test_bad_metrics_destination_is_a_usage_error(
    tmp_path, fake_api, api_env, monkeypatch, args, message
):
    """A metrics destination that cannot work is exit 2 and one line, before any request."""
    monkeypatch.chdir(tmp_path)  # a relative file, if written after all, lands here
    api = fake_api(20)
    api_env(api)
    done = CliRunner().invoke(
        main, ["sync", "--database-url", f"sqlite:///{tmp_path / 'q.db'}", *args]
    )
    assert done.exit_code == 2
    assert done.stderr.count("\n") == 1 and message in done.stderr
    assert api.request_count == 0


@pytest.mark.parametrize(
    "url",
    [
        "http://user:PG/hunter2@127.0.0.1:1",
        "http://user:PG?hunter2@127.0.0.1:1",
        "http://user:PG#hunter2@127.0.0.1:1",
        "http://user:PG hunter2@127.0.0.1:1",
        "http://user:PG@hunter2@[::1",
    ],
)
def test_a_pushgateway_url_that_breaks_on_its_password_is_refused_unshown(
    tmp_path, fake_api, api_env, url
):
    """A password with an unencoded / ? # or space ends the host early: exit 2 before any
    request, with one line that shows no part of the password (urllib's error quoted the
    part before the /, after a sync that had succeeded)."""
    api = fake_api(20)
    api_env(api)
    done = CliRunner().invoke(
        main, ["sync", "--database-url", f"sqlite:///{tmp_path / 'q.db'}", "--pushgateway", url]
    )
    assert done.exit_code == 2, done.output
    assert done.stderr.count("\n") == 1 and "--pushgateway: " in done.stderr
    assert "hunter2" not in done.output and "PG" not in done.output
    assert api.request_count == 0


def test_alert_rules_use_the_metrics_qfsync_writes(tmp_path, fake_api):
    """Every qfsync metric the shipped alert rules name is one that a sync writes, with the
    labels they match on."""
    api = fake_api(20)
    path = tmp_path / "qfsync.prom"
    qfsync.sync(f"sqlite:///{tmp_path / 'q.db'}", metrics_file=path, **credentials(api))
    named = set(re.findall(r"\bqfsync_[a-z_]+", ALERTS.read_text()))
    found = read(path)
    assert named and named <= set(found)
    # and every label matcher they use, such as {state="listed"}, matches a sample written
    matchers = re.findall(r'\b(qfsync_[a-z_]+)\{(\w+)="([^"]*)"\}', ALERTS.read_text())
    assert matchers
    for name, label, wanted in matchers:
        assert any(dict(key).get(label) == wanted for key in found[name]["samples"]), name


def test_pushgateway_url_from_the_environment(tmp_path, fake_api, api_env, monkeypatch):
    """QFSYNC_PUSHGATEWAY gives --pushgateway, so that a URL with a password can come from a
    secret rather than the command line."""
    api = fake_api(20)
    api_env(api)
    monkeypatch.setenv("QFSYNC_PUSHGATEWAY", "pushgateway:9091")
    done = CliRunner().invoke(main, ["sync", "--database-url", f"sqlite:///{tmp_path / 'q.db'}"])
    assert done.exit_code == 2 and "--pushgateway: not an http(s) URL" in done.stderr
