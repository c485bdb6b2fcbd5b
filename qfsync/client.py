"""The console API client: one keep-alive session, signed requests, retries decided in one place,
and the marker walk over DescribeFineTuningJobs."""

import copy
import http.client
import http.cookiejar
import logging
import os
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar
from urllib.parse import SplitResult, urlsplit

import orjson
import requests
import urllib3

from . import __version__, logs, signer
from .errors import ApiError, MalformedResponse, PagingError, RetriesExhausted, TransientError
from .pages import Page, decode, excerpt, parse_page
from .throttle import Throttle
from .watchdog import Watch, WatchedAdapter

T = TypeVar("T")
log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://qianfan.baidubce.com"
ROUTE = "/v2/finetuning"
ACTION = "DescribeFineTuningJobs"
MAX_PAGE_SIZE = 100

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# Old-style Qianfan codes that arrive with HTTP 200: QPS limit, server busy, internal error.
# They come as numbers or as strings, so they are compared as text.
RETRY_OLD_CODES = frozenset({"18", "336100", "500000"})
CHUNK_BYTES = 64 * 1024
# What a server can make requests, urllib3 or http.client raise while a request is sent or its
# answer read: a refused, reset or silent connection, a body shorter than its Content-Length
# or a broken chunked encoding (ChunkedEncodingError), a Content-Encoding that does not decode
# (ContentDecodingError), a status line or header they refuse. All are worth retrying.
TRANSFER_ERRORS = (
    requests.RequestException,
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    OSError,
)
USER_INFO = re.compile(r"^((?:[A-Za-z][A-Za-z0-9+.-]*:)?//)[^/?#]*@")
POLICIES = (
    "QianfanFullControlAccessPolicy, QianfanReadAccessPolicy, "
    "QianfanModelTuningFullControlAccessPolicy or QianfanModelTuningReadAccessPolicy"
)
# {action}: the action that was called, which is the one the key lacks.
HINTS = {
    "AccessDenied": f"The key lacks permission for {{action}}: grant one of {POLICIES}",
    "InvalidAccessKeyId": "Check QIANFAN_ACCESS_KEY and QIANFAN_SECRET_KEY",
    "SignatureDoesNotMatch": "Check QIANFAN_ACCESS_KEY and QIANFAN_SECRET_KEY",
    "RequestExpired": "The request timestamp was rejected: check this machine's clock (NTP)",
}


# What a key may hold: printable ASCII without spaces. The access key goes into the
# Authorization header, where a newline (a key read from a file) would make http.client refuse
# the header and quote it, signature and all, in its error.
KEY_TEXT = re.compile(r"[!-~]+")


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str = field(repr=False)

    def __post_init__(self) -> None:
        for name, value in (("access key", self.access_key), ("secret key", self.secret_key)):
            if not KEY_TEXT.fullmatch(value):
                raise ValueError(
                    f"the {name} is empty or holds white space, a control character or a "
                    "character outside ASCII (a newline at the end of the file it came from?)"
                )


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
class Limits:
    """What one answer may cost, far above anything a real page needs (100 jobs are about
    100 KB, four levels deep, under 2,000 values, and arrive in well under a second): its
    body's size after decompression, its JSON nesting and values, and the wall-clock time of
    one attempt, from sending the request to the body's last byte. A server over a limit fails
    that attempt, which is retried like any transient failure; the read timeout alone cannot
    bound a server that trickles."""

    max_body_bytes: int = 16 * 2**20
    max_depth: int = 64
    max_values: int = 250_000
    deadline_s: float = 120.0


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


# Why a request was retried, as metrics label it (TransientError.reason).
RETRY_REASONS = ("connection", "throttled", "server_error", "malformed")
# Old-style code for the QPS limit: throttling, as a 429 is.
THROTTLED_OLD_CODE = "18"


@dataclass
class ClientStats:
    """What the retries cost: counted where they happen, read by the metrics after a run."""

    retries: Counter[str] = field(default_factory=Counter)
    waited_s: float = 0.0

    def retried(self, exc: TransientError, delay_s: float) -> None:
        self.retries[exc.reason] += 1
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
        except (TypeError, ValueError, OverflowError, IndexError):
            return None


def shown_url(url: str) -> str:
    """A URL as qfsync may show it: user info (a password) replaced by ***, parsed or not."""
    return USER_INFO.sub(r"\1***@", url)


def text_of(value: Any) -> str | None:
    """A code, message or id a server sent, as one short safe line, whatever JSON type it came
    as (an old-style code is 18 or "18"); None for what is not text or a number."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    return excerpt(str(value)) or None


def redirect_error(response: requests.Response) -> ApiError:
    location = excerpt(shown_url(response.headers.get("Location") or "nowhere"))
    return ApiError(
        "Redirect",
        f"the endpoint redirects to {location}, and qfsync does not follow redirects "
        "(each request is signed for one host)",
        status=response.status_code,
        hint="Set --endpoint to the console API's own URL",
    )


def read_capped(response: requests.Response, max_bytes: int) -> bytes:
    """The whole body, decompressed, refused as soon as it passes `max_bytes`: urllib3
    decompresses at most a chunk at a time, so a decompression bomb stops at the limit."""
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_content(CHUNK_BYTES):
        size += len(chunk)
        if size > max_bytes:
            raise TransientError(
                f"the answer's body passed the limit of {max_bytes:,} bytes (decompressed)"
            )
        chunks.append(chunk)
    return b"".join(chunks)


class Client:
    """Signed calls to the console API. Thread-confined: one walk uses one client."""

    def __init__(
        self,
        credentials: Credentials,
        base_url: str = DEFAULT_BASE_URL,
        retry: RetryPolicy = RetryPolicy(),
        sleep: Callable[[float], Any] = time.sleep,
        limits: Limits = Limits(),
        throttle: Throttle | None = None,
    ):
        self.base_url = check_base_url(base_url)
        self.credentials = credentials
        self.host = urlsplit(self.base_url).netloc
        self.retry = retry
        self.limits = limits
        self.sleep = sleep
        self.throttle = throttle
        self.requests_made = 0
        self.stats = ClientStats()
        self.session = new_session(self.base_url)
        self._templates: dict[str, requests.PreparedRequest] = {}

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def worker(self, throttle: Throttle) -> "Client":
        """A client for another thread: the same settings, limits and stats, its own session
        and request count, and a throttle shared with its siblings (one 429 pauses them all)."""
        twin = copy.copy(self)
        twin.session = new_session(twin.base_url)
        twin._templates = {}
        twin.requests_made = 0
        twin.throttle = throttle
        return twin

    def _signed_headers(self, action: str) -> dict[str, str]:
        # A fresh timestamp on every attempt: a retry after a long backoff must not be stale.
        timestamp = signer.utc_timestamp()
        headers = {"Host": self.host, "Content-Type": "application/json", "x-bce-date": timestamp}
        headers["Authorization"] = signer.authorization(
            self.credentials.access_key,
            self.credentials.secret_key,
            "POST",
            ROUTE,
            {"Action": action},
            headers,
            timestamp,
        )
        return headers

    def _request(self, action: str, body: dict[str, Any]) -> requests.PreparedRequest:
        """The signed request, from one prepared per action: requests' Session.request merges
        the session's settings, cookies and hooks into a new request and parses the URL again on
        every call, a fifth of a walk's CPU. The copy has the session's headers and the URL."""
        template = self._templates.get(action)
        if template is None:
            template = self.session.prepare_request(
                requests.Request("POST", f"{self.base_url}{ROUTE}", params={"Action": action})
            )
            self._templates[action] = template
        request = template.copy()
        data = orjson.dumps(body)
        request.headers.update(self._signed_headers(action))
        request.headers["Content-Length"] = str(len(data))
        request.body = data
        return request

    def _exchange(
        self, action: str, body: dict[str, Any], stop: threading.Event | None
    ) -> tuple[requests.Response, bytes]:
        """Send one signed request and read its whole answer within the limits: the one place
        that touches the network. Whatever goes wrong in transfer is a TransientError; a
        redirect is an ApiError, raised before its body is read."""
        response: requests.Response | None = None
        failure: TransientError | None = None
        with Watch(stop, self.limits.deadline_s) as watch:
            try:
                response = self.session.send(
                    self._request(action, body),
                    timeout=(self.retry.connect_timeout_s, self.retry.read_timeout_s),
                    stream=True,
                    # The signature is bound to the host: another host's answer is not the API's.
                    allow_redirects=False,
                )
                # Hands the connection back, or closes it if the body was cut or left unread.
                with response:
                    if 300 <= response.status_code < 400:
                        # Refused whatever its body says, so the body is not read: however
                        # long, slow or broken, it costs nothing and is not retried.
                        raise redirect_error(response)
                    raw = read_capped(response, self.limits.max_body_bytes)
            except TRANSFER_ERRORS as exc:
                failure = self._transfer_failure(exc, answered=response is not None)
        # The watch cut the connection (or was about to): whatever was read is not the answer.
        if watch.reason == "stopped":
            raise TransientError(f"stopped while waiting for {self.base_url}")
        if watch.reason == "deadline":
            raise TransientError(
                f"no complete answer from {self.base_url} within the limit of "
                f"{self.limits.deadline_s:g}s per attempt"
            )
        if failure is not None:
            raise failure
        assert response is not None
        return response, raw

    def _transfer_failure(self, exc: BaseException, answered: bool) -> TransientError:
        kind = type(exc).__name__
        if not answered:
            return TransientError(f"cannot reach {self.base_url}: {kind}", reason="connection")
        if isinstance(exc, requests.exceptions.ContentDecodingError):
            return TransientError(
                f"the answer from {self.base_url} does not decode as its Content-Encoding "
                f"says ({kind})"
            )
        return TransientError(f"the answer from {self.base_url} broke off ({kind})")

    def _attempt(
        self,
        action: str,
        body: dict[str, Any],
        parse: Callable[[Any, bytes], T],
        stop: threading.Event | None,
    ) -> T:
        """One request; raises TransientError for what is worth retrying, ApiError for the rest."""
        self.requests_made += 1
        response, raw = self._exchange(action, body, stop)
        status = response.status_code
        try:
            decoded = decode(raw, self.limits.max_depth, self.limits.max_values)
        except MalformedResponse:
            if status == 200:
                raise
            decoded = None  # an error page need not be JSON
        error = decoded if isinstance(decoded, dict) else {}
        if status == 200 and "error_code" not in error:
            return parse(decoded, raw)
        headers = response.headers
        old_code = text_of(error.get("error_code"))
        code = (
            text_of(headers.get("X-Bce-Error-Code"))
            or text_of(error.get("code"))
            or old_code
            or f"HTTP{status}"
        )
        message = (
            text_of(error.get("message"))
            or text_of(error.get("error_msg"))
            or text_of(headers.get("X-Bce-Error-Message"))
            or excerpt(raw)
        )
        request_id = (
            text_of(error.get("requestId"))
            or text_of(error.get("log_id"))
            or text_of(headers.get("X-Bce-Request-Id"))
        )
        if status in RETRY_STATUSES or old_code in RETRY_OLD_CODES:
            throttled = status == 429 or old_code == THROTTLED_OLD_CODE
            raise TransientError(
                f"HTTP {status} {code}: {message}",
                retry_after(response),
                request_id,
                reason="throttled" if throttled else "server_error",
            )
        hint = HINTS.get(code)
        raise ApiError(code, message, request_id, status, hint and hint.format(action=action))

    def fetch_page(self, body: dict[str, Any], stop: threading.Event | None = None) -> Page:
        """One validated page of DescribeFineTuningJobs."""
        return self.call(ACTION, body, parse_page, stop)

    def call(
        self,
        action: str,
        body: dict[str, Any],
        parse: Callable[[Any, bytes], T],
        stop: threading.Event | None = None,
    ) -> T:
        """Any action on the route, its result validated by `parse(decoded, raw)`, retried with
        backoff within the policy's attempts and total wait; a set `stop` ends a request in
        flight or a backoff at once."""
        waited = 0.0
        for attempt in range(1, self.retry.max_attempts + 1):
            if self.throttle is not None:
                self.throttle.wait(stop)
            try:
                return self._attempt(action, body, parse, stop)
            except TransientError as exc:
                if stop is not None and stop.is_set():
                    raise
                delay = exc.retry_after
                # The server's pause holds the siblings too, even if this client now gives
                # up; but not one past any client's wait (a day, or endless), which would
                # stall them all, or overflow the sleep.
                if (
                    self.throttle is not None
                    and delay is not None
                    and delay <= self.retry.max_wait_s
                ):
                    self.throttle.hold(delay)
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
                    extra=logs.facts(
                        attempt=attempt,
                        delay_s=round(delay, 3),
                        error=str(exc),
                        request_id=exc.request_id,
                        marker=body.get("marker"),
                    ),
                )
                self.stats.retried(exc, delay)
                # A stop request (SIGINT/SIGTERM) must not wait out a long backoff.
                if stop is not None and stop.wait(delay):
                    raise TransientError("stopped while waiting to retry") from None
                if stop is None:
                    self.sleep(delay)
                waited += delay
        raise AssertionError("unreachable")


class NoRedirectSession(requests.Session):
    """A session that never looks for where an answer redirects to. qfsync follows no redirect
    (each request is signed for one host), but requests, told not to follow one, still works
    out the next request: it reads the redirect's whole body, past any limit, and parses its
    Location, which raises ValueError on a malformed one. The 3xx is refused in `_exchange`."""

    def get_redirect_target(self, resp: requests.Response) -> None:
        return None


def new_session(base_url: str) -> requests.Session:
    """One keep-alive session for the API at `base_url`, with the environment read once.

    requests otherwise reads the environment on every request: the proxy variables (a scan of
    os.environ that cost 7% of a walk's CPU) and ~/.netrc, whose Basic credentials for the host
    would replace the signed Authorization header. Proxies (HTTPS_PROXY, NO_PROXY, ...) and
    the CA bundle (REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE) are honoured as requests honours them.
    """
    session = NoRedirectSession()
    session.trust_env = False
    session.proxies = requests.utils.get_environ_proxies(base_url)
    session.verify = (
        os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
    )
    session.headers["User-Agent"] = f"qfsync/{__version__}"
    # Requests are signed, never carried by a cookie: keep none a server sets, so that none is
    # sent back, nor piled up by an unattended run.
    session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    for prefix in ("http://", "https://"):
        session.mount(prefix, WatchedAdapter())
    return session


def check_base_url(base_url: str) -> str:
    """The base URL without a trailing slash, or ValueError saying what is wrong with it (the
    URL shown only when it can hold no password)."""
    if "@" in base_url:
        # User info, however it is spelled (a password may hold / ? # and break the parse):
        # requests would send it as Basic auth in place of the signature, and every message
        # that names the endpoint would show the password. The URL is not shown.
        raise ValueError(
            "the URL holds an @, as a user name or password would; the API takes "
            "QIANFAN_ACCESS_KEY and QIANFAN_SECRET_KEY instead"
        )
    shown = excerpt(base_url)
    parts = check_http_url(base_url, shown)
    if parts.query or parts.fragment:
        raise ValueError(f"{shown!r} has a query or fragment; give the base URL only")
    return base_url.rstrip("/")


def check_http_url(url: str, shown: str) -> SplitResult:
    """`url` split, or ValueError saying why no request can go to it; `shown` is the URL as
    the message may show it. The host goes into the Host header as it is, so it must be ASCII
    (an international name in its xn-- form); a URL with white space or a control character
    is not shown, as it may sit in a password no mask finds."""
    if not url.isascii() or not url.isprintable() or " " in url:
        raise ValueError(
            "the URL holds white space, a control character or a character outside ASCII "
            "(write an international host name in its xn-- form; the URL is not shown)"
        )
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise ValueError(f"not a URL: {shown!r} (a bad port or IPv6 address)") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {shown!r}")
    return parts


def walk(
    client: Client,
    query: JobQuery,
    marker: str | None = None,
    stop: threading.Event | None = None,
) -> Iterator[Page]:
    """Yield each page of the listing from `marker` on, each job once, until the last page.

    The marker is inclusive, so a server may repeat the job at a page boundary; only the previous
    page's ids are kept to drop such a repeat, which keeps memory flat however long the walk.

    A server whose markers lead back to one already followed would loop for ever (the official
    SDK's mock server does). Remembering every marker would cost memory in proportion to the
    walk, so cycles are found with Brent's algorithm instead: one saved marker, moved forward
    at each power of two pages, and a counter. Any cycle, A -> A, A -> B -> A or longer, is
    found before the saved marker is requested a second time, within five times the pages
    before and in the cycle (A -> A at once); pages of a cycle may be yielded twice first,
    but a walk that ends in PagingError is never complete, so it deletes nothing.
    """
    if not 1 <= query.page_size <= MAX_PAGE_SIZE:
        raise ValueError(f"page size must be 1 to {MAX_PAGE_SIZE}, not {query.page_size}")
    previous_ids: set[str] = set()
    saved, power, steps = marker, 1, 0  # Brent: the saved marker, the window, steps since saved
    while True:
        page = client.fetch_page(query.body(marker), stop)
        fresh = [job for job in page.jobs if job.job_id not in previous_ids]
        previous_ids = {job.job_id for job in page.jobs}
        next_marker = page.next_marker
        steps += 1
        if next_marker is not None and next_marker in (marker, saved):
            cycle = 1 if next_marker == marker else steps
            raise PagingError(
                f"the API's markers go round in a circle of {cycle} page(s): nextMarker "
                f"'{excerpt(next_marker)}' was followed before; stopping rather than looping"
            )
        if steps == power:
            saved, power, steps = next_marker, power * 2, 0
        yield Page(fresh, marker, next_marker, page.request_id)
        if next_marker is None:
            return
        marker = next_marker
