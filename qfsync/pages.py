"""What a DescribeFineTuningJobs page must look like, and the records qfsync takes from it.

Every response is checked here before anything is written: a page either becomes a `Page` of
`Job`s or raises `MalformedResponse` with an excerpt of what came back. Nothing is skipped.
"""

import hashlib
import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from .errors import MalformedResponse, one_line

EXCERPT_CHARS = 200
TEXT_FIELDS = ("name", "description", "model", "trainMode")  # read in this order by parse_job


# Not frozen: a frozen dataclass's __init__ costs five times as much, and a walk makes one
# per job. Its fields, in this order, are what `qfsync jobs` prints (orjson writes it as is).
# Without slots: orjson writes an instance's __dict__ in half the time it takes to read slots.
@dataclass
class Job:
    job_id: str
    name: str | None
    description: str | None
    model: str | None
    train_mode: str | None
    created_at: datetime | None
    raw: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        """The record as `qfsync jobs` prints it: what a sync would store."""
        return {
            "job_id": self.job_id,
            "name": self.name,
            "description": self.description,
            "model": self.model,
            "train_mode": self.train_mode,
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "raw": self.raw,
        }


@dataclass(frozen=True, slots=True)
class Page:
    jobs: list[Job]
    marker: str | None
    next_marker: str | None
    request_id: str | None

    @property
    def is_last(self) -> bool:
        return self.next_marker is None


def excerpt(text: str | bytes) -> str:
    """The start of a response (or of any text a server chose), white space folded and control
    characters escaped, for an error message: one line of at most EXCERPT_CHARS characters."""
    head = text[: EXCERPT_CHARS * 4]
    cut = len(head) < len(text)  # before decoding: a UTF-8 character is several bytes
    if isinstance(head, bytes):
        head = head.decode("utf-8", "replace")
    folded = one_line(" ".join(head.split()))
    cut = cut or len(folded) > EXCERPT_CHARS
    return folded[:EXCERPT_CHARS] + "…" if cut else folded


def decode(raw: bytes, max_depth: int, max_values: int) -> Any:
    """The body as JSON, refused beyond `max_depth` levels of nesting or `max_values` values.

    The stdlib decoder recurses, so a body of a hundred thousand '[' raises RecursionError
    (caught here); a nesting that decodes is still refused past the limit, which no page comes
    near (a page is four levels deep, plus what a job item nests), so that nothing downstream
    (hashing, the JSON columns) recurses deeper than this either.

    The values are bounded before decoding, on the bytes: a value takes up to 20 times its
    text once decoded (16 MiB of `[],` became 341 MiB), and up to five pages are held at once.
    Every value of an array or object but its last is followed by a comma, so the commas and
    the openings bound the values (a comma inside a string counts too, which only errs high; a
    page of 100 fake jobs has at most 1,606). Each value takes a byte at least, so a body no
    longer than the limit is not counted (counting costs 0.035 ms for a page of 38 KB).
    """
    values = 0 if len(raw) <= max_values else values_bound(raw)
    if values > max_values:
        raise MalformedResponse(
            f"the body holds too many values: up to {values:,} by its commas and brackets, "
            f"past the limit of {max_values:,}",
            excerpt(raw),
        )
    try:
        # orjson is several times faster; what it refuses (NaN, a lone surrogate escape, UTF-16,
        # nesting past its own limit) goes through json as before, so the checks see the same.
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = _decode_slowly(raw, max_depth)
        faults = shape_faults(body, max_depth)
    else:
        faults = shape_faults(body, max_depth)
        if faults == ROUNDED:
            # orjson reads an integer beyond 64 bits as a float; json keeps it exact. Without
            # this, the same job would be stored, and hashed, differently by which decoder
            # read its page (a BOM sends a body to json). The nesting is the same either way.
            body = _decode_slowly(raw, max_depth)
    if faults & DEEP:
        raise MalformedResponse(
            f"the body is nested deeper than the limit of {max_depth} levels", excerpt(raw)
        )
    return body


def values_bound(raw: bytes) -> int:
    """At least as many as the values a JSON text holds: its commas and openings (see
    `decode`)."""
    return raw.count(b",") + raw.count(b"[") + raw.count(b"{")


def _decode_slowly(raw: bytes, max_depth: int) -> Any:
    try:
        return json.loads(raw, parse_constant=not_json, parse_float=finite)
    except RecursionError:
        raise MalformedResponse(
            f"the body is nested deeper than the limit of {max_depth} levels", excerpt(raw)
        ) from None
    except ValueError:  # also UnicodeDecodeError: JSON must be UTF-8 (or -16/-32)
        raise MalformedResponse("the body is not JSON", excerpt(raw)) from None


def not_json(constant: str) -> Any:
    """Python's decoder takes NaN, Infinity and -Infinity, which JSON does not have and which
    PostgreSQL's and MariaDB's JSON columns refuse at the page's commit: refuse them here."""
    raise ValueError(f"{constant} is not a JSON value")


def finite(text: str) -> float:
    """A JSON number as a float, refused where it overflows to infinity (1e400), which no
    JSON writer can write back."""
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"{text} is too large for a float")
    return value


# What shape_faults finds, as bits: plain ints, as the walk visits every value of a page.
ROUNDED = 1  # a float beyond the 64-bit integers: what orjson makes of a larger integer
DEEP = 2  # arrays and objects nested past the limit


def shape_faults(value: Any, limit: int) -> int:
    """DEEP when arrays and objects nest more than `limit` deep (a scalar is depth 0);
    otherwise ROUNDED when some float lies outside the 64-bit integers; otherwise 0."""
    kind = type(value)
    if kind is dict:
        children = value.values()
    elif kind is list:
        children = value
    elif kind is float:
        return 0 if -(2**63) < value < 2**64 else ROUNDED
    else:
        return 0
    if limit == 0:
        return DEEP
    # Recursion is bounded by `limit`; checking types before the call keeps the scalars that
    # make up nearly all of a page (some 600 of them) to one comparison each.
    found = 0
    for child in children:
        kind = type(child)
        if kind is dict or kind is list or kind is float:
            found |= shape_faults(child, limit - 1)
            if found & DEEP:
                return DEEP
    return found


def parse_time(value: str) -> datetime:
    """An ISO 8601 time as an aware UTC datetime; a value without an offset is taken as UTC."""
    parsed = datetime.fromisoformat(value)
    zone = parsed.tzinfo
    if zone is UTC:  # a "Z", as the API writes every time: no conversion to pay for
        return parsed
    if zone is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def content_hash(item: dict[str, Any]) -> str:
    """A digest of the item as the API sent it, so a re-sync can tell unchanged jobs cheaply:
    SHA-256 of `json.dumps(item, sort_keys=True, ensure_ascii=False, separators=(",", ":"))`.

    orjson's sorted output is those very bytes, several times faster, except for floats (it
    writes 1e-7 where json writes 1e-07) and integers beyond 64 bits; items holding either are
    left to json, so that no stored hash changes. Only a sync computes it: `qfsync jobs` never.
    """
    if not _holds_floats(item):
        try:
            return hashlib.sha256(orjson.dumps(item, option=orjson.OPT_SORT_KEYS)).hexdigest()
        except orjson.JSONEncodeError:
            pass  # an integer beyond 64 bits
    canonical = json.dumps(item, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _holds_floats(value: dict[str, Any] | list[Any]) -> bool:
    for item in value.values() if isinstance(value, dict) else value:
        kind = type(item)
        if kind is float or ((kind is dict or kind is list) and _holds_floats(item)):
            return True
    return False


def refuse_lone_surrogates(items: list[Any], list_name: str) -> None:
    """Raise MalformedResponse for a lone surrogate anywhere in the items: json.loads makes one
    of a "\\udXXX" escape, and no UTF-8 output or database can hold it. orjson's writer refuses
    one in C, a fifth of the cost of looking at every string here; only then are the items
    searched, to name the one (or to find that orjson refused something else, an integer
    beyond 64 bits)."""
    try:
        orjson.dumps(items)
    except orjson.JSONEncodeError:
        for position, item in enumerate(items):
            try:
                _check_unicode(item)
            except UnicodeEncodeError:
                raise MalformedResponse(
                    f"{list_name}[{position}] holds a lone surrogate (not valid Unicode)",
                    excerpt(json.dumps(item)),
                ) from None


def is_unicode(text: str) -> bool:
    """False when `text` holds a lone surrogate, which no UTF-8 output or database can hold:
    json.loads makes one of a "\\udXXX" escape, Python's argv of bytes that are not UTF-8."""
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _check_unicode(value: dict[str, Any] | list[Any]) -> None:
    """Raise UnicodeEncodeError for a lone surrogate anywhere in `value`."""
    pairs = value.items() if isinstance(value, dict) else enumerate(value)
    for key, item in pairs:
        if isinstance(key, str) and not key.isascii():
            key.encode()
        if isinstance(item, str):
            if not item.isascii():
                item.encode()
        elif isinstance(item, dict | list):
            _check_unicode(item)


def parse_job(item: Any, position: int) -> Job:
    """One job object of a page's jobList, checked field by field. (Lone surrogates are looked
    for once per page, by `refuse_lone_surrogates`.) This runs for every job: exact type
    checks (a decoder makes no subclasses) and one lookup per field keep it to a microsecond."""
    if type(item) is not dict:
        raise MalformedResponse(f"jobList[{position}] is not an object", excerpt(repr(item)))
    get = item.get
    job_id = get("jobId")
    if type(job_id) is not str or not job_id.strip():
        raise MalformedResponse(
            f"jobList[{position}].jobId is missing or not a non-empty string",
            excerpt(json.dumps(item, ensure_ascii=False)),
        )
    texts = name, description, model, train_mode = (
        get("name"),
        get("description"),
        get("model"),
        get("trainMode"),
    )
    for value in texts:  # the field is named only on failure
        if value is not None and type(value) is not str:
            raise not_a_string(item, position, job_id)
    # The doc says createTime; the official SDK's own test server sends createDate.
    time_field = "createTime"
    created = get(time_field)
    if created is None and time_field not in item:
        time_field = "createDate"
        created = get(time_field)
    created_at = None
    if created is not None:
        try:
            created_at = parse_time(created) if type(created) is str else None
        except (ValueError, OverflowError):  # OverflowError: out of range once moved to UTC
            pass
        if created_at is None:
            raise MalformedResponse(
                f"jobList[{position}].{time_field} of job {job_id} is not an ISO 8601 time",
                excerpt(repr(created)),
            )
    return Job(job_id, name, description, model, train_mode, created_at, item)


def not_a_string(item: dict[str, Any], position: int, job_id: str) -> MalformedResponse:
    field = next(f for f in TEXT_FIELDS if not (item.get(f) is None or type(item[f]) is str))
    return MalformedResponse(
        f"jobList[{position}].{field} of job {job_id} is not a string", excerpt(repr(item[field]))
    )


@dataclass(frozen=True, slots=True)
class Listing:
    """What every marker-paged answer (jobs, a job's tasks) holds around its items."""

    items: list[Any]
    marker: str | None
    next_marker: str | None  # None on the last page
    request_id: str | None


def malformed(problem: str, body: Any, text: str | bytes) -> MalformedResponse:
    # The excerpt is built only on failure: a page's text runs to a hundred kilobytes.
    return MalformedResponse(problem, excerpt(text) if text else excerpt(repr(body)))


def parse_listing(body: Any, text: str | bytes, list_name: str) -> Listing:
    """Validate the envelope of one decoded page whose items are in `result.<list_name>`;
    `text` is the raw body, for the error excerpt."""
    if not isinstance(body, dict):
        raise malformed("the body is not a JSON object", body, text)
    result = body.get("result")
    if not isinstance(result, dict):
        raise malformed("'result' is missing or not an object", body, text)
    items = result.get(list_name)
    if not isinstance(items, list):
        raise malformed(f"'result.{list_name}' is missing or not a list", body, text)
    page_info = result.get("pageInfo")
    if not isinstance(page_info, dict):
        raise malformed("'result.pageInfo' is missing or not an object", body, text)
    truncated = page_info.get("isTruncated")
    if not isinstance(truncated, bool):
        raise malformed("'pageInfo.isTruncated' is missing or not a boolean", body, text)
    next_marker = page_info.get("nextMarker")
    if next_marker is not None and not isinstance(next_marker, str):
        raise malformed("'pageInfo.nextMarker' is not a string", body, text)
    # The next marker goes into the next request and the run's row.
    if next_marker and not is_unicode(next_marker):
        raise malformed(
            "'pageInfo.nextMarker' holds a lone surrogate (not valid Unicode)", body, text
        )
    if truncated and not next_marker:
        # A page that says more follow but not where: taking it as the last page would end the
        # listing "complete" and mark everything not yet reached as deleted.
        raise malformed(
            "'pageInfo.isTruncated' is true but 'pageInfo.nextMarker' is missing", body, text
        )
    marker = page_info.get("marker")
    if marker is not None and not isinstance(marker, str):
        raise malformed("'pageInfo.marker' is not a string", body, text)
    request_id = body.get("requestId")
    return Listing(
        items,
        marker or None,
        # A last page may omit nextMarker or send one anyway; isTruncated false ends the walk.
        next_marker if truncated else None,
        request_id if isinstance(request_id, str) else None,
    )


def parse_page(body: Any, text: str | bytes = b"") -> Page:
    """Validate one decoded DescribeFineTuningJobs answer; `text` is the raw body."""
    listing = parse_listing(body, text, "jobList")
    jobs = [parse_job(item, i) for i, item in enumerate(listing.items)]
    refuse_lone_surrogates(listing.items, "jobList")
    if len({job.job_id for job in jobs}) != len(jobs):
        raise malformed("a jobId appears twice in one page", body, text)
    return Page(jobs, listing.marker, listing.next_marker, listing.request_id)
