"""Fixtures shared by the suite: the fake API on loopback and one database per dialect.

Database servers come from QFSYNC_TEST_POSTGRES_URL / QFSYNC_TEST_MYSQL_URL, else from
testcontainers where Docker runs, else the test is skipped with the reason, except under CI,
where a missing database fails the run.
"""

import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from qfsync import db
from qfsync.client import Client, Credentials, JobQuery, RetryPolicy
from qfsync.fake_api import DEMO_ACCESS_KEY, DEMO_SECRET_KEY, FakeApi, Faults
from qfsync.syncer import Sync, SyncResult
from qfsync.task_fetch import TaskFetcher
from qfsync.task_sync import DEFAULT_MAX_AGE, TaskSync

DIALECTS = ("sqlite", "postgresql", "mysql")
SERVER_ENV = {"postgresql": "QFSYNC_TEST_POSTGRES_URL", "mysql": "QFSYNC_TEST_MYSQL_URL"}


def docker_runs() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (in CI a missing database or program is a failure)", pytrace=False)
    pytest.skip(reason)


def server_url(dialect: str, request: pytest.FixtureRequest) -> str:
    """The server for a dialect, once per session: the environment's, or a container's."""
    cache = request.config.stash.setdefault(SERVERS, {})
    if dialect in cache:
        return cache[dialect]
    url = os.environ.get(SERVER_ENV[dialect])
    if not url:
        if not docker_runs():
            unavailable(f"{dialect}: set {SERVER_ENV[dialect]} or run Docker for testcontainers")
        url = start_container(dialect, request)
    try:
        engine = db.connect(url)
        engine.dispose()
    except Exception as exc:  # noqa: BLE001 - reported as the reason
        unavailable(f"{dialect} at {db.mask_text(url)} is unreachable: {exc}")
    cache[dialect] = url
    return url


def start_container(dialect: str, request: pytest.FixtureRequest) -> str:
    if dialect == "postgresql":
        from testcontainers.postgres import PostgresContainer

        container = PostgresContainer("postgres:16", driver="psycopg")
    else:
        from testcontainers.mysql import MySqlContainer

        container = MySqlContainer("mariadb:11")
    container.start()
    request.session.config.add_cleanup(container.stop)
    return container.get_connection_url()


SERVERS = pytest.StashKey[dict[str, str]]()


@contextmanager
def fresh_database(dialect: str, request: pytest.FixtureRequest, directory: Path) -> Iterator[str]:
    """A fresh, empty database (a schema on PostgreSQL), dropped afterwards."""
    if dialect == "sqlite":
        yield f"sqlite:///{directory / f'qfsync_{uuid.uuid4().hex[:8]}.db'}"
        return
    base = db.parse_url(server_url(dialect, request))
    name = f"qfsync_t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        if dialect == "postgresql":
            with admin.connect() as connection:
                connection.execute(text(f"CREATE SCHEMA {name}"))
            url = base.update_query_dict({"options": f"-csearch_path={name}"})
        else:
            with admin.connect() as connection:
                connection.execute(text(f"CREATE DATABASE {name} CHARACTER SET utf8mb4"))
            url = base.set(database=name)
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            kind = "SCHEMA" if dialect == "postgresql" else "DATABASE"
            cascade = " CASCADE" if dialect == "postgresql" else ""
            connection.execute(text(f"DROP {kind} IF EXISTS {name}{cascade}"))
        admin.dispose()


@pytest.fixture(params=DIALECTS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database per test, on each dialect."""
    with fresh_database(request.param, request, tmp_path) as url:
        yield url


@pytest.fixture
def other_database_url(
    database_url: str, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[str]:
    """A second fresh database on the same dialect as `database_url`."""
    dialect = make_url(database_url).get_backend_name()
    with fresh_database(dialect, request, tmp_path) as url:
        yield url


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """An engine on the fresh database, migrated to head."""
    engine = db.connect(database_url)
    db.upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def fake_api() -> Iterator[Callable[..., FakeApi]]:
    """Start fake APIs on loopback; all are stopped after the test."""
    started: list[FakeApi] = []

    def start(jobs: int = 100, faults: Faults | None = None, **kwargs) -> FakeApi:
        api = FakeApi(jobs=jobs, faults=faults, **kwargs).start()
        started.append(api)
        return api

    yield start
    for api in started:
        api.stop()


@pytest.fixture
def api_env(monkeypatch: pytest.MonkeyPatch) -> Callable[[FakeApi], None]:
    """Point the CLI at a fake API with its demo credentials."""

    def point(api: FakeApi) -> None:
        monkeypatch.setenv("QIANFAN_CONSOLE_API_BASE_URL", api.url)
        monkeypatch.setenv("QIANFAN_ACCESS_KEY", DEMO_ACCESS_KEY)
        monkeypatch.setenv("QIANFAN_SECRET_KEY", DEMO_SECRET_KEY)

    return point


def url_password(url: str) -> str | None:
    password = make_url(url).password
    return str(password) if password else None


FAST_RETRY = RetryPolicy(base_delay_s=0.001, max_delay_s=0.01, max_attempts=10)


@pytest.fixture
def run_sync() -> Callable[..., SyncResult]:
    """Run one sync in-process against a fake API, with a quick retry policy; `tasks=True`
    syncs tasks too (`tasks_max_age`, `task_concurrency` as the CLI's options)."""

    def run(
        engine: Engine,
        api: FakeApi,
        retry: RetryPolicy = FAST_RETRY,
        tasks: bool = False,
        tasks_max_age=DEFAULT_MAX_AGE,
        task_concurrency: int = 4,
        **kwargs,
    ) -> SyncResult:
        query = JobQuery(
            kwargs.pop("train_mode", None),
            kwargs.pop("model", None),
            kwargs.pop("page_size", 100),
        )
        credentials = Credentials(DEMO_ACCESS_KEY, kwargs.pop("secret_key", DEMO_SECRET_KEY))
        with Client(credentials, api.url, retry) as client:
            with TaskFetcher(client, task_concurrency) as fetcher:
                if tasks:
                    max_age = None if kwargs.get("incremental") else tasks_max_age
                    kwargs["tasks"] = TaskSync(fetcher, max_age)
                return Sync(engine, client, query, **kwargs).run()

    return run
