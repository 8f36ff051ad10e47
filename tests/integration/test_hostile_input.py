"""Hostile input against the running services: a batch of bad messages on every inbound
path (jobs, tasks, results, events, history queries, control commands), including
raw-protocol messages with malformed headers and messages over the size cap. The
services keep running, every bad stream message is in the DLQ with a reason (and its
payload), every bad request gets an error reply, and good work after them succeeds."""

from __future__ import annotations

import asyncio
import json
import os
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agentbus.bus.core import Bus
from agentbus.bus.topology import provision
from agentbus.client.api import AgentBusClient
from agentbus.contract import subjects
from agentbus.contract.headers import DLQ_HEADER_REASON, DLQ_HEADER_SUBJECT
from agentbus.contract.messages import (
    AgentEvent,
    Command,
    CommandReply,
    DocumentRef,
    EventKind,
    HistoryQuery,
    HistoryReply,
    JobStatus,
    JobSubmit,
    TaskAssign,
    TaskResult,
    decode,
    encode,
)
from agentbus.contract.settings import Settings
from agentbus.dev.embedded import EmbeddedNatsServer
from agentbus.runtime.service import _serve_commands
from agentbus.runtime.worker import TaskWorker
from agentbus_event_archiver import EventArchiver
from agentbus_orchestrator import Orchestrator
from agentbus_summarize_worker import SummarizeSkill
from tests.conftest import Running, archived_history, dlq_messages, make_settings

pytestmark = pytest.mark.integration

CAP = 64 * 1024


def _deep(n: int) -> bytes:
    return b"[" * n + b"]" * n


def _with(payload_doc: dict[str, object], envelope: bytes) -> bytes:
    doc = json.loads(envelope)
    doc["payload"] = {**doc["payload"], **payload_doc}
    return json.dumps(doc).encode()


def undecodable(good: bytes) -> list[tuple[str, bytes]]:
    """Messages no decoder accepts, built around one good envelope of the subject's type."""
    doc = json.loads(good)
    return [
        ("empty", b""),
        ("random-bytes", os.urandom(512)),
        ("invalid-utf8", good.replace(b'"', b'"\xff', 1)),
        ("nul-bytes", b"\x00" * 256),
        ("deep-json", _deep(50_000)),
        ("not-an-object", b"[1, 2, 3]"),
        ("over-the-cap", _with({"text": "x" * (CAP + 1)}, good)),
        ("wrong-msg-type", json.dumps({**doc, "msg_type": "agent.command"}).encode()),
        ("wrong-field-type", json.dumps({**doc, "sender": 42}).encode()),
        ("subject-wildcard-id", json.dumps({**doc, "sender": "a.>"}).encode()),
        ("future-schema", json.dumps({**doc, "schema_version": 999}).encode()),
        ("unknown-field", _with({"evil": True}, good)),
        ("truncated", good[: len(good) // 2]),
    ]


def raw_hpub(subject: str, headers: bytes, payload: bytes) -> bytes:
    block = b"NATS/1.0\r\n" + headers + b"\r\n"
    return (
        f"HPUB {subject} {len(block)} {len(block) + len(payload)}\r\n".encode()
        + block
        + payload
        + b"\r\n"
    )


async def publish_raw_protocol(url: str, frames: list[bytes]) -> None:
    """Speak the NATS protocol by hand: headers nats-py would never write."""
    host, port = url.removeprefix("nats://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        await reader.readline()  # INFO
        writer.write(b'CONNECT {"verbose":false,"pedantic":false,"headers":true}\r\n')
        for frame in frames:
            writer.write(frame)
        writer.write(b"PING\r\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 5)
        assert line.startswith(b"PONG"), line
    finally:
        writer.close()
        await writer.wait_closed()


MALFORMED_HEADERS = [
    b"Bad Name: spaces in the name\r\nNats-Msg-Id: raw-1\r\n",
    b"X-Lone-Cr: a\rb\nc\r\nNats-Msg-Id: raw-2\r\n",
    b": empty name\r\nno-colon-at-all\r\nNats-Msg-Id: raw-3\r\n",
    b"Agentbus-Dlq-Reason: forged\r\nX-Long: " + b"v" * 8000 + b"\r\nNats-Msg-Id: raw-4\r\n",
    b"X-Utf8: \xff\xfe\r\nX-Nul: a\x00b\r\nNats-Msg-Id: raw-5\r\n",
]


@pytest.fixture
def hostile_settings(nats_server: EmbeddedNatsServer, tmp_path: Path) -> Settings:
    return make_settings(
        nats_server.url,
        tmp_path,
        limits={"max_message_bytes": CAP, "max_document_bytes": CAP},
        orchestrator={"chunk_chars": 400, "chunk_summary_chars": 120, "summary_chars": 300},
    )


@pytest.fixture
async def admin(hostile_settings: Settings) -> AsyncIterator[Bus]:
    b = await Bus.connect(hostile_settings.nats, agent_id="hostile", service="test")
    await provision(b.js, hostile_settings)
    try:
        yield b
    finally:
        await b.close()


@pytest.mark.timeout(90)
async def test_hostile_batch_on_every_inbound_path(
    nats_server: EmbeddedNatsServer,
    hostile_settings: Settings,
    admin: Bus,
    running: Running,
) -> None:
    s = hostile_settings
    orch = await running.start(Orchestrator, s, "orch-1")
    worker = await running.start(lambda st: TaskWorker(st, SummarizeSkill(st)), s, "worker-1")
    archiver = await running.start(EventArchiver, s, "arch-1")
    for svc in (orch, worker, archiver):
        assert svc.bus is not None
        await _serve_commands(svc.bus, svc, lambda: None)

    sample = {
        subjects.JOBS_SUBJECT: encode(JobSubmit(job_id="j-good", text="Fine text."), sender="x"),
        subjects.task_assign("summarize"): encode(
            TaskAssign(
                job_id="j", task_id="0-0", level=0, index=0, count=1, text="T.", max_chars=100
            ),
            sender="x",
        ),
        "results.j.0-0": encode(
            TaskResult(
                job_id="j",
                task_id="0-0",
                level=0,
                index=0,
                ok=True,
                summary="S",
                worker_id="w",
                duration_ms=1,
            ),
            sender="x",
        ),
        "agent.intruder.events": encode(
            AgentEvent(
                event_id="e", agent_id="intruder", service="x", kind=EventKind.AGENT_STARTED
            ),
            sender="x",
        ),
    }
    dlq_of = {
        subjects.JOBS_SUBJECT: "dlq.jobs",
        subjects.task_assign("summarize"): "dlq.tasks",
        "results.j.0-0": "dlq.results",
        "agent.intruder.events": "dlq.agent_events",
    }
    expected: Counter[str] = Counter()
    published: dict[str, set[bytes]] = {d: set() for d in dlq_of.values()}
    n = 0
    for subject, good in sample.items():
        for _name, data in undecodable(good):
            n += 1
            await admin.js.publish(subject, data, headers={"Nats-Msg-Id": f"hostile-{n}"})
            expected[dlq_of[subject]] += 1
            published[dlq_of[subject]].add(data)
        frames = [raw_hpub(subject, h, b"\x00garbage\xff") for h in MALFORMED_HEADERS]
        await publish_raw_protocol(nats_server.url, frames)
        expected[dlq_of[subject]] += len(frames)
        published[dlq_of[subject]].add(b"\x00garbage\xff")

    # decodable, but refused: each is dead-lettered with its reason (and the job failed)
    bad_jobs = {
        "j-nul": JobSubmit(job_id="j-nul", text="text with a \x00 byte"),
        "j-empty": JobSubmit(job_id="j-empty", text="   \n "),
        "j-nothing": JobSubmit(job_id="j-nothing"),
        "j-bucket": JobSubmit(job_id="j-bucket", document=DocumentRef(
            bucket="jobs", name="x", size_bytes=3, sha256="0" * 64)),
        "j-missing": JobSubmit(job_id="j-missing", document=DocumentRef(
            bucket="documents", name="nope", size_bytes=3, sha256="0" * 64)),
        "j-huge-ref": JobSubmit(job_id="j-huge-ref", document=DocumentRef(
            bucket="documents", name="big", size_bytes=10**12, sha256="0" * 64)),
    }  # fmt: skip
    # an object bigger than the cap behind a reference that claims it is small
    store = await admin.js.object_store(subjects.DOCUMENTS_BUCKET)
    await store.put("liar.txt", b"y" * (CAP + 1))
    bad_jobs["j-liar"] = JobSubmit(
        job_id="j-liar",
        document=DocumentRef(bucket="documents", name="liar.txt", size_bytes=10, sha256="0" * 64),
    )
    for job_id, job in bad_jobs.items():
        await admin.publish(subjects.JOBS_SUBJECT, job, msg_id=job_id, stream="JOBS")
    expected["dlq.jobs"] += len(bad_jobs)
    orphan = TaskResult(job_id="no-such-job", task_id="0-0", level=0, index=0, ok=True,
                        summary="S", worker_id="w", duration_ms=1)  # fmt: skip
    await admin.publish("results.no-such-job.0-0", orphan, msg_id="orphan", stream="RESULTS")
    expected["dlq.results"] += 1

    # requests: every bad one gets an error reply, never silence
    for data in [b"", os.urandom(300), _deep(50_000), b"{" * 10, b"x" * (65 * 1024)]:
        reply = await admin.nc.request(subjects.RPC_HISTORY, data, timeout=5)
        assert decode(reply.data, HistoryReply).payload.error
        for agent in ("orch-1", "worker-1", "arch-1"):
            cmd = subjects.agent_commands(agent)
            answer = decode((await admin.nc.request(cmd, data, timeout=5)).data, CommandReply)
            assert not answer.payload.ok and answer.payload.detail

    # good work after all of it succeeds
    text = "\n\n".join(f"Section {i} describes bridge {i}. It spans a river." for i in range(20))
    async with AgentBusClient(s.nats, limits=s.limits) as client:
        job_id = await client.submit(text, title="after the storm")
        state = await client.wait(job_id, timeout_s=60)
        assert state.status is JobStatus.COMPLETED, state.error
        for bad_id in bad_jobs:
            bad = await client.wait(bad_id, timeout_s=30)
            assert bad.status is JobStatus.FAILED and bad.error, bad_id
        history = await archived_history(client, job_id)
        assert any(e.kind is EventKind.JOB_COMPLETED for e in history)
    query = encode(HistoryQuery(job_id=job_id), sender="x")
    good_reply = decode((await admin.nc.request(subjects.RPC_HISTORY, query, timeout=5)).data,
                        HistoryReply)  # fmt: skip
    assert good_reply.payload.error is None and good_reply.payload.events
    for agent in ("orch-1", "worker-1", "arch-1"):
        ping = encode(Command(command="ping"), sender="x")
        pong = await admin.nc.request(subjects.agent_commands(agent), ping, timeout=5)
        assert decode(pong.data, CommandReply).payload.ok

    # every bad stream message is in the DLQ, with a reason and its payload
    dead: list[tuple[str, dict[str, str], bytes]] = []
    for _ in range(100):
        dead = await dlq_messages(admin)
        if Counter(subject for subject, _h, _d in dead) == expected:
            break
        await asyncio.sleep(0.1)
    assert Counter(subject for subject, _h, _d in dead) == expected
    for subject, headers, data in dead:
        assert headers.get(DLQ_HEADER_REASON), (subject, headers)
        assert headers[DLQ_HEADER_REASON] != "forged"
        assert headers.get(DLQ_HEADER_SUBJECT)
        if subject in published and headers[DLQ_HEADER_SUBJECT] != "results.no-such-job.0-0":
            assert data in published[subject] or subject == "dlq.jobs", (subject, data[:40])
    reasons = " ".join(h[DLQ_HEADER_REASON] for _s, h, _d in dead)
    assert "exceeds the cap" in reasons and "NUL" in reasons and "unknown job" in reasons
    assert f"object of {CAP + 1} bytes exceeds the cap" in reasons

    # and every service is still running
    for svc in (orch, worker, archiver):
        assert svc.bus is not None and svc.bus.connected
        assert all(not t.done() for t in svc._tasks), svc.name
        assert all(loop.bound for loop in svc.loops), svc.name


@pytest.mark.timeout(60)
async def test_a_message_that_fills_max_payload_is_dead_lettered_not_fatal(
    tmp_path: Path,
    running: Running,
) -> None:
    """Dead letters carry extra headers: a message that filled the server's max_payload
    would not fit again (the server drops the connection over it). It is filed with its
    head and its original size instead, and the service carries on."""
    from agentbus.contract.headers import DLQ_HEADER_TRUNCATED

    max_payload = 128 * 1024
    conf = tmp_path / "small.conf"
    conf.write_text(f"max_payload: {max_payload}\n")
    with EmbeddedNatsServer(config_file=conf, store_dir=tmp_path / "js") as server:
        s = make_settings(server.url, tmp_path, limits={"max_message_bytes": CAP})
        admin = await Bus.connect(s.nats, agent_id="admin", service="test")
        try:
            await provision(admin.js, s)
            orch = await running.start(Orchestrator, s, "orch-1")
            await running.start(lambda st: TaskWorker(st, SummarizeSkill(st)), s, "worker-1")
            big = os.urandom(max_payload - 200)  # fits with its own small headers
            await admin.js.publish(subjects.JOBS_SUBJECT, big, headers={"Nats-Msg-Id": "big"})
            dead: list[tuple[str, dict[str, str], bytes]] = []
            for _ in range(100):
                dead = await dlq_messages(admin)
                if dead:
                    break
                await asyncio.sleep(0.1)
            assert len(dead) == 1
            _subject, headers, data = dead[0]
            assert headers[DLQ_HEADER_TRUNCATED] == str(len(big))
            assert "exceeds the cap" in headers[DLQ_HEADER_REASON]
            assert 0 < len(data) < len(big) and big.startswith(data)
            assert orch.bus is not None and orch.bus.connected
            async with AgentBusClient(s.nats, limits=s.limits) as client:
                state = await client.wait(await client.submit("Still here. Fine."), timeout_s=30)
            assert state.status is JobStatus.COMPLETED, state.error
        finally:
            await running.close()
            await admin.close()
