"""bce-auth-v1 signing: the spec's test vectors, and agreement with the official bce-python-sdk."""

import re
from datetime import UTC, datetime

import pytest
from baidubce import utils as bce_utils
from baidubce.auth import bce_v1_signer
from baidubce.auth.bce_credentials import BceCredentials
from hypothesis import given, settings
from hypothesis import strategies as st

from qfsync import signer

SPEC_AK = "ak-test-0123456789"
SPEC_SK = "sk-test-abcdef"
SPEC_TIMESTAMP = "2024-01-02T03:04:05Z"
SPEC_EPOCH = 1704164645  # SPEC_TIMESTAMP as the SDK takes it
SPEC_EXPIRATION = 300
SPEC_PREFIX = f"bce-auth-v1/{SPEC_AK}/{SPEC_TIMESTAMP}/{SPEC_EXPIRATION}"
SPEC_SIGNING_KEY = "cf98ef343c9cfb77aab9aefbfbc7822b70e33318ad735035f5656e87cd53fd96"
SPEC_QUERY = {"Action": "DescribeFineTuningJobs"}
SPEC_HEADERS = {
    "Host": "qianfan.baidubce.com",
    "Content-Type": "application/json",
    "x-bce-date": SPEC_TIMESTAMP,
}
SPEC_VECTORS = [
    (("host", "x-bce-date"), "d6f5f252beb9923b28547693627921aa1f3f5b83db143a796389caa44aef4c0d"),
    (
        ("content-type", "host", "x-bce-date"),
        "b6af5a2d634401939ec9b150c9a9c485bc5ac6b8067adbe61c323291d2558ad0",
    ),
]

# Characters with a meaning in URLs, queries or the auth string, which uniform text rarely draws.
RESERVED = " !\"#$%&'()*+,/:;<=>?@[\\]^`{|}~-._\t"
# Both signers take text as UTF-8, which lone surrogates cannot be.
CHARACTERS = st.characters(codec="utf-8")
TEXT = st.text(st.one_of(st.sampled_from(RESERVED), CHARACTERS), max_size=12)

# Both signers trim only ASCII white space from header values, so a core may start or end with
# U+00A0 or U+001F; the SDK drops headers whose value is empty after trimming, while host,
# content-type and x-bce-date are never empty. So values here are optional spaces and tabs around
# a core that ASCII trimming cannot shorten.
HEADER_CORE = TEXT.filter(lambda s: s != "" and s.strip(signer.ASCII_SPACE) == s)
PADDING = st.text(" \t", max_size=3)
HEADER_VALUE = st.builds(lambda *parts: "".join(parts), PADDING, HEADER_CORE, PADDING)

# The SDK signs every x-bce-* header whether asked to or not; qfsync's only one is x-bce-date,
# which it always signs, so the optional headers here are all outside that prefix.
ALWAYS_SIGNED = ("host", "x-bce-date")
OPTIONAL_HEADERS = ("content-type", "content-md5", "content-length", "user-agent")
NAME_CASINGS = st.sampled_from([str.lower, str.upper, str.title])


def sdk_authorization(
    access_key, secret_key, method, path, query, headers, epoch, expiration, signed_headers
):
    """The SDK's Authorization value for the same request, called the way its own clients call it.

    It takes bytes for the method and header names, lower-case signed header names in the order
    they appear in the result, an epoch timestamp, and a path that is already URI-encoded
    (its clients build paths with utils.append_uri, which encodes with normalize_string).
    """
    return bce_v1_signer.sign(
        BceCredentials(access_key, secret_key),
        method.encode(),
        bce_utils.normalize_string(path, False),
        {name.encode(): value for name, value in headers.items()},
        query,
        timestamp=epoch,
        expiration_in_seconds=expiration,
        headers_to_sign=sorted(name.lower().encode() for name in signed_headers),
    ).decode()


@st.composite
def sign_calls(draw):
    """Keyword arguments for both signers describing one request."""
    epoch = draw(st.integers(min_value=1, max_value=4102444799))  # to the end of 2099
    timestamp = bce_utils.get_canonical_time(epoch).decode()
    optional = draw(st.lists(st.sampled_from(OPTIONAL_HEADERS), unique=True))
    signed_optional = draw(st.lists(st.sampled_from(optional), unique=True)) if optional else []
    headers = {"host": draw(HEADER_VALUE), "x-bce-date": timestamp}
    headers.update({name: draw(HEADER_VALUE) for name in optional})
    return {
        "access_key": draw(st.text(CHARACTERS, min_size=1, max_size=24)),
        "secret_key": draw(st.text(CHARACTERS, max_size=24)),
        "method": draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD"])),
        "path": "/" + draw(TEXT),
        "query": draw(st.dictionaries(TEXT, TEXT, max_size=4)),
        "headers": {draw(NAME_CASINGS)(name): value for name, value in headers.items()},
        "epoch": epoch,
        "expiration": draw(st.integers(min_value=0, max_value=7 * 24 * 3600)),
        "signed_headers": [
            draw(NAME_CASINGS)(name)
            for name in draw(st.permutations([*ALWAYS_SIGNED, *signed_optional]))
        ],
    }


def qfsync_authorization(epoch, expiration, **call):
    return signer.authorization(
        **call,
        timestamp=bce_utils.get_canonical_time(epoch).decode(),
        expiration_s=expiration,
    )


def test_signing_key_matches_spec_vector():
    """The signing key for the spec's prefix is the spec's hex string."""
    assert signer.signing_key(SPEC_SK, SPEC_PREFIX) == SPEC_SIGNING_KEY


def spec_call(headers=SPEC_HEADERS, signed_headers=ALWAYS_SIGNED):
    """Keyword arguments for both signers describing the spec's request."""
    return {
        "access_key": SPEC_AK,
        "secret_key": SPEC_SK,
        "method": "POST",
        "path": "/v2/finetuning",
        "query": SPEC_QUERY,
        "headers": headers,
        "epoch": SPEC_EPOCH,
        "expiration": SPEC_EXPIRATION,
        "signed_headers": signed_headers,
    }


@pytest.mark.parametrize(("signed_headers", "signature"), SPEC_VECTORS)
def test_authorization_matches_spec_vectors(signed_headers, signature):
    """The spec's request signs to the spec's Authorization value for each signed-header set."""
    expected = f"{SPEC_PREFIX}/{';'.join(signed_headers)}/{signature}"
    # Called directly with the spec's timestamp, so this vector owes nothing to the SDK.
    call = spec_call(signed_headers=signed_headers)
    del call["epoch"], call["expiration"]
    assert (
        signer.authorization(**call, timestamp=SPEC_TIMESTAMP, expiration_s=SPEC_EXPIRATION)
        == expected
    )


@pytest.mark.parametrize(("signed_headers", "signature"), SPEC_VECTORS)
def test_sdk_oracle_reproduces_spec_vectors(signed_headers, signature):
    """The SDK, called as these tests call it, gives the spec's values, so it is a fair oracle."""
    expected = f"{SPEC_PREFIX}/{';'.join(signed_headers)}/{signature}"
    assert sdk_authorization(**spec_call(signed_headers=signed_headers)) == expected


@settings(max_examples=300, deadline=None)
@given(sign_calls())
def test_authorization_agrees_with_sdk(call):
    """qfsync and the SDK give the same Authorization value for any request qfsync can send."""
    assert qfsync_authorization(**call) == sdk_authorization(**call)


@settings(max_examples=300, deadline=None)
@given(TEXT, st.booleans())
def test_uri_encode_agrees_with_sdk(value, keep_slash):
    """uri_encode matches the SDK's normalize_string, with and without slashes kept."""
    assert (
        signer.uri_encode(value, keep_slash)
        == bce_utils.normalize_string(value, not keep_slash).decode()
    )


@pytest.mark.parametrize("value", ["\xa0qianfan.baidubce.com", "qianfan.baidubce.com\x1f"])
def test_header_trim_matches_sdk_on_unicode_whitespace(value):
    """Only ASCII white space is trimmed from header values, as the SDK trims bytes."""
    call = spec_call(headers={"host": value, "x-bce-date": SPEC_TIMESTAMP})
    assert qfsync_authorization(**call) == sdk_authorization(**call)


def test_utc_timestamp_is_now_in_bce_format():
    """A fresh timestamp is yyyy-mm-ddThh:mm:ssZ and the current UTC second."""
    before = datetime.now(UTC).replace(microsecond=0)
    stamp = signer.utc_timestamp()
    after = datetime.now(UTC)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", stamp)
    assert before <= datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC) <= after


def test_utc_timestamp_formats_given_time():
    """A given UTC time is written zero-padded, its fraction of a second dropped, not rounded."""
    now = datetime(2024, 1, 2, 3, 4, 5, 999999, tzinfo=UTC)
    assert signer.utc_timestamp(now) == SPEC_TIMESTAMP
