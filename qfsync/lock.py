"""One writer per database, with a lock that dies with its process.

The lock's identity is the database itself, never the URL's text, so two spellings of one
database (a relative and an absolute path, a symlink, `localhost` and `127.0.0.1`, extra query
options) always meet at the same lock:

- SQLite: an OS file lock on `<real path of the database>.qfsync-lock`, beside the file.
- PostgreSQL: `pg_try_advisory_lock` on a key made from `current_schema()`. Advisory locks
  live in the server's lock table and belong to the current database, so the server and the
  database are part of the lock already; the schema is the part qfsync adds.
- MariaDB/MySQL: `GET_LOCK` on a name made from `DATABASE()`. GET_LOCK names are server-wide,
  so the database is the part qfsync adds.

The lock is per database, not per scope: every sync, whatever its filters, writes the same
jobs, versions and run rows, so two at once could collide on the same job. A SIGKILLed sync
releases the lock with its process (file descriptor or session), which is how the next sync
knows that a `running` row is abandoned rather than alive.
"""

import fcntl
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import SQLAlchemyError

from .db import sqlite_file
from .errors import DatabaseError

log = logging.getLogger(__name__)

POLL_S = 0.2


def sqlite_lock_path(engine: Engine) -> str:
    """The lock file of a SQLite database: beside the file its path resolves to."""
    database = sqlite_file(engine.url)
    assert database is not None, "db.connect refuses in-memory databases"
    return os.path.realpath(database) + ".qfsync-lock"


def server_lock_key(connection: Connection) -> str:
    """The database's own name for itself on its server, as a lock key."""
    if connection.dialect.name == "postgresql":
        where = connection.scalar(text("SELECT current_schema()"))
    else:
        where = connection.scalar(text("SELECT DATABASE()"))
    return hashlib.sha256(f"qfsync|{where}".encode()).hexdigest()


def _try_server_lock(connection: Connection, key: str) -> bool:
    if connection.dialect.name == "postgresql":
        number = int(key[:16], 16) - 2**63  # advisory locks take a signed 64-bit key
        return bool(connection.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": number}))
    return connection.scalar(text("SELECT GET_LOCK(:k, 0)"), {"k": server_lock_name(key)}) == 1


def server_lock_name(key: str) -> str:
    """The GET_LOCK name (at most 64 characters) for a key."""
    return f"qfsync:{key[:48]}"


def _wait_for(
    try_lock: Callable[[], bool],
    wait_s: float,
    stop: threading.Event,
    waiting: Callable[[], None],
) -> bool:
    """Try at once, then every POLL_S until `wait_s` has passed or `stop` is set."""
    if try_lock():
        return True
    if wait_s <= 0:
        return False
    waiting()
    deadline = time.monotonic() + wait_s
    # Waiting on the stop event, not sleeping: a signal ends the wait within one poll.
    while not stop.wait(POLL_S):
        if try_lock():
            return True
        if time.monotonic() >= deadline:
            return False
    return False


@contextmanager
def sync_lock(
    engine: Engine,
    wait_s: float = 0.0,
    stop: threading.Event | None = None,
    waiting: Callable[[], None] | None = None,
) -> Iterator[bool]:
    """Yields True while holding the database's lock, or False if it stayed taken for `wait_s`
    (or `stop` was set while waiting). `waiting` is called once if the wait begins."""
    stop = stop or threading.Event()
    waiting = waiting or (lambda: None)
    if engine.dialect.name == "sqlite":
        path = sqlite_lock_path(engine)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:  # e.g. left by another user (a sync run as root once)
            raise DatabaseError(
                f"cannot open the sync lock {path}: {exc.strerror}; it must be this user's "
                "to read and write, as the database is"
            ) from None

        def try_file_lock() -> bool:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                return False

        try:
            yield _wait_for(try_file_lock, wait_s, stop, waiting)
        finally:
            os.close(fd)  # closing releases the lock
        return
    with engine.connect() as connection:
        # Autocommit: the lock belongs to the session, not to a transaction.
        connection = connection.execution_options(isolation_level="AUTOCOMMIT")
        held = False
        try:
            key = server_lock_key(connection)
            held = _wait_for(lambda: _try_server_lock(connection, key), wait_s, stop, waiting)
            yield held
        finally:
            _release(connection, held)


def _release(connection: Connection, held: bool) -> None:
    """Unlock explicitly, since the server ends a closed session's locks only some time after
    the client hangs up; then discard the session, which releases them in any case.

    Never raises: if the session is already dead (the server restarted, or an operator killed
    it), its locks went with it, and an error here would hide the run's real outcome."""
    try:
        if held:
            unlock = (
                "SELECT pg_advisory_unlock_all()"
                if connection.dialect.name == "postgresql"
                else "SELECT RELEASE_ALL_LOCKS()"
            )
            connection.execute(text(unlock))
    except SQLAlchemyError as exc:
        log.debug("releasing the sync lock on a dead session: %s", exc)
    finally:
        try:
            connection.invalidate()
        except SQLAlchemyError as exc:
            log.debug("discarding the lock's session: %s", exc)
