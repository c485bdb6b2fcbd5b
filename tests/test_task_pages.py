"""Task answers are validated before anything is written, the task walk cannot loop, and a 429
pauses every sibling client."""

import threading
import time
from typing import Any

import pytest
from test_client import DEMO, FAST, scripted

from qfsync import fits
from qfsync.client import Client, RetryPolicy
from qfsync.errors import ApiError, MalformedResponse, PagingError, RetriesExhausted, Unstorable
from qfsync.fake_api import Faults
from qfsync.task_fetch import TaskFetcher, job_tasks, walk_tasks
from qfsync.task_pages import ZERO_DATE, parse_progress, parse_task_page
from qfsync.throttle import Throttle

JOB = "job-abc"


def item(**changes: Any) -> dict[str, Any]:
    task = {
        "taskId": "task-1",
        "jobId": JOB,
        "jobName": "客服问答",
        "model": "ERNIE-Speed-8K",
        "trainMode": "SFT",
        "parameterScale": "LoRA",
        "runStatus": "Done",
        "createDate": "2024-01-02T03:04:05Z",
        "finishDate": "2024-01-02T05:04:05Z",
    }
    task.update(changes)
    return {key: value for key, value in task.items() if value is not ...}


def page(*items: Any, next_marker: str | None = None, **info: Any) -> dict[str, Any]:
    page_info = {"isTruncated": next_marker is not None, **info}
    if next_marker is not None:
        page_info["nextMarker"] = next_marker
    return {"requestId": "r", "result": {"taskList": list(items), "pageInfo": page_info}}


def test_a_task_becomes_a_record_with_times_and_duration():
    """Times are UTC, the duration is finish minus create, the whole item is kept as raw."""
    (task,) = parse_task_page(JOB, page(item())).tasks
    assert (task.task_id, task.job_id, task.run_status, task.parameter_scale) == (
        "task-1",
        JOB,
        "Done",
        "LoRA",
    )
    assert task.duration_s == 7200 and task.raw == item() and task.is_final


def test_an_unfinished_task_has_no_finish_and_an_empty_status_is_not_started():
    """finishDate's zero date is NULL; an empty runStatus is None (not started, not final)."""
    (task,) = parse_task_page(JOB, page(item(runStatus="", finishDate=ZERO_DATE))).tasks
    assert (task.run_status, task.finished_at, task.duration_s, task.is_final) == (
        None,
        None,
        None,
        False,
    )


@pytest.mark.parametrize(
    ("bad", "named"),
    [
        (item(taskId=...), "taskList[0].taskId"),
        (item(taskId=""), "taskList[0].taskId"),
        (item(jobId="job-other"), "but the tasks of job-abc were asked for"),
        (item(jobId=7), "(task task-1).jobId"),
        (item(runStatus=3), "(task task-1).runStatus"),
        (item(parameterScale=["LoRA"]), "(task task-1).parameterScale"),
        (item(createDate="yesterday"), "(task task-1).createDate"),
        (item(finishDate="2024-13-45T00:00:00Z"), "(task task-1).finishDate"),
        ("task-1", "taskList[0] is not an object"),
    ],
)
def test_a_malformed_task_is_refused_naming_the_field(bad, named):
    """Each field of a task item is checked; the error names the item and the field."""
    with pytest.raises(MalformedResponse) as refused:
        parse_task_page(JOB, page(bad))
    assert named in str(refused.value)


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (page(item(), item()), "a taskId appears twice"),
        (page(item(), isTruncated="yes"), "isTruncated"),
        ({"result": {"taskList": {}, "pageInfo": {}}}, "taskList"),
        (page(item(), isTruncated=True), "'pageInfo.nextMarker' is missing"),
    ],
)
def test_a_malformed_task_page_is_refused(body, named):
    """A page that is not a list of distinct tasks with paging information is refused; one
    that says more follows without saying where never ends a listing early."""
    with pytest.raises(MalformedResponse, match=named):
        parse_task_page(JOB, body)


@pytest.mark.parametrize(
    ("progress", "number"),
    [("40%", 40.0), ("12.5%", 12.5), (" 0 % ", 0.0), (99, 99.0), (None, None), ("", None)],
)
def test_progress_is_a_percentage(progress, number):
    body = {"result": item(runStatus="Running", finishDate=ZERO_DATE, runProgress=progress)}
    assert parse_progress("task-1", body) == number


@pytest.mark.parametrize(
    "progress",
    ["140%", "-3%", "forty", True, [40], 10**400, -(10**400), 101.5],
    ids=["140%", "-3%", "forty", "true", "a list", "10**400", "-10**400", "101.5"],
)
def test_progress_out_of_range_or_not_a_number_is_refused(progress):
    body = {"result": item(runStatus="Running", runProgress=progress)}
    with pytest.raises(MalformedResponse, match="runProgress of task task-1"):
        parse_progress("task-1", body)


def test_progress_of_another_task_is_refused():
    with pytest.raises(MalformedResponse, match="not task-2"):
        parse_progress("task-2", {"result": item(runProgress="40%")})


def test_a_malformed_item_over_http_is_retried_then_fails_naming_the_field():
    """Over loopback HTTP, a task list with a bad item is retried like any malformed answer,
    and the final error names the field."""
    with scripted(lambda n, body: (200, page(item(createDate=12)))) as server:
        with Client(DEMO, server.url, RetryPolicy(max_attempts=3, base_delay_s=0.001)) as client:
            with pytest.raises(RetriesExhausted, match=r"task-1\)\.createDate"):
                job_tasks(client, JOB)
    assert len(server.headers_seen) == 3


@pytest.mark.parametrize(
    ("reply", "problem"),
    [
        (page(item(), item()), "a taskId appears twice in one page"),
        ({"result": {"taskList": {}}}, "'result.taskList' is missing or not a list"),
    ],
    ids=["a task twice", "no list"],
)
def test_a_malformed_task_page_says_whose_tasks_it_lists(reply, problem):
    """An error about the listing's envelope names the job whose tasks were being listed, so
    that it does not read as a fault of the jobs' pages."""
    with scripted(lambda n, body: (200, reply)) as server:
        with Client(DEMO, server.url, RetryPolicy(max_attempts=1)) as client:
            with pytest.raises(RetriesExhausted) as caught:
                job_tasks(client, JOB)
    assert f"malformed response: the tasks of job {JOB}: {problem}" in str(caught.value)


def test_the_task_walk_stops_on_a_marker_cycle():
    """A server that sends A -> B -> A stops the walk with an error rather than looping."""

    def answer(n: int, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        marker = {None: "task-b", "task-b": "task-c", "task-c": "task-b"}[body.get("marker")]
        return 200, page(item(taskId=f"task-{n}"), next_marker=marker)

    with scripted(answer) as server, Client(DEMO, server.url, FAST) as client:
        with pytest.raises(PagingError, match="'task-b' again"):
            list(walk_tasks(client, JOB))
    assert len(server.headers_seen) == 3


def test_the_task_walk_pages_and_asks_for_running_progress():
    """Pages follow nextMarker, a task repeated at the boundary is kept once, and a running
    task gets its progress from DescribeFineTuningTask."""
    running = item(taskId="task-2", runStatus="Running", finishDate=ZERO_DATE)
    answers = {
        None: page(item(), running, next_marker="task-2"),
        "task-2": page(running, item(taskId="task-3")),
    }

    def answer(n: int, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if "taskId" in body:
            return 200, {"result": {**running, "runProgress": "40%"}}
        return 200, answers[body.get("marker")]

    with scripted(answer) as server, Client(DEMO, server.url, FAST) as client:
        tasks = job_tasks(client, JOB)
    assert [(t.task_id, t.run_progress) for t in tasks] == [
        ("task-1", None),
        ("task-2", 40.0),
        ("task-3", None),
    ]


def test_a_task_listed_again_on_a_later_page_is_kept_once():
    """Pages [1, 2] -> [3] -> [1]: three tasks, not four (the job's task count in
    finetuning_task_lists comes from this list)."""
    answers = {
        None: page(item(taskId="task-1"), item(taskId="task-2"), next_marker="m2"),
        "m2": page(item(taskId="task-3"), next_marker="m3"),
        "m3": page(item(taskId="task-1")),
    }
    with scripted(lambda n, body: (200, answers[body.get("marker")])) as server:
        with Client(DEMO, server.url, FAST) as client:
            tasks = job_tasks(client, JOB)
    assert [t.task_id for t in tasks] == ["task-1", "task-2", "task-3"]


def refused(code: str) -> dict[str, Any]:
    return {"requestId": "r", "code": code, "message": "refused"}


def test_a_task_deleted_before_its_progress_is_kept_without_it():
    """A running task that DescribeFineTuningTask no longer knows (deleted since the listing)
    is kept as listed, without a progress, instead of failing the listing; the next listing
    of its job finds it gone."""
    running = item(taskId="task-2", runStatus="Running", finishDate=ZERO_DATE)

    def answer(n: int, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if "taskId" in body:
            return 400, refused("InvalidRequestArgumentError")
        return 200, page(item(), running)

    with scripted(answer) as server, Client(DEMO, server.url, FAST) as client:
        tasks = job_tasks(client, JOB)
    assert [(t.task_id, t.run_status, t.run_progress) for t in tasks] == [
        ("task-1", "Done", None),
        ("task-2", "Running", None),
    ]


def test_access_denied_on_a_task_action_names_that_action():
    """A key allowed to list jobs but not to describe a task: the error's hint names
    DescribeFineTuningTask, the action that was refused, not DescribeFineTuningJobs."""
    running = item(runStatus="Running", finishDate=ZERO_DATE)

    def answer(n: int, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if "taskId" in body:
            return 403, refused("AccessDenied")
        return 200, page(running)

    with scripted(answer) as server, Client(DEMO, server.url, FAST) as client:
        with pytest.raises(ApiError, match="AccessDenied") as denied:
            job_tasks(client, JOB)
    assert "permission for DescribeFineTuningTask:" in str(denied.value)
    assert "DescribeFineTuningJobs" not in str(denied.value)


def test_a_job_deleted_before_its_tasks_are_listed_is_set_apart(fake_api):
    """Of several jobs, one the API no longer knows is reported as gone (with the API's
    refusal) and left out of the listings, which hold every other job's tasks complete."""
    api = fake_api(30)
    jobs = [job["jobId"] for job in api.job_list()]
    expected = {job: [t["taskId"] for t in api.task_list(job)] for job in jobs[1:]}
    api.delete(jobs[:1])
    with Client(DEMO, api.url, FAST) as client, TaskFetcher(client, 4) as fetcher:
        fetched = fetcher.fetch(jobs)
    assert {job: [t.task_id for t in tasks] for job, tasks in fetched.tasks.items()} == expected
    (gone,) = fetched.gone
    assert gone.job_id == jobs[0] and gone.refusal.code == "InvalidRequestArgumentError"


def test_a_hold_pauses_every_waiter_and_a_stop_releases_it():
    """After hold(s), wait() returns no sooner than s later, in any thread; a set stop event
    ends the wait early."""
    throttle = Throttle()
    throttle.hold(0.3)
    start = time.monotonic()
    waited: list[float] = []
    threads = [
        threading.Thread(target=lambda: (throttle.wait(), waited.append(time.monotonic())))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(waited) == 3 and min(waited) - start >= 0.29
    throttle.hold(3600)
    stop = threading.Event()
    stop.set()
    throttle.wait(stop)  # returns at once; an hour's wait would time the suite out


def test_a_429_seen_by_one_worker_pauses_its_siblings(fake_api):
    """A 429 with Retry-After that one worker client meets holds back the next request of
    another worker sharing its throttle for that long, even when the first gives up."""
    api = fake_api(5, faults=Faults(throttle_rate=1.0, retry_after_s=1))
    job = api.job_list()[0]["jobId"]
    with Client(DEMO, api.url, RetryPolicy(max_attempts=1)) as client:
        throttle = Throttle()
        first, second = client.worker(throttle), client.worker(throttle)
        start = time.monotonic()
        with pytest.raises(RetriesExhausted, match="429"):
            job_tasks(first, job)
        api.faults = Faults()
        assert [t.task_id for t in job_tasks(second, job)] == [
            t["taskId"] for t in api.task_list(job)
        ]
        # Without the shared pause both calls take milliseconds.
        assert time.monotonic() - start >= 1.0
        first.close()
        second.close()


@pytest.mark.parametrize(
    ("changes", "dialect", "named"),
    [
        ({"taskId": "t" * 200}, "sqlite", "its task_id is 200 characters long"),
        ({"runStatus": "R" * 40}, "mysql", "its run_status is 40 characters long"),
        ({"parameterScale": "Lo\x00RA"}, "postgresql", "its parameter_scale contains a NUL"),
    ],
)
def test_a_task_value_its_column_cannot_hold_is_refused_by_name(changes, dialect, named):
    """A task value too long for its column (or a NUL on PostgreSQL) fails before the write,
    naming the task and the field."""
    (task,) = parse_task_page(JOB, page(item(**changes))).tasks
    with pytest.raises(Unstorable, match=named) as refused:
        fits.check_tasks([task], dialect)
    assert "of job 'job-abc'" in str(refused.value)
    fits.check_tasks(parse_task_page(JOB, page(item())).tasks, dialect)  # a normal task fits


def test_the_task_lists_held_at_once_are_bounded(fake_api):
    """A fetch holds its jobs' task lists until their page is written: past its byte budget
    it stops with one PagingError naming the limit, rather than holding whatever a server
    sends; under it, every list arrives."""
    api = fake_api(30)
    jobs = [job["jobId"] for job in api.job_list()]
    with Client(DEMO, api.url, FAST) as client:
        with TaskFetcher(client, 4, max_held_bytes=5_000) as fetcher:
            with pytest.raises(PagingError, match="pass 5,000 bytes"):
                fetcher.fetch(jobs)
        with TaskFetcher(client, 4) as fetcher:
            assert fetcher.fetch(jobs).tasks.keys() == set(jobs)
