"""Whether values fit their columns, checked before a write so that a value the database
would refuse fails with the job and the field named, never with a driver's dump."""

from collections.abc import Iterable, Sequence
from operator import attrgetter

from sqlalchemy import Column

from .errors import Unstorable
from .pages import Job
from .schema import finetuning_jobs, finetuning_tasks, sync_runs
from .task_pages import Task

# The fields of a job that a page writes as text, and their columns.
JOB_COLUMNS = {
    name: finetuning_jobs.c[name]
    for name in ("job_id", "name", "description", "model", "train_mode")
}
TASK_COLUMNS = {
    name: finetuning_tasks.c[name]
    for name in ("task_id", "job_id", "parameter_scale", "run_status")
}
MARKER = sync_runs.c.next_marker
SHOWN_CHARS = 60


def problem(value: str | None, column: Column, dialect: str) -> str | None:
    """Why `value` cannot be stored in `column` on `dialect`, or None if it can."""
    if value is None:
        return None
    width = getattr(column.type, "length", None)
    if width is not None and len(value) > width:
        return f"is {len(value)} characters long; {column.table.name}.{column.name} holds {width}"
    if dialect == "postgresql" and "\x00" in value:
        return "contains a NUL character, which PostgreSQL cannot store in text"
    if dialect in ("mysql", "mariadb") and column.primary_key and value.endswith(" "):
        # MariaDB's collations pad: 'q ' is the same key as 'q', so one job would overwrite
        # the other, or the page would fail on a duplicate key.
        return "ends in a space, which MariaDB ignores when it compares keys"
    return None


def shown(value: str) -> str:
    """A value for a message: quoted, escaped, cut short."""
    text = repr(value[:SHOWN_CHARS])
    return text + "…" if len(value) > SHOWN_CHARS else text


def check_page(jobs: Sequence[Job], next_marker: str | None, dialect: str) -> None:
    """Raise Unstorable for the first value of the page that its column cannot hold."""
    # A whole column of the page at a time first (a few C-level passes instead of a call per
    # value): nearly every page fits, and only one that may not is checked value by value.
    if not all(
        _column_fits([value for value in map(attrgetter(field), jobs) if value], column, dialect)
        for field, column in JOB_COLUMNS.items()
    ):
        for job in jobs:
            for field, column in JOB_COLUMNS.items():
                why = problem(getattr(job, field), column, dialect)
                if why is not None:
                    raise Unstorable(
                        f"job {shown(job.job_id)}: its {field} {why}; the page was not written"
                    )
    why = problem(next_marker, MARKER, dialect)
    if why is not None:
        raise Unstorable(f"the page's nextMarker {shown(next_marker or '')} {why}")


def _column_fits(values: list[str], column: Column, dialect: str) -> bool:
    """True when no value can be refused by `problem`: none longer than the column's width,
    no NUL for PostgreSQL, no key ending in a space for MariaDB."""
    width = getattr(column.type, "length", None)
    if width is not None and max(map(len, values), default=0) > width:
        return False
    if dialect == "postgresql":
        return "\x00" not in "".join(values)
    if dialect in ("mysql", "mariadb") and column.primary_key:
        return not any(value.endswith(" ") for value in values)
    return True


def check_tasks(tasks: Iterable[Task], dialect: str) -> None:
    """Raise Unstorable for the first value of these tasks that its column cannot hold."""
    for task in tasks:
        for field, column in TASK_COLUMNS.items():
            why = problem(getattr(task, field), column, dialect)
            if why is not None:
                raise Unstorable(
                    f"task {shown(task.task_id)} of job {shown(task.job_id)}: its {field} {why}; "
                    "the page was not written"
                )


def check_filter(option: str, value: str | None, column: Column) -> str | None:
    """Why a filter cannot be recorded in its sync_runs column, for a usage error."""
    why = problem(value, column, "postgresql")  # the strictest: the same answer everywhere
    return None if why is None else f"{option} {shown(value or '')} {why}"
