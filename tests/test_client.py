"""The client walks DescribeFineTuningJobs exactly: each job once, faults survived, errors clear."""

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from qfsync import signer
from qfsync.client import Client, Credentials, JobQuery, RetryPolicy, walk
from qfsync.errors import ApiError, PagingError, RetriesExhausted
from qfsync.fake_api import DEMO_ACCESS_KEY, DEMO_SECRET_KEY, DENIED_ACCESS_KEY, FakeApi, Faults
from qfsync.pages import Page

DEMO = Credentials(DEMO_ACCESS_KEY, DEMO_SECRET_KEY)
WRONG_SECRET = "wrong-secret-7Qz1xK"
# Backoff in milliseconds, and enough attempts that a fault rate below one cannot exhaust them.
FAST = RetryPolicy(max_attempts=20, base_delay_s=0.001, max_delay_s=0.001)
JOBS = 2537
ALL_JOBS = JobQuery()

FakeFactory = Callable[..., FakeApi]


def job_ids(pages: list[Page]) -> list[str]:
    return [job.job_id for page in pages for job in page.jobs]


def raw_jobs(pages: list[Page]) -> list[dict[str, Any]]:
    return [job.raw for page in pages for job in page.jobs]


def walk_all(
    api: FakeApi, query: JobQuery = ALL_JOBS, sleep: Callable[[float], Any] = time.sleep
) -> list[Page]:
    with Client(DEMO, api.url, FAST, sleep=sleep) as client:
        return list(walk(client, query))


# --- a complete walk --------------------------------------------------------------------------


def test_walk_yields_each_job_once_in_order_with_minimal_requests(fake_api: FakeFactory) -> None:
    """2,537 jobs at 100 a page: exactly the fake's list, in its order, in 26 requests."""
    api = fake_api(JOBS)
    with Client(DEMO, api.url, FAST) as client:
        pages = list(walk(client, JobQuery(page_size=100)))
        assert client.requests_made == 26
    assert api.request_count == 26
    assert raw_jobs(pages) == api.job_list()
    assert len(set(job_ids(pages))) == JOBS
    assert [len(page.jobs) for page in pages] == [100] * 25 + [37]
    assert [page.is_last for page in pages] == [False] * 25 + [True]


def test_a_netrc_entry_for_the_host_does_not_replace_the_signature(
    fake_api: FakeFactory, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """requests would send ~/.netrc's credentials for the host as Basic auth in place of the
    signed Authorization header; qfsync's session does not read netrc."""
    api = fake_api(150)
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password something\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    assert len(job_ids(walk_all(api))) == 150


def test_proxies_come_from_the_environment_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The proxy variables still apply (read when the client is made, not on every request),
    and NO_PROXY still exempts a host."""
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "internal.example")
    with Client(DEMO, "https://qianfan.example", FAST) as client:
        assert client.session.proxies.get("https") == "http://proxy.example:3128"
    with Client(DEMO, "https://internal.example", FAST) as client:
        assert not client.session.proxies


def test_walk_passes_each_next_marker_back(fake_api: FakeFactory) -> None:
    """Each request after the first carries the previous page's nextMarker; the first none."""
    api = fake_api(250)
    pages = walk_all(api, JobQuery(page_size=100))
    assert [body.get("marker") for body in api.bodies] == [None] + [
        page.next_marker for page in pages[:-1]
    ]
    assert [page.marker for page in pages] == [body.get("marker") for body in api.bodies]


def test_reverse_walk_yields_newest_first(fake_api: FakeFactory) -> None:
    """pageReverse lists the same jobs in the opposite order."""
    api = fake_api(JOBS)
    pages = walk_all(api, JobQuery(reverse=True))
    assert job_ids(pages) == [job["jobId"] for job in reversed(api.job_list())]
    assert raw_jobs(pages) == api.job_list(reverse=True)
    assert all(body["pageReverse"] is True for body in api.bodies)


def test_filters_and_page_size_reach_every_request(fake_api: FakeFactory) -> None:
    """trainMode, model and maxKeys are sent on every page, and the walk yields just those jobs."""
    api = fake_api(JOBS)
    expected = api.job_list(train_mode="SFT", model="ERNIE-Speed-8K")
    assert 37 * 3 < len(expected) < JOBS  # several pages, and the filter really filters
    pages = walk_all(api, JobQuery(train_mode="SFT", model="ERNIE-Speed-8K", page_size=37))
    assert raw_jobs(pages) == expected
    assert len(api.bodies) == -(-len(expected) // 37)
    for body in api.bodies:
        assert body["trainMode"] == "SFT"
        assert body["model"] == "ERNIE-Speed-8K"
        assert body["maxKeys"] == 37
        assert body["pageReverse"] is False


def test_unfiltered_request_sends_no_filter_fields(fake_api: FakeFactory) -> None:
    """Without filters the body carries no trainMode or model at all."""
    api = fake_api(5)
    walk_all(api, JobQuery(page_size=10))
    assert api.bodies == [{"maxKeys": 10, "pageReverse": False}]


@pytest.mark.parametrize("page_size", [0, -1, 101])
def test_page_size_out_of_range_raises_before_any_request(
    fake_api: FakeFactory, page_size: int
) -> None:
    """A page size outside 1..100 is a ValueError, and nothing is sent."""
    api = fake_api(5)
    with Client(DEMO, api.url, FAST) as client:
        with pytest.raises(ValueError, match="page size must be 1 to 100"):
            list(walk(client, JobQuery(page_size=page_size)))
        assert client.requests_made == 0
    assert api.request_count == 0


@pytest.mark.parametrize("page_size", [1, 100])
def test_page_size_bounds_are_accepted(fake_api: FakeFactory, page_size: int) -> None:
    """Page sizes 1 and 100 walk the whole list."""
    api = fake_api(7)
    assert raw_jobs(walk_all(api, JobQuery(page_size=page_size))) == api.job_list()


# --- faults -----------------------------------------------------------------------------------

FAULTS = {
    "500s": Faults(error_rate=0.3),
    "drops": Faults(drop_rate=0.3),
    "malformed JSON": Faults(malformed_rate=0.3),
    "busy 336100 with HTTP 200": Faults(busy_rate=0.3),
}


@pytest.mark.parametrize("faults", FAULTS.values(), ids=FAULTS.keys())
def test_each_fault_alone_is_survived_exactly(fake_api: FakeFactory, faults: Faults) -> None:
    """With one kind of transient fault on 30% of requests, the walk still yields the exact list."""
    api = fake_api(JOBS, faults)
    sleeps: list[float] = []
    with Client(DEMO, api.url, FAST, sleep=sleeps.append) as client:
        pages = list(walk(client, JobQuery()))
        assert client.requests_made == api.request_count > 26  # faults happened, were retried
    assert raw_jobs(pages) == api.job_list()
    assert len(sleeps) == api.request_count - 26


def test_throttling_honours_retry_after(fake_api: FakeFactory) -> None:
    """On 429 the client waits exactly the Retry-After seconds, and the walk stays exact."""
    api = fake_api(JOBS, Faults(throttle_rate=0.3, retry_after_s=7))
    sleeps: list[float] = []
    pages = walk_all(api, sleep=sleeps.append)
    assert raw_jobs(pages) == api.job_list()
    assert len(sleeps) == api.request_count - 26 > 0
    assert set(sleeps) == {7.0}


def test_boundary_overlap_yields_each_job_once(fake_api: FakeFactory) -> None:
    """A server that repeats the boundary job on the next page does not make it appear twice."""
    api = fake_api(JOBS, Faults(boundary_overlap=True))
    pages = walk_all(api)
    assert raw_jobs(pages) == api.job_list()
    # Each later page was asked for from the previous page's last job, which it did not yield
    # again: the server really repeated it, and the walk dropped the repeat.
    for previous, page, body in zip(pages[:-1], pages[1:], api.bodies[1:], strict=True):
        assert body["marker"] == previous.jobs[-1].job_id
        assert page.jobs[0].job_id != body["marker"]
    assert len(pages) == len(api.bodies) > 2


def test_all_faults_at_once_still_yield_the_exact_list(fake_api: FakeFactory) -> None:
    """15% 500s, 10% 429s, 5% drops and 3% malformed together: still every job, once, in order."""
    faults = Faults(
        error_rate=0.15, throttle_rate=0.10, retry_after_s=0, drop_rate=0.05, malformed_rate=0.03
    )
    api = fake_api(JOBS, faults)
    sleeps: list[float] = []
    pages = walk_all(api, sleep=sleeps.append)
    assert raw_jobs(pages) == api.job_list()
    assert api.request_count > 26
    assert 0.0 in sleeps  # a Retry-After of 0 is a wait of 0, not a fallback to backoff


def test_persistent_failure_exhausts_retries_after_the_good_pages(fake_api: FakeFactory) -> None:
    """When every request after page 7 fails, exactly 7 pages are yielded, then RetriesExhausted."""
    api = fake_api(JOBS, Faults(fail_after_pages=7))
    pages: list[Page] = []
    retry = RetryPolicy(max_attempts=4, base_delay_s=0.001, max_delay_s=0.001)
    with Client(DEMO, api.url, retry, sleep=lambda _: None) as client:
        with pytest.raises(RetriesExhausted) as caught:
            for page in walk(client, JobQuery(page_size=100)):
                pages.append(page)
        assert client.requests_made == 7 + 4
    assert raw_jobs(pages) == api.job_list()[:700]
    message = str(caught.value)
    assert "HTTP 500 InternalError" in message
    assert "gave up after 4 attempts" in message


# --- the retry budget -------------------------------------------------------------------------


def test_attempts_are_bounded_by_max_attempts(fake_api: FakeFactory) -> None:
    """A request that always fails is sent exactly max_attempts times."""
    api = fake_api(10, Faults(error_rate=1.0))
    retry = RetryPolicy(max_attempts=5, base_delay_s=0.001, max_delay_s=0.001)
    with Client(DEMO, api.url, retry, sleep=lambda _: None) as client:
        with pytest.raises(RetriesExhausted, match="gave up after 5 attempts"):
            list(walk(client, JobQuery()))
        assert client.requests_made == 5
    assert api.request_count == 5


def test_retry_after_waits_stop_within_max_wait(fake_api: FakeFactory) -> None:
    """Retry-After waits of 3s under a 10s budget: three waits, then give up without a fourth."""
    api = fake_api(10, Faults(throttle_rate=1.0, retry_after_s=3))
    sleeps: list[float] = []
    retry = RetryPolicy(max_attempts=100, max_wait_s=10)
    with Client(DEMO, api.url, retry, sleep=sleeps.append) as client:
        with pytest.raises(RetriesExhausted, match="HTTP 429"):
            list(walk(client, JobQuery()))
    assert sleeps == [3.0, 3.0, 3.0]
    assert api.request_count == 4


def test_backoff_waits_never_exceed_max_wait(fake_api: FakeFactory) -> None:
    """Jittered backoff stops before its total wait would pass max_wait_s."""
    api = fake_api(10, Faults(error_rate=1.0))
    sleeps: list[float] = []
    retry = RetryPolicy(max_attempts=1000, max_wait_s=7.5, base_delay_s=1, max_delay_s=4)
    with Client(DEMO, api.url, retry, sleep=sleeps.append) as client:
        with pytest.raises(RetriesExhausted):
            list(walk(client, JobQuery()))
    assert sleeps
    assert sum(sleeps) <= 7.5
    assert api.request_count == len(sleeps) + 1


# --- errors that retrying cannot fix ----------------------------------------------------------


def test_wrong_secret_is_signature_error_without_the_secret(fake_api: FakeFactory) -> None:
    """A wrong SK: one request, ApiError SignatureDoesNotMatch with hint and requestId, no SK."""
    api = fake_api(10)
    with Client(Credentials(DEMO_ACCESS_KEY, WRONG_SECRET), api.url, FAST) as client:
        with pytest.raises(ApiError) as caught:
            list(walk(client, JobQuery()))
        assert client.requests_made == 1
        assert WRONG_SECRET not in repr(client.credentials)
    assert api.request_count == 1
    error = caught.value
    assert (error.code, error.status) == ("SignatureDoesNotMatch", 403)
    assert error.request_id and f"[requestId {error.request_id}]" in str(error)
    assert "QIANFAN_ACCESS_KEY" in str(error) and "QIANFAN_SECRET_KEY" in str(error)
    assert WRONG_SECRET not in str(error)
    assert WRONG_SECRET not in repr(error)


def test_denied_key_names_the_policies(fake_api: FakeFactory) -> None:
    """A key without permission: ApiError AccessDenied naming the four policies that grant it."""
    api = fake_api(10)
    with Client(Credentials(DENIED_ACCESS_KEY, DEMO_SECRET_KEY), api.url, FAST) as client:
        with pytest.raises(ApiError) as caught:
            list(walk(client, JobQuery()))
    assert caught.value.code == "AccessDenied"
    for policy in (
        "QianfanFullControlAccessPolicy",
        "QianfanReadAccessPolicy",
        "QianfanModelTuningFullControlAccessPolicy",
        "QianfanModelTuningReadAccessPolicy",
    ):
        assert policy in str(caught.value)
    assert api.request_count == 1


def test_unknown_access_key_is_not_retried(fake_api: FakeFactory) -> None:
    """InvalidAccessKeyId is final after one request, with the credentials hint."""
    api = fake_api(10)
    with Client(Credentials("no-such-ak", DEMO_SECRET_KEY), api.url, FAST) as client:
        with pytest.raises(ApiError, match="QIANFAN_ACCESS_KEY") as caught:
            list(walk(client, JobQuery()))
        assert client.requests_made == 1
    assert caught.value.code == "InvalidAccessKeyId"


# --- a scripted server for what the fake will not do ------------------------------------------

Answer = Callable[[int, dict[str, Any]], tuple[int, dict[str, Any]]]


class ScriptedServer(ThreadingHTTPServer):
    """Answers each POST with answer(request number, body), recording every request's headers."""

    daemon_threads = True

    def __init__(self, answer: Answer):
        super().__init__(("127.0.0.1", 0), ScriptedHandler)
        self.answer = answer
        self.headers_seen: list[dict[str, str]] = []

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


class ScriptedHandler(BaseHTTPRequestHandler):
    server: ScriptedServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.headers_seen.append(dict(self.headers))
        status, payload = self.server.answer(len(self.server.headers_seen), body)
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@contextmanager
def scripted(answer: Answer) -> Iterator[ScriptedServer]:
    server = ScriptedServer(answer)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01})
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def one_job_page(job_id: str, next_marker: str | None) -> dict[str, Any]:
    info: dict[str, Any] = {"isTruncated": next_marker is not None}
    if next_marker is not None:
        info["nextMarker"] = next_marker
    return {"requestId": "r", "result": {"jobList": [{"jobId": job_id}], "pageInfo": info}}


def chain_server(prefix: int, cycle: int) -> Answer:
    """A listing whose markers run m1 .. m<prefix>, then c1 .. c<cycle> and back to c1; each
    page holds the job its marker names (inclusive markers), the first page job m0."""
    names = [f"m{i}" for i in range(prefix + 1)] + [f"c{i}" for i in range(1, cycle + 1)]

    def answer(n: int, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        here = names.index(body.get("marker", "m0"))
        following = names[here + 1] if here + 1 < len(names) else names[prefix + 1]
        return 200, one_job_page(names[here], following)

    return answer


@pytest.mark.parametrize(
    ("prefix", "cycle"),
    [(0, 1), (0, 2), (0, 3), (3, 1), (3, 2), (5, 7), (1, 40), (40, 3)],
)
def test_marker_cycle_of_any_length_raises_paging_error(prefix: int, cycle: int) -> None:
    """Markers that lead back to one already followed (A -> A, A -> B -> A, longer, after any
    run of good pages) end the walk with PagingError naming the cycle's length, within a
    bounded number of requests (Brent: at most five times the pages before and in it)."""
    with scripted(chain_server(prefix, cycle)) as server:
        seen: list[str] = []
        with Client(DEMO, server.url, FAST) as client:
            with pytest.raises(PagingError, match=f"circle of {cycle} page") as caught:
                for page in walk(client, JobQuery()):
                    seen += [job.job_id for job in page.jobs]
                    assert len(seen) < 10 * (prefix + 1 + cycle), "the walk kept looping"
            assert client.requests_made <= 5 * (prefix + 1 + cycle)
    assert "stopping rather than looping" in str(caught.value)
    # Every job of the listing was reached (but the one closing the circle may be the page
    # whose nextMarker gave the cycle away, which is not yielded), and nothing else.
    listing = [f"m{i}" for i in range(prefix + 1)] + [f"c{i}" for i in range(1, cycle + 1)]
    assert set(listing[:-1]) <= set(seen) <= set(listing)


def test_a_long_walk_without_a_cycle_is_not_mistaken_for_one(fake_api: FakeFactory) -> None:
    """Brent's saved marker moves at powers of two: 300 distinct pages walk to the end."""
    api = fake_api(300)
    pages = walk_all(api, JobQuery(page_size=1))
    assert raw_jobs(pages) == api.job_list() and len(pages) == 300


@pytest.mark.parametrize("next_marker", [None, ""], ids=["missing", "empty"])
def test_truncated_page_without_next_marker_fails_the_walk(next_marker: str | None) -> None:
    """A page with isTruncated true but no nextMarker is retried as malformed and then fails
    the walk, never taken as its last page."""
    info: dict[str, Any] = {"isTruncated": True}
    if next_marker is not None:
        info["nextMarker"] = next_marker
    body = {"result": {"jobList": [{"jobId": "job-a"}], "pageInfo": info}}
    with scripted(lambda n, _: (200, body)) as server:
        retry = RetryPolicy(max_attempts=3, base_delay_s=0.001, max_delay_s=0.001)
        with Client(DEMO, server.url, retry) as client:
            with pytest.raises(RetriesExhausted, match="'pageInfo.nextMarker' is missing"):
                list(walk(client, JobQuery()))
            assert client.requests_made == 3


@pytest.mark.parametrize("code", [18, "18", 336100, "336100", 500000, "500000", 18.0, " 18 "])
def test_old_style_retryable_codes_are_retried_as_number_or_string(code: Any) -> None:
    """error_code 18, 336100 and 500000 with HTTP 200, as a number or a string, are retried."""

    def answer(n: int, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if n == 1:
            return 200, {"error_code": code, "error_msg": "try later", "log_id": 1}
        return 200, one_job_page("job-a", None)

    with scripted(answer) as server:
        with Client(DEMO, server.url, FAST) as client:
            assert job_ids(list(walk(client, JobQuery()))) == ["job-a"]
            assert client.requests_made == 2


@pytest.mark.parametrize("code", [17, "17", "336101", 0, "abc", True, None, [18]])
def test_other_old_style_codes_are_final(code: Any) -> None:
    """Any other error_code (or one of another type) is an ApiError after one request."""
    with scripted(lambda n, _: (200, {"error_code": code, "error_msg": "no"})) as server:
        with Client(DEMO, server.url, FAST) as client:
            with pytest.raises(ApiError, match="no"):
                list(walk(client, JobQuery()))
            assert client.requests_made == 1


def test_every_attempt_is_signed_with_a_fresh_date() -> None:
    """A retry after a wait sends a new x-bce-date, signed into its Authorization."""

    def answer(n: int, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if n == 1:
            return 500, {"requestId": "r", "code": "InternalError", "message": "try again"}
        return 200, one_job_page("job-a", None)

    woke: list[datetime] = []

    def sleep_into_the_next_second(_: float) -> None:
        time.sleep(1.02 - time.time() % 1)  # so that a second-resolution timestamp must change
        woke.append(datetime.now(UTC))

    with scripted(answer) as server:
        with Client(DEMO, server.url, FAST, sleep=sleep_into_the_next_second) as client:
            assert job_ids(list(walk(client, JobQuery()))) == ["job-a"]
    first, second = server.headers_seen
    assert first["x-bce-date"] != second["x-bce-date"]
    assert second["x-bce-date"] >= signer.utc_timestamp(woke[0])
    for headers in (first, second):
        timestamp = headers["x-bce-date"]
        expected = signer.authorization(
            DEMO_ACCESS_KEY,
            DEMO_SECRET_KEY,
            "POST",
            "/v2/finetuning",
            {"Action": "DescribeFineTuningJobs"},
            headers,
            timestamp,
            signed_headers=headers["Authorization"].split("/")[4].split(";"),
        )
        assert headers["Authorization"] == expected
