"""The console API client: one keep-alive session, signed requests, retries decided in one place,
and the marker walk over DescribeFineTuningJobs."""

import json
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import requests

from . import __version__, signer
from .errors import ApiError, MalformedResponse, PagingError, RetriesExhausted, TransientError
from .pages import Page, excerpt, parse_page

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://qianfan.baidubce.com"
ROUTE = "/v2/finetuning"
ACTION = "DescribeFineTuningJobs"
MAX_PAGE_SIZE = 100

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# Old-style Qianfan codes that arrive with HTTP 200: QPS limit, server busy, internal error.
RETRY_OLD_CODES = frozenset({18, 336100, 500000})
POLICIES = (
    "QianfanFullControlAccessPolicy, QianfanReadAccessPolicy, "
    "QianfanModelTuningFullControlAccessPolicy or QianfanModelTuningReadAccessPolicy"
)
HINTS = {
    "AccessDenied": f"The key lacks permission for {ACTION}: grant one of {POLICIES}",
    "InvalidAccessKeyId": "Check QIANFAN_ACCESS_KEY and QIANFAN_SECRET_KEY",
    "SignatureDoesNotMatch": "Check QIANFAN_ACCESS_KEY and QIANFAN_SECRET_KEY",
    "RequestExpired": "The request timestamp was rejected: check this machine's clock (NTP)",
}


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str = field(repr=False)


@dataclass(frozen=True)
class RetryPolicy:
    """How long to keep trying a transient failure: attempts and total wait are both bounded."""

    max_attempts: int = 8
    max_wait_s: float = 120.0
    base_delay_s: float = 0.5
    max_delay_s: float = 20.0
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0

    def backoff(self, attempt: int) -> float:
        """Full-jitter exponential backoff for the attempt that just failed (1-based)."""
        return random.uniform(0, min(self.max_delay_s, self.base_delay_s * 2 ** (attempt - 1)))


@dataclass(frozen=True)
class JobQuery:
    """The filters and order of one walk; fixed for every page of it."""

    train_mode: str | None = None
    model: str | None = None
    page_size: int = MAX_PAGE_SIZE
    reverse: bool = False

    def body(self, marker: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {"maxKeys": self.page_size, "pageReverse": self.reverse}
        if self.train_mode is not None:
            body["trainMode"] = self.train_mode
        if self.model is not None:
            body["model"] = self.model
        if marker is not None:
            body["marker"] = marker
        return body


# Why a request was retried, as metrics label it (the values of `retry_reason`).
RETRY_REASONS = ("connection", "throttled", "server_error", "malformed")


def retry_reason(exc: TransientError) -> str:
    """The kind of a transient failure, read from the message `Client._attempt` gave it."""
    if isinstance(exc, MalformedResponse):
        return "malformed"
    text = str(exc)
    if text.startswith(("HTTP 429 ", "API error 18:")):
        return "throttled"
    if text.startswith("cannot reach "):
        return "connection"
    return "server_error"


@dataclass
class ClientStats:
    """What the retries cost: counted where they happen, read by the metrics after a run."""

    retries: Counter[str] = field(default_factory=Counter)
    waited_s: float = 0.0

    def retried(self, exc: TransientError, delay_s: float) -> None:
        self.retries[retry_reason(exc)] += 1
        self.waited_s += delay_s


def retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


class Client:
    """Signed calls to the console API. Thread-confined: one walk uses one client."""

    def __init__(
        self,
        credentials: Credentials,
        base_url: str = DEFAULT_BASE_URL,
        retry: RetryPolicy = RetryPolicy(),
        sleep: Callable[[float], Any] = time.sleep,
    ):
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.credentials = credentials
        self.base_url = base_url.rstrip("/")
        self.host = parts.netloc
        self.retry = retry
        self.sleep = sleep
        self.requests_made = 0
        self.stats = ClientStats()
        self.session = requests.Session()
        self.session.headers["User-Agent"] = f"qfsync/{__version__}"

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _signed_headers(self) -> dict[str, str]:
        # A fresh timestamp on every attempt: a retry after a long backoff must not be stale.
        timestamp = signer.utc_timestamp()
        headers = {"Host": self.host, "Content-Type": "application/json", "x-bce-date": timestamp}
        headers["Authorization"] = signer.authorization(
            self.credentials.access_key,
            self.credentials.secret_key,
            "POST",
            ROUTE,
            {"Action": ACTION},
            headers,
            timestamp,
        )
        return headers

    def _attempt(self, body: dict[str, Any]) -> Page:
        """One request; raises TransientError for what is worth retrying, ApiError for the rest."""
        self.requests_made += 1
        try:
            response = self.session.post(
                f"{self.base_url}{ROUTE}",
                params={"Action": ACTION},
                data=json.dumps(body),
                headers=self._signed_headers(),
                timeout=(self.retry.connect_timeout_s, self.retry.read_timeout_s),
            )
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise TransientError(f"cannot reach {self.base_url}: {type(exc).__name__}") from None
        # Decode once, from bytes: JSON is UTF-8, and requests' .text would guess a charset.
        raw = response.content
        try:
            decoded = json.loads(raw)
        except ValueError:
            decoded = None
        if response.status_code != 200:
            error = decoded if isinstance(decoded, dict) else {}
            code = (
                response.headers.get("X-Bce-Error-Code")
                or error.get("code")
                or f"HTTP{response.status_code}"
            )
            message = (
                error.get("message") or response.headers.get("X-Bce-Error-Message") or excerpt(raw)
            )
            request_id = error.get("requestId") or response.headers.get("X-Bce-Request-Id")
            if response.status_code in RETRY_STATUSES:
                raise TransientError(
                    f"HTTP {response.status_code} {code}: {message}", retry_after(response)
                )
            raise ApiError(code, message, request_id, response.status_code, HINTS.get(code))
        if isinstance(decoded, dict) and "error_code" in decoded:
            code = decoded.get("error_code")
            message = str(decoded.get("error_msg", ""))
            if code in RETRY_OLD_CODES:
                raise TransientError(f"API error {code}: {message}")
            raise ApiError(str(code), message, str(decoded.get("log_id") or "") or None, 200)
        if decoded is None:
            raise MalformedResponse("the body is not JSON", excerpt(raw))
        return parse_page(decoded, raw)

    def fetch_page(self, body: dict[str, Any], stop: threading.Event | None = None) -> Page:
        """One validated page, retried with backoff within the policy's attempts and total wait."""
        waited = 0.0
        for attempt in range(1, self.retry.max_attempts + 1):
            try:
                return self._attempt(body)
            except TransientError as exc:
                delay = exc.retry_after
                if delay is None:
                    delay = self.retry.backoff(attempt)
                last_try = attempt == self.retry.max_attempts
                if last_try or waited + delay > self.retry.max_wait_s:
                    raise RetriesExhausted(
                        f"{exc} (gave up after {attempt} attempts and {waited:.1f}s of waiting)"
                    ) from None
                log.info(
                    "attempt %d failed: %s; retrying in %.2fs",
                    attempt,
                    exc,
                    delay,
                    extra={
                        "attempt": attempt,
                        "delay_s": round(delay, 3),
                        "error": str(exc),
                        "marker": body.get("marker"),
                    },
                )
                self.stats.retried(exc, delay)
                # A stop request (SIGINT/SIGTERM) must not wait out a long backoff.
                if stop is not None and stop.wait(delay):
                    raise TransientError("stopped while waiting to retry") from None
                if stop is None:
                    self.sleep(delay)
                waited += delay
        raise AssertionError("unreachable")


def walk(
    client: Client,
    query: JobQuery,
    marker: str | None = None,
    stop: threading.Event | None = None,
) -> Iterator[Page]:
    """Yield each page of the listing from `marker` on, each job once, until the last page.

    The marker is inclusive, so a server may repeat the job at a page boundary; only the previous
    page's ids are kept to drop such a repeat, which keeps memory flat however long the walk.
    """
    if not 1 <= query.page_size <= MAX_PAGE_SIZE:
        raise ValueError(f"page size must be 1 to {MAX_PAGE_SIZE}, not {query.page_size}")
    previous_ids: set[str] = set()
    while True:
        page = client.fetch_page(query.body(marker), stop)
        fresh = [job for job in page.jobs if job.job_id not in previous_ids]
        previous_ids = {job.job_id for job in page.jobs}
        next_marker = page.next_marker
        if next_marker is not None and next_marker == marker:
            raise PagingError(
                f"the API returned the same marker {marker!r} twice; stopping rather than looping"
            )
        yield Page(fresh, marker, next_marker, page.request_id)
        if next_marker is None:
            return
        marker = next_marker
