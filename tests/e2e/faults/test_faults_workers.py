"""Worker faults: SIGKILL mid-task, SIGTERM with work in flight, summaries longer than
ack_wait kept alive by in_progress (and the control without it)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import nats
import nats.errors
import nats.js.errors
import pytest

from agentbus.contract import subjects
from agentbus.contract.messages import EventKind
from agentbus.dev.embedded import EmbeddedNatsServer
from agentbus.runtime.worker import TaskWorker
from agentbus_orchestrator import Orchestrator
from agentbus_summarize_worker import SummarizeSkill
from tests.conftest import Running, make_settings
from tests.e2e.faults.harness import Probe, measure, report
from tests.e2e.faults.processes import archive_url, running_stack, wait_in_flight
from tests.e2e.faults.workload import JOBS, small_doc

pytestmark = [pytest.mark.e2e, pytest.mark.faults]


@pytest.mark.timeout(150)
async def test_worker_sigkill_mid_task_is_redelivered_and_finished_by_another_replica(
    nats_single: EmbeddedNatsServer,
    tmp_path: Path,
    fault_env: Callable[..., dict[str, str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    fault_env(AGENTBUS_SUMMARIZER__SIMULATED_LATENCY_MS="300", AGENTBUS_WORKER__CONCURRENCY="4")
    docs = {f"kill-{i:03}": small_doc(i) for i in range(JOBS)}
    async with running_stack(tmp_path, nats_single.url, workers=3) as stack:
        victim = stack.by_role("worker")[0]
        async with Probe(nats_single.url) as probe:
            job_ids = await probe.submit(docs)
            await probe.wait_terminal(job_ids, timeout_s=60, until=lambda n: n >= JOBS // 5)

            await wait_in_flight(victim, at_least=2)
            victim.signal(signal.SIGKILL)
            assert await asyncio.to_thread(victim.wait, 10) == -signal.SIGKILL
            await probe.wait_terminal(job_ids, timeout_s=90)
            outcome, events, _states = await measure(
                "worker-sigkill", probe, job_ids, database_url=archive_url(stack),
                submitted=len(job_ids),
            )  # fmt: skip
        # the tasks the victim had started but not finished ...
        started = {
            (e.job_id, e.task_id)
            for e in events
            if e.kind is EventKind.TASK_STARTED and e.agent_id == victim.agent_id
        }
        finished_by = {
            (e.job_id, e.task_id): e.agent_id for e in events if e.kind is EventKind.TASK_COMPLETED
        }
        orphans = {t for t in started if finished_by.get(t) != victim.agent_id}
        # ... were redelivered (attempt 2+) and completed by another replica
        redelivered_to = {
            (e.job_id, e.task_id): e.agent_id
            for e in events
            if e.kind is EventKind.TASK_STARTED and int(e.data["attempt"]) > 1
        }
        outcome.extra["killed-mid-task"] = len(orphans)
        report(capsys, outcome)
        outcome.check()
        assert orphans, "the killed worker had no task in flight"
        for task in orphans:
            assert task in redelivered_to, f"{task} was not redelivered"
            assert redelivered_to[task] != victim.agent_id
            assert finished_by[task] not in (None, victim.agent_id)
        assert outcome.completed == JOBS


@pytest.mark.timeout(150)
async def test_in_progress_keeps_long_summaries_from_being_redelivered(
    nats_single: EmbeddedNatsServer,
    tmp_path: Path,
    fault_env: Callable[..., dict[str, str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    # ack_wait 2 s; 16 summaries take 5 s each, heartbeats every 0.5 s
    fault_env(AGENTBUS_SUMMARIZER__SIMULATED_LATENCY_MS="20", AGENTBUS_WORKER__CONCURRENCY="12")
    slow_ms = 5000
    docs = {f"slow-{i:03}": small_doc(i, f"[[simulated:latency_ms={slow_ms}]]") for i in range(16)}
    docs |= {f"fast-{i:03}": small_doc(i) for i in range(JOBS - len(docs))}
    async with (
        running_stack(tmp_path, nats_single.url, workers=2) as stack,
        Probe(nats_single.url) as probe,
    ):
        job_ids = await probe.submit(docs)
        samples: list[tuple[int, int]] = []
        sampling = True

        async def sample() -> None:
            while sampling:
                with contextlib.suppress(nats.errors.Error, TimeoutError):
                    info = await probe.b.js.consumer_info(
                        subjects.TASKS_STREAM, subjects.WORKERS_CONSUMER
                    )
                    samples.append((int(info.num_redelivered), int(info.num_ack_pending)))
                await asyncio.sleep(0.2)

        sampler = asyncio.create_task(sample())
        try:
            await probe.wait_terminal(job_ids, timeout_s=90)
        finally:
            sampling = False
            await sampler
        outcome, events, _ = await measure(
            "slow-in-progress", probe, job_ids, database_url=archive_url(stack),
            submitted=len(job_ids),
        )  # fmt: skip
    slow_done = [
        e
        for e in events
        if e.kind is EventKind.TASK_COMPLETED and e.job_id and e.job_id.startswith("slow-")
    ]
    outcome.extra["long-tasks"] = len(slow_done)
    outcome.extra["max-consumer-redelivered"] = max(r for r, _ in samples)
    report(capsys, outcome)
    outcome.check()
    assert outcome.completed == JOBS
    # every long summary really outlived ack_wait while it was held (not a timing assertion:
    # the simulated latency is the input, this checks the scenario is what it claims)
    assert len(slow_done) == 16
    assert all(e.data["duration_ms"] >= slow_ms for e in slow_done)
    assert any(pending > 0 for _, pending in samples)
    assert max(r for r, _ in samples) == 0, "a task was redelivered while in progress"
    assert outcome.redelivered == 0
    started = Counter((e.job_id, e.task_id) for e in events if e.kind is EventKind.TASK_STARTED)
    assert set(started.values()) == {1}, "a task was started twice"


@pytest.mark.timeout(60)
async def test_without_in_progress_a_long_summary_is_redelivered(
    nats_server: EmbeddedNatsServer, tmp_path: Path, running: Running
) -> None:
    """The control for the test above: with heartbeats slower than ack_wait the same kind of
    long summary is delivered again, so the scenario above does detect redeliveries."""
    s = make_settings(
        nats_server.url,
        tmp_path,
        topology={"ack_wait_s": 1.0, "max_deliver": 3},
        worker={"in_progress_interval_s": 30.0, "concurrency": 2},
        summarizer={"backend": "simulated", "simulated_latency_ms": 10.0},
    )
    async with Probe(nats_server.url) as probe:
        from agentbus.bus.topology import provision

        await provision(probe.b.js, s)
        await running.start(Orchestrator, s, "orch-ctl")
        await running.start(lambda st: TaskWorker(st, SummarizeSkill(st)), s, "worker-ctl")
        [job_id] = await probe.submit({"ctl-1": small_doc(1, "[[simulated:latency_ms=2500]]")})
        await probe.wait_terminal([job_id], timeout_s=30)
        events = await probe.events()
    attempts = sorted(int(e.data["attempt"]) for e in events if e.kind is EventKind.TASK_STARTED)
    assert attempts[:2] == [1, 2], attempts


@pytest.mark.timeout(150)
async def test_sigterm_finishes_in_flight_work_and_exits_zero(
    nats_single: EmbeddedNatsServer,
    tmp_path: Path,
    fault_env: Callable[..., dict[str, str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    fault_env(AGENTBUS_SUMMARIZER__SIMULATED_LATENCY_MS="600", AGENTBUS_WORKER__CONCURRENCY="6")
    docs = {f"term-{i:03}": small_doc(i) for i in range(JOBS)}
    async with running_stack(tmp_path, nats_single.url, workers=3) as stack:
        victim = stack.by_role("worker")[0]
        async with Probe(nats_single.url) as probe:
            job_ids = await probe.submit(docs)
            await probe.wait_terminal(job_ids, timeout_s=60, until=lambda n: n >= JOBS // 5)

            await wait_in_flight(victim, at_least=3)
            signalled_at = datetime.now(UTC)
            victim.signal(signal.SIGTERM)
            code = await asyncio.to_thread(victim.wait, 30)
            assert code == 0
            await probe.wait_terminal(job_ids, timeout_s=90)
            redelivered_now = await probe.consumer_redelivered()
            outcome, events, _ = await measure(
                "worker-sigterm", probe, job_ids, database_url=archive_url(stack),
                submitted=len(job_ids),
            )  # fmt: skip
        mine = [e for e in events if e.agent_id == victim.agent_id]
        started = {(e.job_id, e.task_id) for e in mine if e.kind is EventKind.TASK_STARTED}
        finished = {(e.job_id, e.task_id) for e in mine if e.kind is EventKind.TASK_COMPLETED}
        kinds = [e.kind for e in mine]
        # work the victim had started before the signal and finished after it
        started_before = {
            (e.job_id, e.task_id)
            for e in mine
            if e.kind is EventKind.TASK_STARTED and e.ts < signalled_at
        }
        finished_after = {
            (e.job_id, e.task_id)
            for e in mine
            if e.kind is EventKind.TASK_COMPLETED and e.ts >= signalled_at
        }
        in_flight_at_term = started_before & finished_after
        outcome.extra["victim-tasks"] = len(finished)
        outcome.extra["in-flight-at-sigterm"] = len(in_flight_at_term)
        report(capsys, outcome)
        codes = await asyncio.to_thread(stack.stop)
    outcome.check()
    assert outcome.completed == JOBS
    assert started and started == finished, "the stopped worker left work unfinished"
    assert in_flight_at_term, "the worker had no work in flight when it got SIGTERM"
    assert outcome.redelivered == 0 and redelivered_now == 0, "finished work was redelivered"
    # it finished (and recorded) its work before it said it stopped
    stopped_at = kinds.index(EventKind.AGENT_STOPPED)
    assert EventKind.TASK_COMPLETED not in kinds[stopped_at:]
    assert EventKind.TASK_STARTED not in kinds[stopped_at:]
    assert set(codes.values()) == {0}, codes  # the rest of the stack stopped cleanly too
