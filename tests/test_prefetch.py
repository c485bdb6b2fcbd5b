"""The stages of a full walk: the fetch thread's pages, and the next page prepared while the
database writes this one (`Upcoming`), which never waits for the network inside a page's
transaction and never fails that page for its successor's fault."""

import threading
import time
from collections.abc import Iterator

import pytest

from qfsync.errors import ApiError, ForcedInterrupt
from qfsync.syncer import Prefetched, Upcoming


def held_back(gate: threading.Event, *items: str, sent: list | None = None) -> Iterator[str]:
    """The items, once `gate` is set (a page still on its way from the API), each noted in
    `sent` as it goes."""
    gate.wait(30)
    for item in items:
        if sent is not None:
            sent.append(item)
        yield item


def test_the_next_page_not_yet_fetched_is_not_waited_for_meanwhile():
    """Called while the page is still on its way, `Upcoming` returns at once; `get` then
    waits for it and prepares it."""
    gate, halt, sent = threading.Event(), threading.Event(), []
    pages = Prefetched(held_back(gate, "page 2", sent=sent), halt, "test-fetch")
    try:
        upcoming = Upcoming(pages, lambda page: f"ready {page}")  # type: ignore[arg-type]
        upcoming()
        assert sent == []  # it returned before the page came (waiting, it would have seen it)
        gate.set()
        assert upcoming.get() == "ready page 2"
    finally:
        halt.set()
        pages.close()


def failing_walk() -> Iterator[str]:
    raise ApiError("InternalError", "the API failed")
    yield "never"


def refuse(page: str) -> str:
    raise ValueError(f"{page} does not fit")


@pytest.mark.parametrize(
    ("items", "ready", "error"),
    [(failing_walk(), str, ApiError), (iter(["page 2"]), refuse, ValueError)],
    ids=["fetching", "preparing"],
)
def test_a_failure_of_the_next_page_is_raised_once_this_one_is_written(items, ready, error):
    """Whether the next page's fetch or its preparation fails, and whether or not it did so
    before `meanwhile` ran, nothing is raised while this page is written: only by `get`,
    which the sync calls after this page's commit."""
    halt = threading.Event()
    pages = Prefetched(items, halt, "test-fetch")
    try:
        upcoming = Upcoming(pages, ready)
        upcoming()
        with pytest.raises(error):
            upcoming.get()
    finally:
        halt.set()
        pages.close()


def test_a_halted_walk_has_no_next_page():
    """A stop request halts the fetch stage: there is no next page, and `get` says so rather
    than waiting for one."""
    gate, halt = threading.Event(), threading.Event()
    pages = Prefetched(held_back(gate, "page 2"), halt, "test-fetch")
    try:
        upcoming = Upcoming(pages, str)
        upcoming()
        halt.set()
        assert upcoming.get() is None
    finally:
        gate.set()
        pages.close()


class HostTerminated(BaseException):
    """What a host raises to end a task, as Airflow's AirflowTaskTerminated does."""


def test_even_a_base_exception_of_the_next_page_waits_for_this_ones_commit():
    """A BaseException from the next page's fetch thread or preparation (a host's own) is held
    like any failure: the page being written still commits, as with the prepare thread."""
    halt = threading.Event()
    pages = Prefetched(iter(["page 2"]), halt, "test-fetch")
    try:

        def terminate(page: str) -> str:
            raise HostTerminated(page)

        upcoming = Upcoming(pages, terminate)  # type: ignore[arg-type]
        upcoming()
        with pytest.raises(HostTerminated):
            upcoming.get()
    finally:
        halt.set()
        pages.close()


def test_a_forced_stop_during_the_preparation_acts_at_once():
    """The second signal's ForcedInterrupt stops the sync where it is: raised inside `meanwhile`
    it leaves at once, and the page's transaction with it, rather than wait for the commit."""
    halt = threading.Event()
    pages = Prefetched(iter(["page 2"]), halt, "test-fetch")

    def forced(page: str) -> str:
        raise ForcedInterrupt("SIGINT", 130)

    try:
        upcoming = Upcoming(pages, forced)  # type: ignore[arg-type]
        deadline = time.monotonic() + 30
        with pytest.raises(ForcedInterrupt):
            while time.monotonic() < deadline:
                upcoming()  # returns while page 2 is on its way, raises once it is prepared
                time.sleep(0.01)
    finally:
        halt.set()
        pages.close()
