"""Prometheus metrics of a sync, for the node exporter's textfile collector (`--metrics-file`)
and a Pushgateway (`--pushgateway`), written on success and on failure alike.

Every value describes the last attempt of one scope in one mode, so every metric is a gauge
(`_total` is for counters, which never go down). The one to alert on, the last success time,
is read from `sync_runs`, so a failed attempt reports the success before it rather than
dropping it. The counts are derived from `runs.COUNTS`, so a count added there is exported
with its column's comment as help text. prometheus_client is imported only when metrics are
asked for.
"""

import contextlib
import http.client
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from sqlalchemy import Engine, func, select
from sqlalchemy.exc import SQLAlchemyError

from . import runs
from .client import RETRY_REASONS, Client, check_http_url
from .db import mask_text
from .errors import EXIT_FAILED, EXIT_OK, ConfigError, QfsyncError
from .schema import finetuning_jobs, sync_runs
from .store import Scope

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from .syncer import Sync

log = logging.getLogger(__name__)

PUSH_JOB = "qfsync"
PUSH_TIMEOUT_S = 10.0
LAST_SUCCESS = "qfsync_last_success_timestamp_seconds"


def exit_code_of(error: BaseException | None) -> int:
    """The exit code an attempt ends with: a qfsync error's own, else a failure. (A host's
    exception may have an `exit_code` of its own meaning, 0 even, which would report a
    failed run as a success.)"""
    if error is None:
        return EXIT_OK
    return error.exit_code if isinstance(error, QfsyncError) else EXIT_FAILED


@dataclass(frozen=True)
class Stored:
    """What the database says about the scope after the attempt."""

    last_success: float | None  # Unix time; None if no sync of the scope has succeeded
    jobs: dict[str, int]  # listed and deleted jobs of the scope


def read_stored(engine: Engine, scope: Scope, mode: str) -> Stored:
    """The last success of the scope in this mode (for incremental, a full sync counts too: it
    saw every new job as well), and the scope's listed and deleted jobs."""
    modes = [runs.FULL] if mode == runs.FULL else [runs.FULL, runs.INCREMENTAL]
    rc, jc = sync_runs.c, finetuning_jobs.c
    in_scope = [
        column == value
        for column, value in ((jc.train_mode, scope.train_mode), (jc.model, scope.model))
        if value is not None
    ]
    with engine.connect() as connection:
        last = connection.scalar(
            select(func.max(rc.finished_at)).where(
                scope.runs_clause(), rc.status == runs.SUCCEEDED, rc.mode.in_(modes)
            )
        )
        total, deleted = connection.execute(
            select(func.count(), func.count(jc.deleted_at)).where(*in_scope)
        ).one()
    return Stored(
        last.timestamp() if last else None, {"listed": total - deleted, "deleted": deleted}
    )


@dataclass
class Attempt:
    """One call of `qfsync.sync`, filled in as it goes, so that whatever point it fails at the
    metrics say what it did."""

    scope: Scope
    mode: str
    started_at: float = field(default_factory=time.time)
    client: Client | None = None
    sync: "Sync | None" = None
    error: BaseException | None = None


@dataclass(frozen=True)
class Snapshot:
    """The values of every metric, fixed when the attempt ended."""

    scope: str
    mode: str
    started_at: float
    finished_at: float
    exit_code: int
    run_id: int
    counts: dict[str, int]
    requests: int
    retries: dict[str, int]
    retry_wait_s: float
    last_success: float | None  # None: no success yet, or the database could not be read
    stored_jobs: dict[str, int] | None  # None: the database could not be read

    @classmethod
    def of(cls, attempt: Attempt, stored: Stored | None) -> "Snapshot":
        result = attempt.sync.result if attempt.sync is not None else None
        client = attempt.client
        retries = client.stats.retries if client else {}
        error = attempt.error
        return cls(
            scope=attempt.scope.key,
            mode=attempt.mode,
            started_at=attempt.started_at,
            finished_at=time.time(),
            exit_code=exit_code_of(error),
            run_id=result.run_id if result is not None else 0,
            counts={name: getattr(result, name, 0) if result else 0 for name in runs.COUNTS},
            requests=client.requests_made if client else 0,
            retries={reason: retries.get(reason, 0) for reason in RETRY_REASONS},
            retry_wait_s=round(client.stats.waited_s, 3) if client else 0.0,
            last_success=stored.last_success if stored else None,
            stored_jobs=stored.jobs if stored else None,
        )


def count_help(name: str) -> str:
    column = sync_runs.c.get(name)
    comment = column.comment if column is not None and column.comment else name
    return f"In the last attempt, per sync_runs.{name}: {comment}"


class SnapshotCollector:
    """A prometheus_client collector of one snapshot. `labels` go on every sample: scope and
    mode in a file; none for a Pushgateway, whose grouping key adds them."""

    def __init__(self, snapshot: Snapshot, labels: dict[str, str]):
        self.snapshot, self.labels = snapshot, labels

    def gauge(self, name: str, help_text: str, value: float) -> "Metric":
        from prometheus_client.core import GaugeMetricFamily

        family = GaugeMetricFamily(f"qfsync_{name}", help_text, labels=list(self.labels))
        family.add_metric(list(self.labels.values()), value)
        return family

    def gauges(self, name: str, help_text: str, label: str, values: dict[str, int]) -> "Metric":
        """One gauge per value of `label`, in one family."""
        from prometheus_client.core import GaugeMetricFamily

        family = GaugeMetricFamily(f"qfsync_{name}", help_text, labels=[*self.labels, label])
        for label_value, value in values.items():
            family.add_metric([*self.labels.values(), label_value], value)
        return family

    def collect(self) -> Iterator["Metric"]:
        s = self.snapshot
        yield self.gauge(
            "last_run_start_timestamp_seconds",
            "When the last attempt started (Unix time).",
            s.started_at,
        )
        yield self.gauge(
            "last_run_end_timestamp_seconds",
            "When the last attempt ended (Unix time).",
            s.finished_at,
        )
        yield self.gauge(
            "last_run_duration_seconds",
            "How long the last attempt took, waiting for the database's lock included.",
            round(s.finished_at - s.started_at, 3),
        )
        yield self.gauge(
            "last_run_success", "1 if the last attempt succeeded, 0 if it failed.", s.exit_code == 0
        )
        yield self.gauge(
            "last_run_exit_code",
            "Exit code of the last attempt: 0 succeeded, 1 failed, 2 bad settings, "
            "3 another sync held the lock, 130/143 interrupted.",
            s.exit_code,
        )
        yield self.gauge(
            "last_run_id",
            "sync_runs.id of the last attempt; 0 if it failed before its run row existed.",
            s.run_id,
        )
        for name, value in s.counts.items():
            yield self.gauge(f"last_run_{name}", count_help(name), value)
        yield self.gauge(
            "last_run_api_requests",
            "Requests the last attempt sent to the console API, retries included.",
            s.requests,
        )
        yield self.gauges(
            "last_run_api_retries",
            "Requests of the last attempt that failed and were retried, by reason.",
            "reason",
            s.retries,
        )
        yield self.gauge(
            "last_run_retry_wait_seconds",
            "Time the last attempt spent waiting before retries (backoff and Retry-After).",
            s.retry_wait_s,
        )
        if s.last_success is not None:
            yield self.gauge(
                LAST_SUCCESS.removeprefix("qfsync_"),
                "When the last successful sync of this scope and mode finished (Unix time), from "
                "sync_runs (for mode incremental, a full sync counts too).",
                s.last_success,
            )
        if s.stored_jobs is not None:
            yield self.gauges(
                "stored_jobs",
                "Jobs of this scope in finetuning_jobs: listed by the API now, or deleted "
                "(missed by a complete walk).",
                "state",
                s.stored_jobs,
            )


def registry_of(snapshot: Snapshot, labels: dict[str, str]) -> Any:
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot, labels))
    return registry


def previous_success(path: Path, labels: dict[str, str]) -> float | None:
    """The last success time an earlier attempt wrote to the file, for when the database
    cannot be read now: the alert on it must keep counting from there."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = path.read_text()
    except OSError:
        return None
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == LAST_SUCCESS and sample.labels == labels:
                    return float(sample.value)
    except ValueError:  # not the text format (any more): nothing to carry over
        return None
    return None


def replace_file(path: Path, content: bytes) -> None:
    """Put `content` at `path` so that a reader sees the old file or the new one, never half of
    one: written to a temporary file in the same directory (named so that the textfile
    collector, which reads only *.prom, skips it), synced, then renamed over `path`.
    prometheus_client's write_to_textfile does the rename too, but creates its file with the
    umask's mode and lets a crash leave a named-but-empty file; the node exporter usually runs
    as another user, so the file is readable by all before it gets its name."""
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), 0o644)
            file.write(content)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def push_target(url: str) -> tuple[str, Callable[..., Any]]:
    """The Pushgateway URL without user info, and the prometheus_client handler that sends
    that user and password as basic auth (urllib would take `user:password@host` for a host
    name, and a Pushgateway behind --web.config.file asks for basic auth)."""
    from prometheus_client.exposition import basic_auth_handler, default_handler

    parts = urlsplit(url)
    if parts.username is None:
        return url, default_handler
    username, password = unquote(parts.username), unquote(parts.password or "")

    def handler(
        url: str, method: str, timeout: float | None, headers: list[tuple[str, str]], data: bytes
    ) -> Callable[[], None]:
        return basic_auth_handler(url, method, timeout, headers, data, username, password)

    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl(), handler


@dataclass(frozen=True)
class Outputs:
    """Where the metrics go: a file for the textfile collector, a Pushgateway, both or none."""

    file: Path | None = None
    pushgateway: str | None = None

    def __post_init__(self) -> None:
        # Checked before the sync starts, so that a typo is a usage error, not a lost signal.
        if self.file is not None and not self.file.parent.is_dir():
            raise ConfigError(f"--metrics-file: no directory {str(self.file.parent)!r}")
        # Any other name is skipped without a word, and the alerts would never see the run.
        if self.file is not None and self.file.suffix != ".prom":
            raise ConfigError(
                f"--metrics-file: the node exporter reads only *.prom files, not {self.file.name!r}"
            )
        if self.pushgateway is not None:
            # A push that cannot be sent would fail after the sync (urllib raises InvalidURL,
            # not an OSError): checked before it.
            try:
                check_http_url(self.pushgateway, mask_text(self.pushgateway))
            except ValueError as exc:
                hint = (
                    "; a / ? or # in the password must be written %2F %3F %23"
                    if "@" in self.pushgateway
                    else ""
                )
                raise ConfigError(f"--pushgateway: {exc}{hint}") from None

    def __bool__(self) -> bool:
        return self.file is not None or self.pushgateway is not None

    def write(self, attempt: Attempt, engine: Engine | None) -> None:
        """Write and push the attempt's metrics. A failure here is a warning: the sync's own
        outcome decides the exit code, and a stale file raises the alert in time anyway."""
        if not self:
            return
        stored = None
        if engine is not None:
            try:
                stored = read_stored(engine, attempt.scope, attempt.mode)
            except SQLAlchemyError as exc:
                log.warning("metrics: cannot read sync_runs (%s)", type(exc).__name__)
        snapshot = Snapshot.of(attempt, stored)
        if self.file is not None:
            self._write_file(self.file, snapshot)
        if self.pushgateway is not None:
            self._push(self.pushgateway, snapshot)

    def _write_file(self, path: Path, snapshot: Snapshot) -> None:
        from prometheus_client import generate_latest

        labels = {"scope": snapshot.scope, "mode": snapshot.mode}
        if snapshot.stored_jobs is None:  # the database could not be read
            snapshot = replace(snapshot, last_success=previous_success(path, labels))
        try:
            replace_file(path, generate_latest(registry_of(snapshot, labels)))
        except OSError as exc:
            log.warning("metrics: cannot write %s: %s", path, exc.strerror or exc)

    def _push(self, url: str, snapshot: Snapshot) -> None:
        from prometheus_client import pushadd_to_gateway

        gateway, handler = push_target(url)
        # POST replaces only the metrics pushed, so a last success time this attempt could not
        # read stays in the group as it was; scope and mode each get a group of their own.
        try:
            pushadd_to_gateway(
                gateway,
                job=PUSH_JOB,
                registry=registry_of(snapshot, {}),
                grouping_key={"scope": snapshot.scope, "mode": snapshot.mode},
                timeout=PUSH_TIMEOUT_S,
                handler=handler,
            )
        except OSError as exc:  # URLError and HTTPError included
            log.warning("metrics: cannot push to %s: %s", mask_text(url), exc)
        except (ValueError, http.client.HTTPException) as exc:
            # What the checks above did not foresee: its text may quote the URL, so only its
            # kind is named.
            log.warning("metrics: cannot push to %s: %s", mask_text(url), type(exc).__name__)
