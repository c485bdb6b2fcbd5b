"""Hostile answers to the task actions get the jobs walk's protections: `qfsync tasks` (and so
a `sync --tasks`, which fetches with the same code) ends in one safe line, never an internal
error, whatever DescribeFineTuningTasks or DescribeFineTuningTask send."""

import os
import signal
import subprocess
import sys
import threading
from typing import Any

import pytest
from click.testing import CliRunner
from hostile import Reply, answer, hang, json_answer
from test_hostile import HOSTILE, RETRIED, assert_one_safe_line, hostile  # noqa: F401

from qfsync.cli import main
from qfsync.client import Client, Credentials, RetryPolicy
from qfsync.errors import UNSAFE, PagingError, RetriesExhausted
from qfsync.fake_api import DEMO_ACCESS_KEY, DEMO_SECRET_KEY
from qfsync.task_fetch import Budget, job_tasks
from qfsync.task_pages import ZERO_DATE
from qfsync.throttle import Throttle

JOB = "job-a"


def task(task_id: str = "task-1", **changes: Any) -> dict[str, Any]:
    item = {
        "taskId": task_id,
        "jobId": JOB,
        "runStatus": "Done",
        "createDate": "2024-01-02T03:04:05Z",
        "finishDate": "2024-01-02T05:04:05Z",
    }
    return item | changes


def tasks_page(*items: Any, next_marker: str | None = None, **info: Any) -> dict[str, Any]:
    page_info = {"isTruncated": next_marker is not None, **info}
    if next_marker is not None:
        page_info["nextMarker"] = next_marker
    return {"requestId": "r", "result": {"taskList": list(items), "pageInfo": page_info}}


RUNNING = task(runStatus="Running", finishDate=ZERO_DATE)
# Answers the jobs walk's table cannot give: the shapes of the task actions. name: (replies,
# what the one line must say, whether it was retried)
TASK_HOSTILE: dict[str, tuple[tuple[Reply, ...], str, bool]] = {
    "a task that is not an object": (
        (json_answer(200, tasks_page("task-1")),),
        "taskList[0] is not an object",
        True,
    ),
    "a task of another job": (
        (json_answer(200, tasks_page(task(jobId="job-\x1b[2Jother"))),),
        "jobId is 'job-\\x1b[2Jother', but the tasks of job-a were asked for",
        True,
    ),
    "a taskId with control characters and a bad time": (
        (json_answer(200, tasks_page(task("t\x00\n\u2028", createDate="\x1b[31m"))),),
        "(task t\\x00\\n\\u2028).createDate is not an ISO 8601 time",
        True,
    ),
    "a truncated page without its nextMarker": (
        (json_answer(200, tasks_page(task(), isTruncated=True)),),
        "'pageInfo.isTruncated' is true but 'pageInfo.nextMarker' is missing",
        True,
    ),
    "markers that cycle": (
        (
            json_answer(200, tasks_page(task("task-1"), next_marker="m1")),
            json_answer(200, tasks_page(task("task-2"), next_marker="m2")),
            json_answer(200, tasks_page(task("task-3"), next_marker="m1")),
        ),
        "the API returned the marker 'm1' again",
        False,
    ),
    "a progress that is not a percentage": (
        (
            json_answer(200, tasks_page(RUNNING)),
            json_answer(200, {"result": RUNNING | {"runProgress": "\x1b[2J140%"}}),
        ),
        "runProgress of task task-1 is not a percentage from 0 to 100",
        True,
    ),
    "a progress of another task": (
        (
            json_answer(200, tasks_page(RUNNING)),
            json_answer(200, {"result": RUNNING | {"taskId": "task-9", "runProgress": "4%"}}),
        ),
        "result.taskId is 'task-9', not task-1",
        True,
    ),
}
# The jobs walk's table, but for the checks of a jobs page, which a task page words its own way.
TRANSPORT = {
    name: ((reply,), expected, retried)
    for name, (reply, expected, retried) in HOSTILE.items()
    if "pageInfo" not in expected
}
CASES = TRANSPORT | TASK_HOSTILE


@pytest.mark.parametrize(("replies", "expected", "retried"), CASES.values(), ids=CASES.keys())
def test_hostile_task_answer_is_one_clear_line(
    hostile: Any,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    replies: tuple[Reply, ...],
    expected: str,
    retried: bool,
) -> None:
    """Each hostile answer to a task action ends `qfsync tasks` with exit 1 and one safe line
    saying what went wrong, after retrying what is worth retrying; no task is printed."""
    server = hostile(*replies)
    monkeypatch.setenv("QIANFAN_ACCESS_KEY", DEMO_ACCESS_KEY)
    monkeypatch.setenv("QIANFAN_SECRET_KEY", DEMO_SECRET_KEY)
    args = ["tasks", "--job-id", JOB, "--endpoint", server.url]
    result = CliRunner().invoke(main, [*args, "--max-attempts", "2", "--max-retry-wait", "1"])
    assert result.exit_code == 1, result.output
    line = assert_one_safe_line(result.stderr)
    assert expected in line
    assert result.stdout == ""
    assert (RETRIED in line) == retried
    assert len(line) < 1000


def test_report_shows_a_servers_control_characters_escaped(
    hostile: Any,  # noqa: F811
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A status and a model holding ANSI escapes, stored as sent by a `sync --tasks`, reach
    the terminal through `qfsync report` as visible escapes, never as control characters."""
    jobs = {
        "requestId": "r",
        "result": {
            "jobList": [{"jobId": JOB, "model": "M\x1b[2J", "createTime": "2024-01-16T09:48:35Z"}],
            "pageInfo": {"isTruncated": False},
        },
    }
    listed = tasks_page(task(runStatus="Run\x1b]0;x\x07", finishDate=ZERO_DATE), task("task-2"))
    server = hostile(json_answer(200, jobs), json_answer(200, listed))
    monkeypatch.setenv("QIANFAN_ACCESS_KEY", DEMO_ACCESS_KEY)
    monkeypatch.setenv("QIANFAN_SECRET_KEY", DEMO_SECRET_KEY)
    runner = CliRunner()
    args = ["--endpoint", server.url, "--database-url", database_url]
    synced = runner.invoke(main, ["sync", "--tasks", *args])
    assert synced.exit_code == 0, synced.output
    shown = runner.invoke(main, ["report", "--database-url", database_url])
    assert shown.exit_code == 0, shown.output
    assert "Run\\x1b]0;x\\x07" in shown.stdout and "M\\x1b[2J" in shown.stdout
    assert not UNSAFE.search(shown.stdout.replace("\n", ""))


@pytest.mark.parametrize("retry_after", ["1e999", "86400"])
def test_a_retry_after_past_the_wait_budget_does_not_hold_the_siblings(
    hostile: Any,  # noqa: F811
    retry_after: str,
) -> None:
    """A worker that gives up on a 429 whose Retry-After is beyond what it would wait (an
    endless one, a day) does not hold back its siblings for that long: their next request
    goes out at once and is answered, instead of sleeping a day or raising OverflowError."""
    server = hostile(
        answer(429, b"", {"Retry-After": retry_after}), json_answer(200, tasks_page(task()))
    )
    retry = RetryPolicy(max_attempts=3, base_delay_s=0.001, max_wait_s=60)
    with Client(Credentials(DEMO_ACCESS_KEY, DEMO_SECRET_KEY), server.url, retry) as client:
        throttle = Throttle()
        first, second = client.worker(throttle), client.worker(throttle)
        with pytest.raises(RetriesExhausted, match="gave up after 1 attempts"):
            job_tasks(first, JOB)
        stop = threading.Event()
        timer = threading.Timer(30, stop.set)  # a held sibling fails the test, not the suite
        timer.start()
        try:
            assert [t.task_id for t in job_tasks(second, JOB, stop=stop)] == ["task-1"]
        finally:
            timer.cancel()
        first.close()
        second.close()


def test_the_task_budget_counts_what_an_answer_takes_decoded(hostile: Any) -> None:  # noqa: F811
    """An answer of 300 KB whose task carries 100,000 empty arrays takes about 6 MB decoded:
    a budget of 1 MiB refuses it, though its bytes alone are under the budget (which is how
    the budget counted, letting 64 MiB of such answers take 1.3 GB)."""
    junk = task(x=[[] for _ in range(100_000)])
    server = hostile(json_answer(200, tasks_page(junk)))
    with Client(Credentials(DEMO_ACCESS_KEY, DEMO_SECRET_KEY), server.url) as client:
        with pytest.raises(PagingError, match="pass 1,048,576 bytes"):
            job_tasks(client, JOB, budget=Budget(2**20))
        assert job_tasks(client, JOB, budget=Budget(16 * 2**20))[0].raw == junk


def test_the_task_budget_counts_a_wide_string_at_its_width(hostile: Any) -> None:  # noqa: F811
    """One emoji makes Python keep every character of its string in four bytes: an answer of
    300 KB whose string holds one takes 1.2 MB decoded, and a budget of 1 MiB refuses it."""
    wide = task(description="\U0001f600" + "a" * 300_000)
    server = hostile(json_answer(200, tasks_page(wide)))
    with Client(Credentials(DEMO_ACCESS_KEY, DEMO_SECRET_KEY), server.url) as client:
        with pytest.raises(PagingError, match="pass 1,048,576 bytes"):
            job_tasks(client, JOB, budget=Budget(2**20))
        assert job_tasks(client, JOB, budget=Budget(16 * 2**20))[0].raw == wide


@pytest.mark.slow
def test_ctrl_c_ends_qfsync_tasks_stuck_on_the_api(hostile: Any) -> None:  # noqa: F811
    """Ctrl-C ends `qfsync tasks` while its workers wait on a silent server: exit 130 within
    seconds, not after every worker's retries (a minute's read timeout, eight attempts each),
    with one line on stderr. (SIGTERM ends this read-only command as it ends any program.)"""
    server = hostile(hang())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QIANFAN_", "QFSYNC_"))}
    env.update(
        QIANFAN_CONSOLE_API_BASE_URL=server.url,
        QIANFAN_ACCESS_KEY=DEMO_ACCESS_KEY,
        QIANFAN_SECRET_KEY=DEMO_SECRET_KEY,
    )
    command = [sys.executable, "-m", "qfsync", "tasks", "--job-id", "job-a", "--job-id", "job-b"]
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        server.wait_for(requests=2)  # both workers wait on the server
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=20)
    finally:
        process.kill()
    assert process.returncode == 130
    assert assert_one_safe_line(err) == "qfsync: error: interrupted by SIGINT"
