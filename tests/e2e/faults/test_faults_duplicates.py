"""Duplicates: every result delivered twice during the run and once more after it; the
summary line's format."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agentbus.contract import subjects
from agentbus.contract.headers import MSG_ID_HEADER
from agentbus.contract.messages import EventKind
from agentbus.dev.embedded import EmbeddedNatsServer
from tests.e2e.faults.harness import Outcome, Probe, measure, report, until
from tests.e2e.faults.processes import archive_url, running_stack
from tests.e2e.faults.workload import JOBS, long_doc, small_doc

pytestmark = [pytest.mark.e2e, pytest.mark.faults]


@pytest.mark.timeout(240)
async def test_duplicate_results_change_nothing(
    nats_single: EmbeddedNatsServer,
    tmp_path: Path,
    fault_env: Callable[..., dict[str, str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Every result is delivered to the orchestrator twice while the run goes on (a copy
    under a new message id, which JetStream cannot deduplicate), and then the whole
    RESULTS stream once more after the run: job states, events and archive stay exact."""
    fault_env(
        AGENTBUS_SUMMARIZER__SIMULATED_LATENCY_MS="20",
        AGENTBUS_ORCHESTRATOR__CHUNK_CHARS="400",
        AGENTBUS_ORCHESTRATOR__CHUNK_SUMMARY_CHARS="100",
        AGENTBUS_ORCHESTRATOR__SUMMARY_CHARS="150",
    )
    docs = {f"dup-multi-{i:02}": long_doc(i, paragraphs=4) for i in range(20)}
    docs |= {f"dup-{i:03}": small_doc(i) for i in range(JOBS - len(docs))}
    async with (
        running_stack(tmp_path, nats_single.url, workers=2) as stack,
        Probe(nats_single.url) as probe,
    ):
        originals = copies = 0

        async def duplicate(msg: Any) -> None:
            nonlocal originals, copies
            hdrs = dict(msg.headers or {})
            original = hdrs.pop(MSG_ID_HEADER, "x")
            if original.startswith("dup-copy:"):
                return
            originals += 1
            await probe.b.publish_raw(
                msg.subject, msg.data, msg_id=f"dup-copy:{original}",
                stream=subjects.RESULTS_STREAM, headers=hdrs,
            )  # fmt: skip
            copies += 1

        sub = await probe.b.nc.subscribe("results.>", cb=duplicate)
        job_ids = await probe.submit(docs)
        await probe.wait_terminal(job_ids, timeout_s=90)

        async def copied() -> bool:
            # the copier lags behind the pipeline on a loaded machine (one confirmed
            # publish at a time): every result is copied before the run is measured
            return sub.pending_msgs == 0 and copies == originals

        async def drained() -> bool:
            ci = await probe.b.js.consumer_info(
                subjects.RESULTS_STREAM, subjects.ORCHESTRATOR_RESULTS_CONSUMER
            )
            return bool(ci.num_pending == 0 and ci.num_ack_pending == 0)

        await until(copied, timeout_s=60, what="every result copied")
        await sub.unsubscribe()
        await until(drained, timeout_s=60, what="orchestrator consumed the copies")
        first, events, states = await measure(
            "duplicate-results", probe, job_ids, database_url=archive_url(stack),
            submitted=len(job_ids),
        )  # fmt: skip
        kv = await probe.b.kv(subjects.JOBS_BUCKET)
        revisions = {j: (await kv.get(j)).revision for j in job_ids}

        # after the work was done: every result in the stream, delivered again
        info = await probe.b.js.stream_info(subjects.RESULTS_STREAM)
        late = 0
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            m = await probe.b.js.get_msg(subjects.RESULTS_STREAM, seq)
            hdrs = {k: v for k, v in (m.headers or {}).items() if k != MSG_ID_HEADER}
            await probe.b.publish_raw(
                m.subject or "", m.data or b"", msg_id=f"late-copy:{seq}",
                stream=subjects.RESULTS_STREAM, headers=hdrs,
            )  # fmt: skip
            late += 1

        await until(drained, timeout_s=60, what="orchestrator consumed the late copies")
        after_revisions = {j: (await kv.get(j)).revision for j in job_ids}
        outcome, events_after, states_after = await measure(
            "duplicate-results", probe, job_ids, database_url=archive_url(stack),
            submitted=len(job_ids),
            extra={"copies-during-run": copies, "copies-after-run": late},
        )  # fmt: skip
    report(capsys, outcome)
    first.check()
    outcome.check()
    assert outcome.completed == JOBS and copies == originals > JOBS and late > JOBS
    assert after_revisions == revisions, "a late duplicate changed a job's state"
    assert [e.event_id for e in events_after] == [e.event_id for e in events]
    for job_id in job_ids:
        before, after = states[job_id], states_after[job_id]
        assert before is not None and after is not None
        assert after.model_dump() == before.model_dump()
        done = {
            e.task_id for e in events if e.job_id == job_id and e.kind is EventKind.TASK_COMPLETED
        }
        assert after.tasks_done_total == len(done), job_id  # each result counted once
    multi = [states_after[j] for j in job_ids if j.startswith("dup-multi-")]
    assert all(s is not None and s.chunks == 4 and s.level >= 1 for s in multi)


def test_summary_line_format() -> None:
    """The scenario line carries every count the suite promises, in a stable format."""
    o = Outcome(
        scenario="x", accepted=3, completed=2, dead_lettered=1, failed_without_reason=0,
        unfinished=0, emitted=10, archived=10, duplicates=0, lost=0, redelivered=1, resent=2,
        extra={"k": "v"},
    )  # fmt: skip
    assert re.fullmatch(
        r"\[faults\] x +jobs accepted=3 completed=2 dead-lettered=1 \(\+unexplained failed=0 "
        r"unfinished=0\) \| events emitted=10 archived=10 duplicates=0 lost=0 resent=2 \| "
        r"task redeliveries=1 k=v",
        o.line(),
    )
    o.check()
