"""History of any size: the store's keyset pages on SQLite and PostgreSQL, and
`rpc.history` end to end (archiver, `AgentBusClient.history`, `agentbus history`) on jobs of
thousands of events, against a nats-server whose max_payload is 256 KiB so that the byte
cap of every reply is exercised."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from sqlalchemy import text

from agentbus.bus.connect import flush_barrier
from agentbus.bus.core import Bus
from agentbus.bus.topology import provision
from agentbus.client.api import AgentBusClient
from agentbus.contract import subjects
from agentbus.contract.messages import (
    AgentEvent,
    AgentEventBatch,
    EventKind,
    HistoryQuery,
    HistoryReply,
    decode,
    encode,
)
from agentbus.contract.settings import Settings
from agentbus.dev.embedded import EmbeddedNatsServer
from agentbus_event_archiver import EventArchiver, EventStore
from agentbus_event_archiver.paging import HistoryKey
from agentbus_event_archiver.schema import head_revision
from tests.conftest import Running, make_settings
from tests.integration.rpc_helpers import wait_for

pytestmark = pytest.mark.integration

MAX_PAYLOAD: Final = 256 * 1024
T0: Final = datetime(2025, 3, 1, tzinfo=UTC)


def event(i: int, *, job_id: str, ts: datetime, data: dict[str, Any] | None = None) -> AgentEvent:
    return AgentEvent(
        event_id=f"{job_id}-{i:05d}",
        agent_id="worker-1",
        service="worker",
        kind=EventKind.TASK_COMPLETED,
        job_id=job_id,
        task_id=f"0-{i}",
        data=data if data is not None else {"i": i},
        ts=ts,
    )


async def walk(store: EventStore, job_id: str, *, limit: int) -> list[tuple[HistoryKey, int]]:
    """Every (key, data["i"]) of the job, page after page, as the archiver reads them."""
    got: list[tuple[HistoryKey, int]] = []
    after: HistoryKey | None = None
    while True:
        page = await store.history_page(job_id, after=after, limit=limit)
        got.extend((key, int(ev.data["i"])) for key, ev in page)
        if len(page) < limit:
            return got
        after = page[-1][0]


# --- the store ----------------------------------------------------------------------


@pytest.mark.timeout(120)
async def test_keyset_pages_of_tied_events_cover_the_history_once(database_url: str) -> None:
    store = EventStore(database_url)
    try:
        await store.create_schema()
        # 5,000 events: 50 instants of 100 events; batches of 25 share a stream sequence
        rows = [
            (event(i, job_id="job-1", ts=T0 + timedelta(milliseconds=i // 100)),
             "agent.worker-1.events", 1000 + i // 25)
            for i in range(5000)
        ]  # fmt: skip
        other = [(event(i, job_id="job-2", ts=T0), "agent.worker-1.events", 1) for i in range(300)]
        await store.insert(rows[2500:] + other[:150])  # out of order, interleaved with job-2
        await store.insert(other[150:] + rows[:2500])
        for limit in (173, 1000):
            got = await walk(store, "job-1", limit=limit)
            assert [i for _key, i in got] == list(range(5000))  # exact, ordered, no repeat
            keys = [key for key, _i in got]
            assert keys == sorted(keys) and len(set(keys)) == 5000
        assert [e.data["i"] for e in await store.history("job-1", limit=3)] == [0, 1, 2]
        assert len(await walk(store, "job-2", limit=7)) == 300
        assert await store.history_page("no-such-job", limit=10) == []
    finally:
        await store.close()


async def test_the_history_index_serves_the_keyset_query(database_url: str) -> None:
    store = EventStore(database_url)
    try:
        await store.create_schema()
        after = {"job": "job-1", "ts": T0, "seq": 5, "id": "ev-1"}
        query = (
            "SELECT * FROM agent_events WHERE job_id = :job "
            "AND (ts, stream_seq, event_id) > (:ts, :seq, :id) "
            "ORDER BY ts, stream_seq, event_id LIMIT 500"
        )
        async with store.engine.connect() as conn:
            if store.dialect == "sqlite":
                params = {**after, "ts": T0.strftime("%Y-%m-%d %H:%M:%S.%f")}
                rows = await conn.execute(text(f"EXPLAIN QUERY PLAN {query}"), params)
                plan = " | ".join(str(r[-1]) for r in rows)
            else:
                await conn.execute(text("SET enable_seqscan = off"))
                rows = await conn.execute(text(f"EXPLAIN {query}"), after)
                plan = " | ".join(str(r[0]) for r in rows)
        assert "ix_agent_events_job_order" in plan, plan
        assert "TEMP B-TREE" not in plan and "Sort" not in plan, plan  # read in index order
    finally:
        await store.close()


async def test_an_archive_of_schema_2_gets_the_history_index(database_url: str) -> None:
    store = EventStore(database_url)
    try:
        await store.create_schema()
        await store.insert([(event(1, job_id="job-1", ts=T0), "agent.x.events", 1)])
        async with store.engine.begin() as conn:  # as the previous release left it
            await conn.execute(text("DROP INDEX ix_agent_events_job_order"))
            await conn.execute(text("CREATE INDEX ix_agent_events_job_ts ON agent_events "
                                    "(job_id, ts)"))  # fmt: skip
            # no tenant column yet, and the hand-written version table of the release
            # before Alembic
            await conn.execute(text("ALTER TABLE agent_events DROP COLUMN tenant"))
            await conn.execute(text("DROP TABLE alembic_version"))
            await conn.execute(
                text("CREATE TABLE agentbus_schema (id INTEGER PRIMARY KEY, version INTEGER)")
            )
            await conn.execute(text("INSERT INTO agentbus_schema (id, version) VALUES (1, 2)"))
        assert await store.create_schema() == "legacy-2"
        assert await store.schema_revision() == head_revision()

        def indexes(sync_conn: Any) -> set[str]:
            from sqlalchemy import inspect

            return {str(i["name"]) for i in inspect(sync_conn).get_indexes("agent_events")}

        async with store.engine.connect() as conn:
            assert await conn.run_sync(indexes) == {
                "ix_agent_events_job_order",
                "ix_agent_events_kind",
            }
        assert [e.event_id for e in await store.history("job-1")] == ["job-1-00001"]
    finally:
        await store.close()


# --- rpc.history end to end, under a 256 KiB max_payload ----------------------------------


@pytest.fixture
def small_payload_server(tmp_path: Path) -> Iterator[EmbeddedNatsServer]:
    config = tmp_path / "nats.conf"
    config.write_text(f"max_payload: {MAX_PAYLOAD}\n")
    server = EmbeddedNatsServer(store_dir=tmp_path / "js", config_file=config)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Stack:
    settings: Settings
    bus: Bus
    archiver: EventArchiver
    replies: list[int] = field(default_factory=list)
    """Sizes of every `history.reply` seen on the wire."""
    spy: tuple[NatsClient, Subscription] | None = None

    async def all_replies_seen(self) -> None:
        """Every reply the server delivered to the spy before now is in `replies` (its
        PONG comes after them; its callback has run once its queue is empty)."""
        assert self.spy is not None
        nc, sub = self.spy
        await nc.flush()
        await wait_for(lambda: sub.pending_msgs == 0)


@pytest.fixture
async def stack(
    small_payload_server: EmbeddedNatsServer, tmp_path: Path, running: Running
) -> AsyncIterator[Stack]:
    s = make_settings(small_payload_server.url, tmp_path)
    bus = await Bus.connect(s.nats, agent_id="producer-1", service="worker")
    await provision(bus.js, s)
    archiver = await running.start(EventArchiver, s, "arch-1")
    assert isinstance(archiver, EventArchiver)
    # a spy on the replies' inboxes: what the server delivered, and how large it was
    spy = await nats.connect(s.nats.url)
    result = Stack(s, bus, archiver)

    async def seen(msg: Msg) -> None:
        if b'"msg_type":"history.reply"' in msg.data[:200]:
            result.replies.append(len(msg.data))

    result.spy = (spy, await spy.subscribe("_INBOX.>", cb=seen))
    await flush_barrier(spy)
    try:
        assert bus.nc.max_payload == MAX_PAYLOAD
        yield result
    finally:
        await spy.close()
        await bus.close()


async def archived(store: EventStore, count: int, *, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while (n := await store.count()) < count:
        assert time.monotonic() < deadline, f"{n} of {count} events archived"
        await asyncio.sleep(0.2)
    assert await store.count() == count


async def cli_history(url: str, job_id: str) -> str:
    """`agentbus history JOB --json` as a user runs it; its stdout."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agentbus", "history", job_id, "--json",
        env={**os.environ, "AGENTBUS_NATS__URL": url},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode == 0, err.decode()
    return out.decode()


@pytest.mark.timeout(240)
async def test_history_of_5000_large_events_in_pages_below_max_payload(stack: Stack) -> None:
    job_id = "big-job"
    blob = "The archive keeps every event of the job. " * 48  # ~2 KB of data per event
    emitted = [
        stack.bus.emit_soon(
            EventKind.TASK_COMPLETED,
            job_id=job_id, task_id=f"0-{i}", event_id=f"{job_id}-{i:05d}",
            data={"i": i, "text": blob},
        )
        for i in range(5000)
    ]  # fmt: skip
    await asyncio.gather(*emitted)  # the realistic path: batches on AGENT_EVENTS
    await archived(stack.archiver.store, 5000)

    async with AgentBusClient(stack.settings.nats) as client:
        history = await client.history(job_id)
        sizes = [len(page) async for page in client.history_pages(job_id, page_size=2000)]
    assert len(history) == 5000
    assert [e.data["i"] for e in history] == list(range(5000))  # in order, none repeated
    assert len({e.event_id for e in history}) == 5000 and history[0].data["text"] == blob
    total = sum(len(e.model_dump_json()) for e in history)
    assert total > 10_000_000
    # every page was cut by bytes (a page of 500 or 2,000 events would be ~1 to 4 MB)...
    assert sum(sizes) == 5000 and max(sizes) < 130 and len(sizes) >= total // MAX_PAYLOAD
    # ...and no reply exceeded max_payload, though most came close to it
    await stack.all_replies_seen()
    assert len(stack.replies) >= 2 * (total // MAX_PAYLOAD)
    assert max(stack.replies) <= MAX_PAYLOAD - 4096
    assert sorted(stack.replies)[len(stack.replies) // 2] > MAX_PAYLOAD * 0.9

    out = await cli_history(stack.settings.nats.url, job_id)
    lines = out.splitlines()
    assert lines[0] == "[" and lines[-1] == "]" and len(lines) == 5002  # one event a line
    assert [e["i"] for e in (json.loads(x.rstrip(","))["data"] for x in lines[1:-1])] == list(
        range(5000)
    )
    assert [e["event_id"] for e in json.loads(out)] == [e.event_id for e in history]


@pytest.mark.timeout(180)
async def test_history_of_6000_tied_events_from_batches(stack: Stack) -> None:
    job_id = "tied-job"
    # 24 batch messages of 250 events, each batch at one instant (ties across pages)
    for b in range(24):
        batch = AgentEventBatch(
            events=[event(b * 250 + i, job_id=job_id, ts=T0 + timedelta(seconds=b))
                    for i in range(250)]
        )  # fmt: skip
        await stack.bus.publish(
            subjects.agent_events("producer-1"), batch, msg_id=f"batch-{b}",
            stream=subjects.AGENT_EVENTS_STREAM,
        )  # fmt: skip
    await archived(stack.archiver.store, 6000)

    async with AgentBusClient(stack.settings.nats) as client:
        for page_size in (173, 500, 10_000):
            history = await client.history(job_id, page_size=page_size)
            assert [e.data["i"] for e in history] == list(range(6000)), page_size
        pages = [len(p) async for p in client.history_pages(job_id, page_size=500)]
        assert pages == [500] * 12
        with pytest.raises(ValueError, match="page_size must be between 1 and 10000"):
            await client.history(job_id, page_size=0)

    # a query of the previous release (limit 10,000, no cursor) is answered with the first
    # page, in one message; a cursor that is not one is refused naming the field
    nc = stack.bus.nc
    old = encode(HistoryQuery(job_id=job_id, limit=10_000), sender="old-client")
    first = decode((await nc.request(subjects.RPC_HISTORY, old, timeout=10)).data, HistoryReply)
    assert first.payload.next is not None and 0 < len(first.payload.events) < 10_000
    assert [e.data["i"] for e in first.payload.events] == list(range(len(first.payload.events)))
    bad = encode(HistoryQuery(job_id=job_id, after="v1.12.x"), sender="c")
    reply = decode((await nc.request(subjects.RPC_HISTORY, bad, timeout=10)).data, HistoryReply)
    assert reply.payload.error and reply.payload.error.startswith("history.query after: ")
    assert max(stack.replies) <= MAX_PAYLOAD - 4096


@pytest.mark.timeout(120)
async def test_history_waits_for_the_archive_to_hold_the_jobs_end(stack: Stack) -> None:
    """The archive is eventually consistent: `wait_for_end_s` reads again until the job's
    end is archived (here published while the client waits), and times out naming the job
    when it never comes."""
    job_id = "late-end"
    for i in range(300):
        stack.bus.emit_soon(
            EventKind.TASK_COMPLETED, job_id=job_id, task_id=f"0-{i}", data={"i": i}
        )
    await archived(stack.archiver.store, 300)

    async def end_later() -> None:
        await asyncio.sleep(0.5)
        await stack.bus.emit_soon(EventKind.JOB_COMPLETED, job_id=job_id, data={})

    async with AgentBusClient(stack.settings.nats) as client:
        assert len(await client.history(job_id)) == 300  # no wait: what is there now
        ending = asyncio.create_task(end_later())
        history = await client.history(job_id, wait_for_end_s=60)
        await ending
        assert len(history) == 301 and history[-1].kind is EventKind.JOB_COMPLETED
        with pytest.raises(TimeoutError, match=r"not its end after 0\.3s"):
            await client.history("no-end-job", wait_for_end_s=0.3)
