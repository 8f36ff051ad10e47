"""`flush_barrier`: once it returns, the server has the subscriptions made before it, so
the first message another connection publishes arrives (nats-py's `flush` alone loses it
now and then: its PING overtakes the SUB still queued for the flusher task)."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator

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
FIRST_MESSAGE_WAIT_S = 10.0
"""A lost message never comes: the wait costs only when one is lost (not a slow machine)."""


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


@pytest.fixture
async def nc(nats_server: EmbeddedNatsServer) -> AsyncIterator[NatsClient]:
    client = await nats.connect(nats_server.url)
    try:
        yield client
    finally:
        await client.close()


def _record_writes(client: NatsClient, monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every command `client` writes to its socket from now on, in order."""
    written: list[bytes] = []
    transport = client._transport
    assert transport is not None
    write, writelines = transport.write, transport.writelines

    def write_one(data: bytes) -> None:
        written.append(bytes(data))
        write(data)

    def write_many(data: list[bytes]) -> None:
        written.extend(bytes(d) for d in data)
        writelines(data)

    monkeypatch.setattr(transport, "write", write_one)
    monkeypatch.setattr(transport, "writelines", write_many)
    return written


def _first(written: list[bytes], prefix: bytes) -> int:
    return next(i for i, cmd in enumerate(written) if cmd.startswith(prefix))


async def test_the_barrier_writes_queued_commands_before_its_ping(
    nc: NatsClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deterministic, where the tests above are statistical: the SUB and UNSUB reach the
    socket before the PING whose PONG the barrier waits for."""
    written = _record_writes(nc, monkeypatch)
    sub = await nc.subscribe("order.a")
    await flush_barrier(nc)
    assert _first(written, b"SUB order.a") < _first(written, b"PING")
    written.clear()
    await sub.unsubscribe()
    await flush_barrier(nc)
    assert _first(written, b"UNSUB") < _first(written, b"PING")


async def test_nats_py_flush_alone_still_lets_its_ping_overtake_a_queued_sub(
    nc: NatsClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Why `flush_barrier` exists, and what it relies on. When a nats-py upgrade fails
    this test, its `flush` may have become a barrier: check, and drop the workaround."""
    params = inspect.signature(nc._flush_pending).parameters
    assert "force_flush" in params
    written = _record_writes(nc, monkeypatch)
    await nc.subscribe("order.b")
    await nc.flush()
    assert _first(written, b"PING") < _first(written, b"SUB order.b")


async def test_the_barrier_times_out_when_queued_commands_cannot_be_written(
    nc: NatsClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A socket that takes nothing (the flusher stuck draining it): the barrier raises
    after its timeout, without going on to a flush of its own (nats-py's
    `_flush_pending` swallows cancellation: `asyncio.wait_for` alone would return)."""
    transport = nc._transport
    assert transport is not None
    unblock = asyncio.Event()
    drain = transport.drain

    async def stuck() -> None:
        await unblock.wait()
        await drain()  # type: ignore[no-untyped-call]  # nats-py's transport is untyped

    monkeypatch.setattr(transport, "drain", stuck)
    flushes: list[float] = []

    async def flush(**options: float) -> None:
        flushes.append(options.get("timeout", 0.0))

    await nc.publish("stuck", b"x")  # the flusher takes it and waits in drain
    await asyncio.sleep(0.05)
    monkeypatch.setattr(nc, "flush", flush)
    with pytest.raises(nats.errors.FlushTimeoutError):
        await flush_barrier(nc, timeout_s=0.5)
    assert flushes == []
    unblock.set()
    monkeypatch.undo()
    await flush_barrier(nc)  # the connection still works


@pytest.mark.timeout(60)
async def test_the_barrier_on_a_closed_connection_raises(
    nats_server: EmbeddedNatsServer,
) -> None:
    nc = await nats.connect(nats_server.url)
    await nc.close()
    with pytest.raises(nats.errors.ConnectionClosedError):
        await flush_barrier(nc)
