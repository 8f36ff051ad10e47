"""Pull requests left before their end, against a real nats-server: what the server had
sent for them is held for the next pull, never left to `ack_wait` (a burst of jobs on an
idle stack was accepted 30 s late: the intake's wait on one tenant's consumer, cut short
when another tenant's job came, had unsubscribed its reply subject under a message in
flight); and a wait over several tenants' consumers listens to every tenant, also when
there are fewer free slots than tenants (the tenant left out started nothing until the
wait's end)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StreamConfig

from agentbus.bus.pull import HOLD_MAX_S, Puller
from agentbus.bus.tenant_pull import TenantPullers
from agentbus.dev.embedded import EmbeddedNatsServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

STREAM = "HOLDTEST"
TENANTS = ("default", "a", "b")
ACK_WAIT_S = 30.0


@dataclass
class Conns:
    worker: NatsClient
    publisher: NatsClient
    url: str

    def publish_while_blocked(self, tenant: str, body: str) -> None:
        """Publish from another thread while this event loop is blocked: the server sends
        the message to the waiting request, and this loop has not read it when it goes
        on (as when a message is on the wire at the moment a wait is left)."""

        async def publish() -> None:
            nc = await nats.connect(self.url)
            try:
                await nc.jetstream().publish(f"hold.{tenant}", body.encode(), stream=STREAM)
            finally:
                await nc.close()

        thread = threading.Thread(target=asyncio.run, args=(publish(),))
        thread.start()
        thread.join(timeout=10)
        time.sleep(0.2)  # and delivered to the waiting request meanwhile

    async def publish(self, tenant: str, body: str) -> None:
        await self.publisher.jetstream().publish(f"hold.{tenant}", body.encode(), stream=STREAM)

    async def waiting(self, tenant: str) -> int:
        info = await self.publisher.jetstream().consumer_info(STREAM, f"hold-{tenant}")
        return int(info.num_waiting or 0)


@pytest.fixture
async def conns(nats_server: EmbeddedNatsServer) -> AsyncIterator[Conns]:
    worker = await nats.connect(nats_server.url)
    publisher = await nats.connect(nats_server.url)
    js = publisher.jetstream()
    await js.add_stream(
        StreamConfig(name=STREAM, subjects=["hold.>"], retention=RetentionPolicy.WORK_QUEUE)
    )
    for tenant in TENANTS:
        await js.add_consumer(
            STREAM,
            ConsumerConfig(
                durable_name=f"hold-{tenant}",
                filter_subject=f"hold.{tenant}",
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=ACK_WAIT_S,
            ),
        )
    try:
        yield Conns(worker, publisher, nats_server.url)
    finally:
        await worker.close()
        await publisher.close()


async def until(cond: object, *, timeout_s: float = 10.0) -> None:
    assert callable(cond)
    deadline = time.monotonic() + timeout_s
    while not await cond():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def test_a_message_in_flight_when_a_wait_is_left_is_held_for_the_next_pull(
    conns: Conns,
) -> None:
    puller = Puller(conns.worker, stream=STREAM, durable="hold-a")
    await puller.start()
    got: list[Msg] = []
    waiting = asyncio.ensure_future(puller.pull(1, expires_s=20, deliver=got.append))
    await until(lambda: _at_least(conns.waiting("a"), 1))
    conns.publish_while_blocked("a", "in flight")
    await puller.cancel()  # the wait is left with the message on the wire
    assert await waiting == 0 and not got  # the left wait started nothing
    await asyncio.sleep(0.1)
    # the next pull takes it, first delivery: nothing waits for ack_wait
    assert await puller.pull(1, expires_s=5, deliver=got.append) == 1
    assert [m.data for m in got] == [b"in flight"]
    assert got[0].metadata.num_delivered == 1
    await got[0].ack()
    assert puller.stale == 1 and puller.handed_back == 0
    await puller.close()


async def test_a_held_message_no_pull_takes_goes_back_to_every_replica(
    conns: Conns, nats_server: EmbeddedNatsServer
) -> None:
    puller = Puller(conns.worker, stream=STREAM, durable="hold-a")
    await puller.start()
    waiting = asyncio.ensure_future(puller.pull(1, expires_s=20, deliver=lambda m: None))
    await until(lambda: _at_least(conns.waiting("a"), 1))
    conns.publish_while_blocked("a", "held")
    await puller.cancel()
    await waiting
    await until(lambda: _true(puller.held == 1))
    # another replica, asking meanwhile, gets it once it is handed back (not ack_wait)
    other = await nats.connect(nats_server.url)
    try:
        theirs = Puller(other, stream=STREAM, durable="hold-a")
        got: list[Msg] = []
        n = await theirs.pull(1, expires_s=HOLD_MAX_S + 5, deliver=got.append)
        assert n == 1 and [m.data for m in got] == [b"held"]
        assert got[0].metadata.num_delivered == 2
        assert puller.held == 0 and puller.handed_back == 1
        await got[0].ack()
        await theirs.close()
    finally:
        await other.close()
    await puller.close()


def _group(conns: Conns) -> TenantPullers:
    return TenantPullers(
        conns.worker,
        stream=STREAM,
        durables={t: f"hold-{t}" for t in TENANTS},
        weights=dict.fromkeys(TENANTS, 1),
    )


async def test_a_wait_with_fewer_slots_than_tenants_listens_to_every_tenant(
    conns: Conns,
) -> None:
    group = _group(conns)
    await group.start()
    got: list[Msg] = []
    # b has just started work (the highest pass): a plan for one slot leaves it last
    await conns.publish("b", "b-0")
    assert await group.pull(1, expires_s=0, deliver=got.append) == 1
    assert max(group.passes, key=lambda t: group.passes[t]) == "b"
    # one free slot, three tenants: the wait must still hear b
    waiting = asyncio.ensure_future(group.pull(1, expires_s=8, deliver=got.append))
    await until(lambda: _at_least(conns.waiting("b"), 1))
    await conns.publish("b", "b-1")
    assert await waiting == 1
    assert [m.data for m in got] == [b"b-0", b"b-1"]
    for msg in got:
        await msg.ack()
    await group.close()


async def test_more_answers_than_slots_are_held_and_started_next(conns: Conns) -> None:
    group = _group(conns)
    await group.start()
    got: list[Msg] = []
    waiting = asyncio.ensure_future(group.pull(1, expires_s=8, deliver=got.append))
    for tenant in TENANTS:
        await until(lambda t=tenant: _at_least(conns.waiting(t), 1))
    # two tenants answer at once; the replica has one slot
    await asyncio.gather(conns.publish("a", "a-0"), conns.publish("b", "b-0"))
    assert await waiting == 1 and len(got) == 1
    await until(lambda: _true(sum(p.held for p in group.pullers.values()) == 1))
    # the next pull starts the held one without asking the server
    assert await group.pull(4, expires_s=8, deliver=got.append) == 1
    assert sorted(m.data for m in got) == [b"a-0", b"b-0"]
    assert all(m.metadata.num_delivered == 1 for m in got)
    for msg in got:
        await msg.ack()
    await group.close()


async def _at_least(value: object, n: int) -> bool:
    assert asyncio.iscoroutine(value)
    return int(await value) >= n


async def _true(value: bool) -> bool:
    return value
