"""What the data says: job totals, jobs by model and month, tasks running now and their recent
outcomes, and whether the sync is healthy.

`collect` reads the tables and the reporting views (migrations 0002 to 0004) into a plain dict;
`sections` and `to_csv` lay that dict out for people and spreadsheets; `check_fresh` turns an
old last success into `StaleData`. The CLI prints and exits; nothing here knows about click.
"""

import csv
import io
import re
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Double, Integer, String, case, column, func, select, table

from .errors import StaleData
from .runs import utcnow
from .schema import LongText, UtcDateTime, finetuning_jobs
from .task_pages import FINAL_STATUSES

# The reporting views, typed so that every dialect hands back the same Python values
# (SQLite returns a view's timestamps as text, MariaDB without a zone).
tasks_current = table(
    "finetuning_tasks_current",
    column("model", String()),
    column("run_status", String()),
    column("finished_at", UtcDateTime()),
    column("duration_s", Double()),
)
jobs_current = table(
    "finetuning_jobs_current", column("model", String()), column("train_mode", String())
)
jobs_monthly = table(
    "finetuning_jobs_monthly",
    column("month", String()),
    column("jobs_created", Integer()),
    column("jobs_listed", Integer()),
)
sync_health = table(
    "sync_health",
    column("last_run_id", Integer()),
    column("last_run_status", String()),
    column("last_run_started_at", UtcDateTime()),
    column("last_success_run_id", Integer()),
    column("last_success_at", UtcDateTime()),
    column("last_success_age_s", Integer()),
    column("last_error", LongText),
    column("failures_since_success", Integer()),
    column("last_full_success_run_id", Integer()),
    column("last_full_success_at", UtcDateTime()),
    column("last_full_success_age_s", Integer()),
    column("full_failures_since_success", Integer()),
)
sync_scopes = table(
    "sync_scopes",
    column("mode", String()),
    column("train_mode_filter", String()),
    column("model_filter", String()),
    column("last_run_id", Integer()),
    column("last_run_status", String()),
    column("last_run_started_at", UtcDateTime()),
    column("last_success_run_id", Integer()),
    column("last_success_at", UtcDateTime()),
    column("last_success_age_s", Integer()),
    column("last_error", LongText),
    column("failures_since_success", Integer()),
)
# What the report shows of sync_scopes: the scope, then its figures; the start time and the
# error text stay in the view (`qfsync runs` has them).
SCOPE_COLUMNS = tuple(
    name for name in sync_scopes.c.keys() if name not in ("last_run_started_at", "last_error")
)

DURATION = re.compile(r"(\d+)([smhd])")
MODES = ("full", "incremental")
UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
# run_status last: the columns before it are those of reports from before tasks.
CSV_COLUMNS = ("section", "month", "model", "train_mode", "metric", "value", "run_status")
RECENT = timedelta(days=7)


LONGEST_DURATION = timedelta(days=36_500)


def parse_duration(text: str) -> timedelta:
    """`90s`, `30m`, `26h`, `7d`: a positive whole number and one unit."""
    match = DURATION.fullmatch(text.strip())
    if match is None or int(match[1]) == 0:
        raise ValueError(f"{text!r} is not a duration such as 90s, 30m, 26h or 7d")
    try:
        duration: timedelta | None = timedelta(**{UNITS[match[2]]: int(match[1])})
    except OverflowError:  # past timedelta's own range
        duration = None
    if duration is None or duration > LONGEST_DURATION:  # counted back from now: before year 1
        raise ValueError(f"{text!r} is longer than any age a sync can have (100 years)")
    return duration


def parse_max_age(text: str) -> tuple[str | None, timedelta]:
    """`26h` (the newest success of any mode) or `full=26h` (of that mode, any scope)."""
    mode, equals, duration = text.rpartition("=")
    if equals and mode not in MODES:
        raise ValueError(f"{text!r}: the mode before = must be one of {', '.join(MODES)}")
    return mode or None, parse_duration(duration)


def format_age(seconds: int) -> str:
    """An age in its two largest units, as an operator reads it: `45s`, `12m 5s`, `1d 2h`."""
    counts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        counts.append((count, unit))
    largest = next((i for i, (count, _) in enumerate(counts) if count), len(counts))
    return " ".join(f"{c}{u}" for c, u in counts[largest : largest + 2] if c) or "0s"


def _last(value: str | None) -> tuple[bool, str]:
    """Sort key that puts a missing model, train mode or month after the named ones on every
    dialect (PostgreSQL sorts NULL last, SQLite and MariaDB first)."""
    return (value is None, value or "")


def collect(connection: Connection) -> dict[str, Any]:
    """The report as one JSON-ready dict (datetimes aside): `jobs`, `by_model`, `by_month`,
    `tasks`, `sync`, `scopes`. Listed means the API still lists the job; deleted, that a
    complete walk missed it."""
    jc = finetuning_jobs.c
    total, deleted = connection.execute(
        select(func.count(), func.count(jc.deleted_at)).select_from(finetuning_jobs)
    ).one()
    by_model = connection.execute(
        select(jobs_current.c.model, jobs_current.c.train_mode, func.count()).group_by(
            jobs_current.c.model, jobs_current.c.train_mode
        )
    ).all()
    by_month = connection.execute(
        select(
            jobs_monthly.c.month,
            func.sum(jobs_monthly.c.jobs_created),
            func.sum(jobs_monthly.c.jobs_listed),
        ).group_by(jobs_monthly.c.month)
    ).all()
    health = connection.execute(select(sync_health)).one()._asdict()
    scopes = [
        row._asdict()
        for row in connection.execute(
            select(sync_scopes).order_by(
                sync_scopes.c.mode, sync_scopes.c.train_mode_filter, sync_scopes.c.model_filter
            )
        )
    ]
    return {
        "jobs": {"total": total, "listed": total - deleted, "deleted": deleted},
        "by_model": [
            {"model": model, "train_mode": train_mode, "listed": int(count)}
            for model, train_mode, count in sorted(
                by_model, key=lambda row: (_last(row[0]), _last(row[1]))
            )
        ],
        # SUM is DECIMAL on MariaDB: ints keep JSON and CSV the same on every dialect.
        "by_month": [
            {"month": month, "created": int(created), "listed": int(listed)}
            for month, created, listed in sorted(by_month, key=lambda row: _last(row[0]))
        ],
        "tasks": collect_tasks(connection),
        "sync": health,
        "scopes": scopes,
    }


def collect_tasks(connection: Connection) -> dict[str, Any]:
    """Listed tasks (of listed jobs): `active` (running, waiting or not started, by status),
    `last_7_days` (finished in the last 7 days, by status, with durations) and `by_model`
    (finished tasks per model and the share that failed)."""
    t = tasks_current.c
    final = sorted(FINAL_STATUSES)
    active = connection.execute(
        select(t.run_status, func.count())
        .where(t.run_status.is_(None) | t.run_status.not_in(final))
        .group_by(t.run_status)
    ).all()
    recent = connection.execute(
        select(t.run_status, func.count(), func.avg(t.duration_s), func.max(t.duration_s))
        .where(t.finished_at >= utcnow() - RECENT)
        .group_by(t.run_status)
    ).all()
    by_model = connection.execute(
        select(t.model, func.count(), func.count(case((t.run_status == "Failed", 1))))
        .where(t.run_status.in_(final))
        .group_by(t.model)
    ).all()
    return {
        "active": [
            {"run_status": status, "tasks": int(count)}
            for status, count in sorted(active, key=lambda row: _last(row[0]))
        ],
        "last_7_days": [
            {
                "run_status": status,
                "tasks": int(count),
                "avg_duration_s": None if avg is None else round(float(avg), 1),
                "max_duration_s": None if longest is None else float(longest),
            }
            for status, count, avg, longest in sorted(recent, key=lambda row: _last(row[0]))
        ],
        "by_model": [
            {
                "model": model,
                "finished": int(finished),
                "failed": int(failed),
                "failure_share": round(int(failed) / int(finished), 3),
            }
            for model, finished, failed in sorted(by_model, key=lambda row: _last(row[0]))
        ],
    }


def last_success(report: dict[str, Any], mode: str | None) -> tuple[int, int, int] | None:
    """(run id, age in seconds, failures since) of the newest success of a mode (any scope),
    or of any mode; None if there is none."""
    if mode is None:
        sync = report["sync"]
        if sync["last_success_at"] is None:
            return None
        return (
            sync["last_success_run_id"],
            sync["last_success_age_s"],
            sync["failures_since_success"],
        )
    found = [
        scope
        for scope in report["scopes"]
        if scope["mode"] == mode and scope["last_success_at"] is not None
    ]
    if not found:
        return None
    newest = min(found, key=lambda scope: scope["last_success_age_s"])
    failures = sum(scope["failures_since_success"] for scope in found)
    return newest["last_success_run_id"], newest["last_success_age_s"], failures


def check_fresh(report: dict[str, Any], limits: list[tuple[str | None, timedelta]]) -> None:
    """Raise StaleData unless, for each (mode or None for any, age) limit, a sync of that mode
    succeeded within that age; the message names every limit that failed."""
    stale = []
    for mode, max_age in limits:
        what = f"{mode} sync" if mode else "sync"
        allowed = format_age(int(max_age.total_seconds()))
        last = last_success(report, mode)
        if last is None:
            stale.append(f"no {what} has succeeded yet (allowed age {allowed}): run `qfsync sync`")
            continue
        run_id, age, failures = last
        if age > max_age.total_seconds():
            stale.append(
                f"the last successful {what} (run {run_id}) finished {format_age(age)} ago, "
                f"more than the allowed {allowed} (failed runs since: {failures})"
            )
    if stale:
        raise StaleData("; ".join(stale))


def sections(report: dict[str, Any]) -> list[tuple[str, tuple[str, ...], list[dict[str, Any]]]]:
    """The report as titled tables (title, columns, rows), for people to read."""
    health = {
        key: value
        if value is None or not key.endswith("age_s")
        else f"{value} ({format_age(value)})"
        for key, value in report["sync"].items()
    }
    return [
        ("Jobs", ("total", "listed", "deleted"), [report["jobs"]]),
        (
            "Listed jobs by model and train mode",
            ("model", "train_mode", "listed"),
            report["by_model"],
        ),
        ("Jobs created per month (UTC)", ("month", "created", "listed"), report["by_month"]),
        (
            "Tasks running or waiting now (run_status empty: not started)",
            ("run_status", "tasks"),
            report["tasks"]["active"],
        ),
        (
            "Task outcomes, finished in the last 7 days (durations in seconds)",
            ("run_status", "tasks", "avg_duration_s", "max_duration_s"),
            report["tasks"]["last_7_days"],
        ),
        (
            "Task failure share by model (finished tasks)",
            ("model", "finished", "failed", "failure_share"),
            report["tasks"]["by_model"],
        ),
        (
            "Sync health (times in UTC)",
            ("field", "value"),
            [{"field": key, "value": value} for key, value in health.items()],
        ),
        ("Syncs by mode and scope (times in UTC)", SCOPE_COLUMNS, report["scopes"]),
    ]


def csv_rows(report: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """One long table: every number or fact is a row, so a spreadsheet can pivot it."""
    for metric, value in report["jobs"].items():
        yield {"section": "jobs", "metric": metric, "value": value}
    for row in report["by_model"]:
        yield {**row, "section": "by_model", "metric": "listed", "value": row["listed"]}
    for row in report["by_month"]:
        for metric in ("created", "listed"):
            yield {
                "section": "by_month",
                "month": row["month"],
                "metric": metric,
                "value": row[metric],
            }
    tasks = report["tasks"]
    for row in tasks["active"]:
        yield {**row, "section": "tasks_active", "metric": "tasks", "value": row["tasks"]}
    for row in tasks["last_7_days"]:
        for metric in ("tasks", "avg_duration_s", "max_duration_s"):
            yield {**row, "section": "tasks_last_7_days", "metric": metric, "value": row[metric]}
    for row in tasks["by_model"]:
        for metric in ("finished", "failed", "failure_share"):
            yield {**row, "section": "tasks_by_model", "metric": metric, "value": row[metric]}
    for metric, value in report["sync"].items():
        yield {"section": "sync", "metric": metric, "value": value}
    for scope in report["scopes"]:
        for metric in SCOPE_COLUMNS[3:]:
            yield {
                "section": f"sync_{scope['mode']}",
                "model": scope["model_filter"],
                "train_mode": scope["train_mode_filter"],
                "metric": metric,
                "value": scope[metric],
            }


# What a spreadsheet reads as the start of a formula; a model name or a filter (the API's
# text, or the command line's) may begin with one.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def cell(value: Any) -> Any:
    """A CSV cell: a time in ISO 8601, and text that a spreadsheet would take for a formula
    (`=HYPERLINK(...)`) prefixed with an apostrophe, which shows it as the text it is."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def to_csv(report: dict[str, Any]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in csv_rows(report):
        writer.writerow({key: cell(value) for key, value in row.items()})
    return out.getvalue()
