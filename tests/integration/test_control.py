"""Control commands on `agent.{agent_id}.commands` (ping, pause, resume, drain) through
the real `agentbus ctl` command line, against a worker process and in-process workers."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest

from agentbus.bus.core import Bus
from agentbus.cli.ops import send_command
from agentbus.client.api import AgentBusClient
from agentbus.contract import subjects
from agentbus.contract.errors import RpcError
from agentbus.contract.messages import JobStatus, TaskAssign
from agentbus.contract.settings import Settings
from agentbus.dev.stack import ServiceProcess, free_port
from agentbus.runtime.worker import TaskWorker
from agentbus_orchestrator import Orchestrator
from tests.integration.rpc_helpers import ScriptedSkill, cli, wait_for

pytestmark = pytest.mark.integration


def worker_process(settings: Settings, tmp_path: Path, agent_id: str) -> ServiceProcess:
    port = free_port()
    env = {
        **os.environ,
        "AGENTBUS_NATS__URL": settings.nats.url,
        "AGENTBUS_AGENT_ID": agent_id,
        "AGENTBUS_HTTP__HOST": "127.0.0.1",
        "AGENTBUS_HTTP__PORT": str(port),
        "AGENTBUS_WORKER__FETCH_TIMEOUT_S": "0.3",
        "AGENTBUS_LOG_FORMAT": "text",
    }
    return ServiceProcess(
        role="worker", agent_id=agent_id, http_port=port,
        log_path=tmp_path / f"{agent_id}.log", env=env,
    )  # fmt: skip


async def wait_ready(proc: ServiceProcess, *, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await asyncio.to_thread(proc.ready):
        assert proc.alive(), proc.log_path.read_text()[-2000:]
        assert time.monotonic() < deadline, "worker process not ready"
        await asyncio.sleep(0.1)


@pytest.mark.timeout(120)
async def test_ctl_ping_pause_resume_drain_a_worker_process(
    bus: Bus, settings: Settings, running: Any, tmp_path: Path
) -> None:
    await running.start(Orchestrator, settings, "ctl-orch")
    proc = worker_process(settings, tmp_path, "ctl-worker")
    proc.start()
    try:
        await wait_ready(proc)
        code, out, err = await cli(settings, tmp_path, "ctl", "ctl-worker", "ping")
        assert code == 0, err
        assert "ctl-worker [worker] ping: ok, state running" in out

        code, out, err = await cli(settings, tmp_path, "ctl", "ctl-worker", "pause", "--json")
        assert code == 0, err
        assert '"state": "paused"' in out and '"ok": true' in out

        # right after the acknowledgement (no pull request of the worker is open any more)
        async with AgentBusClient(settings.nats) as client:
            # paused: the worker pulls no new task and has left the rpc queue group
            job_id = await client.submit("Paused workers take no new work. " * 5)
            await asyncio.sleep(1.5)
            state = await client.status(job_id)
            assert state is not None and state.status is JobStatus.RUNNING
            assert state.level_done == 0
            info = await bus.js.consumer_info(subjects.TASKS_STREAM, subjects.WORKERS_CONSUMER)
            assert info.num_pending + info.num_ack_pending == 1
            with pytest.raises(RpcError, match="no responders"):
                await client.summarize_sync("Is anybody there? " * 3, timeout_s=3)

            code, out, err = await cli(settings, tmp_path, "ctl", "ctl-worker", "resume")
            assert code == 0, err
            assert "resume: ok, state running" in out
            done = await client.wait(job_id, timeout_s=30)
            assert done.status is JobStatus.COMPLETED, done.error
            assert await client.summarize_sync("The worker is back at work. " * 3, timeout_s=10)

        code, out, err = await cli(settings, tmp_path, "ctl", "ctl-worker", "drain")
        assert code == 0, err
        assert "drain: ok, state draining" in out
        assert await asyncio.to_thread(proc.wait, 30) == 0  # finished and exited by itself
    finally:
        await asyncio.to_thread(proc.stop, timeout_s=10)


async def test_ctl_errors_are_one_line(bus: Bus, settings: Settings, tmp_path: Path) -> None:
    code, _, err = await cli(settings, tmp_path, "ctl", "nobody", "ping", "--timeout", "2")
    assert code == 1
    assert "no agent 'nobody' answers on agent.nobody.commands" in err
    assert "Traceback" not in err
    code, _, err = await cli(settings, tmp_path, "ctl", "bad.id", "ping")
    assert code == 2 and "agent_id 'bad.id' is not a valid subject token" in err
    code, _, err = await cli(settings, tmp_path, "ctl", "someone", "reboot")
    assert code == 2 and "reboot" in err


async def test_pause_finishes_in_flight_requests_and_leaves_the_queue_group(
    bus: Bus, settings: Settings, running: Any
) -> None:
    skill = ScriptedSkill()
    a = await running.start(lambda s: TaskWorker(s, skill), settings, "pause-a")
    b = await running.start(lambda s: TaskWorker(s, skill), settings, "pause-b")
    async with AgentBusClient(settings.nats) as client:
        # a slow request is in flight on one of them; pause that one
        slow = asyncio.create_task(client.summarize_sync("slow request", timeout_s=10))
        await wait_for(lambda: a.endpoint.in_flight + b.endpoint.in_flight == 1)
        busy, idle = (a, b) if a.endpoint.in_flight else (b, a)
        busy.pause()
        await wait_for(lambda: not busy.endpoint.serving)
        assert busy.state == "paused"
        results = await client.fan_out([f"request {i}" for i in range(20)], timeout_s=5)
        assert {r.worker_id for r in results} == {idle.bus.agent_id}
        skill.release.set()
        assert await slow == "summary of [slow request]"  # the in-flight one finished
        busy.resume()
        await wait_for(lambda: busy.endpoint.serving)
        results = await client.fan_out([f"again {i}" for i in range(40)], timeout_s=5)
        assert all(r.ok for r in results)
        assert {r.worker_id for r in results} == {"pause-a", "pause-b"}


async def test_stop_waits_for_in_flight_requests(settings: Settings, running: Any) -> None:
    skill = ScriptedSkill()
    worker = await running.start(lambda s: TaskWorker(s, skill), settings, "drain-rpc")
    async with AgentBusClient(settings.nats) as client:
        slow = asyncio.create_task(client.summarize_sync("slow but answered", timeout_s=10))
        await wait_for(lambda: worker.endpoint.in_flight == 1)
        stopping = asyncio.create_task(running.stop(worker, grace_s=10))
        await wait_for(lambda: not worker.endpoint.serving)
        assert not stopping.done()  # waiting for the request in flight
        skill.release.set()
        await stopping
        assert await slow == "summary of [slow but answered]"
        with pytest.raises(RpcError, match="no responders"):
            await client.summarize_sync("anyone left?", timeout_s=2)


async def test_send_command_in_process(settings: Settings, tmp_path: Path) -> None:
    with pytest.raises(Exception, match="no agent 'ghost' answers"):
        await send_command(settings, "ghost", "ping", timeout_s=1)


@pytest.mark.timeout(90)
async def test_no_task_starts_on_a_worker_after_its_pause_is_acknowledged(
    bus: Bus, settings: Settings, running: Any
) -> None:
    """Both workers idle with a pull request waiting; A is paused and, right after the
    acknowledgement, tasks are published: B takes them all, A none (before, A's waiting
    pull still took some). With B paused too nothing starts and nothing is lost; after
    A resumes, A does the rest. Every task runs exactly once."""
    s = settings.model_copy(update={"worker": settings.worker.model_copy(
        update={"fetch_timeout_s": 1.0, "rpc": False}
    )})  # fmt: skip
    skill_a, skill_b = ScriptedSkill(), ScriptedSkill()
    a = await running.start(lambda st: TaskWorker(st, skill_a), s, "paused-a")
    b = await running.start(lambda st: TaskWorker(st, skill_b), s, "paused-b")
    subject = subjects.task_assign(subjects.SUMMARIZE_SKILL)

    async def publish(first: int, n: int) -> None:
        for i in range(first, first + n):
            task = TaskAssign(
                job_id="pausejob", task_id=f"0-{i}", level=0, index=i, count=20,
                text=f"Task number {i} of the paused worker test.", max_chars=200,
            )  # fmt: skip
            await bus.publish(subject, task, msg_id=f"pausejob:0-{i}", stream=subjects.TASKS_STREAM)

    def ran(skill: ScriptedSkill) -> list[str]:
        return [t.task_id for t in skill.seen]

    await asyncio.sleep(0.5)  # both have a pull request waiting
    a.pause()
    assert await a.wait_paused()
    await publish(0, 12)
    await wait_for(lambda: len(skill_b.seen) == 12)
    await asyncio.sleep(1.5)  # longer than a pull request of A could have waited
    assert ran(skill_a) == []

    b.pause()
    assert await b.wait_paused()
    await publish(12, 8)
    await asyncio.sleep(2.0)
    assert len(skill_a.seen) + len(skill_b.seen) == 12
    info = await bus.js.consumer_info(subjects.TASKS_STREAM, subjects.WORKERS_CONSUMER)
    assert (info.num_pending, info.num_ack_pending) == (8, 0)  # waiting in the stream

    a.resume()
    await wait_for(lambda: len(skill_a.seen) == 8)
    assert sorted(ran(skill_a) + ran(skill_b)) == sorted(f"0-{i}" for i in range(20))
    assert sorted(ran(skill_a)) == sorted(f"0-{i}" for i in range(12, 20))
    await wait_for(lambda: a.in_flight() == 0 and b.in_flight() == 0)
    info = await bus.js.consumer_info(subjects.TASKS_STREAM, subjects.WORKERS_CONSUMER)
    assert (info.num_pending, info.num_ack_pending, info.num_redelivered) == (0, 0, 0)
