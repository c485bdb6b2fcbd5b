"""The sync on every dialect: exact rows, exact counts, one upsert statement per page."""

import json
from datetime import timedelta

from click.testing import CliRunner
from sqlalchemy import func, select, text

from qfsync import db, runs
from qfsync.cli import main
from qfsync.pages import parse_time
from qfsync.schema import finetuning_job_versions, finetuning_jobs, sync_runs

JOBS = 2537


def stored_jobs(engine) -> dict[str, dict]:
    with engine.connect() as connection:
        return {
            row["job_id"]: dict(row)
            for row in connection.execute(select(finetuning_jobs)).mappings()
        }


def expected(item: dict) -> dict:
    return {
        "job_id": item["jobId"],
        "name": item["name"],
        "description": item["description"],
        "model": item["model"],
        "train_mode": item["trainMode"],
        "created_at": parse_time(item["createTime"]),
        "raw": item,
        "deleted_at": None,
    }


def all_runs(engine) -> list[dict]:
    with engine.connect() as connection:
        rows = connection.execute(select(sync_runs).order_by(sync_runs.c.id)).mappings()
        return [dict(row) for row in rows]


def test_first_sync_stores_every_job_field_for_field(engine, fake_api, run_sync):
    """After one sync the table holds exactly the API's jobs, every field as the API sent it,
    and sync_runs has one succeeded run that counted them all."""
    api = fake_api(JOBS)
    result = run_sync(engine, api)
    assert (result.status, result.pages, result.jobs_seen, result.jobs_inserted) == (
        "succeeded",
        26,
        JOBS,
        JOBS,
    )
    rows = stored_jobs(engine)
    items = api.job_list()
    assert len(rows) == len(items) == JOBS
    for item in items:
        row = rows[item["jobId"]]
        assert {key: row[key] for key in expected(item)} == expected(item)
        assert row["last_run_id"] == result.run_id
        assert row["first_seen_at"] == row["last_seen_at"]
    [run] = all_runs(engine)
    assert run["status"] == "succeeded" and run["jobs_seen"] == JOBS
    assert run["finished_at"] >= run["started_at"]
    assert (run["jobs_inserted"], run["jobs_updated"], run["jobs_unchanged"]) == (JOBS, 0, 0)
    assert run["complete"] and run["next_marker"] is None and run["error"] is None
    with engine.connect() as connection:
        assert connection.scalar(select(func.count()).select_from(finetuning_job_versions)) == JOBS


def test_second_sync_changes_nothing(engine, fake_api, run_sync):
    """A re-sync with nothing changed inserts and updates nothing, rewrites no stored field, and
    only moves last_seen_at and last_run_id."""
    api = fake_api(JOBS)
    run_sync(engine, api)
    before = stored_jobs(engine)
    second = run_sync(engine, api)
    assert (second.jobs_inserted, second.jobs_updated, second.jobs_unchanged) == (0, 0, JOBS)
    after = stored_jobs(engine)
    assert after.keys() == before.keys()
    moving = {"last_seen_at", "last_run_id"}
    for job_id, row in after.items():
        old = before[job_id]
        assert {k: v for k, v in row.items() if k not in moving} == {
            k: v for k, v in old.items() if k not in moving
        }
        assert row["last_seen_at"] > old["last_seen_at"] and row["last_run_id"] == second.run_id
    assert [run["status"] for run in all_runs(engine)] == ["succeeded", "succeeded"]


def test_changed_job_is_updated_and_counted(engine, fake_api, run_sync):
    """A renamed job is counted `updated` and its row takes the new name; the rest unchanged."""
    api = fake_api(250)
    run_sync(engine, api)
    renamed = api.job_list()[42]["jobId"]
    api.rename([renamed], " v2")
    result = run_sync(engine, api)
    assert (result.jobs_inserted, result.jobs_updated, result.jobs_unchanged) == (0, 1, 249)
    row = stored_jobs(engine)[renamed]
    assert row["name"].endswith(" v2") and row["raw"]["name"] == row["name"]


def test_filters_and_page_size_reach_the_api(engine, fake_api, run_sync):
    """A filtered sync stores exactly the fake's filtered listing and records its scope."""
    api = fake_api(600)
    result = run_sync(engine, api, train_mode="SFT", page_size=37)
    listed = api.job_list(train_mode="SFT")
    assert set(stored_jobs(engine)) == {item["jobId"] for item in listed}
    assert result.pages == -(-len(listed) // 37)
    assert all(body.get("trainMode") == "SFT" and body["maxKeys"] == 37 for body in api.bodies)
    [run] = all_runs(engine)
    assert (run["train_mode_filter"], run["model_filter"], run["page_size"]) == ("SFT", None, 37)


def test_filtered_sync_deletes_only_inside_its_filter(engine, fake_api, run_sync):
    """A complete SFT-only walk marks a vanished SFT job deleted and leaves a vanished job of
    another train mode listed, for a full walk to find."""
    api = fake_api(400)
    run_sync(engine, api)
    sft = next(item["jobId"] for item in api.job_list() if item["trainMode"] == "SFT")
    other = next(item["jobId"] for item in api.job_list() if item["trainMode"] != "SFT")
    api.delete([sft, other])
    assert run_sync(engine, api, train_mode="SFT").jobs_deleted == 1
    rows = stored_jobs(engine)
    assert rows[sft]["deleted_at"] is not None and rows[other]["deleted_at"] is None
    assert run_sync(engine, api).jobs_deleted == 1
    assert stored_jobs(engine)[other]["deleted_at"] is not None


def test_cli_sync_json_and_runs(database_url, fake_api, api_env):
    """`qfsync sync --json` upgrades an empty database (saying so on stderr) and prints one
    object with the run's counts; `qfsync runs --json` lists runs newest first."""
    api = fake_api(300)
    api_env(api)
    runner = CliRunner()
    first = runner.invoke(main, ["sync", "--database-url", database_url, "--json"])
    assert first.exit_code == 0, first.output
    assert "upgraded the database schema" in first.stderr
    summary = json.loads(first.stdout)
    assert set(summary) >= {
        "run_id",
        "status",
        "pages",
        "jobs_seen",
        "jobs_inserted",
        "jobs_updated",
        "jobs_unchanged",
        "jobs_deleted",
        "duration_s",
    }
    assert (summary["status"], summary["jobs_seen"], summary["jobs_inserted"]) == (
        "succeeded",
        300,
        300,
    )
    second = runner.invoke(main, ["sync", "--database-url", database_url])
    assert second.exit_code == 0, second.output
    assert "0 inserted, 0 updated, 300 unchanged" in second.stdout
    assert "upgraded" not in second.stderr
    listing = runner.invoke(main, ["runs", "--database-url", database_url, "--json"])
    runs = json.loads(listing.stdout)
    assert [run["id"] for run in runs] == [summary["run_id"] + 1, summary["run_id"]]
    table = runner.invoke(main, ["runs", "--database-url", database_url, "--limit", "1"])
    assert table.exit_code == 0 and len(table.stdout.splitlines()) == 2


def test_no_migrate_refuses_with_the_command(database_url, fake_api, api_env):
    """`--no-migrate` on an empty database exits non-zero with the upgrade command to run."""
    api_env(fake_api(10))
    result = CliRunner().invoke(main, ["sync", "--database-url", database_url, "--no-migrate"])
    assert result.exit_code == 1
    assert "qfsync db upgrade" in result.stderr and len(result.stderr.splitlines()) == 1
    engine = db.connect(database_url)
    try:
        assert db.current_revision(engine) is None
    finally:
        engine.dispose()


def test_unicode_and_long_text_round_trip(engine, fake_api, run_sync):
    """Chinese text, emoji, quotes and descriptions of thousands of characters come back as sent."""
    api = fake_api(2000)
    run_sync(engine, api)
    items = api.job_list()
    longest = max(items, key=lambda item: len(item["description"]))
    emoji = next(item for item in items if any(ord(ch) > 0xFFFF for ch in item["name"]))
    assert len(longest["description"]) > 2000
    with engine.connect() as connection:
        for item in (longest, emoji):
            stored = connection.execute(
                text("SELECT name, description FROM finetuning_jobs WHERE job_id = :id"),
                {"id": item["jobId"]},
            ).one()
            assert tuple(stored) == (item["name"], item["description"])


def test_a_clock_stepped_back_mid_walk_deletes_no_job_the_walk_listed(
    engine, fake_api, run_sync, monkeypatch
):
    """The wall clock steps back two minutes (an NTP step, a resumed VM) after the third of
    eight pages: every job is still seen by this walk, and none is marked deleted."""
    api = fake_api(40)
    run_sync(engine, api, page_size=5)
    real = runs.utcnow
    stepped: list[bool] = []
    monkeypatch.setattr(runs, "utcnow", lambda: real() - timedelta(minutes=2 * len(stepped)))

    def progress(result) -> None:
        if result.pages == 3:
            stepped.append(True)

    result = run_sync(engine, api, page_size=5, progress=progress)
    assert (result.jobs_seen, result.jobs_unchanged, result.jobs_deleted) == (40, 40, 0)
    with engine.connect() as connection:
        deleted = connection.scalar(
            select(func.count()).where(finetuning_jobs.c.deleted_at.is_not(None))
        )
    assert stepped and deleted == 0
