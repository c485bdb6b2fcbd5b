"""Page writers: one page of jobs and the run's progress, in the caller's transaction.

The fastest way to write a page differs by database, so each dialect has its own module behind
one small interface; the sync loop asks `for_dialect` once and never branches on the dialect.
Every writer has the semantics of the plain reference writer in tests/reference.py (qfsync's
first write path, and the run's progress as it recorded it): new jobs are inserted with
version 1; changed ones (another content hash, or deleted and listed again) are rewritten,
and get a new version when a versioned field differs or their current version was closed;
unchanged ones only get `last_seen_at` and `last_run_id`.
"""

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Protocol

import orjson
from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

from ..errors import QfsyncError
from ..pages import Job
from ..store import Counts


def raw_text(item: dict[str, Any]) -> str:
    """The item as JSON text for the `raw` column: orjson, or json for an integer beyond 64 bits
    (which orjson refuses)."""
    try:
        return orjson.dumps(item).decode()
    except orjson.JSONEncodeError:
        return json.dumps(item, ensure_ascii=False)


@contextmanager
def driver_errors(connection: Connection) -> Iterator[None]:
    """Writers talk to the driver directly; its errors become SQLAlchemy's, as if SQLAlchemy
    had run the statement, so the sync explains them (and drops a dead connection) as usual."""
    dbapi = connection.dialect.loaded_dbapi
    try:
        yield
    except dbapi.Error as exc:
        driver = connection.connection.driver_connection
        dead = connection.dialect.is_disconnect(exc, driver, None)
        if dead:
            connection.invalidate(exc)
        raise DBAPIError.instance(
            None, None, exc, dbapi.Error, connection_invalidated=dead, dialect=connection.dialect
        ) from exc


class PageWriter(Protocol):
    def prepare(self, jobs: Sequence[Job]) -> Any:
        """What `write` takes: the page's values in the form this database's writer sends,
        computed, where the driver allows, while the previous page is being written
        (`meanwhile`): hashing and encoding a page costs about as much as the database's work
        on it."""
        ...

    def write(
        self,
        connection: Connection,
        prepared: Any,
        run_id: int,
        now: datetime,
        next_marker: str | None,
        meanwhile: Callable[[], None] | None = None,
        commit: bool = False,
    ) -> Counts:
        """Write the page and add it to the run's progress, fenced (`runs.still_running`):
        only while the run is still `running`, else raise LockLost (`runs.check_fenced`). The
        page's commit need not wait for the disk: the next sync would write it again (see "How
        a sync behaves" in the README). A writer whose driver lets the page's statement run
        without waiting for it calls `meanwhile` once, while the server works, and with
        `commit` (the page is all of the caller's transaction) sends the COMMIT along with the
        page, saving a round trip; the others leave both, which would save them nothing."""
        ...


def for_dialect(name: str) -> PageWriter:
    if name == "postgresql":
        from .postgresql import PostgresqlWriter

        return PostgresqlWriter()
    if name == "sqlite":
        from .sqlite import SqliteWriter

        return SqliteWriter()
    if name in ("mysql", "mariadb"):
        from .mysql import MysqlWriter

        return MysqlWriter()
    raise QfsyncError(f"no page writer for the {name} dialect")
