"""Tenants against a real nats-server: the tenant of a job (subject, claim, default), its
tasks on the tenant's consumers, fair share (a small tenant's jobs finish during a big
tenant's backlog), the cap of tasks in flight held by the server."""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from agentbus.bus.core import Bus
from agentbus.bus.priority_pull import PriorityConsumerLoop
from agentbus.bus.tenant_pull import TenantPullers
from agentbus.bus.tenant_usage import TenantUsage
from agentbus.client.api import AgentBusClient
from agentbus.contract import permissions, subjects, tenants
from agentbus.contract.messages import AgentEvent, EventKind, JobStatus, JobSubmit, encode
from agentbus.contract.priority import Priority
from agentbus.contract.settings import Settings
from agentbus.contract.tenants import RATE_WINDOW_S, Window, task_consumer
from agentbus.dev.embedded import EmbeddedNatsServer
from agentbus.observability import metrics
from agentbus.runtime.worker import TaskWorker
from agentbus_event_archiver.store import EVENTS_TABLE, EventStore
from agentbus_orchestrator import Orchestrator, admission
from agentbus_summarize_worker import SummarizeSkill
from tests.conftest import Running, make_settings, provisioned, stream_agent_events
from tests.security import (
    ViolationRecorder,
    provision_as_provisioner,
    settings_as,
    start_secure_nats,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

CAP_C = 2
TENANTS = {"a": {"weight": 1}, "b": {"weight": 1}, "c": {"max_in_flight": CAP_C}}
DOC = "The harbour grew with its trade in salt and fish. Ships called there every season."


def _settings(url: str, tmp_path: Path) -> Settings:
    return make_settings(
        url,
        tmp_path,
        tenants={"configured": TENANTS},
        summarizer={"backend": "simulated", "simulated_latency_ms": 30.0},
        worker={"concurrency": 4},
    )


@pytest.fixture
async def tenant_bus(nats_server: EmbeddedNatsServer, tmp_path: Path) -> Settings:
    s = _settings(nats_server.url, tmp_path)
    await provisioned(s)
    return s


async def test_provision_gives_each_tenant_capped_consumers(tenant_bus: Settings) -> None:
    s = tenant_bus
    async with AgentBusClient(s.nats) as client:
        for p in Priority:
            c = await client.bus.js.consumer_info(
                subjects.TASKS_STREAM, task_consumer("summarize", p, "c")
            )
            assert c.config.max_ack_pending == CAP_C
            assert c.config.filter_subject == f"tasks.summarize.assign.{p.value}.c"
        # each tenant's jobs have their own intake consumer; the default's is as of old
        for tenant in ("a", "b", "c"):
            intake = await client.bus.js.consumer_info(
                subjects.JOBS_STREAM, f"orchestrator-{tenant}"
            )
            assert intake.config.filter_subject == f"jobs.submit.{tenant}"
        jobs = await client.bus.js.stream_info(subjects.JOBS_STREAM)
        assert jobs.config.subjects == [
            "jobs.submit", "jobs.submit.a", "jobs.submit.b", "jobs.submit.c",
        ]  # fmt: skip


async def test_a_job_belongs_to_its_subjects_tenant_else_its_claim_else_default(
    tenant_bus: Settings, running: Running
) -> None:
    s = tenant_bus
    await running.start(Orchestrator, s, "orch-1")
    await running.start(lambda st: TaskWorker(st, SummarizeSkill(st)), s, "worker-1")
    async with (
        AgentBusClient(s.nats, tenant="a") as as_a,
        AgentBusClient(s.nats) as trusted,
    ):
        by_client = await as_a.submit(DOC)
        by_claim = await trusted.submit(DOC + " claimed", tenant="b")
        unknown = await trusted.submit(DOC + " unknown", tenant="zeta")
        plain = await trusted.submit(DOC + " plain")
        # a claim on a tenant's subject loses to the subject (its users' permissions)
        forged = JobSubmit(job_id="a.forged-1", text=DOC + " forged", tenant="b")
        await trusted.bus.nc.publish(
            subjects.tenant_submit("a"), encode(forged, sender="test", msg_id="a.forged-1")
        )
        states = {
            j: await trusted.wait(j, timeout_s=60)
            for j in (by_client, by_claim, unknown, plain, "a.forged-1")
        }
    assert all(st.status is JobStatus.COMPLETED for st in states.values())
    assert {j: st.tenant for j, st in states.items()} == {
        by_client: "a", by_claim: "b", unknown: "default", plain: "default", "a.forged-1": "a",
    }  # fmt: skip
    # a tenant's jobs are named in its namespace (a claimed one too, configured or not)
    assert by_client.startswith("a.") and by_claim.startswith("b.")
    assert unknown.startswith("zeta.") and "." not in plain
    reader = await Bus.connect(s.nats, agent_id="reader", service="test")
    try:
        events = await stream_agent_events(reader)
    finally:
        await reader.close()
    accepted = {e.job_id: e.data.get("tenant") for e in events if e.kind == EventKind.JOB_ACCEPTED}
    assert accepted[by_client] == "a" and accepted[plain] == "default"


async def _submit_all(client: AgentBusClient, tenant: str, n: int) -> list[str]:
    ids: list[str] = []
    for start in range(0, n, 50):
        ids += await asyncio.gather(
            *(client.submit(f"{DOC} {tenant}{i}", tenant=tenant)
              for i in range(start, min(n, start + 50)))
        )  # fmt: skip
    return ids


async def test_a_small_tenant_is_served_during_a_big_backlog(
    tenant_bus: Settings, running: Running
) -> None:
    s = tenant_bus
    await running.start(Orchestrator, s, "orch-1")
    worker = await running.start(lambda st: TaskWorker(st, SummarizeSkill(st)), s, "worker-1")
    a_jobs, b_jobs = 300, 6
    async with AgentBusClient(s.nats) as client:
        backlog = await _submit_all(client, "a", a_jobs)
        small = await _submit_all(client, "b", b_jobs)
        for job_id in [*small, *backlog]:
            assert (await client.wait(job_id, timeout_s=150)).status is JobStatus.COMPLETED
        events = await stream_agent_events(client.bus)
    tenant_of = dict.fromkeys(backlog, "a") | dict.fromkeys(small, "b")
    starts = [tenant_of[e.job_id or ""] for e in events if e.kind == EventKind.TASK_STARTED]
    first_b, last_b = starts.index("b"), len(starts) - 1 - starts[::-1].index("b")
    # by weight 1:1, b's tasks went in turn with a's, not after a's backlog: a few of a's
    # between b's first and last start (a slot each, plus what was in flight), many after
    assert starts[first_b:last_b].count("a") <= b_jobs + 2 * s.worker.concurrency
    assert starts[last_b:].count("a") > a_jobs // 2
    loop = worker.loops[0]
    assert isinstance(loop, PriorityConsumerLoop)
    normal = loop._pullers[Priority.NORMAL]
    assert isinstance(normal, TenantPullers)
    assert normal.pulled == {"default": 0, "a": a_jobs, "b": b_jobs, "c": 0}


async def test_the_server_holds_a_tenant_to_its_cap_of_tasks_in_flight(
    tenant_bus: Settings, running: Running
) -> None:
    s = tenant_bus
    await running.start(Orchestrator, s, "orch-1")
    for i in range(2):  # the cap holds across replicas
        await running.start(lambda st: TaskWorker(st, SummarizeSkill(st)), s, f"worker-{i}")
    consumer = task_consumer("summarize", Priority.NORMAL, "c")
    most_in_flight = 0
    async with AgentBusClient(s.nats) as client:

        async def watch_cap() -> None:
            nonlocal most_in_flight
            while True:
                i = await client.bus.js.consumer_info(subjects.TASKS_STREAM, consumer)
                most_in_flight = max(most_in_flight, int(i.num_ack_pending or 0))
                await asyncio.sleep(0.005)

        watcher = asyncio.ensure_future(watch_cap())
        try:
            jobs = await _submit_all(client, "c", 40)
            for job_id in jobs:
                assert (await client.wait(job_id, timeout_s=120)).status is JobStatus.COMPLETED
        finally:
            watcher.cancel()
    assert most_in_flight == CAP_C  # reached, never passed (8 slots were free)


# --- rates and budgets -----------------------------------------------------------------


def _limited_settings(url: str, tmp_path: Path, **tenants: dict[str, object]) -> Settings:
    return make_settings(
        url,
        tmp_path,
        tenants={"configured": tenants},
        summarizer={"backend": "simulated", "simulated_latency_ms": 5.0},
    )


async def _stack(s: Settings, running: Running) -> Orchestrator:
    await provisioned(s)
    orch = await running.start(Orchestrator, s, "orch-1")
    assert isinstance(orch, Orchestrator)
    await running.start(lambda st: TaskWorker(st, SummarizeSkill(st)), s, "worker-1")
    return orch


def _outcomes(tenant: str) -> dict[str, float]:
    return {
        m.labels["outcome"]: m.value
        for metric in metrics.TENANT_JOBS.collect()
        for m in metric.samples
        if m.name.endswith("_total") and m.labels["tenant"] == tenant
    }


async def test_over_its_rate_a_tenant_is_refused_with_when_to_retry(
    nats_server: EmbeddedNatsServer, tmp_path: Path, running: Running
) -> None:
    s = _limited_settings(nats_server.url, tmp_path, r={"jobs_per_minute": 3})
    await _stack(s, running)
    # all five in one minute (a minute that turned in between would let more in)
    left_s = Window.seconds_left(time.time(), RATE_WINDOW_S)
    if left_s < 25:
        await asyncio.sleep(left_s + 0.1)
    async with AgentBusClient(s.nats, tenant="r") as client:
        jobs = [await client.submit(f"{DOC} r{i}") for i in range(5)]
        states = [await client.wait(j, timeout_s=60) for j in jobs]
    done = [st for st in states if st.status is JobStatus.COMPLETED]
    refused = [st for st in states if st.status is JobStatus.FAILED]
    assert len(done) == 3 and len(refused) == 2
    for st in refused:
        assert st.failed_by == "rate" and st.tenant == "r"
        assert st.error is not None and "\n" not in st.error
        assert re.fullmatch(
            r"tenant r is over its rate of 3 jobs per minute: retry after \d+ s", st.error
        ), st.error


async def test_over_its_rate_a_queueing_tenant_waits_for_the_next_window(
    nats_server: EmbeddedNatsServer,
    tmp_path: Path,
    running: Running,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a two-second "minute", so that the queued job's wait is short
    monkeypatch.setattr(tenants, "RATE_WINDOW_S", 2.0)
    monkeypatch.setattr(admission, "RATE_WINDOW_S", 2.0)
    s = _limited_settings(nats_server.url, tmp_path, q={"jobs_per_minute": 2, "over_rate": "queue"})
    await _stack(s, running)
    async with AgentBusClient(s.nats, tenant="q") as client:
        jobs = await asyncio.gather(*(client.submit(f"{DOC} q{i}") for i in range(6)))
        states = [await client.wait(j, timeout_s=60) for j in jobs]
    assert all(st.status is JobStatus.COMPLETED for st in states), [st.error for st in states]
    assert _outcomes("q").get("queued_rate", 0) >= 1  # some were held, none lost
    # at most two taken in per window: six jobs span at least three windows
    created = sorted(st.created_at.timestamp() for st in states)
    assert len({math.floor(t / 2.0) for t in created}) >= 3


async def _counted(
    orch: Orchestrator, client: AgentBusClient, tenant: str, *, window_s: float
) -> int:
    """The tenant's tokens on the shared counter, once its finished tasks' are there (a
    result is counted just after the job's state says completed)."""
    for _ in range(200):
        await orch.admission.flush()
        spent, _ = await TenantUsage(client.bus).read(f"{tenant}.tokens", window_s=window_s)
        if spent.used:
            return spent.used
        await asyncio.sleep(0.01)
    raise AssertionError(f"tenant {tenant}'s tokens never counted")


async def test_a_spent_token_budget_fails_new_jobs_or_makes_them_wait(
    nats_server: EmbeddedNatsServer, tmp_path: Path, running: Running
) -> None:
    s = _limited_settings(
        nats_server.url,
        tmp_path,
        f={"token_budget": 10, "budget_window_s": 3600, "over_budget": "fail"},
        w={"token_budget": 10, "budget_window_s": 5, "over_budget": "wait"},
    )
    orch = await _stack(s, running)
    async with AgentBusClient(s.nats) as client:
        # w: a job spends the budget of its 5-second window, the next one waits for the
        # window to turn (begun early in a window, so that it is still the same one)
        left_s = Window.seconds_left(time.time(), 5.0)
        if left_s < 4:
            await asyncio.sleep(left_s + 0.05)
        first_w = await client.wait(await client.submit(DOC + " w", tenant="w"), timeout_s=60)
        await _counted(orch, client, "w", window_s=5)
        waited = await client.wait(await client.submit(DOC + " later", tenant="w"), timeout_s=60)
        # f: the next job fails with the reason
        first_f = await client.wait(await client.submit(DOC, tenant="f"), timeout_s=60)
        # the estimate: (document + summary characters) / 4
        assert await _counted(orch, client, "f", window_s=3600) >= 10
        over = await client.wait(await client.submit(DOC + " again", tenant="f"), timeout_s=60)
    assert first_f.status is JobStatus.COMPLETED and first_w.status is JobStatus.COMPLETED
    assert over.status is JobStatus.FAILED and over.failed_by == "budget"
    assert over.error is not None and over.error.startswith(
        "tenant f has spent its token budget (10 tokens per 3600 s): retry after "
    )
    assert waited.status is JobStatus.COMPLETED  # once its window turned
    assert _outcomes("w").get("waiting_budget", 0) >= 1


async def test_the_archive_row_keeps_the_tenant_an_event_names(tmp_path: Path) -> None:
    store = EventStore(f"sqlite+aiosqlite:///{tmp_path / 'archive.db'}")
    try:
        await store.create_schema()
        common = {"agent_id": "w-1", "service": "worker", "kind": EventKind.TASK_STARTED}
        said = AgentEvent(event_id="e1", job_id="j1", data={"tenant": "a"}, **common)
        silent = AgentEvent(event_id="e2", job_id="j2", **common)
        await store.insert([(said, "agent.w-1.events", 1), (silent, "agent.w-1.events", 2)])
        async with store.engine.begin() as conn:
            rows = await conn.execute(select(EVENTS_TABLE.c.event_id, EVENTS_TABLE.c.tenant))
            assert {r[0]: r[1] for r in rows} == {"e1": "a", "e2": None}
    finally:
        await store.close()


# --- isolation: a tenant's NATS user submits only as its tenant --------------------------


async def test_a_tenant_user_submits_only_as_its_tenant_on_a_real_server(
    tmp_path: Path, running: Running
) -> None:
    secure = start_secure_nats(tmp_path, tenant_users={"acme": ["acme-app"]})
    try:
        # acme capped: its tasks run on permits the provisioner put there (as its user)
        tenants = {"acme": {"max_in_flight": 2}, "beta": {}}
        s = make_settings(secure.url, tmp_path, tenants={"configured": tenants})
        # every service on its own user: the provisioner creates the tenants' consumers,
        # the orchestrator and the worker pull them
        await provision_as_provisioner(secure, s)
        await running.start(Orchestrator, settings_as(secure, s, "orchestrator"), "orch-1")
        await running.start(
            lambda st: TaskWorker(st, SummarizeSkill(st)),
            settings_as(secure, s, "worker"),
            "worker-1",
        )
        async with AgentBusClient(secure.nats_settings("acme-app"), tenant="acme") as client:
            state = await client.wait(await client.submit(DOC), timeout_s=60)
        assert state.status is JobStatus.COMPLETED and state.tenant == "acme"

        rec = await ViolationRecorder.connect(secure, "acme-app")
        try:
            forged = encode(JobSubmit(job_id="forged-2", text=DOC), sender="acme-app")
            for subject in ("jobs.submit.beta", "jobs.submit"):
                await rec.nc.publish(subject, forged)
                await rec.wait_violation("publish", subject)
        finally:
            await rec.close()
        async with AgentBusClient(secure.nats_settings(permissions.CLIENT)) as trusted:
            assert await trusted.status("forged-2") is None  # neither got in
    finally:
        secure.stop()


async def test_agentbus_tenants_shows_use_limits_and_queue(
    nats_server: EmbeddedNatsServer, tmp_path: Path, running: Running
) -> None:
    limits: dict[str, object] = {
        "jobs_per_minute": 100,
        "token_budget": 1_000_000,
        "max_in_flight": 3,
    }
    s = _limited_settings(nats_server.url, tmp_path, a=limits, b={"weight": 2})
    await _stack(s, running)
    left_s = Window.seconds_left(time.time(), RATE_WINDOW_S)
    if left_s < 20:  # the two jobs counted in the same minute as the report
        await asyncio.sleep(left_s + 0.1)
    async with AgentBusClient(s.nats, tenant="a") as client:
        for job_id in [await client.submit(f"{DOC} {i}") for i in range(2)]:
            assert (await client.wait(job_id, timeout_s=60)).status is JobStatus.COMPLETED
    env = {
        **os.environ,
        "AGENTBUS_NATS__URL": nats_server.url,
        "AGENTBUS_TENANTS__CONFIGURED": json.dumps({"a": limits, "b": {"weight": 2}}),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agentbus", "tenants", "--json", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode == 0, err.decode()
    rows = {r["tenant"]: r for r in json.loads(out)}
    assert list(rows) == ["default", "a", "b"]
    a = rows["a"]
    assert a["jobs_this_minute"] == 2 and a["jobs_per_minute"] == 100
    assert a["max_in_flight"] == 3 and a["in_flight"] == 0 and a["queued"] == 0
    assert a["token_budget"] == 1_000_000
    assert rows["b"]["weight"] == 2 and rows["b"]["jobs_per_minute"] is None
