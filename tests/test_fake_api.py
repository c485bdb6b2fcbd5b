"""The fake console API behaves like the documented DescribeFineTuningJobs, faults included."""

import json
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests

from qfsync import signer
from qfsync.fake_api import (
    ACTION,
    DEMO_ACCESS_KEY,
    DEMO_SECRET_KEY,
    DENIED_ACCESS_KEY,
    MODELS,
    ROUTE,
    TASK_ACTION,
    TASKS_ACTION,
    TRAIN_MODES,
    ZERO_DATE,
    FakeApi,
    Faults,
)


@pytest.fixture(scope="module")
def session():
    with requests.Session() as session:
        yield session


@pytest.fixture(scope="module")
def api():
    """Shared and never changed: 250 jobs, enough for several full pages."""
    with FakeApi(jobs=250) as api:
        yield api


@pytest.fixture
def fresh():
    """A small fake of the test's own, free to mutate or fault."""
    with FakeApi(jobs=30) as api:
        yield api


def post(
    session: requests.Session,
    api: FakeApi,
    body: Any = None,
    *,
    access_key: str = DEMO_ACCESS_KEY,
    secret_key: str = DEMO_SECRET_KEY,
    timestamp: str | None = None,
    action: str = ACTION,
    path: str = ROUTE,
) -> requests.Response:
    """One signed call, the way a client would make it."""
    timestamp = timestamp or signer.utc_timestamp()
    headers = {
        "Host": api.url.removeprefix("http://"),
        "Content-Type": "application/json",
        "x-bce-date": timestamp,
    }
    query = {"Action": action}
    headers["Authorization"] = signer.authorization(
        access_key, secret_key, "POST", path, query, headers, timestamp
    )
    data = body if isinstance(body, bytes) else json.dumps({} if body is None else body)
    return session.post(api.url + path, params=query, data=data, headers=headers, timeout=5)


def page(session: requests.Session, api: FakeApi, body: Any = None) -> dict[str, Any]:
    response = post(session, api, body)
    assert response.status_code == 200, response.text
    return response.json()["result"]


def walk(session: requests.Session, api: FakeApi, **body: Any) -> tuple[list[dict], list[dict]]:
    """Every page of one listing: the items in order and each page's pageInfo."""
    items, infos, marker = [], [], None
    while True:
        result = page(session, api, {**body, "marker": marker} if marker else body)
        items += result["jobList"]
        infos.append(result["pageInfo"])
        if not result["pageInfo"]["isTruncated"]:
            return items, infos
        marker = result["pageInfo"]["nextMarker"]


def assert_bce_error(response: requests.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["code"] == code
    assert body["requestId"] == response.headers["X-Bce-Request-Id"]
    assert response.headers["X-Bce-Error-Code"] == code
    assert response.headers["X-Bce-Error-Message"]
    return body


# --- paging ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("max_keys", "effective"), [(None, 10), (1, 1), (7, 7), (100, 100), (500, 100)]
)
def test_paging_covers_every_job_once_in_order(session, api, max_keys, effective):
    """Walking with any page size yields each job exactly once, oldest first."""
    body = {} if max_keys is None else {"maxKeys": max_keys}
    items, infos = walk(session, api, **body)
    assert items == api.job_list()
    assert len({job["jobId"] for job in items}) == 250
    times = [job["createTime"] for job in items]
    assert times == sorted(times) and len(set(times)) == len(times)
    assert all(info["maxKeys"] == effective for info in infos)
    assert infos[0]["marker"] == ""
    assert "nextMarker" not in infos[-1]
    assert len(infos) == -(-250 // effective)


def test_reverse_lists_newest_first(session, api):
    items, _ = walk(session, api, maxKeys=40, pageReverse=True)
    assert items == api.job_list()[::-1] == api.job_list(reverse=True)


@pytest.mark.parametrize(
    "filters",
    [
        {"trainMode": "SFT"},
        {"model": "ERNIE-Speed-8K"},
        {"trainMode": "SFT", "model": "Llama-2-7b"},
    ],
)
@pytest.mark.parametrize("reverse", [False, True])
def test_filters_are_exact_matches(session, api, filters, reverse):
    items, _ = walk(session, api, maxKeys=9, pageReverse=reverse, **filters)
    expected = [
        job for job in api.job_list(reverse=reverse) if all(job[k] == v for k, v in filters.items())
    ]
    assert items and items == expected
    assert items == api.job_list(filters.get("trainMode"), filters.get("model"), reverse)


def test_marker_is_inclusive(session, api):
    """A page starts at the marker's job, and nextMarker is the first job of the next page."""
    ids = [job["jobId"] for job in api.job_list()]
    result = page(session, api, {"marker": ids[5], "maxKeys": 3})
    assert [job["jobId"] for job in result["jobList"]] == ids[5:8]
    assert result["pageInfo"] == {
        "marker": ids[5],
        "maxKeys": 3,
        "isTruncated": True,
        "nextMarker": ids[8],
    }
    last = page(session, api, {"marker": ids[-1]})
    assert [job["jobId"] for job in last["jobList"]] == ids[-1:]
    assert last["pageInfo"]["isTruncated"] is False


def test_answers_are_utf8_json_with_a_fresh_request_id(session, api):
    first, second = post(session, api), post(session, api)
    assert first.headers["Content-Type"] == "application/json; charset=utf-8"
    assert first.json()["requestId"] != second.json()["requestId"]
    assert first.json()["requestId"] == first.headers["X-Bce-Request-Id"]
    assert list(first.json()["result"]["jobList"][0]) == [
        "jobId",
        "name",
        "description",
        "model",
        "trainMode",
        "createTime",
    ]
    assert b"\\u" not in first.content  # ensure_ascii=False: names go out as UTF-8
    assert re.search(rb"[^\x00-\x7f]", first.content)


# --- request validation ---------------------------------------------------------------------


@pytest.mark.parametrize("max_keys", [0, -1, "10", 1.5, True, [10]])
def test_invalid_max_keys_is_rejected(session, api, max_keys):
    assert_bce_error(post(session, api, {"maxKeys": max_keys}), 400, "InvalidRequestArgumentError")


@pytest.mark.parametrize(
    "body", [{"trainMode": 1}, {"model": ["x"]}, {"marker": 5}, {"pageReverse": "true"}]
)
def test_wrongly_typed_fields_are_rejected(session, api, body):
    assert_bce_error(post(session, api, body), 400, "InvalidRequestArgumentError")


def test_unknown_marker_is_rejected(session, api):
    body = assert_bce_error(
        post(session, api, {"marker": "job-000000000000"}), 400, "InvalidRequestArgumentError"
    )
    assert "marker" in body["message"]
    not_sft = next(job["jobId"] for job in api.job_list() if job["trainMode"] != "SFT")
    response = post(session, api, {"marker": not_sft, "trainMode": "SFT"})
    assert_bce_error(response, 400, "InvalidRequestArgumentError")


@pytest.mark.parametrize("raw", [b"[]", b"not json", b'{"maxKeys": 1', b"\xff\xfe{}"])
def test_body_must_be_a_json_object(session, api, raw):
    assert_bce_error(post(session, api, raw), 400, "MalformedJSON")


def test_only_the_three_actions_exist(session, api):
    assert_bce_error(post(session, api, path="/v2/elsewhere"), 404, "NotFound")
    assert_bce_error(
        post(session, api, action="DeleteFineTuningJob"), 400, "InvalidRequestArgumentError"
    )


def test_bodies_record_what_the_client_sent(session, fresh):
    post(session, fresh, {"maxKeys": 3, "trainMode": "SFT", "pageReverse": True})
    assert fresh.bodies == [{"maxKeys": 3, "trainMode": "SFT", "pageReverse": True}]
    assert fresh.request_count == fresh.pages_served == 1
    fresh.reset_counters()
    assert (fresh.bodies, fresh.request_count, fresh.pages_served) == ([], 0, 0)


# --- authentication -------------------------------------------------------------------------


def test_wrong_secret_does_not_match_and_is_not_echoed(session, api):
    response = post(session, api, secret_key="not-the-secret")
    body = assert_bce_error(response, 403, "SignatureDoesNotMatch")
    assert "not-the-secret" not in response.text and DEMO_SECRET_KEY not in response.text
    assert "bce-auth-v1" not in body["message"]


def test_denied_key_is_refused(session, api):
    assert_bce_error(post(session, api, access_key=DENIED_ACCESS_KEY), 403, "AccessDenied")


def test_unknown_key_is_refused(session, api):
    assert_bce_error(post(session, api, access_key="someone-else"), 403, "InvalidAccessKeyId")


def test_stale_timestamp_has_expired(session, api):
    stale = signer.utc_timestamp(datetime.now(UTC) - timedelta(minutes=20))
    assert_bce_error(post(session, api, timestamp=stale), 400, "RequestExpired")


def test_unsigned_request_is_refused_unless_auth_is_off(session, api):
    unsigned = session.post(f"{api.url}{ROUTE}?Action={ACTION}", json={}, timeout=5)
    assert_bce_error(unsigned, 403, "AccessDenied")
    with FakeApi(jobs=3, check_auth=False) as open_api:
        answer = session.post(f"{open_api.url}{ROUTE}?Action={ACTION}", json={}, timeout=5)
        assert len(answer.json()["result"]["jobList"]) == 3


# --- faults ---------------------------------------------------------------------------------


def test_throttle_has_retry_after(session, fresh):
    fresh.faults = Faults(throttle_rate=1.0, retry_after_s=3)
    response = post(session, fresh)
    assert_bce_error(response, 429, "RequestLimitExceeded")
    assert response.headers["Retry-After"] == "3"


def test_error_is_internal_error(session, fresh):
    fresh.faults = Faults(error_rate=1.0)
    assert_bce_error(post(session, fresh), 500, "InternalError")


def test_drop_closes_the_connection_without_an_answer(session, fresh):
    fresh.faults = Faults(drop_rate=1.0)
    with pytest.raises(requests.ConnectionError):
        post(session, fresh)
    assert fresh.request_count == 1 and fresh.pages_served == 0


def test_malformed_body_is_not_json(session, fresh):
    fresh.faults = Faults(malformed_rate=1.0)
    response = post(session, fresh)
    assert response.status_code == 200
    with pytest.raises(ValueError):
        response.json()
    assert fresh.pages_served == 0


def test_busy_is_old_style_error_with_http_200(session, fresh):
    fresh.faults = Faults(busy_rate=1.0)
    response = post(session, fresh)
    assert response.status_code == 200
    assert response.json()["error_code"] == 336100
    assert response.json()["error_msg"] == "server busy"


def test_latency_delays_every_answer(session, fresh):
    fresh.faults = Faults(latency_s=0.05)
    started = time.perf_counter()
    post(session, fresh)
    assert time.perf_counter() - started >= 0.05


def test_fail_after_pages_persists_until_faults_change(session, fresh):
    fresh.faults = Faults(fail_after_pages=2)
    assert [post(session, fresh, {"maxKeys": 1}).status_code for _ in range(4)] == [
        200,
        200,
        500,
        500,
    ]
    fresh.faults = Faults()
    assert post(session, fresh).status_code == 200
    assert fresh.request_count == 5 and fresh.pages_served == 3


def test_boundary_overlap_repeats_the_last_job(session, fresh):
    fresh.faults = Faults(boundary_overlap=True)
    first = page(session, fresh, {"maxKeys": 5})
    assert first["pageInfo"]["nextMarker"] == first["jobList"][-1]["jobId"]
    second = page(session, fresh, {"maxKeys": 5, "marker": first["pageInfo"]["nextMarker"]})
    assert second["jobList"][0] == first["jobList"][-1]


def test_fault_sequence_is_reproducible(session):
    def statuses() -> list[int]:
        with FakeApi(jobs=5, faults=Faults(error_rate=0.5)) as api:
            return [post(session, api).status_code for _ in range(20)]

    first = statuses()
    assert first == statuses()
    assert set(first) == {200, 500}


# --- data -----------------------------------------------------------------------------------


def test_rename_delete_add_are_visible(session, fresh):
    ids = [job["jobId"] for job in fresh.job_list()]
    fresh.rename(ids[:2])
    fresh.delete(ids[2:4])
    added = fresh.add(3)
    items, _ = walk(session, fresh, maxKeys=100)
    listed = [job["jobId"] for job in items]
    assert listed == ids[:2] + ids[4:] + [job["jobId"] for job in added]
    assert all(job["name"].endswith(" (renamed)") for job in items[:2])
    assert added[0]["createTime"] > items[-4]["createTime"]
    assert page(session, fresh, {"pageReverse": True})["jobList"][0] == added[-1]
    response = post(session, fresh, {"marker": ids[2]})
    assert_bce_error(response, 400, "InvalidRequestArgumentError")
    with pytest.raises(KeyError):
        fresh.delete(["job-nosuchjob000"])


def test_same_seed_same_jobs_other_seed_differs():
    assert FakeApi(jobs=50, seed=7).job_list() == FakeApi(jobs=50, seed=7).job_list()
    assert FakeApi(jobs=50, seed=7).job_list() != FakeApi(jobs=50, seed=8).job_list()


def test_hundred_thousand_jobs_generate_quickly_and_look_real():
    started = time.perf_counter()
    jobs = FakeApi(jobs=100_000).job_list()
    assert time.perf_counter() - started < 5
    assert all(re.fullmatch(r"job-[a-z0-9]{12}", job["jobId"]) for job in jobs)
    assert len({job["jobId"] for job in jobs}) == len(jobs)
    times = [job["createTime"] for job in jobs]
    assert times[0].startswith("2023-01-01T")
    assert all(a < b for a, b in zip(times, times[1:], strict=False))
    assert {job["model"] for job in jobs} == set(MODELS)
    assert {job["trainMode"] for job in jobs} == set(TRAIN_MODES)
    texts = [job["name"] + job["description"] for job in jobs]
    for needle in ("\n", "'", '"', "\\", "🚀", "精调"):
        assert any(needle in text for text in texts), needle
    assert any(job["description"] == "" for job in jobs)
    assert any(len(job["description"]) > 3000 for job in jobs)


# --- tasks ----------------------------------------------------------------------------------


def all_tasks(api: FakeApi) -> list[dict[str, Any]]:
    return [task for job in api.job_list() for task in api.task_list(job["jobId"])]


def test_task_list_pages_with_markers_like_jobs(session, api):
    """DescribeFineTuningTasks pages a job's tasks with inclusive markers, oldest first, each
    item naming its job as listed."""
    job = max(api.job_list(), key=lambda j: len(api.task_list(j["jobId"])))
    expected = api.task_list(job["jobId"])
    assert len(expected) >= 3
    items, marker = [], None
    while True:
        body = {"jobId": job["jobId"], "maxKeys": 2, **({"marker": marker} if marker else {})}
        response = post(session, api, body, action=TASKS_ACTION)
        assert response.status_code == 200, response.text
        result = response.json()["result"]
        items += result["taskList"]
        if not result["pageInfo"]["isTruncated"]:
            break
        marker = result["pageInfo"]["nextMarker"]
    assert items == expected
    assert [t["createDate"] for t in items] == sorted(t["createDate"] for t in items)
    for task in items:
        assert (task["jobId"], task["jobName"], task["model"], task["trainMode"]) == (
            job["jobId"],
            job["name"],
            job["model"],
            job["trainMode"],
        )
        assert task["createDate"] > job["createTime"]


def test_task_detail_has_progress_while_running(session, api):
    """DescribeFineTuningTask adds runProgress ("40%") while Running, metrics once Done."""
    tasks = all_tasks(api)
    running = next(t for t in tasks if t["runStatus"] == "Running")
    done = next(t for t in tasks if t["runStatus"] == "Done")
    answer = post(session, api, {"taskId": running["taskId"]}, action=TASK_ACTION).json()
    assert re.fullmatch(r"\d{1,2}%", answer["result"]["runProgress"])
    assert answer["result"]["finishDate"] == ZERO_DATE
    finished = post(session, api, {"taskId": done["taskId"]}, action=TASK_ACTION).json()
    assert "runProgress" not in finished["result"] and finished["result"]["metrics"]


def test_unknown_job_or_task_is_an_invalid_argument(session, api):
    for action, body in ((TASKS_ACTION, {"jobId": "job-x"}), (TASK_ACTION, {"taskId": "t-x"})):
        assert_bce_error(
            post(session, api, body, action=action), 400, "InvalidRequestArgumentError"
        )
    assert_bce_error(
        post(session, api, {}, action=TASKS_ACTION), 400, "InvalidRequestArgumentError"
    )


def test_tasks_look_real():
    """Zero to several tasks a job; older ones finished, Done far more than Failed or Stopped;
    recent ones Running (or Waiting, or not started); unfinished ones with the zero date."""
    api = FakeApi(jobs=1000)
    counts = [len(api.task_list(job["jobId"])) for job in api.job_list()]
    assert min(counts) == 0 and max(counts) >= 3
    tasks = all_tasks(api)
    statuses = [t["runStatus"] for t in tasks]
    assert statuses.count("Done") > 4 * (statuses.count("Failed") + statuses.count("Stopped"))
    assert statuses.count("Failed") and statuses.count("Stopped") and statuses.count("Running")
    for task in tasks:
        finished = task["runStatus"] in ("Done", "Failed", "Stopped")
        assert (task["finishDate"] != ZERO_DATE) == finished
        assert task["parameterScale"] in ("FullFineTuning", "LoRA", "PromptTuning")
    newest = {t["runStatus"] for job in api.job_list()[-20:] for t in api.task_list(job["jobId"])}
    oldest = {t["runStatus"] for job in api.job_list()[:500] for t in api.task_list(job["jobId"])}
    assert "Running" in newest and oldest <= {"Done", "Failed", "Stopped"}


def test_same_seed_same_tasks():
    """Tasks depend on the seed and the job only, not on the order they are asked for."""
    one, two = FakeApi(jobs=200, seed=7), FakeApi(jobs=200, seed=7)
    jobs = [job["jobId"] for job in one.job_list()]
    assert [one.task_list(j) for j in jobs] == [two.task_list(j) for j in reversed(jobs)][::-1]
    assert all_tasks(one) != all_tasks(FakeApi(jobs=200, seed=8))


def test_advance_lets_time_pass():
    """advance() finishes and progresses tasks, adds tasks to old jobs and deletes one; the
    same seed and steps give the same result."""
    api, twin = FakeApi(jobs=300), FakeApi(jobs=300)
    before = {t["taskId"]: t for t in all_tasks(api)}
    changed = api.advance(6 * 3600)
    assert changed == twin.advance(6 * 3600) and all_tasks(api) == all_tasks(twin)
    after = {t["taskId"]: t for t in all_tasks(api)}
    assert set(changed["added"]) == after.keys() - before.keys() and len(changed["added"]) == 6
    assert set(changed["deleted"]) == before.keys() - after.keys() == {changed["deleted"][0]}
    finished = [
        t
        for t in before
        if t in after
        and before[t]["runStatus"] == "Running"
        and after[t]["runStatus"] in ("Done", "Failed", "Stopped")
    ]
    assert finished
    for task_id in changed["added"]:
        job = after[task_id]["jobId"]
        assert before_job_created_long_ago(api, job)


def before_job_created_long_ago(api: FakeApi, job_id: str) -> bool:
    job = next(j for j in api.job_list() if j["jobId"] == job_id)
    created = datetime.strptime(job["createTime"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    return created.timestamp() < api.now() - 86400


def test_now_dates_the_jobs_up_to_an_hour_before_it():
    """Given `now`, the newest job was created an hour before it, the jobs keep their gaps."""
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    plain, dated = FakeApi(jobs=50), FakeApi(jobs=50, now=now)
    newest = dated.job_list()[-1]["createTime"]
    assert newest == (now - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert dated.now() == now.timestamp()
    assert [j["jobId"] for j in dated.job_list()] == [j["jobId"] for j in plain.job_list()]


def test_faults_apply_to_task_actions(session, fresh):
    """The same faults as for jobs: here every task request is throttled."""
    fresh.faults = Faults(throttle_rate=1.0, retry_after_s=3)
    job = fresh.job_list()[0]["jobId"]
    response = post(session, fresh, {"jobId": job}, action=TASKS_ACTION)
    assert_bce_error(response, 429, "RequestLimitExceeded")
    assert response.headers["Retry-After"] == "3"
    assert fresh.requests_by_action[TASKS_ACTION] == 1
