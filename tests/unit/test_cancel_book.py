"""A worker's bookkeeping of canceled jobs (agentbus.runtime.cancels.CancelBook)."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentbus.runtime.cancels import CancelBook

pytestmark = pytest.mark.unit


def test_a_job_is_read_once_per_connection_epoch() -> None:
    book = CancelBook()
    assert book.needs_check("a", epoch=0)
    book.checked("a", epoch=0, canceled=False)
    assert not book.needs_check("a", epoch=0) and not book.is_canceled("a")
    # a reconnect: broadcasts of the gap may be lost, so the job is read again
    assert book.needs_check("a", epoch=1)


def test_a_canceled_job_is_never_read_again_and_stays_canceled() -> None:
    book = CancelBook()
    book.checked("a", epoch=0, canceled=True)
    assert book.is_canceled("a")
    assert not book.needs_check("a", epoch=5) and book.is_canceled("a")
    book.cancel("b")  # the broadcast
    assert book.is_canceled("b") and not book.needs_check("b", epoch=5)


def test_a_read_from_an_older_epoch_is_not_trusted() -> None:
    book = CancelBook()
    assert book.needs_check("a", epoch=0)
    assert book.needs_check("x", epoch=1)  # a reconnect while "a" was being read
    book.checked("a", epoch=0, canceled=False)
    assert book.needs_check("a", epoch=1)


async def test_cancel_returns_the_running_tasks_of_the_job() -> None:
    book = CancelBook()
    gate = asyncio.Event()
    t1 = asyncio.ensure_future(gate.wait())
    t2 = asyncio.ensure_future(gate.wait())
    with book.running("a", t1), book.running("b", t2):
        assert book.cancel("a") == [t1]
    assert book.cancel("a") == []  # finished tasks are forgotten
    gate.set()
    await asyncio.gather(t1, t2)


@given(st.lists(st.integers(0, 50), max_size=200), st.integers(1, 20))
def test_memory_is_bounded(jobs: list[int], limit: int) -> None:
    book = CancelBook(limit=limit)
    for j in jobs:
        book.cancel(f"j{j}")
        book.checked(f"k{j}", epoch=0, canceled=False)
    assert sum(book.is_canceled(f"j{j}") for j in set(jobs)) <= limit
    if jobs:
        assert book.is_canceled(f"j{jobs[-1]}")
