"""Values that cannot be stored fail the page naming the job and the field; usage errors exit 2
before anything is written; no password in any output for any URL form."""

import pytest
from click.testing import CliRunner
from sqlalchemy import select
from test_faults import runs_of

from qfsync import runs, writers
from qfsync.cli import main
from qfsync.errors import Unstorable
from qfsync.guard import DeleteLimit
from qfsync.schema import finetuning_jobs
from qfsync.store import Scope

SECRET = "hunter2-Zq9"


def test_a_job_id_longer_than_its_column_fails_the_page_naming_it(engine, fake_api, run_sync):
    """A 200-character job id on the second page: the run fails with the job and the field
    named, the first page stays committed, the second is not written."""
    api = fake_api(250)
    long_id = "j" * 200
    api._change([api.job_list()[150]["jobId"]], lambda job: {**job, "jobId": long_id})
    with pytest.raises(Unstorable) as failure:
        run_sync(engine, api)
    message = str(failure.value)
    assert message.startswith(f"job {long_id[:60]!r}…: its job_id is 200 characters long; ")
    assert "finetuning_jobs.job_id holds 128; the page was not written" in message
    [run] = runs_of(engine)
    assert (run["status"], run["pages"], run["error"]) == ("failed", 1, message)


def test_a_nul_in_a_name(engine, fake_api, run_sync):
    """A NUL inside a job's name fails the page on PostgreSQL (its text cannot hold one), with
    the job and the field named; SQLite and MariaDB store it as sent."""
    api = fake_api(20)
    job_id = api.job_list()[7]["jobId"]
    api.rename([job_id], "\x00tail")
    if engine.dialect.name == "postgresql":
        with pytest.raises(Unstorable, match=f"job '{job_id}': its name contains a NUL"):
            run_sync(engine, api)
        [run] = runs_of(engine)
        assert run["status"] == "failed" and run["pages"] == 0
        return
    assert run_sync(engine, api).status == "succeeded"
    with engine.connect() as connection:
        name = connection.scalar(
            select(finetuning_jobs.c.name).where(finetuning_jobs.c.job_id == job_id)
        )
    assert name.endswith("\x00tail")


def test_job_ids_that_differ_only_in_trailing_spaces(engine, fake_api, run_sync):
    """MariaDB's collations compare 'q' and 'q ' as equal, so there the second would overwrite
    the first or collide with it: the page fails naming the job and the field. SQLite and
    PostgreSQL store both."""
    api = fake_api(5)
    first, second = (job["jobId"] for job in api.job_list()[:2])
    api._change([first], lambda job: {**job, "jobId": "q"})
    api._change([second], lambda job: {**job, "jobId": "q "})
    if engine.dialect.name == "mysql":
        with pytest.raises(Unstorable, match="job 'q ': its job_id ends in a space"):
            run_sync(engine, api)
        assert runs_of(engine)[0]["pages"] == 0
        return
    assert run_sync(engine, api).jobs_inserted == 5


def failed_at(engine, marker: str) -> None:
    """A full run that failed after a page whose next marker was `marker`."""
    with engine.begin() as connection:
        run_id, _ = runs.start(connection, Scope(), "full", 100, None)
        writer = writers.for_dialect(engine.dialect.name)
        writer.write(connection, writer.prepare([]), run_id, runs.utcnow(), marker)
    runs.fail(engine, run_id, "stopped")


def test_any_marker_fits(engine):
    """The marker column holds a marker of any length, and a resume reads it back whole."""
    marker = "m" * 5000
    failed_at(engine, marker)
    with engine.connect() as connection:
        resume = runs.resume_point(connection, Scope())
    assert resume is not None and resume.marker == marker


def test_a_long_marker_is_cut_short_in_the_notes(engine, fake_api, run_sync):
    """A resume at a 100 KB marker the API then rejects: both notes name the marker in one
    short line, not a hundred kilobytes of it on stderr and in the logs."""
    marker = "\x1b[2J" + "m" * 100_000
    failed_at(engine, marker)
    result = run_sync(engine, fake_api(10), max_delete=DeleteLimit(percent=100))
    assert result.status == "succeeded" and len(result.notes) == 2
    for note in result.notes:
        assert "marker \\x1b[2Jmmm" in note and len(note) < 400, note[:100]


def sync_cli(*args: str):
    return CliRunner().invoke(main, ["sync", *args])


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--train-mode", "S" * 129], "--train-mode 'SSS"),
        (["--model", "M" * 256], "sync_runs.model_filter holds 255"),
        # `--model "$MODEL"` with MODEL unset: a scope of its own that never marks deletions.
        (["--model", ""], "--model is empty"),
        (["--train-mode", " "], "--train-mode is empty"),
        # Python's argv keeps bytes that are not UTF-8 as lone surrogates.
        (["--model", "bad\udcffbyte"], "--model holds bytes that are not UTF-8"),
        (["--database-url", "sqlite://"], "in-memory SQLite database keeps nothing"),
        (["--database-url", "sqlite:///:memory:"], "in-memory SQLite database keeps nothing"),
        (
            ["--database-url", "sqlite:///file:x?mode=memory&uri=true"],
            "in-memory SQLite database keeps nothing",
        ),
        (
            ["--database-url", f"postgresql+psycopg2://qf:{SECRET}@127.0.0.1/x"],
            "the driver for postgresql+psycopg2 is not installed",
        ),
    ],
)
def test_usage_errors_exit_2_before_anything_is_written(
    args, says, tmp_path, monkeypatch, fake_api, api_env
):
    """A filter empty, not UTF-8 or longer than its column, an in-memory SQLite URL or a driver
    that is not installed: exit 2, one line, no database file created."""
    api_env(fake_api(5))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("QFSYNC_DATABASE_URL", f"sqlite:///{tmp_path / 'q.db'}")
    result = sync_cli(*args)
    assert result.exit_code == 2, result.output
    [line] = result.stderr.splitlines()
    assert says in line and SECRET not in result.output
    assert list(tmp_path.iterdir()) == []


def test_a_mysql_url_without_a_database_is_a_usage_error(fake_api, api_env):
    """PyMySQL connects without a database and the first query fails on a bare assertion:
    refused before connecting, naming what is missing."""
    api_env(fake_api(5))
    result = sync_cli("--database-url", "mysql://root@127.0.0.1:1")
    assert result.exit_code == 2, result.output
    [line] = result.stderr.splitlines()
    assert "names no database" in line


def test_a_sqlite_path_may_hold_an_at(tmp_path, fake_api, api_env):
    """An @ is refused where it betrays a password, not in a file's path."""
    api_env(fake_api(5))
    folder = tmp_path / "user@host"
    folder.mkdir()
    result = sync_cli("--database-url", f"sqlite:///{folder / 'q.db'}")
    assert result.exit_code == 0, result.output
    assert (folder / "q.db").exists()


def test_missing_credentials_touch_no_database(tmp_path, monkeypatch):
    """Without credentials the sync exits 2 before it connects or migrates."""
    for name in ("QIANFAN_ACCESS_KEY", "QIANFAN_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    result = sync_cli("--database-url", f"sqlite:///{tmp_path / 'q.db'}")
    assert result.exit_code == 2
    assert "no credentials" in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("url", "code"),
    [
        (f"postgresql://qf@127.0.0.1:1/db?password={SECRET}", 1),
        (f"postgresql://qf@127.0.0.1:1/db?sslmode=disable&password={SECRET}&x=1", 1),
        (f"postgresql:/qf:{SECRET}@127.0.0.1:1/db", 2),
        (f"postgresql://qf:{SECRET}@x@127.0.0.1:1/db", 2),
        (f"mysql://qf:a@{SECRET}:c@127.0.0.1:1/db", 2),
        (f"postgresql://qf:{SECRET}@127.0.0.1:notaport/db", 2),
        # An unencoded @ followed by / ? or :port/ puts the rest into the database or query.
        (f"postgresql://qf:top@{SECRET}/more@127.0.0.1:1/db", 2),
        (f"postgresql://qf:top@{SECRET}?x=more@127.0.0.1:1/db", 2),
        (f"mysql://qf:top@{SECRET}:3306/more@127.0.0.1:1/db", 2),
        # No scheme, no slashes, a space in the password: nothing says where user info ends.
        (f"qf:{SECRET}@127.0.0.1/db", 2),
        (f"//qf:{SECRET}@127.0.0.1/db", 2),
        (f"postgresql://qf:pa {SECRET}@127.0.0.1:notaport/db", 2),
        (f"postgresql://qf@127.0.0.1:1/db?sslmode=require&sslpassword={SECRET}", 1),
    ],
)
def test_no_password_in_any_output_for_any_url_form(url, code, fake_api, api_env):
    """A password in the query string, a URL with one slash, an unencoded @ in the password:
    the error is one line and never shows the password."""
    api_env(fake_api(5))
    result = sync_cli("--database-url", url)
    assert result.exit_code == code, result.output
    assert len(result.stderr.splitlines()) == 1
    assert SECRET not in result.output and SECRET[3:] not in result.output
