"""Cancel against a real nats-server: a 300-chunk job with a 200 ms simulated backend
cancelled mid-map ends `canceled`, no task of it starts once every worker has seen the
cancel, its queued tasks are drained without running, its timer, parts and document are
gone, and the workers then serve another job normally; `agentbus cancel` from the CLI."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from pathlib import Path

import nats.js.errors
import pytest
from aiohttp import web

from agentbus.bus.core import Bus
from agentbus.bus.topology import provision
from agentbus.client.api import AgentBusClient
from agentbus.contract import permissions, subjects
from agentbus.contract.messages import EventKind, JobStatus, StreamKind, TaskAssign
from agentbus.contract.settings import LimitsSettings, Settings
from agentbus.runtime.worker import SkillOutput, TaskWorker
from agentbus_orchestrator import Orchestrator
from agentbus_summarize_worker import SummarizeSkill
from agentbus_summarize_worker.backends import OpenAISummarizer
from tests.conftest import Running, make_settings, stream_agent_events, with_sections
from tests.documents import prose_document
from tests.local_http import LocalHttpServer
from tests.security import SecureNats, settings_as

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


class WatchedSkill(SummarizeSkill):
    """The summarize skill, noting when each task starts (monotonic seconds)."""

    starts: list[tuple[str, str, float]]

    async def run(self, task: TaskAssign) -> SkillOutput:
        self.starts.append((task.job_id, task.task_id, time.monotonic()))
        return await super().run(task)


def _slow(settings: Settings) -> Settings:
    return with_sections(
        settings,
        summarizer={"backend": "simulated", "simulated_latency_ms": 200.0},
        worker={"concurrency": 4},
    )


async def _until(predicate: object, *, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate() if callable(predicate) else predicate
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s}s: {what}")
        await asyncio.sleep(0.05)


async def test_cancel_mid_map_stops_every_hop(
    bus: Bus, settings: Settings, running: Running
) -> None:
    s = _slow(settings)
    starts: list[tuple[str, str, float]] = []

    def worker(st: Settings) -> TaskWorker:
        skill = WatchedSkill(st)
        skill.starts = starts
        return TaskWorker(st, skill)

    await running.start(Orchestrator, s, "orch-c1")
    workers = [await running.start(worker, s, f"worker-c{i}") for i in range(2)]
    assert all(isinstance(w, TaskWorker) for w in workers)
    text = prose_document(15, 300 * s.orchestrator.chunk_chars - 5000)
    async with AgentBusClient(s.nats) as client:
        job_id = await client.submit(text, title="long")
        await _until(
            lambda: _mid_map(client, job_id),
            timeout_s=30,
            what="the job has results recorded",
        )
        reply = await client.cancel(job_id, reason="no longer needed")
        assert reply.canceled and reply.status == "canceled", reply
        assert "canceled" in reply.detail

        def all_seen() -> bool:
            return all(w.cancels is not None and w.cancels.seen(job_id) for w in workers)  # type: ignore[attr-defined]  # TaskWorker, checked above

        await _until(all_seen, timeout_s=5, what="every worker saw the cancel")
        seen_at = time.monotonic()
        state = await client.status(job_id)
        assert state is not None
        assert state.status is JobStatus.CANCELED and state.level == 0
        assert state.chunks >= 290
        assert state.error == "canceled: no longer needed"

        # the queued tasks are drained (dropped when pulled), none of them run
        async def tasks_drained() -> bool:
            info = await bus.js.stream_info(subjects.TASKS_STREAM)
            return info.state.messages == 0

        await _until(tasks_drained, timeout_s=30, what="the job's queued tasks dropped")
        late = [t for j, t, at in starts if j == job_id and at > seen_at]
        assert late == [], f"tasks started after every worker saw the cancel: {late}"
        ran = len([1 for j, _t, _at in starts if j == job_id])
        assert ran < state.chunks / 2

        # the job's timer is acked, its parts and document are gone
        async def timer_acked() -> bool:
            info = await bus.js.consumer_info(subjects.JOBS_STREAM, subjects.ORCHESTRATOR_CONSUMER)
            return not info.num_ack_pending and not info.num_pending

        await _until(timer_acked, timeout_s=10, what="the job message acked")
        store = await bus.js.object_store(subjects.DOCUMENTS_BUCKET)
        parts = await bus.kv(subjects.JOB_PARTS_BUCKET)

        async def cleaned_up() -> bool:  # after the reply: the clean-up does not delay it
            try:
                await store.get_info(f"{job_id}.txt")
                return False
            except nats.js.errors.NotFoundError:
                pass
            try:
                return not await parts.keys(filters=[f"{job_id}.>"])
            except nats.js.errors.NoKeysError:
                return True

        await _until(cleaned_up, timeout_s=10, what="the job's document and parts removed")

        # nothing moves any more; a repeated cancel changes nothing and says so
        await asyncio.sleep(0.5)
        again = await client.cancel(job_id)
        assert not again.canceled and again.status == "canceled"
        assert "already canceled" in again.detail
        after = await client.status(job_id)
        assert after is not None and after.status is JobStatus.CANCELED
        assert after.updated_at == state.updated_at and after.level == 0

        # the workers serve another job normally; cancelling it then changes nothing
        other = await client.submit("The ferry crosses the river at dawn. " * 40, title="next")
        done = await client.wait(other, timeout_s=30)
        assert done.status is JobStatus.COMPLETED, done.error
        finished = await client.cancel(other)
        assert not finished.canceled and finished.status == "completed"
        assert "already completed" in finished.detail
        still = await client.status(other)
        assert still is not None and still.status is JobStatus.COMPLETED

    events = await stream_agent_events(bus)
    kinds = [e.kind for e in events if e.job_id == job_id]
    assert kinds.count(EventKind.JOB_CANCELED) == 1
    stages = {e.data.get("stage") for e in events if e.kind is EventKind.TASK_CANCELED}
    assert stages == {"queued", "running"}
    assert EventKind.JOB_REDUCING not in kinds and EventKind.JOB_COMPLETED not in kinds


async def _mid_map(client: AgentBusClient, job_id: str) -> bool:
    state = await client.status(job_id)
    return state is not None and state.level_done >= 8


async def test_cancel_before_intake_and_unknown_reply(
    bus: Bus, settings: Settings, running: Running
) -> None:
    """A job whose message is still queued (no orchestrator took it in yet) is canceled in
    its place: the intake later acks it and runs nothing."""
    await running.start(Orchestrator, settings, "orch-c2")
    orch = running.items[-1][0]
    orch.pause()
    assert await orch.wait_paused(timeout_s=5)
    async with AgentBusClient(settings.nats) as client:
        job_id = await client.submit("Salt marsh at the estuary. " * 30)
        reply = await client.cancel(job_id)
        assert reply.canceled and "before the orchestrator took it in" in reply.detail
        orch.resume()

        async def acked() -> bool:
            info = await bus.js.consumer_info(subjects.JOBS_STREAM, subjects.ORCHESTRATOR_CONSUMER)
            return not info.num_ack_pending and not info.num_pending

        await _until(acked, timeout_s=15, what="the canceled job's message acked")
        state = await client.status(job_id)
        assert state is not None and state.status is JobStatus.CANCELED and state.chunks == 0
        tasks = await bus.js.stream_info(subjects.TASKS_STREAM)
        assert tasks.state.messages == 0


async def test_cli_cancel(bus: Bus, settings: Settings, running: Running) -> None:
    # a job of ~400 tasks on 2 slots (~40 s): still running when the CLI, a new process
    # that takes seconds to start on a loaded machine, gets to it
    s = _slow(settings)
    s = s.model_copy(
        update={
            "worker": s.worker.model_copy(update={"concurrency": 2}),
            "orchestrator": s.orchestrator.model_copy(
                update={"chunk_chars": 500, "chunk_summary_chars": 100}
            ),
        }
    )
    await running.start(Orchestrator, s, "orch-c3")
    await running.start(lambda st: TaskWorker(st, SummarizeSkill(st)), s, "worker-c3")
    async with AgentBusClient(s.nats) as client:
        job_id = await client.submit(prose_document(3, 400 * s.orchestrator.chunk_chars))
        await _until(lambda: _mid_map(client, job_id), timeout_s=30, what="results recorded")
    agentbus = str(Path(sys.executable).with_name("agentbus"))
    env = {**os.environ, "AGENTBUS_NATS__URL": s.nats.url}

    async def cli(*args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            agentbus, "cancel", *args, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await proc.communicate()
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    code, out, err = await cli(job_id, "--reason", "from the CLI")
    assert code == 0, err
    assert out.strip().startswith(f"job {job_id} canceled") and len(out.strip().splitlines()) == 1
    code, out, err = await cli(job_id)
    assert code == 0, err
    assert out.strip() == f"job {job_id} was already canceled: nothing changed"
    code, out, err = await cli("not a job id")
    assert code == 2 and "job_id" in err
    async with AgentBusClient(s.nats) as client:
        state = await client.status(job_id)
    assert state is not None and state.error == "canceled: from the CLI"


class HangingOpenAI(LocalHttpServer):
    """An OpenAI-compatible endpoint that never answers; notes when the client hangs up."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived = asyncio.Event()
        self.hung_up = asyncio.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self.completions)

    async def completions(self, request: web.Request) -> web.Response:
        await request.read()
        self.arrived.set()
        for _ in range(600):
            if request.transport is None or request.transport.is_closing():
                self.hung_up.set()
                break
            await asyncio.sleep(0.01)
        return web.json_response({}, status=500)


async def test_cancelling_the_skill_aborts_the_openai_request() -> None:
    """What a cancel does to a running task of the openai backend: the skill coroutine is
    cancelled, and with it the HTTP request (the server sees the connection close)."""
    server = HangingOpenAI()
    await server.start()
    backend = OpenAISummarizer(base_url=server.url, model="tiny", timeout_s=30.0)
    try:
        call = asyncio.ensure_future(backend.summarize("Rivers and tides. " * 20, max_chars=200))
        await asyncio.wait_for(server.arrived.wait(), 10)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        await asyncio.wait_for(server.hung_up.wait(), 5)
    finally:
        await backend.aclose()
        await server.stop()


async def test_cancel_with_each_service_on_its_own_user(
    secure: SecureNats, tmp_path: Path, running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    """Least privilege holds for cancel: the client asks, the orchestrator broadcasts and
    removes the job's document, a worker reads the job state, without a violation."""
    caplog.set_level(logging.WARNING)
    s = _slow(make_settings(secure.url, tmp_path))
    s = s.model_copy(
        update={"orchestrator": s.orchestrator.model_copy(update={"chunk_chars": 400})}
    )
    prov = await Bus.connect(
        secure.nats_settings(permissions.PROVISIONER), agent_id="provisioner", service="provision"
    )
    await provision(prov.js, s)
    await prov.close()
    await running.start(Orchestrator, settings_as(secure, s, "orchestrator"), "orch-s1")
    worker = await running.start(
        lambda st: TaskWorker(st, SummarizeSkill(st)), settings_as(secure, s, "worker"), "w-s1"
    )
    assert isinstance(worker, TaskWorker) and worker.cancels is not None
    text = prose_document(5, 100 * 400)
    async with AgentBusClient(
        secure.nats_settings(permissions.CLIENT), limits=LimitsSettings(inline_limit_bytes=1024)
    ) as client:
        job_id = await client.submit(text)
        await _until(lambda: _mid_map(client, job_id), timeout_s=30, what="results recorded")
        reply = await client.cancel(job_id, reason="least privilege")
        assert reply.canceled, reply
        await _until(lambda: worker.cancels.seen(job_id), timeout_s=5, what="worker saw it")
    admin = await Bus.connect(
        secure.nats_settings(permissions.ADMIN), agent_id="admin", service="admin"
    )
    try:
        store = await admin.js.object_store(subjects.DOCUMENTS_BUCKET)

        async def removed() -> bool:
            try:
                await store.get_info(f"{job_id}.txt")
            except nats.js.errors.NotFoundError:
                return True
            return False

        await _until(removed, timeout_s=10, what="the document removed by the orchestrator")
    finally:
        await admin.close()
    # a worker that had not met the job reads its state: a late joiner drops its tasks
    late = await running.start(
        lambda st: TaskWorker(st, SummarizeSkill(st)), settings_as(secure, s, "worker"), "w-s2"
    )
    assert isinstance(late, TaskWorker) and late.cancels is not None
    assert await late.cancels.canceled(job_id)
    violations = [r.getMessage() for r in caplog.records if "violation" in r.getMessage().lower()]
    assert violations == []
    assert "violation" not in secure.server.log.lower(), secure.server.log


async def test_a_worker_started_after_the_cancel_runs_nothing_of_the_job(
    bus: Bus, settings: Settings, running: Running
) -> None:
    """A late joiner missed the broadcast: it reads the job's state when it first meets
    the job (beside that first task, which the read interrupts) and drops the rest."""
    s = _slow(settings)
    s = s.model_copy(
        update={"orchestrator": s.orchestrator.model_copy(update={"chunk_chars": 400})}
    )
    await running.start(Orchestrator, s, "orch-c5")
    async with AgentBusClient(s.nats) as client:
        job_id = await client.submit(prose_document(8, 60 * 400))

        async def taken_in() -> bool:
            state = await client.status(job_id)
            return state is not None and state.chunks > 0

        await _until(taken_in, timeout_s=15, what="the job taken in")
        assert (await client.cancel(job_id)).canceled
        starts: list[tuple[str, str, float]] = []

        def worker(st: Settings) -> TaskWorker:
            skill = WatchedSkill(st)
            skill.starts = starts
            return TaskWorker(st, skill)

        late = await running.start(worker, s, "worker-late")
        assert isinstance(late, TaskWorker)

        async def drained() -> bool:
            info = await bus.js.stream_info(subjects.TASKS_STREAM)
            return info.state.messages == 0

        await _until(drained, timeout_s=30, what="the job's tasks dropped by the late worker")
        state = await client.status(job_id)
        assert state is not None and state.status is JobStatus.CANCELED
        assert state.level_done == 0  # nothing ran to completion
        assert len(starts) <= s.worker.concurrency  # at most the first pull, interrupted
        assert late.task_counts["ok"] == 0
        assert late.task_counts["canceled_queued"] + late.task_counts["canceled_running"] >= 50


async def test_a_followed_job_ends_its_live_stream_with_the_cancel(
    bus: Bus, settings: Settings, running: Running
) -> None:
    """A reader of `client.stream` is not left waiting for a `completed` that will never
    come: the cancel is the stream's last item, with its reason."""
    s = _slow(settings)
    s = s.model_copy(
        update={"orchestrator": s.orchestrator.model_copy(update={"chunk_chars": 400})}
    )
    await running.start(Orchestrator, s, "orch-c6")
    await running.start(lambda st: TaskWorker(st, SummarizeSkill(st)), s, "worker-c6")
    async with AgentBusClient(s.nats) as client:
        job_id = await client.submit(prose_document(9, 40 * 400))

        async def follow() -> list[StreamKind]:
            return [item.kind async for item in client.stream(job_id)]

        reader = asyncio.create_task(follow())

        async def some_done() -> bool:
            state = await client.status(job_id)
            return state is not None and state.level_done >= 2

        await _until(some_done, timeout_s=30, what="two chunks summarized")
        assert (await client.cancel(job_id, reason="changed my mind")).canceled
        kinds = await asyncio.wait_for(reader, timeout=30)
        replay = [item async for item in client.stream(job_id)]
    assert kinds[0] is StreamKind.STARTED and StreamKind.CHUNK in kinds
    assert kinds[-1] is StreamKind.CANCELED and kinds.count(StreamKind.CANCELED) == 1
    assert replay[-1].kind is StreamKind.CANCELED
    assert replay[-1].error is not None and "changed my mind" in replay[-1].error
