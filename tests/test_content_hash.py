"""The content hash from orjson's sorted output is byte for byte the digest of qfsync's canonical
json.dumps form, so no stored hash changes and a re-sync after the upgrade finds every job
unchanged."""

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import reference_hash

from qfsync.fake_api import FakeApi
from qfsync.pages import content_hash, parse_job

TRICKY: dict[str, dict[str, Any]] = {
    "chinese and emoji": {"jobId": "j", "name": "角色扮演 😀 ✓", "description": "\u2028\u00e9"},
    "escapes": {"jobId": "j", "name": 'a"b\\c/d\n\t\x00\x1f\x7f', "model": ""},
    "floats": {"jobId": "j", "loss": 1e-07, "lr": 0.00001, "big": 1e16, "pi": 3.141592653589793},
    "more floats": {"jobId": "j", "values": [0.1 + 0.2, -0.0, 5e-324, 1.5e300, 100.0]},
    "nested": {"jobId": "j", "b": {"z": [1, {"y": None, "x": True}], "a": []}, "a": {}},
    "integers": {"jobId": "j", "n": 2**63 - 1, "m": -(2**63), "huge": 2**70},
    "key order": {"z": 1, "jobId": "j", "A": 2, "é": 3, "ä": 4, "😀": 5, "a": 6},
}


@pytest.mark.parametrize("item", TRICKY.values(), ids=TRICKY.keys())
def test_tricky_items_hash_as_before(item: dict[str, Any]) -> None:
    """Unicode, escapes, floats, nested values, wide integers and key order."""
    assert content_hash(item) == reference_hash(item)


def test_every_fake_item_hashes_as_before() -> None:
    """Every item of a large fake listing, renamed ones included."""
    api = FakeApi(5000)
    api.rename([job["jobId"] for job in api.job_list()[::7]], " (重命名)")
    items = api.job_list()
    assert [content_hash(item) for item in items] == [reference_hash(item) for item in items]


texts = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | texts,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(texts, children, max_size=3),
)


@settings(max_examples=400, deadline=None)
@given(item=st.dictionaries(texts, values, max_size=6))
def test_any_json_item_hashes_as_before(item: dict[str, Any]) -> None:
    """Any JSON object json.loads could return (without lone surrogates, which the page check
    refuses) hashes as before."""
    assert content_hash(item) == reference_hash(item)


def test_jobs_line_is_the_record_as_before() -> None:
    """`qfsync jobs` writes each record with orjson, a page at a time: the same fields and
    values as before, one line each, also in a page orjson refuses (an integer beyond 64 bits)."""
    from qfsync.cli import dumps, page_lines

    jobs = [
        parse_job({"jobId": "j", **item, "createTime": "2024-05-01T08:00:00.5+08:00"}, i)
        for i, item in enumerate([*FakeApi(50).job_list(), *TRICKY.values()])
    ]
    for page in ([job] for job in jobs):
        (line,) = page_lines(page).splitlines(keepends=True)
        assert line.endswith(b"\n")
        assert json.loads(line) == json.loads(dumps(page[0].to_json()))  # the former line
    lines = page_lines(jobs).splitlines(keepends=True)
    assert [json.loads(line) for line in lines] == [json.loads(dumps(j.to_json())) for j in jobs]
    assert all(line.endswith(b"\n") for line in lines) and page_lines([]) == b""
