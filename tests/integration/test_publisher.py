"""The lean JetStream publisher (agentbus.publisher) and the KV compare-and-set writes
built on it, against a real nats-server."""

from __future__ import annotations

import asyncio

import nats.errors
import nats.js.errors
import pytest
from nats.aio.msg import Msg
from nats.js.api import StreamConfig

from agentbus.bus.core import Bus
from agentbus.bus.publisher import JetStreamPublisher
from agentbus.contract import subjects
from agentbus.dev.embedded import EmbeddedNatsServer

pytestmark = pytest.mark.integration


async def _never_answer(_msg: Msg) -> None:
    return None


async def test_confirmed_publishes_deduplicate_and_keep_order(bus: Bus) -> None:
    await bus.js.add_stream(StreamConfig(name="PUBTEST", subjects=["pubtest.>"]))
    pub = JetStreamPublisher(bus.nc)
    try:
        acks = await asyncio.gather(
            *(
                pub.publish("pubtest.a", f"m{i}".encode(), headers={"Nats-Msg-Id": f"id-{i}"})
                for i in range(200)
            )
        )
        assert [a.seq for a in acks] == list(range(1, 201))
        assert {a.stream for a in acks} == {"PUBTEST"} and not any(a.duplicate for a in acks)
        again = await pub.publish("pubtest.a", b"m7", headers={"Nats-Msg-Id": "id-7"})
        assert again.duplicate is True and again.seq == 8
        info = await bus.js.stream_info("PUBTEST")
        assert info.state.messages == 200
        last = await bus.js.get_msg("PUBTEST", 200)
        assert last.data == b"m199"
    finally:
        await pub.close()


async def test_no_stream_no_responders_and_api_errors(bus: Bus) -> None:
    pub = JetStreamPublisher(bus.nc)
    try:
        with pytest.raises(nats.errors.NoRespondersError):
            await pub.publish("nobody.listens.here", b"x")
        await bus.js.add_stream(StreamConfig(name="PUBERR", subjects=["puberr.>"]))
        with pytest.raises(nats.js.errors.BadRequestError) as e:  # expected-stream mismatch
            await pub.publish("puberr.a", b"x", headers={"Nats-Expected-Stream": "OTHER"})
        assert e.value.err_code == 10060
    finally:
        await pub.close()


async def test_a_lost_confirmation_times_out(bus: Bus) -> None:
    # a core subscriber that never answers stands in for a stream that does not confirm
    await bus.nc.subscribe("silent.subject", cb=_never_answer)
    pub = JetStreamPublisher(bus.nc)
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(nats.errors.TimeoutError):
            await pub.publish("silent.subject", b"x", timeout_s=0.3)
        assert 0.25 <= loop.time() - started < 1.5
        assert not pub._pending  # nothing left behind
    finally:
        await pub.close()


async def test_close_fails_what_is_still_waiting(nats_server: EmbeddedNatsServer) -> None:
    nc = await nats.connect(nats_server.url)
    await nc.subscribe("silent.subject", cb=_never_answer)
    pub = JetStreamPublisher(nc)
    waiting = asyncio.create_task(pub.publish("silent.subject", b"x", timeout_s=30))
    await asyncio.sleep(0.1)
    await pub.close()
    with pytest.raises(nats.errors.ConnectionClosedError):
        await waiting
    await nc.close()


async def test_a_confirmation_lost_in_a_reconnect_fails_once_the_connection_is_back(
    nats_server: EmbeddedNatsServer,
) -> None:
    """Waiting out the whole timeout would hold everything queued behind the publish."""
    nc = await nats.connect(nats_server.url, reconnect_time_wait=0.1, max_reconnect_attempts=-1)
    await nc.subscribe("silent.subject", cb=_never_answer)
    pub = JetStreamPublisher(nc)
    try:
        waiting = asyncio.create_task(pub.publish("silent.subject", b"x", timeout_s=120))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        nats_server.restart()  # same port: the client reconnects; the confirmation is lost
        with pytest.raises(nats.errors.TimeoutError):
            await asyncio.wait_for(waiting, timeout=60)  # not the publish's own 120 s
        assert nc.is_connected and nc.stats["reconnects"] == 1
        assert not pub._pending
        # a publish after the reconnect is confirmed as usual, and not failed by it
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name="PUBRECON", subjects=["pubrecon.>"]))
        ack = await pub.publish("pubrecon.a", b"y", headers={"Nats-Msg-Id": "r-1"})
        assert ack.seq == 1 and not ack.duplicate
    finally:
        await pub.close()
        await nc.close()


async def test_kv_compare_and_set(bus: Bus) -> None:
    b = subjects.JOBS_BUCKET
    rev1 = await bus.kv_create(b, "cas-1", b"one")
    with pytest.raises(nats.js.errors.KeyWrongLastSequenceError):
        await bus.kv_create(b, "cas-1", b"again")
    rev2 = await bus.kv_update(b, "cas-1", b"two", last=rev1)
    assert rev2 > rev1
    with pytest.raises(nats.js.errors.KeyWrongLastSequenceError):
        await bus.kv_update(b, "cas-1", b"stale", last=rev1)
    kv = await bus.kv(b)
    entry = await kv.get("cas-1")
    assert (entry.value, entry.revision) == (b"two", rev2)
    # a deleted key can be created again (its delete marker is not a value)
    await kv.delete("cas-1")
    rev3 = await bus.kv_create(b, "cas-1", b"three")
    assert (await kv.get("cas-1")).value == b"three" and rev3 > rev2
