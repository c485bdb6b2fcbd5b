"""A local stand-in for the console API actions DescribeFineTuningJobs, DescribeFineTuningTasks
and DescribeFineTuningTask, with faults on demand.

It speaks the documented request and response shapes, checks bce-auth-v1 signatures, answers
errors the way Baidu Cloud does, and can misbehave in the ways a sync must survive. The demo,
the tests and the benchmark all run against it.

Each job has zero to several tasks, drawn from the seed and the job's id. A task's status
follows the fake's clock: Waiting (or an empty status) until it starts, Running with a
progress, then Done, or less often Failed or Stopped. `advance()` moves the clock, which also
adds tasks to old jobs and deletes one, so a test can let time pass between two syncs.
"""

import hmac
import json
import random
import socket
import sys
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, unquote, urlsplit

from qfsync import signer

DEMO_ACCESS_KEY = "qfsync-demo-ak"
DEMO_SECRET_KEY = "qfsync-demo-sk"
DENIED_ACCESS_KEY = "qfsync-denied-ak"
DEFAULT_SEED = 42

ROUTE = "/v2/finetuning"
ACTION = "DescribeFineTuningJobs"
TASKS_ACTION = "DescribeFineTuningTasks"
TASK_ACTION = "DescribeFineTuningTask"
DEFAULT_MAX_KEYS = 10
MAX_MAX_KEYS = 100
MAX_CLOCK_SKEW_S = 15 * 60
REQUIRED_SIGNED_HEADERS = ("host", "x-bce-date")

MODELS = (
    "ERNIE-Speed-8K",
    "ERNIE-Lite-8K",
    "ERNIE-4.0-8K",
    "Qianfan-Chinese-Llama-2-13B",
    "ERNIE-Speed-128K",
    "Llama-2-7b",
)
MODEL_WEIGHTS = (30, 20, 15, 10, 15, 10)
TRAIN_MODES = ("SFT", "PostPretrain", "DPO", "KTO")
TRAIN_MODE_WEIGHTS = (70, 12, 10, 8)

Job = dict[str, str]
FakeTask = dict[str, Any]  # the listed fields, plus private ones (a leading "_") for its timeline
# ascending: oldest first, pageReverse gives newest first (as documented); descending: the other
# way round; ignores-reverse: always oldest first.
ORDERS = ("ascending", "descending", "ignores-reverse")


@dataclass
class Faults:
    """How the fake misbehaves; each rate is the fraction of requests that get that fault."""

    latency_s: float = 0.0
    error_rate: float = 0.0
    throttle_rate: float = 0.0
    retry_after_s: int = 1
    drop_rate: float = 0.0
    malformed_rate: float = 0.0
    busy_rate: float = 0.0
    # Counted from when these faults were installed on the FakeApi (or from reset_counters()),
    # so installing them midway through a walk fails the walk that many pages later.
    fail_after_pages: int | None = None
    # nextMarker names the last job of the page, so consecutive pages share one job.
    boundary_overlap: bool = False

    def __post_init__(self) -> None:
        for field in fields(self):
            if field.name.endswith("_rate") and not 0.0 <= getattr(self, field.name) <= 1.0:
                raise ValueError(f"{field.name} must be between 0 and 1")


# The outcome of the per-request fault draw, in a fixed order: drop, throttle, error, busy,
# malformed. One draw partitioned by the rates keeps each fraction exact and the sequence
# reproducible; rates that sum past 1 starve the later kinds.
_DROP, _THROTTLE, _ERROR, _BUSY, _MALFORMED = "drop", "throttle", "error", "busy", "malformed"
_RATE_OF = {
    _DROP: "drop_rate",
    _THROTTLE: "throttle_rate",
    _ERROR: "error_rate",
    _BUSY: "busy_rate",
    _MALFORMED: "malformed_rate",
}


class _Reject(Exception):
    """An answer in Baidu Cloud's error shape."""

    def __init__(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
    ):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = dict(headers or {})


_INTERNAL_ERROR = (500, "InternalError", "We encountered an internal error. Please try again.")


# --- data -----------------------------------------------------------------------------------

_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
_FIRST_CREATE_TIME = int(datetime(2023, 1, 1, tzinfo=UTC).timestamp())
_MEAN_GAP_S = 15 * 60
_LONG_SHARE = 0.01
_TOPICS = (
    "客服问答",
    "法律文书摘要",
    "医疗问诊助手",
    "电商评论情感分析",
    "code-review",
    "text2sql",
    "中英翻译",
    "金融研报生成",
    "多轮对话",
    "math-reasoning",
    "角色扮演 role-play",
    "安全对齐",
)
_NAME_TAILS = (
    "v1",
    "v2",
    "v3",
    "baseline",
    "实验",
    "最终版",
    "🚀",
    "✅ prod",
    "(copy)",
    "Bob's run",
    'the "best" one',
    "C:\\runs\\exp",
    "lr=3e-5",
    "第二轮\n重跑",
)
_DESCRIPTIONS = (
    "",
    "",
    "",
    "基于客服对话数据的精调。",
    "Fine-tuned on 12k curated samples; lr=3e-5, epochs=3.",
    "Uses the \"gold\" split, not the 'silver' one.",
    "数据路径: C:\\data\\train\\part-0001.jsonl",
    "第一行\n第二行\n第三行",
    "🎉 上线前最后一轮调优 🎯",
    "tab\tseparated\tnotes",
    "Unicode: café, naïve — “curly” ‘quotes’, 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    '{"note": "JSON inside a string", "ok": true}',
    "   leading and trailing spaces   ",
    "Windows line ending\r\nsecond line",
)
_LONG_TEXT = (
    "本作业验证长描述的处理:数据清洗、去重、标注一致性检查,以及多轮评估。"
    "Long descriptions must survive the round trip intact: \"double\", 'single', "
    "back\\slash, emoji 🚀🎯, and line breaks.\n"
) * 100


def _generate_jobs(rng: random.Random, count: int, after: int, taken: set[str]) -> list[Job]:
    """`count` new jobs created after the epoch second `after`, with ids not in `taken`."""
    # Drawing the categorical fields in bulk is several times faster than per job.
    models = rng.choices(MODELS, weights=MODEL_WEIGHTS, k=count)
    modes = rng.choices(TRAIN_MODES, weights=TRAIN_MODE_WEIGHTS, k=count)
    topics = rng.choices(_TOPICS, k=count)
    tails = rng.choices(_NAME_TAILS, k=count)
    descriptions = rng.choices(_DESCRIPTIONS, k=count)
    id_chars = "".join(rng.choices(_ID_ALPHABET, k=12 * count))
    jobs = []
    created = after
    for i in range(count):
        job_id = "job-" + id_chars[12 * i : 12 * i + 12]
        while job_id in taken:
            job_id = "job-" + "".join(rng.choices(_ID_ALPHABET, k=12))
        taken.add(job_id)
        created += 60 + int(rng.expovariate(1 / _MEAN_GAP_S))
        create_time = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created))
        description = descriptions[i]
        if rng.random() < _LONG_SHARE:
            description = _LONG_TEXT[: rng.randrange(2000, 9000)]
        jobs.append(
            {
                "jobId": job_id,
                "name": f"{topics[i]}-{create_time[:10].replace('-', '')} {tails[i]}",
                "description": description,
                "model": models[i],
                "trainMode": modes[i],
                "createTime": create_time,
            }
        )
    return jobs


def _epoch(create_time: str) -> int:
    return int(datetime.strptime(create_time, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp())


class _View(NamedTuple):
    """One filtered, ordered listing and where each job sits in it."""

    jobs: list[Job]
    positions: dict[str, int]


# --- tasks -----------------------------------------------------------------------------------

ZERO_DATE = "0000-00-00T00:00:00Z"
TASK_COUNTS, TASK_COUNT_WEIGHTS = (0, 1, 2, 3, 4), (15, 45, 25, 10, 5)
OUTCOMES, OUTCOME_WEIGHTS = ("Done", "Failed", "Stopped"), (85, 10, 5)
SCALES, SCALE_WEIGHTS = ("FullFineTuning", "LoRA", "PromptTuning"), (30, 60, 10)


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _new_task(rng: random.Random, job_id: str, created: int) -> FakeTask:
    start = created + rng.randint(0, 1800)  # queued for up to half an hour
    return {
        "taskId": "task-" + "".join(rng.choices(_ID_ALPHABET, k=12)),
        "jobId": job_id,
        "parameterScale": rng.choices(SCALES, SCALE_WEIGHTS)[0],
        "createDate": _iso(created),
        "_start": start,
        "_end": start + rng.randint(1800, 10 * 3600),  # runs half an hour to ten hours
        "_outcome": rng.choices(OUTCOMES, OUTCOME_WEIGHTS)[0],
        # The SDK treats an empty runStatus as pending too.
        "_pending": "" if rng.random() < 0.2 else "Waiting",
    }


def _generate_tasks(seed: int, job: Job, now: float) -> list[FakeTask]:
    """A job's tasks created up to `now`: the first soon after the job, later ones hours or
    days apart. The same seed and job give the same tasks, whatever the other jobs."""
    rng = random.Random(f"{seed}:tasks:{job['jobId']}")
    count = rng.choices(TASK_COUNTS, TASK_COUNT_WEIGHTS)[0]
    created = _epoch(job["createTime"]) + rng.randint(300, 7200)
    tasks = []
    for _ in range(count):
        if created > now:
            break
        tasks.append(_new_task(rng, job["jobId"], created))
        created += rng.randint(3600, 3 * 86400)
    return tasks


def _status(task: FakeTask, now: float) -> str:
    if now < task["_start"]:
        return task["_pending"]
    return "Running" if now < task["_end"] else task["_outcome"]


def _listed_task(task: FakeTask, job: Job, now: float) -> dict[str, Any]:
    """The task as DescribeFineTuningTasks lists it at `now`."""
    status = _status(task, now)
    return {
        "taskId": task["taskId"],
        "jobId": job["jobId"],
        "jobName": job["name"],
        "jobDescription": job["description"],
        "model": job["model"],
        "trainMode": job["trainMode"],
        "parameterScale": task["parameterScale"],
        "runStatus": status,
        "createDate": task["createDate"],
        "finishDate": _iso(task["_end"]) if status in OUTCOMES else ZERO_DATE,
    }


def _task_detail(task: FakeTask, job: Job, now: float) -> dict[str, Any]:
    """The task as DescribeFineTuningTask describes it: progress while running, metrics once
    done."""
    detail = _listed_task(task, job, now)
    detail["vdlLink"] = f"https://console.bce.baidu.com/qianfan/vdl/{task['taskId']}"
    if detail["runStatus"] == "Running":
        elapsed = (now - task["_start"]) / (task["_end"] - task["_start"])
        detail["runProgress"] = f"{min(99, int(elapsed * 100))}%"
    elif detail["runStatus"] == "Done":
        rng = random.Random(task["taskId"])
        detail["metrics"] = {
            name: f"{rng.uniform(10, 60):.2f}%"
            for name in ("BLEU-4", "ROUGE-1", "ROUGE-2", "ROUGE-L")
        }
    return detail


# --- request checks ---------------------------------------------------------------------------


def _check_authorization(
    method: str, path: str, query: Mapping[str, str], headers: Any, now: float
) -> None:
    """Raise _Reject unless the request is signed with the demo secret by an allowed key."""
    header = (headers.get("Authorization") or "").strip()
    if not header:
        raise _Reject(403, "AccessDenied", "Access denied: the request carries no Authorization.")
    parts = header.split("/")
    malformed = _Reject(
        400,
        "InvalidHTTPAuthHeader",
        "The HTTP authorization header is invalid. Consult the service documentation for details.",
    )
    if len(parts) != 6 or parts[0] != "bce-auth-v1":
        raise malformed
    _, access_key, timestamp, expiration, signed, signature = parts
    try:
        issued = datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        expiration_s = int(expiration)
    except ValueError:
        raise malformed from None
    if access_key not in (DEMO_ACCESS_KEY, DENIED_ACCESS_KEY):
        raise _Reject(
            403,
            "InvalidAccessKeyId",
            "The Access Key ID you provided does not exist in our records.",
        )
    names = signed.split(";")
    mismatch = "The request signature we calculated does not match the signature you provided."
    unsigned = [name for name in REQUIRED_SIGNED_HEADERS if name not in names]
    if unsigned:
        raise _Reject(403, "SignatureDoesNotMatch", f"{mismatch} Sign these headers: {unsigned}.")
    if headers.get("x-bce-date") != timestamp:
        raise _Reject(
            403,
            "SignatureDoesNotMatch",
            f"{mismatch} The x-bce-date header must equal the timestamp of the Authorization.",
        )
    try:
        expected = signer.authorization(
            access_key,
            DEMO_SECRET_KEY,
            method,
            path,
            query,
            headers,
            timestamp,
            expiration_s=expiration_s,
            signed_headers=names,
        )
    except ValueError:  # a signed header the request does not carry
        raise _Reject(403, "SignatureDoesNotMatch", mismatch) from None
    if not hmac.compare_digest(expected.rsplit("/", 1)[1], signature):
        raise _Reject(403, "SignatureDoesNotMatch", f"{mismatch} Check your Secret Access Key.")
    age = now - issued.timestamp()
    if abs(age) > MAX_CLOCK_SKEW_S or age > expiration_s:
        raise _Reject(400, "RequestExpired", f"Request has expired. Timestamp date is {timestamp}.")
    if access_key == DENIED_ACCESS_KEY:
        raise _Reject(403, "AccessDenied", "Access denied.")


def _invalid_argument(message: str) -> _Reject:
    return _Reject(400, "InvalidRequestArgumentError", message)


def _max_keys(value: Any) -> int:
    if value is None:
        return DEFAULT_MAX_KEYS
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _invalid_argument(f"maxKeys must be an integer of at least 1, not {value!r:.40}")
    return min(value, MAX_MAX_KEYS)


def _optional_str(request: Mapping[str, Any], field: str) -> str | None:
    """A string field; null and "" mean absent, as a Java backend would read them."""
    value = request.get(field)
    if value is not None and not isinstance(value, str):
        raise _invalid_argument(f"{field} must be a string")
    return value or None


def _decode(raw_body: bytes) -> dict[str, Any]:
    try:
        request = json.loads(raw_body) if raw_body.strip() else {}
    except ValueError:  # also invalid UTF-8
        raise _Reject(400, "MalformedJSON", "The body is not well-formed JSON.") from None
    if not isinstance(request, dict):
        raise _Reject(400, "MalformedJSON", "The request body must be a JSON object.")
    return request


def _paged(
    items: list[Any],
    positions: Mapping[str, int],
    key: str,
    marker: str | None,
    max_keys: int,
    overlap: bool,
) -> tuple[list[Any], dict[str, Any]]:
    """The page that starts at `marker` (inclusive) and its pageInfo."""
    start = 0
    if marker is not None:
        position = positions.get(marker)
        if position is None:
            raise _invalid_argument(f"marker is invalid: {marker!r:.60} is not in this listing")
        start = position
    end = start + max_keys
    page_info: dict[str, Any] = {
        "marker": marker or "",
        "maxKeys": max_keys,
        "isTruncated": end < len(items),
    }
    if page_info["isTruncated"]:
        page_info["nextMarker"] = items[end - 1 if overlap else end][key]
    return items[start:end], page_info


# --- the service ------------------------------------------------------------------------------


class FakeApi:
    """DescribeFineTuningJobs over loopback HTTP, with deterministic data and injectable faults."""

    def __init__(
        self,
        jobs: int = 100,
        seed: int = DEFAULT_SEED,
        faults: Faults | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        check_auth: bool = True,
        order: str = "ascending",
        clock_offset_s: float = 0.0,
        now: datetime | None = None,
        live: bool = False,
    ):
        if order not in ORDERS:
            raise ValueError(f"order must be one of {', '.join(ORDERS)}")
        self.host, self.port, self.check_auth, self.order = host, port, check_auth, order
        # The server's clock minus the client's: a large one makes every request RequestExpired.
        self.clock_offset_s = clock_offset_s
        self._seed = seed
        # One lock guards the job list, the view cache, the counters and the fault RNG; every
        # critical section is short except building a view, which happens once per mutation.
        self._lock = threading.Lock()
        self._data_rng = random.Random(seed)
        self._issued_ids: set[str] = set()
        self._last_created = _FIRST_CREATE_TIME
        self._jobs = self._generate(jobs)
        self._views: dict[tuple[str | None, str | None, bool], _View] = {}
        self._by_id: dict[str, Job] | None = None
        # The tasks' clock: by default an hour after the newest job. Given `now`, the jobs are
        # moved in time so that the newest was created an hour before it; `live` lets the clock
        # run with the real one from there. advance() adds to it.
        if now is not None:
            self._shift_jobs(int(now.timestamp()) - 3600 - self._last_created)
        self._clock_base = float(self._last_created + 3600)
        self._live_since = time.time() if live else None
        self._advanced_s = 0.0
        self._advances = 0
        # A job's tasks, made when first asked for (a 100k-job fake need not make them all).
        self._tasks: dict[str, list[FakeTask]] = {}
        self.request_count = 0
        self.requests_by_action: Counter[str] = Counter()
        # Requests being answered at once now, and the most so far: what a client's
        # concurrency bound looks like from the server.
        self.in_flight = self.max_in_flight = 0
        self.pages_served = 0
        self.bodies: list[dict[str, Any]] = []
        self.faults = faults or Faults()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- faults and counters

    @property
    def faults(self) -> Faults:
        return self._faults

    @faults.setter
    def faults(self, faults: Faults) -> None:
        # New faults start a fresh, reproducible sequence, and fail_after_pages counts from here,
        # so a test can install faults midway through a walk and know what follows.
        with self._lock:
            self._faults = faults
            self._fault_rng = random.Random(f"{self._seed}:faults")
            self._pages_before_faults = self.pages_served

    def reset_counters(self) -> None:
        with self._lock:
            self.request_count = 0
            self.requests_by_action = Counter()
            self.max_in_flight = self.in_flight
            self.pages_served = 0
            self._pages_before_faults = 0
            self.bodies = []

    def _next_fault(self, faults: Faults) -> str | None:
        """Count one request on the action path and decide which fault, if any, it meets."""
        with self._lock:
            self.request_count += 1
            limit = faults.fail_after_pages
            if limit is not None and self.pages_served - self._pages_before_faults >= limit:
                return _ERROR
            roll = self._fault_rng.random()
        for fault, rate_name in _RATE_OF.items():
            roll -= getattr(faults, rate_name)
            if roll < 0:
                return fault
        return None

    def _in_flight(self, change: int) -> None:
        with self._lock:
            self.in_flight += change
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _count_action(self, action: str | None) -> None:
        with self._lock:
            self.requests_by_action[action or ""] += 1

    def _busy_log_id(self) -> int:
        with self._lock:
            return self._fault_rng.getrandbits(48)

    # -- data

    def job_list(
        self, train_mode: str | None = None, model: str | None = None, reverse: bool = False
    ) -> list[Job]:
        """The jobs the API lists for these filters, in API order, as copies."""
        return [dict(job) for job in self._view(train_mode or None, model or None, reverse).jobs]

    def rename(self, job_ids: Iterable[str], suffix: str = " (renamed)") -> None:
        self._change(job_ids, lambda job: {**job, "name": job["name"] + suffix})

    def delete(self, job_ids: Iterable[str]) -> None:
        self._change(job_ids, lambda job: None)

    def add(self, n: int) -> list[Job]:
        """`n` new jobs, created after every job so far (deleted ones included)."""
        with self._lock:
            new = self._generate(n)
            self._jobs = self._jobs + new
            self._views, self._by_id = {}, None
        return [dict(job) for job in new]

    def _generate(self, n: int) -> list[Job]:
        new = _generate_jobs(self._data_rng, n, self._last_created, self._issued_ids)
        if new:
            # Kept apart from the job list so that deleting the newest jobs cannot make add()
            # hand out createTimes earlier than ones a client has already seen.
            self._last_created = _epoch(new[-1]["createTime"])
        return new

    def _shift_jobs(self, seconds: int) -> None:
        for job in self._jobs:
            job["createTime"] = _iso(_epoch(job["createTime"]) + seconds)
        self._last_created += seconds

    # -- tasks

    def now(self) -> float:
        """The fake's present, in epoch seconds, by which its tasks run."""
        live = 0.0 if self._live_since is None else time.time() - self._live_since
        return self._clock_base + self._advanced_s + live

    def _job(self, job_id: str) -> Job | None:
        if self._by_id is None:
            self._by_id = {job["jobId"]: job for job in self._jobs}
        return self._by_id.get(job_id)

    def _tasks_of(self, job: Job) -> list[FakeTask]:
        """The job's tasks (made on first use); call with the lock held."""
        tasks = self._tasks.get(job["jobId"])
        if tasks is None:
            tasks = self._tasks[job["jobId"]] = _generate_tasks(self._seed, job, self.now())
        return tasks

    def task_list(self, job_id: str) -> list[dict[str, Any]]:
        """The job's tasks as DescribeFineTuningTasks lists them now, oldest first."""
        with self._lock:
            job = self._job(job_id)
            if job is None:
                raise KeyError(f"no such job: {job_id}")
            now = self.now()
            return [_listed_task(task, job, now) for task in self._tasks_of(job)]

    def task_detail(self, task_id: str) -> dict[str, Any]:
        """The task as DescribeFineTuningTask describes it now."""
        with self._lock:
            for job_id, tasks in self._tasks.items():
                job = self._job(job_id)
                if job is None:  # a deleted job's tasks are gone with it
                    continue
                for task in tasks:
                    if task["taskId"] == task_id:
                        return _task_detail(task, job, self.now())
        raise KeyError(f"no such task: {task_id}")

    def advance(self, seconds: float = 3600.0) -> dict[str, list[str]]:
        """Let `seconds` pass: tasks start, progress and finish; a new task appears on a few old
        jobs whose tasks had all finished (one in fifty, at least one); one finished task is
        deleted. Returns the ids of the tasks added and deleted. Deterministic from the seed."""
        with self._lock:
            for job in self._jobs:
                self._tasks_of(job)
            self._advanced_s += seconds
            self._advances += 1
            rng = random.Random(f"{self._seed}:advance:{self._advances}")
            now = self.now()
            idle = [
                job
                for job in self._jobs
                if _epoch(job["createTime"]) < now - 86400
                and all(_status(task, now) in OUTCOMES for task in self._tasks[job["jobId"]])
            ]
            added = []
            for job in rng.sample(idle, min(len(idle), max(1, len(self._jobs) // 50))):
                task = _new_task(rng, job["jobId"], int(now) - rng.randint(60, 3600))
                self._tasks[job["jobId"]].append(task)
                added.append(task["taskId"])
            finished = sorted(
                (task["taskId"], job_id)
                for job_id, tasks in self._tasks.items()
                for task in tasks
                if _status(task, now) in OUTCOMES and task["taskId"] not in added
            )
            deleted = []
            if finished:
                task_id, job_id = rng.choice(finished)
                self._tasks[job_id] = [t for t in self._tasks[job_id] if t["taskId"] != task_id]
                deleted.append(task_id)
        return {"added": added, "deleted": deleted}

    def _change(self, job_ids: Iterable[str], change: Callable[[Job], Job | None]) -> None:
        wanted = set(job_ids)
        with self._lock:
            found: set[str] = set()
            kept: list[Job] = []
            for job in self._jobs:
                if job["jobId"] in wanted:
                    found.add(job["jobId"])
                    changed = change(job)
                    if changed is None:
                        continue
                    job = changed
                kept.append(job)
            if wanted - found:
                raise KeyError(f"no such jobs: {sorted(wanted - found)}")
            self._jobs = kept
            self._views, self._by_id = {}, None

    def _view(self, train_mode: str | None, model: str | None, reverse: bool) -> _View:
        key = (train_mode, model, reverse)
        view = self._views.get(key)
        if view is None:
            with self._lock:
                view = self._views.get(key)
                if view is None:
                    jobs = [
                        job
                        for job in self._jobs
                        if (train_mode is None or job["trainMode"] == train_mode)
                        and (model is None or job["model"] == model)
                    ]
                    # ORDERS other than the documented one test the incremental sync's order check.
                    if self.order != "ignores-reverse" and reverse != (self.order == "descending"):
                        jobs.reverse()
                    view = _View(jobs, {job["jobId"]: i for i, job in enumerate(jobs)})
                    if len(self._views) >= 64:  # clients probing random filters must not hoard
                        self._views = {}
                    self._views[key] = view
        return view

    def _describe(self, request: dict[str, Any], overlap: bool) -> dict[str, Any]:
        """The `result` of one page, or _Reject for a request the real service would refuse."""
        self.bodies.append(request)
        max_keys = _max_keys(request.get("maxKeys"))
        train_mode = _optional_str(request, "trainMode")
        model = _optional_str(request, "model")
        marker = _optional_str(request, "marker")
        reverse = request.get("pageReverse")
        if reverse is not None and not isinstance(reverse, bool):
            raise _invalid_argument("pageReverse must be a boolean")
        view = self._view(train_mode, model, bool(reverse))
        jobs, page_info = _paged(view.jobs, view.positions, "jobId", marker, max_keys, overlap)
        return {"jobList": jobs, "pageInfo": page_info}

    def _describe_tasks(self, request: dict[str, Any], overlap: bool) -> dict[str, Any]:
        """One page of a job's tasks, paged with markers like jobs."""
        job_id = _optional_str(request, "jobId")
        if job_id is None:
            raise _invalid_argument("jobId is required")
        max_keys = _max_keys(request.get("maxKeys"))
        marker = _optional_str(request, "marker")
        reverse = request.get("pageReverse")
        if reverse is not None and not isinstance(reverse, bool):
            raise _invalid_argument("pageReverse must be a boolean")
        try:
            tasks = self.task_list(job_id)
        except KeyError:
            raise _invalid_argument(f"jobId {job_id!r:.60} does not exist") from None
        if reverse:
            tasks.reverse()
        positions = {task["taskId"]: i for i, task in enumerate(tasks)}
        page, page_info = _paged(tasks, positions, "taskId", marker, max_keys, overlap)
        return {"taskList": page, "pageInfo": page_info}

    def _describe_task(self, request: dict[str, Any], overlap: bool) -> dict[str, Any]:
        task_id = _optional_str(request, "taskId")
        if task_id is None:
            raise _invalid_argument("taskId is required")
        try:
            return self.task_detail(task_id)
        except KeyError:
            raise _invalid_argument(f"taskId {task_id!r:.60} does not exist") from None

    def _page_served(self) -> None:
        with self._lock:
            self.pages_served += 1

    # -- serving

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the fake API is not started")
        host, port = self._server.socket.getsockname()[:2]
        return f"http://{host}:{port}"

    def start(self) -> "FakeApi":
        """Serve in a daemon thread; `url` is valid from now until stop()."""
        if self._server is not None:
            raise RuntimeError("the fake API is already started")
        server = _Server((self.host, self.port), self)
        # A short poll interval keeps stop() quick; the default half second adds up in tests.
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        thread.start()
        self._server, self._thread = server, thread
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._server = self._thread = None
        server.stopping.set()
        server.shutdown()
        server.close_connections()
        server.server_close()
        thread.join()

    def serve_forever(self) -> None:
        """Serve until KeyboardInterrupt (starting first unless start() was called)."""
        if self._thread is None:
            self.start()
        thread = self._thread
        try:
            while thread is not None and thread.is_alive():
                thread.join(0.2)
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def __enter__(self) -> "FakeApi":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], api: FakeApi):
        self.api = api
        self.stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._connections_changed = threading.Condition()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_changed:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        super().shutdown_request(request)
        with self._connections_changed:
            self._connections.discard(request)
            self._connections_changed.notify_all()

    def close_connections(self, timeout_s: float = 5.0) -> None:
        """Hang up on every client and wait for the handlers to finish.

        Handler threads are daemons, which server_close() does not join; without this, a client's
        kept-alive connection would go on being served after stop().
        """
        with self._connections_changed:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed by its handler
        with self._connections_changed:
            self._connections_changed.wait_for(lambda: not self._connections, timeout_s)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client (or stop()) hanging up mid-answer is routine; anything else is a bug to show.
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


def _header_safe(text: str) -> str:
    # JSON string escaping yields printable ASCII: no header injection, no latin-1 failures.
    return json.dumps(text)[1:-1]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "qfsync-fake-api"
    # Headers and body go out in separate writes; without TCP_NODELAY, Nagle's algorithm and
    # delayed ACKs would stall every kept-alive answer by tens of milliseconds.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def version_string(self) -> str:
        return self.server_version

    def do_POST(self) -> None:
        api = self.server.api
        api._in_flight(+1)
        try:
            self._answer()
        except _Reject as reject:
            self._send_error(reject)
        except OSError:
            raise  # the client is gone: there is no one to answer
        except Exception:
            traceback.print_exc()
            self._send_error(_Reject(*_INTERNAL_ERROR))
        finally:
            api._in_flight(-1)

    do_GET = do_PUT = do_DELETE = do_PATCH = do_POST

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # http.server's own refusals (bad request line, unknown method) in Baidu Cloud's shape.
        self.close_connection = True
        self._send_error(_Reject(code, "InvalidHTTPRequest", message or self.responses[code][0]))

    def _answer(self) -> None:
        raw_body = self._read_body()
        url = urlsplit(self.path)
        path = unquote(url.path)
        if path != ROUTE:
            raise _Reject(404, "NotFound", f"No such route: {path!r:.80}.")
        api = self.server.api
        query = dict(parse_qsl(url.query, keep_blank_values=True))
        api._count_action(query.get("Action"))
        faults = api.faults
        fault = api._next_fault(faults)
        if faults.latency_s > 0 and self.server.stopping.wait(faults.latency_s):
            fault = _DROP
        if fault == _DROP:
            self.close_connection = True  # the socket closes with nothing written
            return
        if fault == _THROTTLE:
            retry_after = str(int(faults.retry_after_s))
            raise _Reject(
                429,
                "RequestLimitExceeded",
                f"Request rate limit exceeded. Retry after {retry_after} seconds.",
                {"Retry-After": retry_after},
            )
        if fault == _ERROR:
            raise _Reject(*_INTERNAL_ERROR)
        if fault == _BUSY:
            busy = {"error_code": 336100, "error_msg": "server busy", "log_id": api._busy_log_id()}
            self._send(200, json.dumps(busy).encode())
            return
        if self.command != "POST":
            raise _Reject(405, "MethodNotAllowed", f"{ROUTE} accepts POST only.", {"Allow": "POST"})
        if api.check_auth:
            _check_authorization(
                self.command, path, query, self.headers, time.time() + api.clock_offset_s
            )
        actions = {
            ACTION: api._describe,
            TASKS_ACTION: api._describe_tasks,
            TASK_ACTION: api._describe_task,
        }
        action = actions.get(query.get("Action", ""))
        if action is None:
            raise _invalid_argument(
                f"Action must be one of {', '.join(actions)}, not {query.get('Action')!r:.60}"
            )
        result = action(_decode(raw_body), faults.boundary_overlap)
        request_id = str(uuid.uuid4())
        text = json.dumps({"requestId": request_id, "result": result}, ensure_ascii=False)
        if fault == _MALFORMED:
            text = text[: len(text) // 2]  # cut between characters so only the JSON is broken
        else:
            api._page_served()
        self._send(200, text.encode(), {"X-Bce-Request-Id": request_id})

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            # Clients of this API send Content-Length; without it the connection cannot be reused.
            self.close_connection = True
            raise _Reject(411, "MissingContentLength", "Send the body with a Content-Length.")
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            raise _Reject(400, "InvalidHTTPRequest", "The Content-Length header is invalid.")
        return self.rfile.read(length)

    def _send_error(self, reject: _Reject) -> None:
        request_id = str(uuid.uuid4())
        body = {"requestId": request_id, "code": reject.code, "message": reject.message}
        headers = {
            "X-Bce-Request-Id": request_id,
            "X-Bce-Error-Code": reject.code,
            "X-Bce-Error-Message": _header_safe(reject.message),
            **reject.headers,
        }
        self._send(reject.status, json.dumps(body, ensure_ascii=False).encode(), headers)

    def _send(self, status: int, body: bytes, headers: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
