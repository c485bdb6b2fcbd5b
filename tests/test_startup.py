"""Commands load only what they use: start-up is a large part of a short command, and of a
sync that mostly waits for the API."""

import os
import subprocess
import sys
from collections.abc import Callable

from qfsync import db
from qfsync.cli import main
from qfsync.fake_api import DEMO_ACCESS_KEY, DEMO_SECRET_KEY, FakeApi

LOADED = (
    "import sys\n"
    "from qfsync.cli import main\n"
    "try:\n    main({args!r})\nexcept SystemExit as exit:\n    assert not exit.code, exit\n"
    "loaded = {{m.split('.')[0] for m in sys.modules}} | {{'.'.join(m.split('.')[:3]) "
    "for m in sys.modules if m.startswith('sqlalchemy.dialects.')}}\n"
    "sys.stderr.write(str(sorted(loaded & {{'sqlalchemy', 'alembic', "
    "'sqlalchemy.dialects.mysql', 'sqlalchemy.dialects.postgresql', "
    "'sqlalchemy.dialects.sqlite'}})))\n"
)


def run_cli(api: FakeApi, *args: str) -> subprocess.CompletedProcess[str]:
    """The command in a fresh interpreter; its stderr ends with the heavy packages it loaded
    and SQLAlchemy's dialects."""
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


def test_sync_of_a_current_schema_loads_neither_alembic_nor_other_dialects(
    fake_api: Callable[..., FakeApi], tmp_path
) -> None:
    """A sync checks the schema's revision itself; Alembic loads only when a migration runs.
    Nor does a SQLite sync load the PostgreSQL and MariaDB dialects (about 85 ms and 4 MB)."""
    url = f"sqlite:///{tmp_path / 'qfsync.db'}"
    engine = db.connect(url)
    db.upgrade(engine)
    engine.dispose()
    done = run_cli(fake_api(150), "sync", "--database-url", url)
    assert "150 inserted" in done.stdout
    assert done.stderr == "['sqlalchemy', 'sqlalchemy.dialects.sqlite']"


def program(*args: str, stdout: int | None = subprocess.PIPE) -> subprocess.CompletedProcess[str]:
    """`qfsync ARGS` as the installed program runs it (`qfsync.cli.run`)."""
    return subprocess.run(
        [sys.executable, "-m", "qfsync", *args],
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
    )


def test_the_program_ends_with_the_commands_status_and_output() -> None:
    """The program skips the interpreter's teardown, yet its output is complete and its exit
    status the command's: 0 for help, 2 for a usage error, with its one line."""
    shown = program("--help")
    assert (shown.returncode, shown.stderr) == (0, "")
    listed = [line.split()[0] for line in shown.stdout.split("Commands:\n")[1].splitlines()]
    assert listed == sorted(main.commands)  # the help's last section, whole
    refused = program("jobs", "--page-size", "0")
    assert refused.returncode == 2
    assert refused.stderr.startswith("qfsync: usage error:") and refused.stderr.count("\n") == 1


def test_output_a_full_disk_refuses_is_one_line_and_a_failure() -> None:
    """Even click's own options (--version), which write before any command runs, end with one
    line on stderr and status 1 when the output cannot be written, never a traceback."""
    with open("/dev/full", "w") as full:
        done = program("--version", stdout=full.fileno())
    assert done.returncode == 1
    assert done.stderr == "qfsync: error: cannot write the output: No space left on device\n"


def test_a_closed_stdout_is_no_failure_of_its_own() -> None:
    """Started with stdout closed (`qfsync --version >&-`, a daemon's setup), Python has no
    sys.stdout; the exit still succeeds quietly, as the interpreter's own exit did."""
    done = subprocess.run(
        [sys.executable, "-m", "qfsync", "--version"],
        preexec_fn=lambda: os.close(1),  # noqa: PLW1509 - the child only closes a descriptor
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stderr) == (0, "")
