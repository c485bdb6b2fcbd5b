"""A complete walk must not delete what it merely failed to see: the mass-deletion guard."""

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select
from test_faults import runs_of

from qfsync.cli import main
from qfsync.errors import DeletionRefused
from qfsync.fake_api import DEFAULT_SEED
from qfsync.guard import DeleteLimit
from qfsync.schema import finetuning_jobs


def deleted_count(engine) -> int:
    with engine.connect() as connection:
        return connection.scalar(
            select(func.count()).where(finetuning_jobs.c.deleted_at.is_not(None))
        )


def test_an_empty_listing_after_1000_jobs_deletes_nothing(
    engine, database_url, fake_api, run_sync, api_env
):
    """After 1000 jobs were synced, an API that lists none (a wrong account, say) makes the
    run fail with one line saying how many and how to allow it; nothing is deleted, and the
    run's committed page stays. `--max-delete 100%` then allows it."""
    run_sync(engine, fake_api(1000))
    empty = fake_api(0)
    api_env(empty)
    refused = CliRunner().invoke(main, ["sync", "--database-url", database_url])
    assert refused.exit_code == 1, refused.output
    [line] = refused.stderr.splitlines()
    assert "would mark 1000 of the 1000 listed jobs of trainMode=*;model=* deleted" in line
    assert "--max-delete 1000" in line and "nothing was deleted" in line
    assert deleted_count(engine) == 0
    failed = runs_of(engine)[-1]
    assert failed["status"] == "failed" and failed["pages"] == 1 and not failed["complete"]
    assert failed["error"].startswith("the complete walk would mark 1000 of the 1000")

    allowed = CliRunner().invoke(
        main, ["sync", "--database-url", database_url, "--max-delete", "100%", "--json"]
    )
    assert allowed.exit_code == 0, allowed.output
    assert deleted_count(engine) == 1000


def test_deletions_under_the_limit_proceed(engine, fake_api, run_sync):
    """Deleting under half of the scope's listed jobs goes ahead with the default limit."""
    api = fake_api(100)
    run_sync(engine, api)
    api.delete([job["jobId"] for job in api.job_list()[:40]])
    result = run_sync(engine, api)
    assert result.status == "succeeded" and result.jobs_deleted == 40
    assert deleted_count(engine) == 40


def test_a_count_limit_and_the_free_few(engine, fake_api, run_sync):
    """A count limit refuses one more than it allows; under a share limit, up to 10 deletions
    always pass even when they are most of a small scope."""
    api = fake_api(12)
    run_sync(engine, api)
    api.delete([job["jobId"] for job in api.job_list()[:10]])
    with pytest.raises(DeletionRefused, match="would mark 10 of the 12 listed"):
        run_sync(engine, api, max_delete=DeleteLimit(count=9))
    assert deleted_count(engine) == 0
    assert run_sync(engine, api).jobs_deleted == 10  # default 50%, but only 10


def test_a_replaced_listing_trips_the_guard(engine, fake_api, run_sync):
    """Another account's jobs (a different seed) in place of ours: the walk stores the new jobs
    but marks none of ours deleted."""
    run_sync(engine, fake_api(300))
    with pytest.raises(DeletionRefused, match="would mark 300 of the 300 listed"):
        run_sync(engine, fake_api(200, seed=DEFAULT_SEED + 1))
    assert deleted_count(engine) == 0


def test_a_replaced_listing_of_the_same_size_trips_the_guard(engine, fake_api, run_sync):
    """Another account with as many jobs as ours: the share is of the jobs listed before the
    walk, so the jobs it just stored do not dilute it into "half" and let all of ours go."""
    run_sync(engine, fake_api(300))
    with pytest.raises(DeletionRefused, match="would mark 300 of the 300 listed"):
        run_sync(engine, fake_api(300, seed=DEFAULT_SEED + 1))
    assert deleted_count(engine) == 0


@pytest.mark.parametrize("value", ["half", "101%", "-1", "1.5", ""])
def test_bad_max_delete_is_a_usage_error(value, tmp_path):
    """A --max-delete that is neither a count nor a percentage exits 2 before any database."""
    url = f"sqlite:///{tmp_path / 'none.db'}"
    result = CliRunner().invoke(main, ["sync", "--database-url", url, "--max-delete", value])
    assert result.exit_code == 2 and "--max-delete" in result.stderr
    assert not (tmp_path / "none.db").exists()


def test_limits_parse():
    """`200` is a count, `50%` a share; up to 10 deletions always pass a share limit."""
    assert DeleteLimit.parse("200") == DeleteLimit(count=200)
    assert DeleteLimit.parse(" 50% ") == DeleteLimit(percent=50)
    half = DeleteLimit(percent=50)
    assert half.allows(10, 10) and not half.allows(11, 20) and half.allows(10, 20)
    assert half.allows(500, 1000) and not half.allows(501, 1000)
    assert DeleteLimit(count=0).allows(0, 5) and not DeleteLimit(count=0).allows(1, 5000)
