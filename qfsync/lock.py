"""One sync at a time per database and scope, with a lock that dies with its process.

PostgreSQL and MariaDB/MySQL hold a server-side lock on a dedicated connection
(`pg_try_advisory_lock`, `GET_LOCK`); SQLite holds an OS file lock beside the database file.
Either way a SIGKILLed sync releases it, which is how the next sync knows a `running` row is
abandoned rather than alive.
"""

import fcntl
import hashlib
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine, text

POLL_S = 0.2


def _key(engine: Engine, scope: str) -> str:
    # GET_LOCK names are server-wide, so the database (and any schema option) is in the key.
    where = engine.url.render_as_string(hide_password=True)
    return hashlib.sha256(f"{where}|{scope}".encode()).hexdigest()


def _try_server_lock(connection: Connection, key: str) -> bool:
    if connection.dialect.name == "postgresql":
        number = int(key[:16], 16) - 2**63  # advisory locks take a signed 64-bit key
        return bool(connection.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": number}))
    return connection.scalar(text("SELECT GET_LOCK(:k, 0)"), {"k": f"qfsync:{key[:48]}"}) == 1


def _wait_for(try_lock: Callable[[], bool], wait_s: float) -> bool:
    deadline = time.monotonic() + wait_s
    while not try_lock():
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_S)
    return True


@contextmanager
def sync_lock(engine: Engine, scope: str, wait_s: float = 0.0) -> Iterator[bool]:
    """Yields True while holding the scope's lock, or False if it stayed taken for `wait_s`."""
    key = _key(engine, scope)
    if engine.dialect.name == "sqlite":
        database = engine.url.database
        if not database or database == ":memory:":
            yield True  # a private in-memory database has no other writer
            return
        fd = os.open(f"{database}.{key[:12]}.qfsync-lock", os.O_RDWR | os.O_CREAT, 0o600)

        def try_file_lock() -> bool:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                return False

        try:
            yield _wait_for(try_file_lock, wait_s)
        finally:
            os.close(fd)  # closing releases the lock
        return
    with engine.connect() as connection:
        # Autocommit: the lock belongs to the session, not to a transaction.
        connection = connection.execution_options(isolation_level="AUTOCOMMIT")
        held = False
        try:
            held = _wait_for(lambda: _try_server_lock(connection, key), wait_s)
            yield held
        finally:
            _release(connection, held)


def _release(connection: Connection, held: bool) -> None:
    """Unlock explicitly, since the server ends a closed session's locks only some time after
    the client hangs up; then discard the session, which releases them in any case."""
    try:
        if held:
            unlock = (
                "SELECT pg_advisory_unlock_all()"
                if connection.dialect.name == "postgresql"
                else "SELECT RELEASE_ALL_LOCKS()"
            )
            connection.execute(text(unlock))
    finally:
        connection.invalidate()
