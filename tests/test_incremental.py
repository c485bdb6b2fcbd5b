"""Incremental sync: newest first, stops at the first page with nothing new, never deletes."""

import pytest
from sqlalchemy import func, select

from qfsync.errors import RetriesExhausted
from qfsync.fake_api import Faults
from qfsync.schema import finetuning_jobs, sync_runs


def count_listed(engine) -> int:
    with engine.connect() as connection:
        return connection.scalar(select(func.count()).where(finetuning_jobs.c.deleted_at.is_(None)))


def test_new_jobs_cost_two_requests(engine, fake_api, run_sync):
    """With every job stored and 50 new ones, an incremental sync makes 2 requests, inserts
    exactly the new jobs, and records its mode."""
    api = fake_api(3000)
    run_sync(engine, api)
    new = {job["jobId"] for job in api.add(50)}
    api.reset_counters()
    result = run_sync(engine, api, incremental=True)
    assert api.request_count == result.requests == 2
    assert all(body["pageReverse"] is True for body in api.bodies)
    assert (result.mode, result.jobs_inserted, result.jobs_deleted) == ("incremental", 50, 0)
    with engine.connect() as connection:
        stored = set(connection.scalars(select(finetuning_jobs.c.job_id)))
        run = connection.execute(select(sync_runs).where(sync_runs.c.id == result.run_id)).one()
    assert new <= stored and len(stored) == 3050
    assert (run.mode, run.status) == ("incremental", "succeeded")


def test_nothing_new_costs_one_request(engine, fake_api, run_sync):
    """When the newest page is all known and unchanged, the sync stops after it."""
    api = fake_api(1000)
    run_sync(engine, api)
    api.reset_counters()
    result = run_sync(engine, api, incremental=True)
    assert api.request_count == 1 and result.jobs_inserted == 0


def test_never_deletes(engine, fake_api, run_sync):
    """Jobs gone from the API stay listed after an incremental sync; a full one marks them."""
    api = fake_api(500)
    run_sync(engine, api)
    api.delete([job["jobId"] for job in api.job_list()[:5]])
    api.add(3)
    assert run_sync(engine, api, incremental=True).jobs_deleted == 0
    assert count_listed(engine) == 503
    assert run_sync(engine, api).jobs_deleted == 5
    assert count_listed(engine) == 498


def test_uses_the_default_order_when_it_is_newest_first(engine, fake_api, run_sync):
    """An API that lists newest first without pageReverse is walked without it."""
    api = fake_api(1000, order="descending")
    run_sync(engine, api)
    api.add(10)
    api.reset_counters()
    result = run_sync(engine, api, incremental=True)
    assert result.jobs_inserted == 10 and result.mode == "incremental"
    assert api.bodies[-1]["pageReverse"] is False and api.request_count == 3


def test_falls_back_to_a_full_walk_when_not_newest_first(engine, fake_api, run_sync):
    """If neither order is newest first, the sync says so and walks everything, exactly."""
    api = fake_api(1000, order="ignores-reverse")
    result = run_sync(engine, api, incremental=True)
    assert any("falling back to a full walk" in note for note in result.notes)
    assert result.mode == "full" and result.jobs_inserted == 1000
    assert count_listed(engine) == 1000


def test_a_fallback_that_fails_leaves_no_marker_to_resume_from(engine, fake_api, run_sync):
    """An incremental run writes newest-first pages, finds the listing out of order, falls
    back to a full walk and fails on its first request. The next full sync must walk from
    the start: resuming at the newest-first marker would skip the older jobs and mark them
    deleted although the API lists them."""
    api = fake_api(15)
    run_sync(engine, api, page_size=5)
    listing = api.job_list()
    api.rename([job["jobId"] for job in listing[10:]])  # the newest page has changes
    # The first job of the second newest-first page is made the newest of all: out of order.
    api._change([listing[9]["jobId"]], lambda job: {**job, "createTime": "2030-01-01T00:00:00Z"})
    api.faults = Faults(fail_after_pages=2)  # two newest-first pages, then only errors
    with pytest.raises(RetriesExhausted):
        run_sync(engine, api, page_size=5, incremental=True)
    with engine.connect() as connection:
        failed = connection.execute(select(sync_runs).order_by(sync_runs.c.id.desc())).first()
    assert (failed.mode, failed.status, failed.next_marker) == ("full", "failed", None)
    api.faults = Faults()
    result = run_sync(engine, api, page_size=5)
    assert (result.resumed_from, result.jobs_seen, result.jobs_deleted) == (None, 15, 0)
    assert count_listed(engine) == 15


def test_pages_of_one_job_cannot_pass_for_newest_first(engine, fake_api, run_sync):
    """With one job a page, any order looks newest first: an API that ignores pageReverse
    would end the walk at its oldest job, unchanged, and miss the new ones. The sync falls back
    to a full walk instead, and finds them."""
    api = fake_api(10, order="ignores-reverse")
    run_sync(engine, api, page_size=1)
    api.add(5)
    result = run_sync(engine, api, page_size=1, incremental=True)
    assert any("fewer than two dated jobs" in note for note in result.notes)
    assert (result.mode, result.jobs_inserted) == ("full", 5)
    assert count_listed(engine) == 15
