"""JetStream out of space: the server's file store (`jetstream { max_file_store }`) is
filled by another stream until the pipeline's own writes reach the limit mid-run.
Submits are refused with an error that names the problem (no PubAck, no job), every job
that was accepted is kept and finishes once space returns (the filler is purged), and
the refused ones go through when submitted again."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from nats.js.api import StreamConfig

from agentbus.contract.errors import BusError
from agentbus.contract.messages import JobStatus
from agentbus.dev.embedded import EmbeddedNatsServer
from tests.e2e.faults.harness import Probe, measure, report
from tests.e2e.faults.processes import archive_url, running_stack
from tests.e2e.faults.workload import JOBS, small_doc

pytestmark = [pytest.mark.e2e, pytest.mark.faults]

STORE_LIMIT = 4 * 1024 * 1024
HEADROOM = 160 * 1024
"""Left free for the pipeline: 200 jobs of this workload store ~580 KB (jobs, results,
events, job states), so the limit is reached after a few dozen jobs."""
FILLER = "FILLER"
SUBMIT_EVERY_S = 0.02


async def fill(probe: Probe, *, leave: int) -> int:
    """Fill the store with another stream's messages until `leave` bytes are left."""
    js = probe.b.js
    await js.add_stream(StreamConfig(name=FILLER, subjects=["filler.>"]))
    chunk = b"x" * (32 * 1024)
    while (used := int((await js.account_info()).storage)) < STORE_LIMIT - leave - len(chunk):
        await js.publish("filler.data", chunk)
    return used


@pytest.mark.timeout(180)
async def test_jetstream_out_of_space_refuses_submits_and_keeps_every_accepted_job(
    tmp_path: Path,
    fault_env: Callable[..., dict[str, str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    fault_env()
    conf = tmp_path / "small-store.conf"
    conf.write_text(f"jetstream {{\n  max_file_store: {STORE_LIMIT}\n}}\n")
    server = EmbeddedNatsServer(store_dir=tmp_path / "js", config_file=conf)
    await asyncio.to_thread(server.start)
    try:
        docs = {f"full-{i:03}": small_doc(i) for i in range(JOBS)}
        async with (
            running_stack(tmp_path, server.url, workers=2) as stack,
            Probe(server.url) as probe,
        ):
            await fill(probe, leave=HEADROOM)
            assert probe.client is not None
            client = probe.client
            errors: dict[str, BusError] = {}
            took: list[float] = []

            async def submit(job_id: str, text: str) -> None:
                started = time.monotonic()
                try:
                    await client.submit(text, job_id=job_id)
                except BusError as e:
                    errors[job_id] = e
                    took.append(time.monotonic() - started)

            # submitted at a steady pace while the pipeline runs: its writes (job states,
            # tasks, results, events) and the submits fill the store together
            pending = []
            for job_id, text in docs.items():
                pending.append(asyncio.create_task(submit(job_id, text)))
                await asyncio.sleep(SUBMIT_EVERY_S)
            await asyncio.gather(*pending)
            full_at = time.monotonic() - (max(took) if took else 0.0)
            accepted = [j for j in docs if j not in errors]
            refused = [j for j in docs if j in errors]
            assert accepted, "the store was full before any job was accepted"
            assert refused, "the store never filled up"
            # a refused job was not taken in: no state, nothing runs
            assert set((await probe.states(refused)).values()) == {None}
            messages = {str(e) for e in errors.values()}

            # space returns
            await probe.b.js.purge_stream(FILLER)
            full_s = time.monotonic() - full_at
            first = await probe.wait_terminal(accepted, timeout_s=120)
            # the client, told no, submits the refused jobs again
            resubmitted = await probe.submit({j: docs[j] for j in refused})
            await probe.wait_terminal(resubmitted, timeout_s=60)
            outcome, _events, _states = await measure(
                "store-full", probe, accepted + resubmitted, database_url=archive_url(stack),
                submitted=len(accepted) + len(resubmitted),
                extra={
                    "accepted-before-full": len(accepted),
                    "refused": len(refused),
                    "refusal-after-s": round(min(took), 1),
                    "full-s": round(full_s, 1),
                },
            )  # fmt: skip
        report(capsys, outcome)
        with capsys.disabled():
            print(f"[faults] store-full refusal: {sorted(messages)[0]}", flush=True)
        outcome.check()
        assert outcome.completed == JOBS and outcome.dead_lettered == 0
        assert all(s.status is JobStatus.COMPLETED for s in first.values())
        for message in messages:  # one line that names the problem
            assert "\n" not in message
            assert "insufficient resources" in message.lower(), message
    finally:
        await asyncio.to_thread(server.stop)
