"""bce-auth-v1 request signing (Baidu Cloud IAM AK/SK), as the console API expects it."""

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from urllib.parse import quote

DEFAULT_SIGNED_HEADERS = ("content-type", "host", "x-bce-date")
DEFAULT_EXPIRATION_S = 1800
# The official signer trims bytes, so only ASCII white space: str.strip() would also eat U+00A0.
ASCII_SPACE = " \t\n\r\x0b\x0c"


def utc_timestamp(now: datetime | None = None) -> str:
    """The timestamp format of the auth prefix and the x-bce-date header."""
    return (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def uri_encode(value: str, keep_slash: bool = False) -> str:
    # quote() keeps exactly A-Z a-z 0-9 - . _ ~ when safe is empty, and writes upper-case hex.
    return quote(value, safe="/" if keep_slash else "")


def canonical_query(query: Mapping[str, str]) -> str:
    return "&".join(sorted(f"{uri_encode(k)}={uri_encode(v)}" for k, v in query.items()))


def signing_key(secret_key: str, prefix: str) -> str:
    return hmac.new(secret_key.encode(), prefix.encode(), hashlib.sha256).hexdigest()


def authorization(
    access_key: str,
    secret_key: str,
    method: str,
    path: str,
    query: Mapping[str, str],
    headers: Mapping[str, str],
    timestamp: str,
    expiration_s: int = DEFAULT_EXPIRATION_S,
    signed_headers: Iterable[str] = DEFAULT_SIGNED_HEADERS,
) -> str:
    """The Authorization header value for one request; the body is not signed."""
    by_name = {name.lower(): value for name, value in headers.items()}
    names = sorted({name.lower() for name in signed_headers})
    missing = [name for name in names if name not in by_name]
    if missing:
        raise ValueError(f"cannot sign headers that the request lacks: {', '.join(missing)}")
    prefix = f"bce-auth-v1/{access_key}/{timestamp}/{expiration_s}"
    canonical_headers = "\n".join(
        sorted(
            f"{uri_encode(name)}:{uri_encode(str(by_name[name]).strip(ASCII_SPACE))}"
            for name in names
        )
    )
    canonical = "\n".join(
        [
            method.upper(),
            uri_encode(path, keep_slash=True),
            canonical_query(query),
            canonical_headers,
        ]
    )
    key = signing_key(secret_key, prefix)
    signature = hmac.new(key.encode(), canonical.encode(), hashlib.sha256).hexdigest()
    return f"{prefix}/{';'.join(names)}/{signature}"
