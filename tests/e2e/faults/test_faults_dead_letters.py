"""Poison tasks and the dead-letter queue: retries with backoff, dead letters with the
reason, `agentbus dlq list/replay`, the max-deliveries safety net, the simulated fault
markers the scenarios rely on."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Final

import pytest

from agentbus.bus.core import Bus
from agentbus.bus.deadletters import DeadLetter, list_dead_letters, replay_dead_letter
from agentbus.client.api import AgentBusClient
from agentbus.contract import subjects
from agentbus.contract.headers import (
    DLQ_HEADER_DELIVERIES,
    DLQ_HEADER_MSG_ID,
    DLQ_HEADER_SUBJECT,
    MSG_ID_HEADER,
)
from agentbus.contract.messages import EventKind, JobStatus, TaskAssign, decode
from agentbus.contract.settings import Settings
from agentbus.dev.embedded import EmbeddedNatsServer
from agentbus.runtime.worker import TaskWorker
from agentbus_orchestrator import Orchestrator
from agentbus_summarize_worker import SummarizeSkill
from tests.conftest import Running, dlq_messages, make_settings, with_sections
from tests.e2e.faults.harness import Probe, measure, report, until
from tests.e2e.faults.processes import archive_url, running_stack
from tests.e2e.faults.workload import AGENTBUS, JOBS, long_doc, small_doc

pytestmark = [pytest.mark.e2e, pytest.mark.faults]


@pytest.mark.timeout(180)
async def test_poison_tasks_are_retried_dead_lettered_listed_and_replayed(
    nats_single: EmbeddedNatsServer,
    tmp_path: Path,
    fault_env: Callable[..., dict[str, str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    max_deliver, backoff = 3, [0.2, 0.5]
    fault_env(
        AGENTBUS_TOPOLOGY__MAX_DELIVER=str(max_deliver),
        AGENTBUS_WORKER__BACKOFF_S=json.dumps(backoff),
        AGENTBUS_SUMMARIZER__SIMULATED_LATENCY_MS="20",
        AGENTBUS_ORCHESTRATOR__CHUNK_CHARS="400",
        AGENTBUS_ORCHESTRATOR__CHUNK_SUMMARY_CHARS="100",
    )
    flag = tmp_path / "backend-down.flag"  # the "broken dependency" of the poison tasks
    flag.write_text("down\n")
    poison = f"[[simulated:fail-while={flag}]]"
    docs: dict[str, str] = {}
    docs |= {f"poison-{i:03}": small_doc(i, poison) for i in range(6)}
    docs |= {
        f"poison-multi-{i}": long_doc(i, paragraphs=3, marker_at=1, marker=poison) for i in range(2)
    }
    docs |= {f"fatal-{i:03}": small_doc(i, "[[simulated:fatal]]") for i in range(2)}
    docs |= {f"ok-{i:03}": small_doc(i) for i in range(JOBS - len(docs))}
    async with running_stack(tmp_path, nats_single.url, workers=2) as stack:
        cli_env = {**os.environ, "AGENTBUS_NATS__URL": nats_single.url}
        async with Probe(nats_single.url) as probe:
            job_ids = await probe.submit(docs)
            first = await probe.wait_terminal(job_ids, timeout_s=90)
            failed = {j for j, s in first.items() if s.status is JobStatus.FAILED}
            assert failed == {j for j in job_ids if not j.startswith("ok-")}

            # the dead letters: original payload and headers, and the reason
            letters = await list_dead_letters(probe.b.js)
            assert len(letters) == len(failed)
            assert {d.job_id for d in letters} == failed
            for d in letters:
                assert d.subject == "dlq.tasks" and d.stream == subjects.TASKS_STREAM
                assert d.original_subject == subjects.task_assign("summarize")
                assert d.original_msg_id == f"{d.job_id}:{d.task_id}"
                task = decode(d.data, TaskAssign).payload  # byte-for-byte the original task
                assert (task.job_id, task.task_id) == (d.job_id, d.task_id)
                assert "[[simulated:" in task.text
                state = first[task.job_id]
                assert state.error and d.reason in state.error  # the job failed with the reason
                if d.job_id and d.job_id.startswith("fatal-"):
                    assert d.deliveries == 1 and "permanent" in d.reason
                else:
                    assert d.deliveries == max_deliver and "fail-while" in d.reason
                    assert f"after {max_deliver} attempt(s)" in d.reason
            raw = await dlq_messages(probe.b)
            for _subject, headers, _data in raw:
                assert headers[DLQ_HEADER_SUBJECT] == subjects.task_assign("summarize")
                assert headers[MSG_ID_HEADER].startswith("dlq-") and headers[DLQ_HEADER_MSG_ID]
                assert int(headers[DLQ_HEADER_DELIVERIES]) in (1, max_deliver)
            # retried with the configured backoff before giving up
            events = await probe.events()
            retried = [e for e in events if e.kind is EventKind.TASK_RETRIED]
            poisoned = [d for d in letters if d.deliveries == max_deliver]
            assert len(retried) == len(poisoned) * (max_deliver - 1)
            for d in poisoned:
                mine = sorted(
                    (e.data["attempt"], e.data["delay_s"])
                    for e in retried
                    if (e.job_id, e.task_id) == (d.job_id, d.task_id)
                )
                assert mine == [(a, backoff[min(a - 1, len(backoff) - 1)]) for a in (1, 2)]
            before, _, _ = await measure(
                "dead-letters", probe, job_ids, database_url=archive_url(stack),
                submitted=len(job_ids),
            )  # fmt: skip
            before.check()
            assert before.dead_lettered == len(failed) == 10

            # `agentbus dlq list`
            listed = await asyncio.to_thread(
                subprocess.run, [*AGENTBUS, "dlq", "list", "--json"],
                env=cli_env, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert listed.returncode == 0, listed.stderr
            rows = json.loads(listed.stdout)
            assert {r["id"] for r in rows} == {d.id for d in letters}
            assert all(r["reason"] and r["job_id"] in failed for r in rows)
            table = await asyncio.to_thread(
                subprocess.run, [*AGENTBUS, "dlq", "list"],
                env={**cli_env, "COLUMNS": "250"}, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert table.returncode == 0 and "fail-while" in table.stdout, table.stdout

            # fix the dependency, then `agentbus dlq replay ID...` the retryable ones
            flag.unlink()
            to_replay = sorted(d.id for d in letters if d.deliveries == max_deliver)
            replayed = await asyncio.to_thread(
                subprocess.run, [*AGENTBUS, "dlq", "replay", *map(str, to_replay)],
                env={**cli_env, "COLUMNS": "250"}, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert replayed.returncode == 0, replayed.stderr
            assert replayed.stdout.count("replayed dead letter") == len(to_replay)
            replayed_jobs = [d.job_id for d in letters if d.id in to_replay and d.job_id]

            async def reopened_done() -> bool:
                st = await probe.states(replayed_jobs)
                return all(s is not None and s.status is JobStatus.COMPLETED for s in st.values())

            await until(reopened_done, timeout_s=60, what="replayed jobs completed")
            left = await list_dead_letters(probe.b.js)
            assert sorted(d.job_id or "" for d in left) == ["fatal-000", "fatal-001"]
            outcome, events, states = await measure(
                "dead-letters", probe, job_ids, database_url=archive_url(stack),
                submitted=len(job_ids),
                extra={"dead-lettered-first": before.dead_lettered, "replayed": len(to_replay)},
            )  # fmt: skip
    report(capsys, outcome)
    outcome.check()
    assert outcome.completed == JOBS - 2 and outcome.dead_lettered == 2
    for job_id in replayed_jobs:
        final = states[job_id]
        assert final is not None and final.error is None and final.summary
        kinds = [e.kind for e in events if e.job_id == job_id]
        assert kinds.count(EventKind.JOB_FAILED) == 1  # its history keeps the failure
        assert kinds.index(EventKind.JOB_FAILED) < kinds.index(EventKind.JOB_COMPLETED)
    multi = [states[j] for j in replayed_jobs if j.startswith("poison-multi-")]
    assert all(s is not None and s.chunks == 3 for s in multi)


_LATE_TEXT: Final = b"A document that arrived late. It was uploaded after the job. Now it is here."


async def _job_failed_for_a_missing_document(
    bus: Bus, s: Settings, job_id: str, *, data: bytes = _LATE_TEXT
) -> DeadLetter:
    """A job whose document is not in the object store at intake: it fails and its message
    is dead-lettered on `dlq.jobs` with the reason; then the document is stored."""
    from agentbus.bus.documents import store_document
    from agentbus.contract.messages import JobSubmit

    name = f"{job_id}.txt"
    ref = await store_document(bus.js, name=name, data=data)
    store = await bus.js.object_store(subjects.DOCUMENTS_BUCKET)
    await store.delete(name)
    await bus.publish(
        subjects.JOBS_SUBJECT, JobSubmit(job_id=job_id, document=ref), msg_id=job_id,
        stream=subjects.JOBS_STREAM,
    )  # fmt: skip
    async with AgentBusClient(s.nats) as client:
        failed = await client.wait(job_id, timeout_s=60)
    assert failed.status is JobStatus.FAILED and failed.error
    [dead] = await list_dead_letters(bus.js, stream="jobs")
    assert dead.job_id == job_id and dead.reason
    await store_document(bus.js, name=name, data=data)
    return dead


@pytest.mark.timeout(90)
async def test_replayed_job_dead_letter_is_taken_in_again(
    bus: Bus, settings: Settings, running: Running
) -> None:
    """A job whose document was missing at intake fails and is dead-lettered on `dlq.jobs`
    with the reason; once the document is there, replaying the dead letter takes the job in
    again and it completes."""
    s = settings.model_copy(
        update={"summarizer": settings.summarizer.model_copy(update={"backend": "simulated"})}
    )
    await running.start(Orchestrator, s, "orch-j")
    await running.start(lambda st: TaskWorker(st, SummarizeSkill(st)), s, "worker-j")
    dead = await _job_failed_for_a_missing_document(bus, s, "late-1")
    result = await replay_dead_letter(bus.js, dead.id)
    assert result.removed and not result.duplicate
    assert result.msg_id == "late-1:replay-" + str(dead.id)
    async with AgentBusClient(s.nats) as client:
        for _ in range(100):
            state = await client.status("late-1")
            if state is not None and state.status is JobStatus.COMPLETED:
                break
            await asyncio.sleep(0.1)
    assert state is not None and state.status is JobStatus.COMPLETED, state
    assert state.summary and state.error is None
    assert await list_dead_letters(bus.js) == []


@pytest.mark.timeout(90)
async def test_a_replayed_job_keeps_its_deadline(
    bus: Bus, settings: Settings, running: Running
) -> None:
    """The replayed message of a job taken in again is its timer from then on: with no
    worker running, the job fails at its deadline (not as an intake over max_deliver, nor
    left running), and no new dead letter is filed."""
    s = with_sections(settings, orchestrator={"job_timeout_s": 3.0, "chunk_chars": 400})
    await running.start(Orchestrator, s, "orch-d")
    text = long_doc(2, paragraphs=4).encode()  # several chunks: no task runs, none done
    dead = await _job_failed_for_a_missing_document(bus, s, "late-2", data=text)
    assert (await replay_dead_letter(bus.js, dead.id)).removed
    async with AgentBusClient(s.nats) as client:
        await until(
            lambda: _ended_again(client, "late-2"), timeout_s=45, what="the replayed job ends"
        )
        state = await client.status("late-2")
    assert state is not None and state.status is JobStatus.FAILED, state
    assert state.failed_by == "timeout", state
    assert state.error is not None and "deadline" in state.error
    assert state.level_done == 0 and state.chunks == 4
    assert await list_dead_letters(bus.js) == []


async def _ended_again(client: AgentBusClient, job_id: str) -> bool:
    """Ended, and not by the failure the dead letter recorded (`rejected`)."""
    state = await client.status(job_id)
    return state is not None and state.status.terminal and state.failed_by != "rejected"


@pytest.mark.timeout(60)
async def test_max_deliveries_advisory_dead_letters_what_no_worker_did(
    nats_server: EmbeddedNatsServer, tmp_path: Path, running: Running
) -> None:
    """The safety net: workers that think they may retry 10 times meet a consumer
    provisioned for 2 (+1): JetStream stops delivering while no worker gave up. The
    orchestrator hears the max-deliveries advisory, files the dead letter, takes the task
    off TASKS and fails the job with the reason."""
    provisioned = make_settings(nats_server.url, tmp_path, topology={"max_deliver": 2})
    workers = make_settings(
        nats_server.url,
        tmp_path,
        topology={"max_deliver": 10},
        worker={"backoff_s": [0.1]},
        summarizer={"backend": "simulated", "simulated_latency_ms": 1.0},
    )
    async with Probe(nats_server.url) as probe:
        from agentbus.bus.topology import provision

        await provision(probe.b.js, provisioned)
        await running.start(Orchestrator, provisioned, "orch-adv")
        await running.start(lambda st: TaskWorker(st, SummarizeSkill(st)), workers, "worker-adv")
        [job_id] = await probe.submit({"adv-1": small_doc(1, "[[simulated:fail]]")})
        [ok_id] = await probe.submit({"adv-ok": small_doc(2)})
        states = await probe.wait_terminal([job_id, ok_id], timeout_s=30)
        events = await probe.events()
        [dead] = await list_dead_letters(probe.b.js)
        tasks = await probe.b.js.stream_info(subjects.TASKS_STREAM)
    assert states[ok_id].status is JobStatus.COMPLETED
    failed = states[job_id]
    assert failed.status is JobStatus.FAILED and failed.error
    assert dead.job_id == job_id and dead.deliveries == 3 and dead.reason in failed.error
    assert "max deliveries" in dead.reason
    assert decode(dead.data, TaskAssign).payload.job_id == job_id  # the original task
    assert tasks.state.messages == 0  # taken off the work queue
    kinds = Counter(e.kind for e in events if e.job_id == job_id)
    assert kinds[EventKind.TASK_RETRIED] == 3  # the worker never gave up by itself
    assert kinds[EventKind.TASK_DEAD_LETTERED] == 1 and kinds[EventKind.JOB_FAILED] == 1


async def test_simulated_fault_markers(tmp_path: Path) -> None:
    """The markers the scenarios rely on do what they say (pure backend, no bus)."""
    from agentbus_summarize_worker.backends.simulated import Faults, SimulatedSummarizer
    from agentbus_summarize_worker.errors import SummarizerError

    sim = SimulatedSummarizer(latency_ms=0)
    flag = tmp_path / "down"
    flag.touch()
    assert Faults.parse(f"a [[simulated:fail-while={flag}]] b").fail_while == flag
    with pytest.raises(SummarizerError, match="fail-while") as info:
        await sim.summarize(f"Text. [[simulated:fail-while={flag}]]", max_chars=100)
    assert info.value.retryable
    flag.unlink()
    ok = await sim.summarize(f"Text. [[simulated:fail-while={flag}]]", max_chars=100)
    assert ok.text.startswith("Text.")
    with pytest.raises(SummarizerError, match="marker fail\\)") as info:
        await sim.summarize("Text. [[simulated:fail]]", max_chars=100)
    assert info.value.retryable
    with pytest.raises(SummarizerError, match="permanent") as info:
        await sim.summarize("Text. [[simulated:fatal]]", max_chars=100)
    assert not info.value.retryable
    assert Faults.parse("[[simulated:latency_ms=2500]]").latency_ms == 2500.0
    assert Faults.parse("no markers").latency_ms is None
    for bad in (
        "[[simulated:latency_ms=soon]]",
        "[[simulated:bogus]]",
        "[[simulated:fail-while=]]",
    ):
        with pytest.raises(ValueError, match="marker"):
            Faults.parse(bad)
        with pytest.raises(SummarizerError, match="bad fault marker") as info:
            await sim.summarize(f"Text. {bad}", max_chars=100)
        assert not info.value.retryable
