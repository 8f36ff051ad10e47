"""Large payloads: documents and final summaries above the inline limit travel through the
JetStream object store and are passed by reference; a 20 MiB document end to end."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from agentbus.bus.core import Bus
from agentbus.bus.documents import store_document
from agentbus.client.api import AgentBusClient
from agentbus.contract import subjects
from agentbus.contract.messages import (
    SEAL_TAG_BYTES,
    JobStatus,
    JobSubmit,
    decode,
    decode_job_state,
)
from agentbus.contract.settings import Settings
from agentbus.runtime.worker import TaskWorker
from agentbus_orchestrator import Orchestrator
from agentbus_summarize_worker import SummarizeSkill

pytestmark = pytest.mark.integration

MIB = 1024 * 1024


def harbour_text(min_bytes: int) -> str:
    parts: list[str] = []
    size = 0
    i = 0
    while size < min_bytes:
        sentence = f"Section {i} describes harbour number {i} and the ships that call there. "
        if i % 40 == 39:
            sentence += "\n\n"
        parts.append(sentence)
        size += len(sentence)
        i += 1
    return "".join(parts)


def tuned(settings: Settings, **orchestrator: Any) -> Settings:
    return settings.model_copy(
        update={
            "orchestrator": settings.orchestrator.model_copy(update=orchestrator),
            "summarizer": settings.summarizer.model_copy(
                update={"backend": "simulated", "simulated_latency_ms": 0.0}
            ),
            "worker": settings.worker.model_copy(update={"concurrency": 8}),
        }
    )


async def submitted_job(bus: Bus) -> JobSubmit:
    msg = await bus.js.get_last_msg(subjects.JOBS_STREAM, subjects.JOBS_SUBJECT)
    assert msg.data is not None
    assert len(msg.data) < 4096  # the job message carries a reference, not the text
    return decode(msg.data, JobSubmit).payload


@pytest.mark.timeout(120)
async def test_20_mib_document_end_to_end(bus: Bus, settings: Settings, running: Any) -> None:
    s = tuned(settings, chunk_chars=400_000, chunk_summary_chars=2_000, summary_chars=1_200)
    await running.start(Orchestrator, s, "big-orch")
    await running.start(lambda st: TaskWorker(st, SummarizeSkill(st)), s, "big-w1")
    await running.start(lambda st: TaskWorker(st, SummarizeSkill(st)), s, "big-w2")
    text = harbour_text(20 * MIB)
    data = text.encode()
    assert len(data) >= 20 * MIB
    async with AgentBusClient(s.nats, limits=s.limits) as client:
        job_id = await client.submit(text, title="twenty mebibytes")
        job = await submitted_job(bus)
        state = await client.wait(job_id, timeout_s=90)
    assert job.job_id == job_id and job.text is None and job.document is not None
    assert job.document.size_bytes == len(data)
    assert job.document.sha256 == hashlib.sha256(data).hexdigest()
    store = await bus.js.object_store(subjects.DOCUMENTS_BUCKET)
    info = await store.get_info(job.document.name)
    assert info.size == len(data) + SEAL_TAG_BYTES and job.document.seal is not None
    # sealed: what any reader of the shared object store gets is not the text
    head = (await store.get(job.document.name)).data
    assert head is not None and b"harbour" not in head and data[:4096] not in head
    assert state.status is JobStatus.COMPLETED, state.error
    assert state.document_chars == len(text)
    assert state.chunks >= 50 and state.level >= 1
    assert state.summary is not None and 0 < len(state.summary) <= 1_200
    assert state.summary.startswith("Section 0 describes harbour number 0")
    assert state.summary_ref is None  # a small summary stays inline


@pytest.mark.timeout(60)
async def test_final_summary_above_the_inline_limit_travels_by_reference(
    bus: Bus, settings: Settings, running: Any
) -> None:
    s = tuned(settings, chunk_chars=30_000, chunk_summary_chars=10_000)
    s = s.model_copy(update={"limits": s.limits.model_copy(update={"inline_limit_bytes": 4096})})
    await running.start(Orchestrator, s, "ref-orch")
    await running.start(lambda st: TaskWorker(st, SummarizeSkill(st)), s, "ref-w1")
    text = harbour_text(100_000)
    async with AgentBusClient(s.nats, limits=s.limits) as client:
        job_id = await client.submit(text, summary_chars=20_000)
        assert (await submitted_job(bus)).document is not None
        state = await client.wait(job_id, timeout_s=30)
        raw = await (await bus.kv(subjects.JOBS_BUCKET)).get(job_id)
        assert raw.value is not None
        stored = decode_job_state(raw.value)
    assert state.status is JobStatus.COMPLETED, state.error
    # in the KV bucket: a reference only; the client fetched the text
    assert stored.summary is None and stored.summary_ref is not None
    assert stored.summary_ref.bucket == subjects.DOCUMENTS_BUCKET
    assert state.summary is not None and 4096 < len(state.summary.encode()) <= 20_000
    assert stored.summary_ref.size_bytes == len(state.summary.encode())
    assert stored.summary_ref.sha256 == hashlib.sha256(state.summary.encode()).hexdigest()
    assert state.summary.startswith("Section 0 describes harbour number 0")
    async with AgentBusClient(s.nats, limits=s.limits) as client:
        assert await client.fetch_summary(stored) == state.summary
        assert await client.summarize(text[:50_000], summary_chars=9_000, timeout_s=30)


@pytest.mark.timeout(60)
async def test_a_replaced_object_fails_its_job_and_is_never_summarized(
    bus: Bus, settings: Settings, running: Any
) -> None:
    """Another tenant's client may write to the shared object store: an object replaced
    under a job's reference does not open with the job's seal, and the job fails with
    the reason instead of summarizing the replacement."""
    s = tuned(settings)
    await running.start(Orchestrator, s, "seal-orch")
    await running.start(lambda st: TaskWorker(st, SummarizeSkill(st)), s, "seal-w1")
    text = harbour_text(300_000)
    ref = await store_document(bus.js, name="victim.txt", data=text.encode())
    # the same name written again by someone else, with text of their own
    store = await bus.js.object_store(subjects.DOCUMENTS_BUCKET)
    await store.put("victim.txt", harbour_text(300_000).replace("harbour", "hidden").encode())
    job = JobSubmit(job_id="sealed-1", document=ref, document_sha256=ref.sha256)
    await bus.publish(subjects.JOBS_SUBJECT, job, msg_id=job.job_id, stream=subjects.JOBS_STREAM)
    async with AgentBusClient(s.nats, limits=s.limits) as client:
        state = await client.wait(job.job_id, timeout_s=30)
    assert state.status is JobStatus.FAILED
    assert state.error is not None and "\n" not in state.error
    assert "victim.txt does not open with its reference's seal" in state.error, state.error
    assert state.summary is None and state.chunks == 0
