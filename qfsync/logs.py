"""Log lines for people, or one JSON object a line for Loki or Elasticsearch.

qfsync's modules log through `logging` with their facts in `extra=facts(...)` (page, marker,
request_id, attempt, delay_s, error, ...); the run id comes from a context variable that the
sync sets, so the client's retry lines carry it too. Only the command line configures logging
(`configure`): used as a library, qfsync leaves the application's logging as it found it.
"""

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from .errors import one_line

FORMATS = ("text", "json")
FORMAT_ENV = "QFSYNC_LOG_FORMAT"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# The run whose work is being logged; set once the run's row exists.
run_id: ContextVar[int | None] = ContextVar("qfsync_run_id", default=None)

# qfsync's facts ride on a record as one attribute, not one attribute each: a host's LogRecord
# factory may set `request_id` or `run_id` itself, and logging refuses an `extra` key that the
# record already has (KeyError "Attempt to overwrite ..."), which would fail a sync over a
# log line.
FACTS = "qfsync_facts"
# Attributes every LogRecord has: whatever else a record carries came in through `extra=` (or
# a host's LogRecord factory).
_RECORD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", FACTS}


def facts(**values: Any) -> dict[str, dict[str, Any]]:
    """The `extra=` of a qfsync log line that states these facts."""
    return {FACTS: values}


def facts_of(record: logging.LogRecord) -> dict[str, Any]:
    return getattr(record, FACTS, None) or {}


class RunContext(logging.Filter):
    """Adds the current run id to each record that does not name one itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        stated = facts_of(record)
        if stated.get("run_id") is None:
            setattr(record, FACTS, {**stated, "run_id": run_id.get()})
        return True


class TextFormatter(logging.Formatter):
    """TEXT_FORMAT, made one safe line: a message may quote a server's text (a task id, a
    marker) with a newline, an ANSI escape or a bidirectional override in it."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        return one_line(super().formatMessage(record))


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, then the record's facts, their
    text escaped as in text logs (a lone surrogate could not even be written to stderr)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        # What a host's factory or another library's `extra=` added (but never in place of
        # the line's own time, level, logger or message), then qfsync's own facts, which
        # replace them: one that qfsync states as unknown (None) is left out, not shown with
        # the host's value of that name.
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRIBUTES and key not in entry and value is not None:
                entry[key] = value
        for key, value in facts_of(record).items():
            entry.pop(key, None)
            if value is not None:
                entry[key] = value
        if record.exc_info and record.exc_info[1] is not None:
            entry.setdefault("error", str(record.exc_info[1]))
        entry = {
            key: one_line(value) if isinstance(value, str) else value
            for key, value in entry.items()
        }
        if record.exc_info and record.exc_info[1] is not None:
            entry["traceback"] = self.formatException(record.exc_info)  # lines on purpose
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure(log_format: str, verbose: bool) -> None:
    """Log to stderr in the chosen format. Text shows warnings (all with --verbose), as before;
    JSON also shows the run's notes and retries, so that the log alone tells what happened."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RunContext())
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
        level = logging.DEBUG if verbose else logging.INFO
    else:
        handler.setFormatter(TextFormatter())
        level = logging.DEBUG if verbose else logging.WARNING
    logging.basicConfig(level=level, handlers=[handler])
    # urllib3's DEBUG lines add nothing qfsync does not log itself.
    logging.getLogger("urllib3").setLevel(logging.INFO)
    # psycopg warns of what it could not tidy up after a lost connection ("error ignored
    # terminating Pipeline"), beside the one line qfsync says of the loss; --verbose shows it.
    logging.getLogger("psycopg").setLevel(logging.DEBUG if verbose else logging.ERROR)
