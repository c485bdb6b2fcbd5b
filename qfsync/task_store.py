"""Writing tasks, and reading which jobs' tasks are due for a refresh.

A write takes complete listings (every task of each job fetched) and, in the caller's
transaction: inserts new tasks, rewrites changed ones, touches unchanged ones, marks the stored
tasks a listing no longer has as deleted, keeps one version per distinct (run_status,
finished_at), and records when each job's tasks were listed. Plain statements, the same on
every dialect: a page of jobs holds a few hundred tasks at most.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, bindparam, func, insert, or_, select, update

from .schema import (
    TASK_VERSIONED_FIELDS,
    finetuning_jobs,
    finetuning_task_lists,
    finetuning_task_versions,
    finetuning_tasks,
)
from .store import Scope, chunks
from .task_pages import FINAL_STATUSES, Task

tc, vc, lc = finetuning_tasks.c, finetuning_task_versions.c, finetuning_task_lists.c


@dataclass
class TaskCounts:
    seen: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    requests: int = 0  # task lists and progress asked for, whatever their outcome

    def __iadd__(self, other: "TaskCounts") -> "TaskCounts":
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        return self


def unfinished() -> Any:
    """A listed task that may still change: not in a final state (an empty status included,
    and any status qfsync does not know)."""
    return and_(
        tc.deleted_at.is_(None),
        or_(tc.run_status.is_(None), tc.run_status.not_in(sorted(FINAL_STATUSES))),
    )


def due(connection: Connection, job_ids: Sequence[str], older_than: datetime | None) -> list[str]:
    """Of these jobs, the ones whose tasks to fetch: never listed, with an unfinished task, or
    (when `older_than` is given) last listed before it. In the order given."""
    fetched: dict[str, datetime] = {}
    busy: set[str] = set()
    for ids in chunks(job_ids):
        fetched.update(
            connection.execute(select(lc.job_id, lc.fetched_at).where(lc.job_id.in_(ids))).all()
        )
        busy.update(
            connection.scalars(select(tc.job_id).distinct().where(tc.job_id.in_(ids), unfinished()))
        )
    return [
        job_id
        for job_id in job_ids
        if job_id not in fetched
        or job_id in busy
        or (older_than is not None and fetched[job_id] < older_than)
    ]


def unfinished_jobs(connection: Connection, scope: Scope, run_id: int) -> list[str]:
    """Listed jobs of the scope with an unfinished task that run `run_id` has not listed yet."""
    listed_by_run = select(lc.job_id).where(lc.run_id == run_id)
    return list(
        connection.scalars(
            select(tc.job_id)
            .distinct()
            .join(finetuning_jobs, finetuning_jobs.c.job_id == tc.job_id)
            .where(unfinished(), scope.jobs_clause(), tc.job_id.not_in(listed_by_run))
            .order_by(tc.job_id)
        )
    )


def row(task: Task, run_id: int, now: datetime) -> dict[str, Any]:
    return {
        "task_id": task.task_id,
        "job_id": task.job_id,
        "parameter_scale": task.parameter_scale,
        "run_status": task.run_status,
        "run_progress": task.run_progress,
        "created_at": task.created_at,
        "finished_at": task.finished_at,
        "duration_s": task.duration_s,
        "raw": task.raw,
        "content_hash": task.content_hash,
        "first_seen_at": now,
        "last_seen_at": now,
        "deleted_at": None,
        "last_run_id": run_id,
    }


def write_tasks(
    connection: Connection, listings: Mapping[str, list[Task]], run_id: int, now: datetime
) -> TaskCounts:
    """Store complete task listings of some jobs; returns exact counts."""
    counts = TaskCounts()
    if not listings:
        return counts
    tasks = {task.task_id: task for listed in listings.values() for task in listed}
    job_ids = list(listings)
    stored: dict[str, Any] = {}
    # The jobs' stored tasks (to find deletions), and any listed task stored under another job
    # (so that it is updated, not inserted twice): each in chunks of its own, as one job may
    # list more tasks than a statement takes parameters (PostgreSQL: 65,535).
    lookup = select(tc.task_id, tc.job_id, tc.content_hash, tc.deleted_at)
    for column, keys in ((tc.job_id, job_ids), (tc.task_id, list(tasks))):
        for ids in chunks(keys):
            for hit in connection.execute(lookup.where(column.in_(ids))):
                stored[hit.task_id] = hit
    new: list[Task] = []
    changed: list[Task] = []
    unchanged: list[str] = []
    for task in tasks.values():
        found = stored.get(task.task_id)
        if found is None:
            new.append(task)
        elif found.deleted_at is not None or found.content_hash != task.content_hash:
            changed.append(task)
        else:
            unchanged.append(task.task_id)
    gone = [
        task_id
        for task_id, found in stored.items()
        if task_id not in tasks and found.deleted_at is None
    ]
    counts.seen = len(tasks)
    counts.inserted, counts.updated, counts.unchanged = len(new), len(changed), len(unchanged)
    counts.deleted = len(gone)

    if new:
        connection.execute(insert(finetuning_tasks), [row(task, run_id, now) for task in new])
    if changed:
        # first_seen_at stays as first written.
        values: dict[str, Any] = {
            key: bindparam(f"new_{key}") for key in row(changed[0], run_id, now)
        }
        del values["task_id"], values["first_seen_at"]
        connection.execute(
            update(finetuning_tasks).where(tc.task_id == bindparam("old_task_id")).values(values),
            [
                {"old_task_id": task.task_id}
                | {f"new_{key}": value for key, value in row(task, run_id, now).items()}
                for task in changed
            ],
        )
    for ids in chunks(unchanged):
        connection.execute(
            update(finetuning_tasks)
            .where(tc.task_id.in_(ids))
            .values(last_seen_at=now, last_run_id=run_id)
        )
    for ids in chunks(gone):
        connection.execute(
            update(finetuning_tasks)
            .where(tc.task_id.in_(ids))
            .values(deleted_at=now, last_run_id=run_id)
        )
        connection.execute(
            update(finetuning_task_versions)
            .where(vc.task_id.in_(ids), vc.valid_to.is_(None))
            .values(valid_to=now)
        )
    write_versions(connection, new, changed, run_id, now)
    write_lists(connection, listings, run_id, now)
    return counts


def write_versions(
    connection: Connection, new: list[Task], changed: list[Task], run_id: int, now: datetime
) -> None:
    """Version 1 for new tasks; for a changed one, the next version when its status or finish
    time differs from the open version, or when it had none (it was deleted)."""
    opened = [(task, 1) for task in new]
    to_close: list[str] = []
    for batch in chunks(changed):
        batch_ids = [task.task_id for task in batch]
        current = {
            found.task_id: found
            for found in connection.execute(
                select(vc.task_id, *(vc[f] for f in TASK_VERSIONED_FIELDS)).where(
                    vc.task_id.in_(batch_ids), vc.valid_to.is_(None)
                )
            )
        }
        latest = dict(
            connection.execute(
                select(vc.task_id, func.max(vc.version))
                .where(vc.task_id.in_(batch_ids))
                .group_by(vc.task_id)
            ).all()
        )
        for task in batch:
            found = current.get(task.task_id)
            if found is not None and all(
                getattr(found, f) == getattr(task, f) for f in TASK_VERSIONED_FIELDS
            ):
                continue  # only the progress or a field outside the version changed
            if found is not None:
                to_close.append(task.task_id)
            opened.append((task, latest.get(task.task_id, 0) + 1))
    for ids in chunks(to_close):
        connection.execute(
            update(finetuning_task_versions)
            .where(vc.task_id.in_(ids), vc.valid_to.is_(None))
            .values(valid_to=now)
        )
    if opened:
        connection.execute(
            insert(finetuning_task_versions),
            [
                {
                    "task_id": task.task_id,
                    "version": version,
                    "valid_from": now,
                    "valid_to": None,
                    "run_status": task.run_status,
                    "finished_at": task.finished_at,
                    "run_id": run_id,
                }
                for task, version in opened
            ],
        )


def write_lists(
    connection: Connection, listings: Mapping[str, list[Task]], run_id: int, now: datetime
) -> None:
    """Record that each job's tasks were listed now (insert or update, on every dialect)."""
    job_ids = list(listings)
    known: set[str] = set()
    for ids in chunks(job_ids):
        known.update(connection.scalars(select(lc.job_id).where(lc.job_id.in_(ids))))
    rows = [
        {"job_id": job_id, "fetched_at": now, "tasks": len(listings[job_id]), "run_id": run_id}
        for job_id in job_ids
    ]
    fresh = [r for r in rows if r["job_id"] not in known]
    again = [r for r in rows if r["job_id"] in known]
    if fresh:
        connection.execute(insert(finetuning_task_lists), fresh)
    if again:
        connection.execute(
            update(finetuning_task_lists)
            .where(lc.job_id == bindparam("old_job_id"))
            .values(
                fetched_at=bindparam("new_fetched_at"),
                tasks=bindparam("new_tasks"),
                run_id=bindparam("new_run_id"),
            ),
            [
                {
                    "old_job_id": r["job_id"],
                    "new_fetched_at": now,
                    "new_tasks": r["tasks"],
                    "new_run_id": run_id,
                }
                for r in again
            ],
        )
