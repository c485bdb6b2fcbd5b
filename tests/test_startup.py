"""Commands load only what they use: start-up is a large part of a short command, and of a
sync that mostly waits for the API."""

import os
import subprocess
import sys
from collections.abc import Callable

from qfsync import db
from qfsync.fake_api import DEMO_ACCESS_KEY, DEMO_SECRET_KEY, FakeApi

LOADED = (
    "import sys\n"
    "from qfsync.cli import main\n"
    "try:\n    main({args!r})\nexcept SystemExit as exit:\n    assert not exit.code, exit\n"
    "sys.stderr.write(str(sorted({{m.split('.')[0] for m in sys.modules}} & "
    "{{'sqlalchemy', 'alembic'}})))\n"
)


def run_cli(api: FakeApi, *args: str) -> subprocess.CompletedProcess[str]:
    """The command in a fresh interpreter; its stderr ends with the heavy packages it loaded."""
    env = {
        **os.environ,
        "QIANFAN_CONSOLE_API_BASE_URL": api.url,
        "QIANFAN_ACCESS_KEY": DEMO_ACCESS_KEY,
        "QIANFAN_SECRET_KEY": DEMO_SECRET_KEY,
    }
    code = LOADED.format(args=list(args))
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )


def test_jobs_runs_without_loading_the_database_side(fake_api: Callable[..., FakeApi]) -> None:
    """`qfsync jobs` walks and prints without importing SQLAlchemy, which only the database
    commands need (its import is about half of a short command's start-up)."""
    done = run_cli(fake_api(150), "jobs")
    assert len(done.stdout.splitlines()) == 150
    assert done.stderr == "[]"


def test_sync_of_a_current_schema_does_not_load_alembic(
    fake_api: Callable[..., FakeApi], tmp_path
) -> None:
    """A sync checks the schema's revision itself; Alembic loads only when a migration runs."""
    url = f"sqlite:///{tmp_path / 'qfsync.db'}"
    engine = db.connect(url)
    db.upgrade(engine)
    engine.dispose()
    done = run_cli(fake_api(150), "sync", "--database-url", url)
    assert "150 inserted" in done.stdout
    assert done.stderr == "['sqlalchemy']"
