"""Tenants' read-side isolation against a real nats-server with the NATS users of
`agentbus permissions`: a tenant's user submits, watches, streams, reads the history of
and cancels its own jobs (named `{tenant}.{id}`), and every way to read or touch another
tenant's job is refused by the server (a permissions violation, asserted by subject) or
by the service that answers as the tenant (an error naming the tenant)."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agentbus.bus.deadletters import DeadLetter
from agentbus.client.api import AgentBusClient
from agentbus.contract import permissions, subjects
from agentbus.contract.messages import (
    CancelReply,
    CancelRequest,
    EventKind,
    HistoryQuery,
    HistoryReply,
    JobStatus,
    JobSubmit,
    StreamKind,
    decode,
    encode,
)
from agentbus.contract.settings import Settings
from agentbus.runtime.worker import TaskWorker
from agentbus_event_archiver import EventArchiver
from agentbus_orchestrator import Orchestrator
from agentbus_summarize_worker import SummarizeSkill
from tests.conftest import Running, make_settings
from tests.security import (
    SecureNats,
    ViolationRecorder,
    provision_as_provisioner,
    settings_as,
    start_secure_nats,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

DOC = "The harbour grew with its trade in salt and fish. Ships called there every season."
LONG = " ".join(
    f"Sentence {i} tells of the harbour, its ships and the salt they carried." for i in range(400)
)


@dataclass
class TenantStack:
    secure: SecureNats
    settings: Settings

    def client(self, user: str, *, tenant: str | None = None) -> AgentBusClient:
        return AgentBusClient(self.secure.nats_settings(user), tenant=tenant)


@pytest.fixture
async def stack(tmp_path: Path, running: Running) -> AsyncIterator[TenantStack]:
    secure = start_secure_nats(tmp_path, tenant_users={"acme": ["acme-app"], "beta": ["beta-app"]})
    try:
        s = make_settings(
            secure.url,
            tmp_path,
            tenants={"configured": {"acme": {}, "beta": {}}},
            # multi-chunk jobs, slow enough to cancel one while it runs
            orchestrator={"chunk_chars": 400, "chunk_summary_chars": 150},
            summarizer={"backend": "simulated", "simulated_latency_ms": 40.0},
        )
        await provision_as_provisioner(secure, s)
        await running.start(Orchestrator, settings_as(secure, s, "orchestrator"), "orch-1")
        await running.start(
            lambda st: TaskWorker(st, SummarizeSkill(st)), settings_as(secure, s, "worker"), "w-1"
        )
        await running.start(EventArchiver, settings_as(secure, s, "archiver"), "arch-1")
        yield TenantStack(secure=secure, settings=s)
    finally:
        await running.close()
        secure.stop()


async def test_a_tenant_user_reads_and_cancels_its_own_jobs(stack: TenantStack) -> None:
    async with stack.client("acme-app", tenant="acme") as acme:
        job = await acme.submit(DOC, job_id="report-1")
        assert job == "acme.report-1"  # named in its tenant's namespace
        state = await acme.wait(job, timeout_s=60)
        assert state.status is JobStatus.COMPLETED and state.tenant == "acme"
        assert state.summary
        assert (await acme.status(job)) == state
        items = [item async for item in acme.stream(job)]
        assert items[-1].kind is StreamKind.COMPLETED and items[-1].job_id == job
        events = await acme.history(job, wait_for_end_s=20)
        kinds = [e.kind for e in events]
        assert kinds[0] is EventKind.JOB_ACCEPTED and EventKind.JOB_COMPLETED in kinds
        assert all(e.job_id == job for e in events)
        # the same document under the same id: that job; a second one runs and is canceled
        assert await acme.submit(DOC, job_id="report-1") == job
        long_job = await acme.submit(LONG)
        assert long_job.startswith("acme.")
        reply = await acme.cancel(long_job, reason="not needed")
        assert reply.canceled and reply.error is None
        final = await acme.wait(long_job, timeout_s=60)
        assert final.status is JobStatus.CANCELED
    # a trusted client reads every tenant's job
    async with stack.client(permissions.CLIENT) as trusted:
        seen = await trusted.status(job)
        assert seen is not None and seen.tenant == "acme"
        assert len(await trusted.history(job)) == len(events)


async def test_another_tenants_job_is_out_of_reach(stack: TenantStack) -> None:
    async with stack.client("beta-app", tenant="beta") as beta:
        theirs = await beta.submit(DOC)
        assert (await beta.wait(theirs, timeout_s=60)).status is JobStatus.COMPLETED
    assert theirs.startswith("beta.")
    rec = await ViolationRecorder.connect(stack.secure, "acme-app")
    try:
        nc = rec.nc
        # every JetStream read of beta's state or partial results, and the wide forms
        denied = [
            f"$JS.API.DIRECT.GET.KV_jobs.$KV.jobs.{theirs}",
            "$JS.API.DIRECT.GET.KV_jobs",  # by sequence, in the body
            "$JS.API.STREAM.MSG.GET.KV_jobs",
            "$JS.API.CONSUMER.CREATE.KV_jobs",  # no filter in the subject
            f"$JS.API.CONSUMER.CREATE.KV_jobs.r1.$KV.jobs.{theirs}",
            "$JS.API.CONSUMER.CREATE.KV_jobs.r1.$KV.jobs.>",
            "$JS.API.CONSUMER.DURABLE.CREATE.KV_jobs.r1",
            f"$JS.API.DIRECT.GET.PROGRESS.progress.{theirs}",
            # the streams' info (a subjects filter lists every job id)
            "$JS.API.STREAM.INFO.KV_jobs",
            "$JS.API.STREAM.INFO.PROGRESS",
            "$JS.API.STREAM.MSG.GET.PROGRESS",
            "$JS.API.CONSUMER.CREATE.PROGRESS",
            f"$JS.API.CONSUMER.CREATE.PROGRESS.r1.progress.{theirs}",
            # asking or cancelling as beta, or as nobody in particular
            "rpc.history",
            "rpc.history.beta",
            "jobs.cancel",
            "jobs.cancel.beta",
            "jobs.submit",
            "jobs.submit.beta",
            # a summary by request/reply: outside acme's share, cap, rate and budget
            "rpc.summarize",
        ]
        for subject in denied:
            await nc.publish(subject, b"{}", reply=nc.new_inbox())
            await rec.wait_violation("publish", subject)
        for subject in (f"$KV.jobs.{theirs}", "$KV.jobs.>", f"progress.{theirs}", "progress.>"):
            await nc.subscribe(subject)
            await rec.wait_violation("subscription", subject)

        # a consumer whose create subject says acme but whose filter says beta: the server
        # compares them and refuses
        create = "$JS.API.CONSUMER.CREATE.KV_jobs.r2.$KV.jobs.acme.x"
        body = {
            "stream_name": "KV_jobs",
            "config": {"name": "r2", "filter_subject": f"$KV.jobs.{theirs}", "ack_policy": "none"},
        }
        answer = json.loads((await nc.request(create, json.dumps(body).encode(), 5)).data)
        assert "error" in answer, answer

        # the services that answer as acme refuse beta's job, naming the tenant
        msg = await nc.request(
            "rpc.history.acme", encode(HistoryQuery(job_id=theirs), sender="acme-app"), 10
        )
        history = decode(msg.data, HistoryReply).payload
        assert history.events == [] and history.error is not None
        assert "not tenant acme's" in history.error
        msg = await nc.request(
            "jobs.cancel.acme", encode(CancelRequest(job_id=theirs), sender="acme-app"), 10
        )
        cancel = decode(msg.data, CancelReply).payload
        assert not cancel.canceled and cancel.error and "not tenant acme's" in cancel.error

        # a job submitted as acme but named in beta's namespace, or not in acme's, never
        # gets a state: no tenant can create (or block) another's job ids
        forged_ids = [f"beta.stolen-{secrets.token_hex(3)}", "plain-id"]
        for forged in forged_ids:
            job = encode(JobSubmit(job_id=forged, text=DOC), sender="acme-app")
            await nc.publish("jobs.submit.acme", job)
        await nc.flush()
    finally:
        await rec.close()
    async with stack.client(permissions.ADMIN) as admin:  # operators read the DLQ
        letters = await _dead_letters(admin, count=len(forged_ids))
        assert sorted(d.job_id or "" for d in letters) == sorted(forged_ids)
        for d in letters:
            assert "is not in tenant acme's namespace" in d.reason, d.reason
        for forged in forged_ids:  # dead-lettered: taken in no further
            assert await admin.status(forged) is None
        state = await admin.status(theirs)
        assert state is not None and state.status is JobStatus.COMPLETED  # untouched


async def _dead_letters(client: AgentBusClient, *, count: int) -> list[DeadLetter]:
    letters: list[DeadLetter] = []
    for _ in range(200):
        letters = await client.dead_letters(stream=subjects.JOBS_STREAM)
        if len(letters) >= count:
            return letters
        await asyncio.sleep(0.05)
    raise AssertionError(f"expected {count} dead letters of JOBS, got {letters}")
