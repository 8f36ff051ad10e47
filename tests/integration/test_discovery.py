"""Discovery: workers register as nats.micro services (`agentbus-worker`) and
`agentbus workers` lists each with its id, version, skill, state, in-flight count and stats."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from agentbus.bus.core import Bus
from agentbus.bus.discovery import list_workers
from agentbus.client.api import AgentBusClient
from agentbus.contract.messages import JobStatus
from agentbus.contract.settings import Settings
from agentbus.contract.subjects import WORKER_SERVICE, srv_subject
from agentbus.contract.version import agentbus_version
from agentbus.contract.workers import micro_version
from agentbus.runtime.worker import TaskWorker
from agentbus_orchestrator import Orchestrator
from agentbus_summarize_worker import SummarizeSkill
from tests.integration.rpc_helpers import ScriptedSkill, cli, wait_for

pytestmark = pytest.mark.integration


def test_micro_version_is_semver() -> None:
    assert micro_version("1.2.3") == "1.2.3"
    assert micro_version("0.1.0.dev4+g123") == "0.1.0"
    assert micro_version("0+unknown") == "0.0.0"
    assert srv_subject("stats", WORKER_SERVICE) == "$SRV.STATS.agentbus-worker"


async def test_workers_are_listed_with_live_stats(
    bus: Bus, settings: Settings, running: Any
) -> None:
    await running.start(Orchestrator, settings, "disc-orch")
    real = await running.start(lambda s: TaskWorker(s, SummarizeSkill(s)), settings, "disc-real")
    skill = ScriptedSkill()
    scripted = await running.start(lambda s: TaskWorker(s, skill), settings, "disc-scripted")
    # some work: a job (pulled by either) and direct requests to each worker
    async with AgentBusClient(settings.nats) as client:
        job_id = await client.submit("Discovery shows the workers. They report stats. " * 3)
        assert (await client.wait(job_id, timeout_s=30)).status is JobStatus.COMPLETED
        await client.fan_out(["fail this one", *[f"text {i}" for i in range(10)]], timeout_s=5)
        real.pause()  # so that the slow request goes to the scripted worker
        await wait_for(lambda: not real.endpoint.serving)
        slow = asyncio.create_task(client.summarize_sync("slow one", timeout_s=20))
        await wait_for(lambda: scripted.endpoint.in_flight == 1, timeout_s=10)
        real.resume()
        await wait_for(lambda: real.endpoint.serving)
        scripted.pause()
        await wait_for(lambda: not scripted.endpoint.serving)

        workers = await list_workers(bus.nc, timeout_s=5, expected=2)
        counts = (real.endpoint.ok, scripted.endpoint.ok, scripted.endpoint.failed)
        skill.release.set()
        assert await slow == "summary of [slow one]"

    by_id = {w.id: w for w in workers}
    assert set(by_id) == {"disc-real", "disc-scripted"}
    for w in workers:
        assert w.version == micro_version(agentbus_version())
        assert w.skill == "summarize"
        assert w.endpoint == "rpc.summarize" and w.queue_group == "summarize-workers"
        assert w.concurrency == settings.worker.concurrency
        assert w.service_id and w.started
    r, s = by_id["disc-real"], by_id["disc-scripted"]
    assert (r.backend, r.state, r.in_flight) == ("extractive", "running", 0)
    assert (s.backend, s.state) == ("scripted", "paused")
    assert s.in_flight == 1 and s.stats.rpc_in_flight == 1 and s.stats.tasks_in_flight == 0
    # counters match what each worker really did
    assert r.stats.tasks_ok + s.stats.tasks_ok == 1
    assert (r.stats.rpc_ok, s.stats.rpc_ok, s.stats.rpc_failed) == counts
    assert r.stats.rpc_failed == 0
    assert r.stats.rpc_ok + s.stats.rpc_ok + s.stats.rpc_failed == 11  # the slow one is in flight

    # a stopped worker is gone from the list (here: paused, its connection still open)
    assert await scripted.endpoint.stop(grace_s=5)
    left = await list_workers(bus.nc, timeout_s=1)
    assert [w.id for w in left] == ["disc-real"]
    await running.stop(scripted)


async def test_workers_cli_table_and_json(
    bus: Bus, settings: Settings, running: Any, tmp_path: Path
) -> None:
    code, out, err = await cli(settings, tmp_path, "workers", "--timeout", "0.5")
    assert code == 1 and "no worker answered on $SRV.STATS.agentbus-worker" in err
    code, out, err = await cli(settings, tmp_path, "workers", "--json", "--timeout", "0.5")
    assert code == 0 and json.loads(out) == []

    for i in (1, 2, 3):
        await running.start(lambda s: TaskWorker(s, SummarizeSkill(s)), settings, f"cli-w{i}")
    code, out, err = await cli(settings, tmp_path, "workers", "--json")
    assert code == 0, err
    listed = json.loads(out)
    assert [w["id"] for w in listed] == ["cli-w1", "cli-w2", "cli-w3"]
    assert all(w["state"] == "running" and w["stats"]["tasks_ok"] == 0 for w in listed)
    assert all(w["version"] == micro_version(agentbus_version()) for w in listed)
    code, out, err = await cli(settings, tmp_path, "workers")
    assert code == 0, err
    assert "3 worker(s)" in out
    for i in (1, 2, 3):
        assert f"cli-w{i}" in out
