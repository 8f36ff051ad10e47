"""`flush_barrier`: once it returns, the server has the subscriptions made before it, so
the first message another connection publishes arrives (nats-py's `flush` alone loses it
now and then: its PING overtakes the SUB still queued for the flusher task)."""

from __future__ import annotations

import asyncio

import nats
import nats.errors
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from agentbus.bus.connect import flush_barrier
from agentbus.dev.embedded import EmbeddedNatsServer

pytestmark = pytest.mark.integration

SUBSCRIPTIONS = 500
"""Per connection shape. With `nc.flush()` in place of the barrier, 200 on one connection
lost 11 first messages on a quiet machine (1 of 500 beside two CPU hogs)."""
FIRST_MESSAGE_WAIT_S = 2.0


async def _lost_first_messages(
    subscriber: NatsClient | None, publisher: NatsClient, url: str, *, prefix: str
) -> list[int]:
    """Subscribe to a new subject (on `subscriber`, or on a new connection each time when
    None), barrier, publish once from `publisher`: the subjects whose message never came."""
    lost: list[int] = []
    for i in range(SUBSCRIPTIONS):
        nc = subscriber or await nats.connect(url)
        got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        async def on_msg(msg: Msg, got: asyncio.Future[bytes] = got) -> None:
            if not got.done():
                got.set_result(msg.data)

        sub = await nc.subscribe(f"{prefix}.{i}", cb=on_msg)
        await flush_barrier(nc)
        await publisher.publish(f"{prefix}.{i}", str(i).encode())
        await publisher.flush()
        try:
            assert await asyncio.wait_for(got, FIRST_MESSAGE_WAIT_S) == str(i).encode()
        except TimeoutError:
            lost.append(i)
        if subscriber is None:
            await nc.close()
        else:
            await sub.unsubscribe()
    return lost


async def _lost_after_leaving(
    leaver: NatsClient, stayer: NatsClient, publisher: NatsClient, *, prefix: str
) -> list[int]:
    """Both in one queue group, `leaver` unsubscribes and barriers, one message is
    published: the subjects whose message did not reach `stayer` (the server gave it to
    the member that had left; a paused worker's requests would time out the same way)."""
    lost: list[int] = []
    for i in range(SUBSCRIPTIONS):
        subject = f"{prefix}.{i}"
        stays = await stayer.subscribe(subject, queue="q")
        leaves = await leaver.subscribe(subject, queue="q")
        await flush_barrier(stayer)
        await flush_barrier(leaver)
        await leaves.unsubscribe()
        await flush_barrier(leaver)
        await publisher.publish(subject, b"x")
        await publisher.flush()
        try:
            await stays.next_msg(timeout=FIRST_MESSAGE_WAIT_S)
        except nats.errors.TimeoutError:
            lost.append(i)
        await stays.unsubscribe()
    return lost


@pytest.mark.timeout(180)
async def test_a_subscription_behind_the_barrier_gets_the_first_message(
    nats_server: EmbeddedNatsServer,
) -> None:
    publisher = await nats.connect(nats_server.url)
    subscriber = await nats.connect(nats_server.url)
    try:
        same = await _lost_first_messages(subscriber, publisher, nats_server.url, prefix="one")
        fresh = await _lost_first_messages(None, publisher, nats_server.url, prefix="new")
        assert (same, fresh) == ([], [])
        assert subscriber.stats["in_msgs"] == SUBSCRIPTIONS
    finally:
        await subscriber.close()
        await publisher.close()


@pytest.mark.timeout(180)
async def test_a_queue_member_that_left_behind_the_barrier_gets_nothing(
    nats_server: EmbeddedNatsServer,
) -> None:
    clients = [await nats.connect(nats_server.url) for _ in range(3)]
    leaver, stayer, publisher = clients
    try:
        assert await _lost_after_leaving(leaver, stayer, publisher, prefix="q") == []
        assert (leaver.stats["in_msgs"], stayer.stats["in_msgs"]) == (0, SUBSCRIPTIONS)
    finally:
        for nc in clients:
            await nc.close()


@pytest.mark.timeout(60)
async def test_the_barrier_on_a_closed_connection_raises(
    nats_server: EmbeddedNatsServer,
) -> None:
    nc = await nats.connect(nats_server.url)
    await nc.close()
    with pytest.raises(nats.errors.ConnectionClosedError):
        await flush_barrier(nc)
