"""A DescribeFineTuningJobs body either becomes a Page of Jobs or raises MalformedResponse."""

import json
import tracemalloc
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qfsync.errors import UNSAFE, MalformedResponse
from qfsync.pages import EXCERPT_CHARS, Page, decode, excerpt, parse_job, parse_page

# The response example of the official DescribeFineTuningJobs page, verbatim.
SPEC_EXAMPLE = """{
  "requestId":"1bef3f87-c5b2-4419-936b-50f9884f10d4",
  "result":{
    "jobList":[
      {
        "jobId":"job-n50985crhqq3",
        "name":"test_name",
        "description":"test_description",
        "model":"ERNIE-Speed-8K",
        "trainMode":"SFT",
        "createTime":"2024-01-16T09:48:35Z"
      }
    ],
    "pageInfo":{
      "marker":"job-n50985crhqq3",
      "maxKeys":1,
      "isTruncated":false
    }
  }
}"""


def job(job_id: Any = "job-a", **fields: Any) -> dict[str, Any]:
    return {"jobId": job_id, "createTime": "2024-01-16T09:48:35Z", **fields}


def page(jobs: list[Any], **page_info: Any) -> dict[str, Any]:
    info = {"marker": "", "maxKeys": 100, "isTruncated": False, **page_info}
    return {"requestId": "req-1", "result": {"jobList": jobs, "pageInfo": info}}


# --- valid pages ------------------------------------------------------------------------------


def test_spec_example_parses() -> None:
    """The official response example parses into one job, last page, with its request id."""
    parsed = parse_page(json.loads(SPEC_EXAMPLE), SPEC_EXAMPLE)
    assert parsed.request_id == "1bef3f87-c5b2-4419-936b-50f9884f10d4"
    assert parsed.marker == "job-n50985crhqq3"
    assert parsed.is_last
    [only] = parsed.jobs
    assert (only.job_id, only.name, only.description, only.model, only.train_mode) == (
        "job-n50985crhqq3",
        "test_name",
        "test_description",
        "ERNIE-Speed-8K",
        "SFT",
    )
    assert only.created_at == datetime(2024, 1, 16, 9, 48, 35, tzinfo=UTC)
    assert only.raw == json.loads(SPEC_EXAMPLE)["result"]["jobList"][0]


def test_create_date_is_accepted_for_create_time() -> None:
    """The SDK test server's createDate is read when createTime is absent."""
    item = {"jobId": "job-a", "createDate": "2024-03-01T00:00:00Z"}
    assert parse_job(item, 0).created_at == datetime(2024, 3, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-01-16T17:48:35+08:00", datetime(2024, 1, 16, 9, 48, 35, tzinfo=UTC)),
        ("2024-01-15T23:48:35-10:00", datetime(2024, 1, 16, 9, 48, 35, tzinfo=UTC)),
        ("2024-01-16T09:48:35Z", datetime(2024, 1, 16, 9, 48, 35, tzinfo=UTC)),
        ("2024-01-16T09:48:35", datetime(2024, 1, 16, 9, 48, 35, tzinfo=UTC)),
    ],
)
def test_times_become_utc(value: str, expected: datetime) -> None:
    """A createTime with any offset (or none) becomes the same instant in UTC."""
    created_at = parse_job(job(createTime=value), 0).created_at
    assert created_at == expected
    assert created_at is not None and created_at.utcoffset() == timedelta(0)


def test_missing_optional_fields_are_none() -> None:
    """Only jobId is required: absent text fields and time are None, not an error."""
    parsed = parse_job({"jobId": "job-a"}, 0)
    assert (parsed.name, parsed.description, parsed.model, parsed.train_mode) == (None,) * 4
    assert parsed.created_at is None


@pytest.mark.parametrize("page_info", [{}, {"nextMarker": ""}, {"nextMarker": None}])
@pytest.mark.parametrize("jobs", [[], [job()]], ids=["no jobs", "one job"])
def test_truncated_page_without_next_marker_is_malformed(
    page_info: dict[str, Any], jobs: list[Any]
) -> None:
    """isTruncated true with an omitted, empty or null nextMarker is malformed, never the last
    page: ending there would mark every job not yet reached as deleted."""
    with pytest.raises(MalformedResponse, match="'pageInfo.nextMarker' is missing"):
        parse_page(page(jobs, isTruncated=True, **page_info))


@pytest.mark.parametrize("page_info", [{}, {"nextMarker": ""}, {"nextMarker": None}])
def test_untruncated_page_without_next_marker_is_last(page_info: dict[str, Any]) -> None:
    """isTruncated false ends the walk whether nextMarker is omitted, empty or null."""
    parsed = parse_page(page([job()], isTruncated=False, **page_info))
    assert parsed.is_last and parsed.next_marker is None


def test_truncated_page_with_next_marker_continues() -> None:
    """isTruncated with a nextMarker hands that marker on."""
    parsed = parse_page(page([job()], isTruncated=True, nextMarker="job-b"))
    assert not parsed.is_last
    assert parsed.next_marker == "job-b"


def test_integer_beyond_64_bits_is_kept() -> None:
    """A job holding an integer orjson cannot write is valid JSON, and kept as it came."""
    item = job(size=2**70)
    assert parse_page(page([item])).jobs[0].raw == item


BOM = b"\xef\xbb\xbf"


@pytest.mark.parametrize("number", [2**64, 2**70, -(2**63) - 1, -(10**30)])
@pytest.mark.parametrize("prefix", [b"", BOM], ids=["plain", "with a BOM"])
def test_integer_beyond_64_bits_decodes_exactly(number: int, prefix: bytes) -> None:
    """orjson reads such an integer as a float and json reads it exactly: a page decodes to the
    same job (and content hash) whichever decoder reads it, and a BOM sends it to json."""
    raw = prefix + json.dumps(page([job(size=number)])).encode()
    [item] = decode(raw, 64, 250_000)["result"]["jobList"]
    assert type(item["size"]) is int and item["size"] == number


def test_float_beyond_64_bit_integers_stays_a_float() -> None:
    """A float written as one is kept as one, on the path that reads big integers exactly."""
    body = decode(b'{"a": 2e19, "b": [-1e30], "c": 2}', 64, 10)
    assert body == {"a": 2e19, "b": [-1e30], "c": 2}
    assert type(body["a"]) is float and type(body["b"][0]) is float


def test_untruncated_page_is_last_despite_next_marker() -> None:
    """isTruncated false ends the walk whatever nextMarker says."""
    assert parse_page(page([job()], isTruncated=False, nextMarker="job-b")).is_last


# --- malformed pages --------------------------------------------------------------------------

MALFORMED = {
    "body not an object": ([], "not a JSON object"),
    "result missing": ({"requestId": "r"}, "'result'"),
    "result not an object": ({"result": []}, "'result'"),
    "jobList missing": ({"result": {"pageInfo": {"isTruncated": False}}}, "jobList"),
    "jobList not a list": (
        {"result": {"jobList": {}, "pageInfo": {"isTruncated": False}}},
        "jobList",
    ),
    "pageInfo missing": ({"result": {"jobList": []}}, "pageInfo"),
    "pageInfo not an object": ({"result": {"jobList": [], "pageInfo": []}}, "pageInfo"),
    "isTruncated missing": ({"result": {"jobList": [], "pageInfo": {}}}, "isTruncated"),
    "isTruncated a string": (page([], isTruncated="false"), "isTruncated"),
    "isTruncated a number": (page([], isTruncated=0), "isTruncated"),
    "nextMarker a number": (page([], isTruncated=True, nextMarker=7), "nextMarker"),
    "marker a list": (page([], marker=["job-a"]), "marker"),
    "job not an object": (page(["job-a"]), "jobList[0] is not an object"),
    "jobId missing": (page([{"name": "n"}]), "jobId"),
    "jobId empty": (page([job("")]), "jobId"),
    "jobId blank": (page([job("   ")]), "jobId"),
    "jobId a number": (page([job(12345)]), "jobId"),
    "jobId null": (page([job(None)]), "jobId"),
    "name a number": (page([job(name=1)]), "name"),
    "description a list": (page([job(description=["d"])]), "description"),
    "model an object": (page([job(model={"id": "m"})]), "model"),
    "trainMode a boolean": (page([job(trainMode=True)]), "trainMode"),
    "createTime words": (page([job(createTime="yesterday")]), "createTime"),
    "createTime a number": (page([job(createTime=1705398515)]), "createTime"),
    "createTime month 13": (page([job(createTime="2024-13-01T00:00:00Z")]), "createTime"),
    "createTime before year 1 in UTC": (
        page([job(createTime="0001-01-01T00:00:00+01:00")]),
        "createTime",
    ),
    "createTime after year 9999 in UTC": (
        page([job(createTime="9999-12-31T23:59:59-01:00")]),
        "createTime",
    ),
    "createDate words": (page([{"jobId": "job-a", "createDate": "soon"}]), "createDate"),
    "jobId twice": (page([job("job-a"), job("job-b"), job("job-a")]), "twice"),
    # json.loads turns a "\ud800" escape into a lone surrogate, which no UTF-8 store can hold.
    "lone surrogate in a name": (
        json.loads(
            r'{"result": {"jobList": [{"jobId": "job-a", "name": "x\ud800"}],'
            r' "pageInfo": {"isTruncated": false}}}'
        ),
        "jobList[0]",
    ),
    # It would go into the next request's body and the run's row, which cannot hold it.
    "lone surrogate in nextMarker": (
        json.loads(
            r'{"result": {"jobList": [{"jobId": "job-a"}],'
            r' "pageInfo": {"isTruncated": true, "nextMarker": "job-\udc80"}}}'
        ),
        "'pageInfo.nextMarker' holds a lone surrogate",
    ),
    # orjson refuses the integer first; the lone surrogate must still be found, and named.
    "lone surrogate after an integer beyond 64 bits": (
        json.loads(
            r'{"result": {"jobList": [{"jobId": "job-a", "size": 184467440737095516160},'
            r' {"jobId": "job-b", "tags": ["\udfff"]}], "pageInfo": {"isTruncated": false}}}'
        ),
        "jobList[1] holds a lone surrogate",
    ),
}


@pytest.mark.parametrize(("body", "problem"), MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_page_raises_with_excerpt(body: Any, problem: str) -> None:
    """Each shape the spec rules out raises MalformedResponse naming the problem, and an excerpt."""
    with pytest.raises(MalformedResponse) as caught:
        parse_page(body, json.dumps(body))
    assert problem in caught.value.problem
    assert caught.value.excerpt
    assert caught.value.excerpt in str(caught.value)


def test_excerpt_is_cut_and_flattened() -> None:
    """A long, multi-line body is shown as one line of at most EXCERPT_CHARS characters and '…'."""
    body = page([job(description="line\n" * 500)], isTruncated="yes")
    text = json.dumps(body, indent=2)
    with pytest.raises(MalformedResponse) as caught:
        parse_page(body, text)
    assert "\n" not in caught.value.excerpt
    assert caught.value.excerpt == " ".join(text.split())[:EXCERPT_CHARS] + "…"


def test_excerpt_escapes_control_characters() -> None:
    """NUL, ANSI escapes, C1 controls and line separators in a body become visible escapes."""
    text = excerpt(b"a\x00b\x1b[31mc\xc2\x9bd\xe2\x80\xa8e")
    assert text == "a\\x00b\\x1b[31mc\\x9bd e"
    assert not UNSAFE.search(text)


# --- nesting ----------------------------------------------------------------------------------


def nested(kind: str, depth: int) -> bytes:
    opening, closing = {"array": (b"[", b"]"), "object": (b'{"a":', b"}")}[kind]
    return opening * depth + b"1" + closing * depth


@pytest.mark.parametrize("kind", ["array", "object"])
@pytest.mark.parametrize("depth", [65, 1_000, 100_000])
def test_nesting_past_the_limit_is_malformed(kind: str, depth: int) -> None:
    """Past the limit, whether the decoder manages it or would recurse too deep, the body is
    MalformedResponse naming the limit (never a RecursionError)."""
    with pytest.raises(MalformedResponse, match="nested deeper than the limit of 64 levels"):
        decode(nested(kind, depth), 64, 250_000)


@pytest.mark.parametrize("kind", ["array", "object"])
def test_nesting_at_the_limit_decodes(kind: str) -> None:
    """Exactly the limit's depth is accepted."""
    assert decode(nested(kind, 64), 64, 250_000) is not None


# --- values -----------------------------------------------------------------------------------


def test_a_body_of_too_many_values_is_refused_before_it_is_decoded() -> None:
    """16 MiB of empty arrays (the body limit) decode into 341 MiB; past the limit of values
    the body is MalformedResponse naming it, and is never decoded: the call's peak memory
    stays a fraction of the body's size."""
    body = b'{"result": {"jobList": [' + b"[]," * (16 * 2**20 // 3 - 20) + b"[]]}}"
    tracemalloc.start()
    try:
        with pytest.raises(MalformedResponse, match="too many values: up to 11,184,7"):
            decode(body, 64, 250_000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20


def test_a_body_at_the_limit_of_values_decodes() -> None:
    """The count errs only high (commas in strings): a body at the limit is decoded, with its
    commas in a string too."""
    body = b'{"a": "x,y", "b": [' + b"1," * 9 + b"1]}"  # 2 + 9 + 1 + 1 = 13 counted
    assert decode(body, 64, 13)["b"] == [1] * 10
    with pytest.raises(MalformedResponse, match="past the limit of 12"):
        decode(body, 64, 12)


# --- any input --------------------------------------------------------------------------------

plain_text = st.text(st.characters(exclude_categories=()), max_size=8)
# json.loads makes a lone surrogate from a "\udXXX" escape, and it breaks anything that encodes
# to UTF-8; a union alphabet would almost never draw one, so put one in about one text in eight.
with_surrogate = st.builds("{}\ud800{}".format, plain_text, plain_text)
any_text = st.sampled_from([plain_text] * 7 + [with_surrogate]).flatmap(lambda chosen: chosen)
scalars = st.none() | st.booleans() | st.integers() | st.floats() | any_text
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(any_text, children, max_size=3)
    ),
    max_leaves=6,
)
# Times near both ends of datetime's range too, where moving to UTC overflows.
edge_times = st.sampled_from([datetime.min, datetime.max]) | st.datetimes()
offsets = st.integers(-23 * 60 - 59, 23 * 60 + 59).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
iso_times = st.builds(
    lambda moment, zone: moment.replace(tzinfo=zone).isoformat(), edge_times, st.none() | offsets
)
# Few ids, so that one page often holds the same id twice.
job_ids = st.sampled_from(["job-a", "job-b", "job-c"]) | any_text
valid_jobs = st.builds(
    lambda unknown, known, time_field, time: {**unknown, **known, time_field: time},
    st.dictionaries(any_text, scalars, max_size=1),  # a field the API may add one day
    st.fixed_dictionaries(
        {"jobId": job_ids},
        optional={
            "name": any_text,
            "description": any_text,
            "model": st.sampled_from(["ERNIE-Speed-8K", "ERNIE-Lite-8K"]),
            "trainMode": st.sampled_from(["SFT", "DPO"]),
        },
    ),
    st.sampled_from(["createTime", "createDate"]),
    iso_times,
)
valid_pages = st.fixed_dictionaries(
    {
        "requestId": any_text,
        "result": st.fixed_dictionaries(
            {
                "jobList": st.lists(valid_jobs, max_size=3),
                "pageInfo": st.fixed_dictionaries(
                    {"isTruncated": st.booleans()},
                    optional={
                        "marker": job_ids,
                        "maxKeys": st.integers(),
                        "nextMarker": job_ids | st.none(),
                    },
                ),
            }
        ),
    }
)
PAGE_PATHS = [
    ("requestId",),
    ("result",),
    ("result", "jobList"),
    ("result", "pageInfo"),
    *(("result", "pageInfo", key) for key in ("marker", "maxKeys", "isTruncated", "nextMarker")),
]
JOB_FIELDS = ["jobId", "name", "description", "model", "trainMode", "createTime", "createDate"]
DELETE = object()
# A value of each JSON type, to put where another type belongs.
any_type = scalars | st.builds(list) | st.builds(dict)  # fresh objects: mutations nest into them


@st.composite
def near_pages(draw: st.DrawFn) -> dict[str, Any]:
    """A valid page with a few fields, of the page or of its jobs, replaced or removed."""
    body = draw(valid_pages)
    jobs = body["result"]["jobList"]
    for _ in range(draw(st.integers(0, 3))):
        if jobs and draw(st.booleans()):
            path: tuple[Any, ...] = (
                "result",
                "jobList",
                draw(st.integers(0, len(jobs) - 1)),
                draw(st.sampled_from(JOB_FIELDS)),
            )
        else:
            path = draw(st.sampled_from(PAGE_PATHS))
        value = draw(any_type | st.just(DELETE))
        parent: Any = body
        for step in path[:-1]:  # an earlier change may have removed or replaced a level
            if isinstance(parent, dict):
                parent = parent.get(step)
            elif isinstance(parent, list) and isinstance(step, int) and step < len(parent):
                parent = parent[step]
            else:
                parent = None
        if isinstance(parent, dict):
            if value is DELETE:
                parent.pop(path[-1], None)
            else:
                parent[path[-1]] = value
    return body


@settings(max_examples=500, deadline=None)
@given(body=json_values | near_pages(), with_text=st.booleans())
def test_any_json_is_a_page_or_malformed(body: Any, with_text: bool) -> None:
    """Whatever JSON arrives, parse_page returns a Page keeping every job, or MalformedResponse."""
    try:
        parsed = parse_page(body, json.dumps(body) if with_text else "")
    except MalformedResponse:
        return
    assert isinstance(parsed, Page)
    assert len(parsed.jobs) == len(body["result"]["jobList"])
    for job in parsed.jobs:  # what a sync stores, and `qfsync jobs` prints, is valid UTF-8
        json.dumps(job.raw, ensure_ascii=False).encode()
