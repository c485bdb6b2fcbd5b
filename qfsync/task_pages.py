"""What DescribeFineTuningTasks and DescribeFineTuningTask answers must look like, and the task
records qfsync takes from them.

Like job pages, every answer is checked here before anything is written: it becomes a
`TaskPage` of `Task`s (or a task's progress) or raises `MalformedResponse` naming the field.
"""

import json
import re
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from .errors import MalformedResponse
from .pages import content_hash, excerpt, malformed, parse_listing, parse_time

LIST_ACTION = "DescribeFineTuningTasks"
DETAIL_ACTION = "DescribeFineTuningTask"
FINAL_STATUSES = frozenset({"Done", "Failed", "Stopped"})
RUNNING = "Running"
# finishDate while a task has not finished.
ZERO_DATE = "0000-00-00T00:00:00Z"
TEXT_FIELDS = ("jobName", "jobDescription", "model", "trainMode", "parameterScale", "runStatus")
PERCENT = re.compile(r"\s*(\d+(?:\.\d+)?)\s*%?\s*")


@dataclass(frozen=True, slots=True)
class Task:
    task_id: str
    job_id: str
    parameter_scale: str | None
    run_status: str | None  # None: not started (the API sent an empty runStatus or none)
    run_progress: float | None  # 0-100 while Running and known, else None
    created_at: datetime | None
    finished_at: datetime | None
    raw: dict[str, Any]

    @property
    def is_final(self) -> bool:
        return self.run_status in FINAL_STATUSES

    @property
    def duration_s(self) -> float | None:
        if self.created_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.created_at).total_seconds()

    @property
    def content_hash(self) -> str:
        """The listed item and the progress: a task whose progress moved is a changed task."""
        return content_hash({"item": self.raw, "runProgress": self.run_progress})

    def with_progress(self, progress: float | None) -> "Task":
        return replace(self, run_progress=progress if self.run_status == RUNNING else None)

    def to_json(self) -> dict[str, Any]:
        """The record as `qfsync tasks` prints it: what a sync would store."""
        return {
            "task_id": self.task_id,
            "job_id": self.job_id,
            "parameter_scale": self.parameter_scale,
            "run_status": self.run_status,
            "run_progress": self.run_progress,
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "duration_s": self.duration_s,
            "raw": self.raw,
        }


@dataclass(frozen=True, slots=True)
class TaskPage:
    tasks: list[Task]
    marker: str | None
    next_marker: str | None


def _item_excerpt(item: Any) -> str:
    return excerpt(json.dumps(item, ensure_ascii=False) if isinstance(item, dict) else repr(item))


def _time(item: dict[str, Any], field: str, where: str, zero_is_none: bool) -> datetime | None:
    value = item.get(field)
    if value is None or (zero_is_none and value == ZERO_DATE):
        return None
    try:
        if isinstance(value, str):
            return parse_time(value)
    except (ValueError, OverflowError):  # OverflowError: out of range once moved to UTC
        pass
    raise MalformedResponse(f"{where}.{field} is not an ISO 8601 time", excerpt(repr(value)))


def parse_task(item: Any, where: str, job_id: str | None = None) -> Task:
    """One task object; `job_id`, when given, is the job whose tasks were asked for."""
    if not isinstance(item, dict):
        raise MalformedResponse(f"{where} is not an object", _item_excerpt(item))
    task_id = item.get("taskId")
    if not isinstance(task_id, str) or not task_id.strip():
        raise MalformedResponse(
            f"{where}.taskId is missing or not a non-empty string", _item_excerpt(item)
        )
    where = f"{where} (task {task_id})"
    listed_job = item.get("jobId")
    if not isinstance(listed_job, str) or not listed_job.strip():
        raise MalformedResponse(
            f"{where}.jobId is missing or not a non-empty string", _item_excerpt(item)
        )
    if job_id is not None and listed_job != job_id:
        raise MalformedResponse(
            f"{where}.jobId is {listed_job!r:.60}, but the tasks of {job_id} were asked for"
        )
    for field in TEXT_FIELDS:
        if item.get(field) is not None and not isinstance(item[field], str):
            raise MalformedResponse(f"{where}.{field} is not a string", excerpt(repr(item[field])))
    created_at = _time(item, "createDate", where, zero_is_none=False)
    finished_at = _time(item, "finishDate", where, zero_is_none=True)
    try:
        content_hash(item)
    except UnicodeEncodeError:
        raise MalformedResponse(
            f"{where} holds a lone surrogate (not valid Unicode)", excerpt(json.dumps(item))
        ) from None
    return Task(
        task_id=task_id,
        job_id=listed_job,
        parameter_scale=item.get("parameterScale"),
        run_status=item.get("runStatus") or None,
        run_progress=None,
        created_at=created_at,
        finished_at=finished_at,
        raw=item,
    )


def _result(body: Any, text: bytes) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise MalformedResponse("the body is not a JSON object", excerpt(text or repr(body)))
    result = body.get("result")
    if not isinstance(result, dict):
        raise MalformedResponse("'result' is missing or not an object", excerpt(text or repr(body)))
    return result


def parse_task_page(job_id: str, body: Any, text: bytes = b"") -> TaskPage:
    """Validate one decoded DescribeFineTuningTasks answer for the tasks of `job_id`."""
    listing = parse_listing(body, text, "taskList")
    tasks = [parse_task(item, f"taskList[{i}]", job_id) for i, item in enumerate(listing.items)]
    if len({task.task_id for task in tasks}) != len(tasks):
        raise malformed("a taskId appears twice in one page", body, text)
    return TaskPage(tasks, listing.marker, listing.next_marker)


def parse_progress(task_id: str, body: Any, text: bytes = b"") -> float | None:
    """The runProgress of one DescribeFineTuningTask answer, as a number 0-100, if it has one."""
    result = _result(body, text)
    detail = parse_task(result, "result")
    if detail.task_id != task_id:
        raise MalformedResponse(f"result.taskId is {detail.task_id!r:.60}, not {task_id}")
    value = result.get("runProgress")
    if value is None or value == "":
        return None
    number: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:  # an integer past a float's range: no percentage either
            number = None
    elif isinstance(value, str) and (match := PERCENT.fullmatch(value)):
        number = float(match[1])
    if number is None or not 0 <= number <= 100:
        raise MalformedResponse(
            f"result.runProgress of task {task_id} is not a percentage from 0 to 100",
            excerpt(repr(value)),
        )
    return number
