"""The request/reply path: workers serve `rpc.summarize` in the queue group
`summarize-workers`; `summarize_sync` and `fan_out` against a real nats-server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agentbus.bus.core import Bus
from agentbus.client.api import AgentBusClient
from agentbus.contract import subjects
from agentbus.contract.errors import AgentBusError, RpcError
from agentbus.contract.messages import SummarizeReply, decode
from agentbus.contract.settings import Settings
from agentbus.contract.subjects import rpc_queue, rpc_subject
from agentbus.runtime.worker import TaskWorker
from agentbus_summarize_worker import SummarizeSkill
from tests.integration.rpc_helpers import ScriptedSkill, cli

pytestmark = pytest.mark.integration


def test_rpc_names() -> None:
    assert rpc_subject("summarize") == subjects.RPC_SUMMARIZE == "rpc.summarize"
    assert rpc_queue("summarize") == subjects.WORKERS_QUEUE == "summarize-workers"
    with pytest.raises(ValueError, match="skill"):
        rpc_subject("a.b")


async def test_summarize_sync_and_fan_out_spread_over_the_queue_group(
    bus: Bus, settings: Settings, running: Any
) -> None:
    w1 = await running.start(lambda s: TaskWorker(s, SummarizeSkill(s)), settings, "rpc-w1")
    w2 = await running.start(lambda s: TaskWorker(s, SummarizeSkill(s)), settings, "rpc-w2")
    texts = [
        f"Document {i} is about the island of Number{i}. Number{i} has a volcano and a harbour. "
        f"Fishermen of Number{i} sail at dawn. The volcano of Number{i} last erupted long ago."
        for i in range(40)
    ]
    async with AgentBusClient(settings.nats) as client:
        one = await client.summarize_sync(texts[0], max_chars=100, timeout_s=10)
        results = await client.fan_out(texts, max_chars=120, timeout_s=10, concurrency=16)
    assert 0 < len(one) <= 100 and "Number0" in one
    assert [r.index for r in results] == list(range(40))
    for i, r in enumerate(results):
        assert r.ok, r.error
        assert r.summary is not None and 0 < len(r.summary) <= 120
        assert f"Number{i}" in r.summary  # in order: result i is the summary of text i
    served = {w.bus.agent_id: w.endpoint.ok for w in (w1, w2)}
    assert sum(served.values()) == 41
    assert all(n > 0 for n in served.values()), served  # the queue group shares the load
    assert {r.worker_id for r in results} == {"rpc-w1", "rpc-w2"}
    # at-most-once core request/reply: nothing went through JetStream
    info = await bus.js.stream_info(subjects.TASKS_STREAM)
    assert info.state.messages == 0


async def test_no_responders_is_a_clear_error(bus: Bus, settings: Settings) -> None:
    async with AgentBusClient(settings.nats) as client:
        with pytest.raises(RpcError, match=r"no responders: no summarize worker serves rpc\."):
            await client.summarize_sync("Some text to summarize.", timeout_s=2)
        results = await client.fan_out(["a text", "another text"], timeout_s=2)
    assert [r.ok for r in results] == [False, False]
    assert all(r.error and r.error.startswith("no responders") for r in results)
    assert isinstance(RpcError("x"), AgentBusError)


async def test_per_item_errors_keep_their_place(settings: Settings, running: Any) -> None:
    skill = ScriptedSkill()
    s = settings.model_copy(
        update={"worker": settings.worker.model_copy(update={"concurrency": 8})}
    )
    worker = await running.start(lambda st: TaskWorker(st, skill), s, "rpc-scripted")
    texts = ["fine one", "slow one", "fail one", "crash one", "fine two", ""]
    async with AgentBusClient(settings.nats) as client:
        results = await client.fan_out(texts, max_chars=60, timeout_s=1.0)
        with pytest.raises(RpcError, match=r"timeout: no reply on rpc\.summarize within 1s"):
            await client.summarize_sync("slow again", timeout_s=1.0)
        skill.release.set()
    assert [r.index for r in results] == list(range(len(texts)))
    assert results[0].summary == "summary of [fine one]" and results[0].worker_id == "rpc-scripted"
    assert results[1].error is not None and results[1].error.startswith("timeout")
    assert results[2].error == "worker rpc-scripted: the backend refused this text"
    assert results[3].error == "worker rpc-scripted: RuntimeError: boom"
    assert results[4].summary == "summary of [fine two]"
    assert results[5].error == "empty text"  # refused before it is sent
    # the skill saw each request as a one-task job with the request's budget
    assert {t.max_chars for t in skill.seen} >= {60}
    assert all(t.count == 1 and t.level == 0 for t in skill.seen)
    assert worker.endpoint.failed >= 2


async def test_bad_request_gets_an_error_reply(bus: Bus, settings: Settings, running: Any) -> None:
    await running.start(lambda s: TaskWorker(s, ScriptedSkill()), settings, "rpc-bad")
    msg = await bus.nc.request(subjects.RPC_SUMMARIZE, b'{"not": "an envelope"}', timeout=5)
    reply = decode(msg.data, SummarizeReply).payload
    assert reply.ok is False and reply.worker_id == "rpc-bad"
    assert reply.error is not None and "bad request on rpc.summarize" in reply.error


async def test_request_above_the_message_limit_is_refused_locally(
    settings: Settings, running: Any
) -> None:
    await running.start(lambda s: TaskWorker(s, ScriptedSkill()), settings, "rpc-big")
    big = "word " * (settings.limits.max_message_bytes // 4)
    async with AgentBusClient(settings.nats, limits=settings.limits) as client:
        with pytest.raises(RpcError, match="submit large documents as jobs"):
            await client.summarize_sync(big, timeout_s=5)


async def test_worker_without_rpc_serves_none(settings: Settings, running: Any) -> None:
    s = settings.model_copy(update={"worker": settings.worker.model_copy(update={"rpc": False})})
    worker = await running.start(lambda st: TaskWorker(st, ScriptedSkill()), s, "rpc-off")
    assert worker.endpoint is None
    async with AgentBusClient(settings.nats) as client:
        with pytest.raises(RpcError, match="no responders"):
            await client.summarize_sync("Some text.", timeout_s=2)


async def test_submit_sync_cli(settings: Settings, running: Any, tmp_path: Path) -> None:
    await running.start(lambda s: TaskWorker(s, ScriptedSkill()), settings, "rpc-cli")
    (tmp_path / "a.txt").write_text("first [document] text")
    (tmp_path / "b.txt").write_text("fail this one")
    (tmp_path / "empty.txt").write_text("  \n")
    code, out, err = await cli(
        settings, tmp_path, "submit", "--sync", "--json", "a.txt", "b.txt", "empty.txt",
        "--summary-chars", "100",
    )  # fmt: skip
    assert code == 1  # one failed, one rejected
    records = json.loads(out)
    assert [r["file"] for r in records] == ["a.txt", "b.txt", "empty.txt"]
    assert [r["status"] for r in records] == ["completed", "failed", "rejected"]
    assert records[0]["summary"] == "summary of [first [document] text]"
    assert records[0]["worker"] == "rpc-cli"
    assert records[1]["error"] == "worker rpc-cli: the backend refused this text"
    assert "document is empty" in records[2]["error"]
    code, out, err = await cli(settings, tmp_path, "submit", "--sync", "a.txt")
    assert code == 0, err
    assert "summary of [first [document] text]" in out and "summarized by rpc-cli" in out
