"""ConsumerLoop against a real nats-server: a replica is delivered no more messages than it
has free slots, whatever the timing of its pull requests (the cause of a redelivery of
tasks that were never started: `agentbus.pull`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest
from nats.aio.msg import Msg

from agentbus.bus.consume import ConsumerLoop
from agentbus.bus.core import Bus
from agentbus.bus.pull import Puller
from agentbus.contract import subjects
from agentbus.contract.errors import PullError
from agentbus.contract.settings import Settings

pytestmark = pytest.mark.integration

SLOTS = 4


async def until(cond: Callable[[], bool], *, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


class Holder:
    """A handler that holds its slot until released, then acks."""

    def __init__(self) -> None:
        self.started: list[bytes] = []
        self.release = asyncio.Event()

    async def __call__(self, msg: Msg) -> None:
        self.started.append(msg.data)
        await self.release.wait()
        await msg.ack()


async def sample_consumer(bus: Bus, *, seconds: float) -> tuple[int, int]:
    """The largest ack-pending count and number of waiting pull requests seen."""
    most_pending = most_waiting = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        info = await bus.js.consumer_info(subjects.TASKS_STREAM, subjects.WORKERS_CONSUMER)
        most_pending = max(most_pending, int(info.num_ack_pending or 0))
        most_waiting = max(most_waiting, int(info.num_waiting or 0))
        await asyncio.sleep(0.03)
    return most_pending, most_waiting


async def publish_tasks(bus: Bus, prefix: str, n: int) -> None:
    subject = subjects.task_assign(subjects.SUMMARIZE_SKILL)
    for i in range(n):
        await bus.publish_raw(
            subject, f"{prefix}-{i}".encode(), msg_id=f"{prefix}-{i}", stream=subjects.TASKS_STREAM
        )


@pytest.mark.timeout(90)
async def test_a_replica_is_delivered_no_more_than_its_free_slots(
    bus: Bus, settings: Settings
) -> None:
    """An idle replica keeps pulling with a short timeout; then a burst arrives while it
    can start only SLOTS of them. Before the fix, one idle pull loop kept two requests
    open on the server (each for every free slot) and the burst put up to 2 x SLOTS
    messages on the replica: the extra ones waited unacked past ack_wait."""
    holder = Holder()
    loop = ConsumerLoop(
        bus,
        stream=subjects.TASKS_STREAM,
        durable=subjects.WORKERS_CONSUMER,
        handler=holder,
        concurrency=SLOTS,
        fetch_timeout_s=0.2,
    )
    task = asyncio.create_task(loop.run())
    try:
        for round_ in range(4):
            # idle: several pull requests come and go; never two open at once
            _, waiting = await sample_consumer(bus, seconds=1.0)
            assert waiting <= 1, f"round {round_}: {waiting} pull requests open at once"
            await publish_tasks(bus, f"r{round_}", 3 * SLOTS)
            await until(lambda: len(holder.started) >= SLOTS)
            pending, waiting = await sample_consumer(bus, seconds=1.0)
            assert (pending, len(holder.started)) == (SLOTS, SLOTS), (
                f"round {round_}: {pending} delivered and {len(holder.started)} started "
                f"for {SLOTS} slots"
            )
            # the rest, slot by slot, each message exactly once
            holder.release.set()
            await until(lambda: len(holder.started) == 3 * SLOTS and loop.in_flight == 0)
            assert sorted(holder.started) == sorted(
                f"r{round_}-{i}".encode() for i in range(3 * SLOTS)
            )
            holder.started.clear()
            holder.release.clear()
        info = await bus.js.consumer_info(subjects.TASKS_STREAM, subjects.WORKERS_CONSUMER)
        assert info.num_redelivered == 0 and info.num_ack_pending == 0 and info.num_pending == 0
    finally:
        holder.release.set()
        loop.stop()
        await task
        assert await loop.wait_idle(timeout_s=5)
        await loop.close()


async def _noop(_msg: Msg) -> None:
    return None


@pytest.mark.parametrize("idle_s", [0.0, 0.5])
async def test_stop_ends_the_loop_within_one_pull(
    bus: Bus, settings: Settings, idle_s: float
) -> None:
    handler: Callable[[Msg], Awaitable[None]] = _noop
    loop = ConsumerLoop(
        bus,
        stream=subjects.TASKS_STREAM,
        durable=subjects.WORKERS_CONSUMER,
        handler=handler,
        concurrency=SLOTS,
        fetch_timeout_s=0.5,
    )
    task = asyncio.create_task(loop.run())
    await asyncio.sleep(idle_s)
    started = time.monotonic()
    loop.stop()
    await asyncio.wait_for(task, 10)
    assert time.monotonic() - started < 5  # one open request's expiry, on a loaded CPU
    await loop.close()


async def test_a_pull_on_a_missing_consumer_fails_naming_it(bus: Bus) -> None:
    puller = Puller(bus.nc, stream=subjects.TASKS_STREAM, durable="nobody-workers")
    await puller.start()
    try:
        with pytest.raises(PullError) as info:
            await puller.pull(3, expires_s=0.5, deliver=lambda _m: None)
        assert str(info.value) == (
            "consumer nobody-workers on TASKS: 503 no responders "
            "(no such consumer, or JetStream unavailable)"
        )
    finally:
        await puller.close()
