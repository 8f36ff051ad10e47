"""A worker's bookkeeping of canceled jobs (agentbus.runtime.cancels.CancelBook)."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentbus.runtime.cancels import SKEW_MARGIN_S, CancelBook, CancelWatch

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


class _Kv:
    def __init__(self) -> None:
        self.reads: list[str] = []

    async def get(self, key: str) -> SimpleNamespace:
        self.reads.append(key)
        return SimpleNamespace(value=None)


async def test_only_tasks_stored_before_the_replica_listened_read_the_job_state() -> None:
    """A task stored while the broadcast reached us needs no read: no task of a job is
    published after its cancel. Steady state: no read at all; after a reconnect the
    clock starts again."""
    from agentbus.bus.core import Bus

    kv = _Kv()

    async def bucket(_name: str) -> _Kv:
        return kv

    nc = SimpleNamespace(stats={"reconnects": 0})
    watch = CancelWatch(cast(Bus, SimpleNamespace(nc=nc, kv=bucket)))
    watch._listening()
    now = time.time()
    assert not watch.check("late", stored_at_s=now + SKEW_MARGIN_S + 1)
    assert not watch.check("early", stored_at_s=now - 60)
    assert not watch.check("unknown")  # no stored time (not from a consumer): read
    await asyncio.sleep(0.01)
    assert sorted(kv.reads) == ["early", "unknown"]
    soon = now + SKEW_MARGIN_S + 0.5
    assert not watch.check("x", stored_at_s=soon)  # listened for long enough: no read
    await asyncio.sleep(0.6)
    nc.stats["reconnects"] = 1  # broadcasts of the gap may be lost: the clock starts again
    assert not watch.check("x", stored_at_s=soon)
    await asyncio.sleep(0.01)
    assert sorted(kv.reads) == ["early", "unknown", "x"]
