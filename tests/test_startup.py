"""The program as it runs: commands load only what they use (start-up is a large part of a
short command, and of a sync that mostly waits for the API), and end with one line and the
right status whatever their output, database or lock does."""

import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable

import pytest
from click.testing import CliRunner

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


def test_a_first_sync_into_a_new_sqlite_file_loads_no_alembic(
    fake_api: Callable[..., FakeApi], tmp_path
) -> None:
    """A new SQLite file gets its schema from sqlite_schema.sql, not from the migrations:
    Alembic's import would be the largest part of the first sync's peak memory."""
    url = f"sqlite:///{tmp_path / 'qfsync.db'}"
    done = run_cli(fake_api(150), "sync", "--database-url", url)
    assert "150 inserted" in done.stdout
    assert done.stderr.endswith("['sqlalchemy', 'sqlalchemy.dialects.sqlite']"), done.stderr


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


def test_any_command_into_a_pipe_whose_reader_left_ends_as_sigpipe(tmp_path) -> None:
    """`qfsync runs | true`: click flushes each line, so the write fails in the command; it
    ends with the status of a tool killed by SIGPIPE, as `qfsync jobs` does, not an error."""
    url = f"sqlite:///{tmp_path / 'q.db'}"
    assert program("db", "upgrade", "--database-url", url).returncode == 0
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the command writes
    try:
        done = program("runs", "--database-url", url, stdout=write_end)
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (141, "")


def test_a_damaged_database_is_a_database_error_not_a_bug(tmp_path) -> None:
    """A query the database refuses in `runs` or `report` (here a table gone) is reported as a
    sync reports it: one line naming the database, without the SQL, not an internal error."""
    path = tmp_path / "q.db"
    url = f"sqlite:///{path}"
    assert program("db", "upgrade", "--database-url", url).returncode == 0
    with sqlite3.connect(path) as connection:
        connection.execute("DROP TABLE sync_runs")  # the views that read it stay
    for command in ("runs", "report"):
        done = program(command, "--database-url", url)
        assert done.returncode == 1, done.stderr
        [line] = done.stderr.splitlines()
        assert line.startswith(f"qfsync: error: database error on {url}: ")
        assert "sync_runs" in line and "[SQL" not in line and "internal" not in line


def test_a_sync_lock_that_cannot_be_opened_is_a_database_error(tmp_path) -> None:
    """The SQLite lock beside the file cannot be opened (another user's, or here a directory):
    one line naming it, not an internal error."""
    path = tmp_path / "q.db"
    (tmp_path / "q.db.qfsync-lock").mkdir()
    done = program("db", "upgrade", "--database-url", f"sqlite:///{path}")
    assert done.returncode == 1
    [line] = done.stderr.splitlines()
    assert line.startswith(f"qfsync: error: cannot open the sync lock {path}.qfsync-lock: ")


def test_runs_limit_is_bounded() -> None:
    """A --limit no database takes is a usage error, not an overflow in the query."""
    done = program("runs", "--limit", "99999999999999999999")
    assert done.returncode == 2 and done.stderr.startswith("qfsync: usage error:")


def test_a_group_without_its_command_shows_its_help() -> None:
    """`qfsync db`: the group's help, as click shows it, not squeezed into one line."""
    done = program("db")
    assert done.returncode == 2
    assert "Commands:" in done.stderr.splitlines()
    assert any(line.split()[:1] == ["upgrade"] for line in done.stderr.splitlines())


INTERRUPTED_IMPORT = """
import sys
class Interrupt:
    def find_spec(self, name, path=None, target=None):
        if name == "qfsync.client":
            raise KeyboardInterrupt
sys.meta_path.insert(0, Interrupt())
from qfsync.__main__ import main
sys.argv = ["qfsync", "--version"]
main()
"""


def test_ctrl_c_while_the_modules_load_is_the_status_not_a_traceback() -> None:
    """Ctrl-C in the first fraction of a second, while the command line's modules load (here
    raised as one of them is imported): exit 130 and nothing on stderr."""
    done = subprocess.run(
        [sys.executable, "-c", INTERRUPTED_IMPORT], capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stderr) == (130, "")


def test_jobs_with_no_standard_output_is_one_line(fake_api: Callable[..., FakeApi]) -> None:
    """`qfsync jobs >&-`: nowhere to print the jobs is one line and status 1, before any
    request, not an AttributeError."""
    api = fake_api(5)
    env = {
        **os.environ,
        "QIANFAN_CONSOLE_API_BASE_URL": api.url,
        "QIANFAN_ACCESS_KEY": DEMO_ACCESS_KEY,
        "QIANFAN_SECRET_KEY": DEMO_SECRET_KEY,
    }
    done = subprocess.run(
        [sys.executable, "-m", "qfsync", "jobs"],
        env=env,
        preexec_fn=lambda: os.close(1),  # noqa: PLW1509 - the child only closes a descriptor
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr == "qfsync: error: there is no standard output to print to (it was closed)\n"
    assert api.request_count == 0


@pytest.mark.parametrize(
    ("variable", "args"),
    [
        ("QFSYNC_DATABASE_URL", ["runs"]),
        ("QFSYNC_DATABASE_URL", ["sync"]),
        ("QFSYNC_PUSHGATEWAY", ["sync"]),
        ("QFSYNC_MAX_DELETE", ["sync"]),
        ("QIANFAN_CONSOLE_API_BASE_URL", ["jobs"]),
        ("QFSYNC_LOG_FORMAT", ["jobs"]),
    ],
)
def test_a_variable_set_but_empty_is_refused(tmp_path, monkeypatch, variable, args) -> None:
    """A variable that lost its value (`QFSYNC_DATABASE_URL=` in a cron line) is a usage error
    naming it, not taken for unset: the sync would go to ./qfsync.db, or push no metrics."""
    monkeypatch.chdir(tmp_path)
    done = CliRunner().invoke(main, args, env={variable: ""})
    assert done.exit_code == 2, done.output
    assert f"{variable} is set but empty" in done.stderr
    assert list(tmp_path.iterdir()) == []
