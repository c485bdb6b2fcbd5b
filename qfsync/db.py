"""Database URLs, engines and migrations: everything qfsync needs before it writes a row."""

import re
import sqlite3
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.resources import files
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SAWarning, SQLAlchemyError

from . import DEFAULT_DATABASE_URL, sqlite_schema
from .errors import ConfigError, DatabaseError, SchemaOutdated

if TYPE_CHECKING:
    from alembic.config import Config

DEFAULT_URL = DEFAULT_DATABASE_URL
# Plain scheme names get the drivers qfsync installs, not SQLAlchemy's older defaults.
DRIVERS = {
    "postgresql": "postgresql+psycopg",
    "postgres": "postgresql+psycopg",
    "mysql": "mysql+pymysql",
    "mariadb": "mariadb+pymysql",
}


# Seconds to wait for a PostgreSQL server to accept a session (unless the URL sets
# connect_timeout), so that a silent server fails the sync rather than hangs it.
CONNECT_TIMEOUT_S = 30

# `scheme:[//]user:PASSWORD@`, up to the last @ of the word, so that a password with an
# unencoded @ or /, or a URL with one slash, is hidden whole; and `password=` in a query.
PASSWORD_IN_URL = re.compile(r"([a-z][\w+.-]*:/*[^:/@\s]*:)\S*@", re.IGNORECASE)
PASSWORD_IN_QUERY = re.compile(
    r"([?&;](?:password|passwd|pwd|sslpassword)=)[^&;\s]*", re.IGNORECASE
)
# sslpassword: libpq's, the passphrase of the client's TLS key.
PASSWORD_KEYS = ("password", "passwd", "pwd", "sslpassword")


def parse_url(raw: str) -> URL:
    # A URL that does not parse as meant is not shown if it holds an @: where its user info
    # ends cannot be told, nor so what to hide (`user:pa ss@host`, `user:pw@host` without a
    # scheme).
    shown = "" if "@" in raw else f" {mask_text(raw)!r}"
    try:
        url = make_url(raw)
    except (ArgumentError, ValueError):
        raise ConfigError(
            f"not a database URL:{shown} "
            "(expected e.g. sqlite:///qfsync.db or postgresql://user@host/db)"
        ) from None
    # An unencoded @ in the password puts the rest of it into the host, the database or the
    # query (`user:p@ss/x@host/db`), where nothing hides it. (A SQLite path may hold an @.)
    database = "" if url.get_backend_name() == "sqlite" else url.database or ""
    if any("@" in part for part in (url.host or "", database, *query_values(url))):
        raise ConfigError(
            "not a database URL: an @ in the host, the database name or the query (an @ in "
            "the password must be written %40; the URL is not shown)"
        )
    url = url.set(drivername=DRIVERS.get(url.drivername, url.drivername))
    if url.get_backend_name() in ("mysql", "mariadb") and not url.database:
        # PyMySQL connects without one, and the first query fails on a bare assertion.
        raise ConfigError(f"{mask(url)} names no database: add it, as in mysql://user@host/db")
    if url.get_backend_name() == "sqlite" and sqlite_file(url) is None:
        raise ConfigError(
            "an in-memory SQLite database keeps nothing after the command: use sqlite:///FILE"
        )
    if url.get_backend_name() in ("mysql", "mariadb") and "charset" not in url.query:
        url = url.update_query_dict({"charset": "utf8mb4"})
    return url


def query_values(url: URL, keys: tuple[str, ...] | None = None) -> list[str]:
    """The query's values, or those of `keys` only (a repeated key's come as a tuple)."""
    found: list[str] = []
    for key, value in url.query.items():
        if keys is None or key in keys:
            found += [value] if isinstance(value, str) else list(value)
    return found


def sqlite_file(url: URL) -> str | None:
    """The file a SQLite URL opens, as given (relative or not), or None for an in-memory
    database: the path itself, or the path of SQLite's URI form (`file:PATH?uri=true`)."""
    database = url.database or ""
    if url.query.get("uri") in ("true", "1") and database.startswith("file:"):
        if url.query.get("mode") == "memory":
            return None
        database = unquote(urlsplit(database).path)
    return None if database in ("", ":memory:") else database


def mask(url: URL) -> str:
    """The URL for people: the password hidden, in the user info or in the query."""
    return mask_text(url.render_as_string(hide_password=True))


def mask_text(raw: str) -> str:
    """Hide the password in a URL-like string, even one that does not parse."""
    return PASSWORD_IN_QUERY.sub(r"\1***", PASSWORD_IN_URL.sub(r"\1***@", raw))


def secrets(url: URL) -> list[str]:
    """Every password the URL carries."""
    found = [str(url.password)] if url.password else []
    return [secret for secret in found + query_values(url, PASSWORD_KEYS) if secret]


def database_error(exc: BaseException, url: URL) -> DatabaseError:
    """A driver's error as qfsync reports it: one line, the statement and password left out."""
    return DatabaseError(f"database error on {mask(url)}: {describe(exc, url)}")


def describe(exc: BaseException, url: URL) -> str:
    """The first line of a driver error, with the password scrubbed in case a driver echoes it."""
    orig = getattr(exc, "orig", None) or exc
    text = (str(orig).strip().splitlines() or [type(orig).__name__])[0]
    for secret in secrets(url):
        text = text.replace(secret, "***")
    return mask_text(text)


def connect(raw_url: str) -> Engine:
    """An engine for the URL, checked with one round trip, so a bad URL fails before the run."""
    url = parse_url(raw_url)
    try:
        with warnings.catch_warnings():
            # SQLAlchemy only warns of SQLite options it ignores: a typo deserves a refusal.
            warnings.simplefilter("error", SAWarning)
            if url.get_backend_name() == "sqlite":
                engine = sqlite_engine(url)
            elif url.get_backend_name() == "postgresql":
                # psycopg waits for ever for a server that accepts and never answers.
                timeout = (
                    {} if "connect_timeout" in url.query else {"connect_timeout": CONNECT_TIMEOUT_S}
                )
                engine = create_engine(url, pool_pre_ping=True, connect_args=timeout)
                event.listen(engine, "connect", _postgresql_settings)
            else:
                engine = create_engine(url, pool_pre_ping=True)
        with engine.connect():
            pass
    except NoSuchModuleError:
        raise ConfigError(
            f"no driver for {url.drivername} (use sqlite, postgresql or mysql)"
        ) from None
    except ImportError as exc:
        raise ConfigError(
            f"the driver for {url.drivername} is not installed ({exc.name or exc}): use "
            "postgresql:// (psycopg 3) or mysql:// (PyMySQL), which qfsync installs"
        ) from None
    except (SQLAlchemyError, OSError, ValueError) as exc:
        raise DatabaseError(f"cannot connect to {mask(url)}: {describe(exc, url)}") from None
    except (SAWarning, TypeError, AttributeError, LookupError) as exc:
        # What PyMySQL raises for an option it does not know (TypeError) or a charset it does
        # not have (AttributeError), before it opens a connection.
        raise ConfigError(
            f"the driver refuses the options of {mask(url)}: "
            f"{type(exc).__name__}: {describe(exc, url)}"
        ) from None
    return engine


@contextmanager
def connected(raw_url: str) -> Iterator[Engine]:
    """`connect`, and close every pooled connection when done."""
    engine = connect(raw_url)
    try:
        yield engine
    finally:
        engine.dispose()


# Seconds a SQLite connection waits for another's lock.
SQLITE_BUSY_S = 60

# Pages of the WAL before SQLite copies it back into the database file (the default is 1,000,
# about 4 MB): a checkpoint writes and fsyncs, so doing it less often spares a first sync most
# of its waiting, for a WAL of up to about 40 MB beside the file while a sync runs.
WAL_AUTOCHECKPOINT_PAGES = 10_000


def sqlite_engine(url: URL, **connect_args: Any) -> Engine:
    """An engine for a SQLite file: WAL and its settings on every connection, and a wait for
    another's lock (a sync, a BI tool, a migration) instead of a failure."""
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_S, **connect_args})
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    # WAL lets a BI tool read while a sync writes; in WAL mode synchronous=NORMAL cannot corrupt
    # the file, and a power cut loses at most the last pages, which the next sync writes again.
    cursor = dbapi_connection.cursor()
    # Setting WAL on a database another process is creating the schema of can fail at once
    # with "database is locked", without the busy timeout's wait: wait for it here instead.
    deadline = time.monotonic() + SQLITE_BUSY_S
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
    cursor.close()


def _postgresql_settings(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    # psycopg prepares a statement after five runs, while the table may still be small; the
    # generic plan PostgreSQL then keeps scans the whole table for each page's lookup by job id.
    # Planning every execution afresh keeps it an index scan however large the table grows.
    # (The PostgreSQL page writer keeps one generic plan instead, with sequential scans ruled
    # out for its transactions: see PLAN_SETTINGS in writers/postgresql.py.)
    # The page writer sends text in binary arrays it encodes itself, as UTF-8.
    from .writers.postgresql import prepare_connection

    with dbapi_connection.cursor() as cursor:
        cursor.execute("SET plan_cache_mode = force_custom_plan")
        cursor.execute("SET client_encoding = 'UTF8'")
    dbapi_connection.commit()  # a SET inside a transaction that is rolled back is undone
    prepare_connection(dbapi_connection)


# The newest migration in migrations/versions. Reading the database's revision needs no
# Alembic, so a sync imports Alembic (about 10 MB and 0.2 s) only when there is work for it;
# a test keeps this in step with the migrations.
SCHEMA_HEAD = "0005"


def alembic_config(engine: Engine | None = None) -> "Config":
    """Alembic's config built from the installed package, so a wheel can migrate on its own."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(files("qfsync.migrations")))
    if engine is not None:
        config.attributes["engine"] = engine
    return config


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        if not inspect(connection).has_table("alembic_version"):
            return None
        return connection.scalar(text("SELECT version_num FROM alembic_version"))


def known_revisions() -> set[str]:
    from alembic.script import ScriptDirectory

    return {
        script.revision for script in ScriptDirectory.from_config(alembic_config()).walk_revisions()
    }


# Alembic's `context` and `op` are proxies global to the process: two migrations at once in
# one process (syncs of two new databases from a host's threads) would run each other's DDL on
# the wrong connection. The sync lock is per database, so migrations also take this one.
_MIGRATING = threading.Lock()


def upgrade(engine: Engine) -> None:
    with _MIGRATING:
        _upgrade(engine)


def _upgrade(engine: Engine) -> None:
    if engine.dialect.name == "sqlite" and not inspect(engine).has_table("alembic_version"):
        # A new file: the schema at head, without Alembic. (One whose alembic_version is
        # empty, as `alembic downgrade base` leaves it, is not new: the migrations upgrade it.)
        sqlite_schema.create(engine)
        return
    from alembic import command

    if engine.dialect.name != "sqlite":
        command.upgrade(alembic_config(engine), "head")
        return
    migrating = sqlite_migration_engine(engine.url)
    try:
        command.upgrade(alembic_config(migrating), "head")
    finally:
        migrating.dispose()


def sqlite_migration_engine(url: URL) -> Engine:
    """An engine for migrating a SQLite file, whose transactions hold DDL too: pysqlite's own
    send no BEGIN before DDL, so each statement of an upgrade would commit at once, and a
    failure (a user's view on a table it rebuilds) would leave the schema half migrated for
    good. SQLite rolls DDL back like anything else."""
    engine = sqlite_engine(url, isolation_level=None)
    event.listen(engine, "begin", lambda connection: connection.exec_driver_sql("BEGIN"))
    return engine


def ensure_schema(engine: Engine, migrate: bool) -> str | None:
    """Bring the database to head (or refuse to); returns what was done, for the operator."""
    current = current_revision(engine)
    if current == SCHEMA_HEAD:
        return None
    if current is not None and current not in known_revisions():
        raise DatabaseError(
            f"the database schema is at {current}, which this qfsync does not know "
            f"(its newest is {SCHEMA_HEAD}): a newer qfsync wrote it; upgrade qfsync"
        )
    if not migrate:
        raise SchemaOutdated(
            f"the database schema is at {current or 'nothing'}, qfsync needs {SCHEMA_HEAD}: "
            f"run `qfsync db upgrade --database-url '{mask(engine.url)}'`"
        )
    try:
        upgrade(engine)
    except SQLAlchemyError as exc:
        # Every revision done is kept (each commits with its alembic_version row) and the failed
        # one is run again whole, over what MariaDB kept of it (migrations/resumable.py).
        raise DatabaseError(
            f"database error on {mask(engine.url)}: upgrading the schema from "
            f"{current or 'empty'} to {SCHEMA_HEAD} failed: {describe(exc, engine.url)}; once "
            "that is fixed, `qfsync db upgrade` or the next sync carries on where it stopped"
        ) from None
    return f"upgraded the database schema from {current or 'empty'} to {SCHEMA_HEAD}"
