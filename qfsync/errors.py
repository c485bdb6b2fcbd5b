"""The failures qfsync knows how to explain, each with the exit code the CLI gives it."""

import re

# Exit codes, documented in the README.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_LOCKED = 3
EXIT_STALE = 4
EXIT_SIGINT = 130
EXIT_SIGTERM = 143
EXIT_SIGPIPE = 141  # `qfsync jobs | head`: the reader left, as for a tool killed by SIGPIPE


# What must not reach a terminal, a log line or a database column from text a server chose:
# C0 and C1 controls (NUL, ESC of an ANSI sequence, newlines), DEL, the Unicode line and
# paragraph separators (str.splitlines breaks on them), the bidirectional overrides that can
# make a line read differently from what it holds, and lone surrogates (no UTF-8 can encode
# them, so a driver or stderr would fail on them).
UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)
NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return NAMED_ESCAPES.get(char) or (f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}")


def one_line(text: str) -> str:
    """`text` with every unsafe character written as a visible escape (a NUL as \\x00, a
    newline as \\n): one line, safe for a terminal, a log and any database."""
    return UNSAFE.sub(_escape, text)


class QfsyncError(Exception):
    """A failure with a one-line explanation for the operator.

    Every message is made safe here, once, so that no subclass and no caller can put a
    server's control characters on stderr, in `--json` output or in `sync_runs.error`.
    """

    exit_code = EXIT_FAILED
    run_id: int | None = None  # the sync_runs row the failure was recorded in, if any

    def __init__(self, message: str = ""):
        super().__init__(one_line(str(message)))


class ConfigError(QfsyncError):
    """A wrong option or missing setting."""

    exit_code = EXIT_USAGE


class ApiError(QfsyncError):
    """The API answered with an error that retrying will not fix."""

    def __init__(
        self,
        code: str,
        message: str,
        request_id: str | None = None,
        status: int | None = None,
        hint: str | None = None,
    ):
        self.code, self.api_message, self.request_id, self.status = (
            code,
            message,
            request_id,
            status,
        )
        parts = [f"API error {code}"]
        if status is not None:
            parts[0] += f" (HTTP {status})"
        parts.append(message or "no message")
        text = ": ".join(parts)
        if request_id:
            text += f" [requestId {request_id}]"
        if hint:
            text += f". {hint}"
        super().__init__(text)


class TransientError(QfsyncError):
    """A failure worth retrying: connection error, throttling, server error, malformed page."""

    def __init__(
        self,
        message: str,
        retry_after: float | None = None,
        request_id: str | None = None,
        reason: str = "server_error",
    ):
        self.retry_after = retry_after  # seconds the server asked for, if it did
        self.request_id = request_id  # the API's id of the failed request, if it answered
        # What kind of failure, as the metrics count retries: connection, throttled,
        # server_error or malformed (client.RETRY_REASONS); said where it is raised.
        self.reason = reason
        super().__init__(message)


class RetriesExhausted(QfsyncError):
    """A transient failure outlasted the retry budget."""


class MalformedResponse(TransientError):
    """A response that does not have the documented shape."""

    def __init__(self, problem: str, excerpt: str = ""):
        self.problem, self.excerpt = problem, excerpt
        super().__init__(
            f"malformed response: {problem}" + (f"; got: {excerpt}" if excerpt else ""),
            reason="malformed",
        )


class PagingError(QfsyncError):
    """The API's paging went wrong in a way that would loop or lose jobs."""


class DatabaseError(QfsyncError):
    """The database is unreachable, misconfigured or failed mid-run."""


class SchemaOutdated(QfsyncError):
    """The database is behind the code's schema and migrating was not allowed."""


class SyncLocked(QfsyncError):
    """Another sync of the same database holds the lock."""

    exit_code = EXIT_LOCKED


class Interrupted(QfsyncError):
    """SIGINT or SIGTERM stopped the run between pages."""

    def __init__(self, signal_name: str, exit_code: int):
        self.exit_code = exit_code
        super().__init__(f"interrupted by {signal_name}")


class ForcedInterrupt(Interrupted, KeyboardInterrupt):
    """A stop that did not come at a page boundary within the grace period (a statement waiting
    on a database lock), raised wherever the sync is. A KeyboardInterrupt too, because that is
    what makes psycopg cancel the statement on the server rather than leave it waiting."""


class StaleData(QfsyncError):
    """The last successful sync is older than the caller allows."""

    exit_code = EXIT_STALE


class LockLost(QfsyncError):
    """Another sync took the lock and closed this run's row: this run must not write on."""


class DeletionRefused(QfsyncError):
    """A complete walk would mark more jobs deleted than --max-delete allows."""


class Unstorable(QfsyncError):
    """A value from the API does not fit its column (too long, or a NUL on PostgreSQL)."""
