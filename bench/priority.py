"""priority: a high-priority job's submit-to-summary time behind a backlog of normal tasks
vs on an idle stack (target: at most 2x), and the share of low-priority completions
while the backlog lasts (no starvation: above 0).

The stack (its own processes) runs `--workers` workers of `--worker-concurrency` slots on
the `simulated` backend at `--latency-ms`, documents chunked at `--chunk-chars`. First
`--high-jobs` high jobs of `--high-chunks` chunks run one after the other on the idle
stack; then `--backlog-tasks` normal tasks (jobs of `--backlog-job-chunks` chunks) and
`--low-jobs` low jobs are submitted at once, and the same high jobs run again while the
backlog lasts. Completions per priority come from the delivered counts of the three
workers' consumers over the backlog window.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path
from typing import Any, Final

from agentbus.client.api import AgentBusClient
from agentbus.contract import subjects
from agentbus.contract.messages import JobStatus
from agentbus.contract.priority import PRIORITIES, Priority, task_consumer
from agentbus.dev.stack import Stack
from bench.common import header, summary_ms
from bench.stacks import agentbus_env, scratch_dir

__all__ = ["run"]

TARGET_RATIO: Final = 2.0
_PARAGRAPH_CHARS: Final = 150


def add_arguments(p: Any) -> None:
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--worker-concurrency", type=int, default=4)
    p.add_argument("--latency-ms", type=float, default=20.0)
    p.add_argument("--chunk-chars", type=int, default=400)
    p.add_argument("--backlog-tasks", type=int, default=2000)
    p.add_argument("--backlog-job-chunks", type=int, default=100)
    p.add_argument("--high-jobs", type=int, default=5)
    p.add_argument("--high-chunks", type=int, default=8)
    p.add_argument("--low-jobs", type=int, default=4)
    p.add_argument("--low-chunks", type=int, default=25)


def _document(tag: str, *, chunks: int, chunk_chars: int) -> str:
    """About `chunks` chunks of `chunk_chars`: paragraphs of ~150 characters."""
    per_chunk = max(1, chunk_chars // (_PARAGRAPH_CHARS + 2))
    return "\n\n".join(
        f"{tag} paragraph {i}: the harbour of town {i} grew with its trade in salt and fish; "
        f"ships from {i % 17} ports called there every season, year after year."
        for i in range(chunks * per_chunk)
    )


async def _high_job(client: AgentBusClient, text: str) -> float:
    started = time.perf_counter()
    job_id = await client.submit(text, priority=Priority.HIGH)
    state = await client.wait(job_id, timeout_s=300)
    if state.status is not JobStatus.COMPLETED:
        raise RuntimeError(f"high job {job_id} {state.status}: {state.error}")
    return time.perf_counter() - started


async def _delivered(client: AgentBusClient) -> dict[Priority, int]:
    out = {}
    for p in PRIORITIES:
        info = await client.bus.js.consumer_info(
            subjects.TASKS_STREAM, task_consumer(subjects.SUMMARIZE_SKILL, p)
        )
        out[p] = info.delivered.consumer_seq
    return out


async def _normal_pending(client: AgentBusClient) -> int:
    info = await client.bus.js.consumer_info(subjects.TASKS_STREAM, subjects.WORKERS_CONSUMER)
    return int(info.num_pending or 0) + int(info.num_ack_pending or 0)


async def _measure(stack: Stack, args: Any) -> dict[str, Any]:
    high_text = _document("High", chunks=args.high_chunks, chunk_chars=args.chunk_chars)
    async with AgentBusClient(stack.nats_url) as client:
        await _high_job(client, high_text)  # warm-up (connections, code paths)
        idle = [await _high_job(client, high_text) for _ in range(args.high_jobs)]

        backlog_jobs = max(1, args.backlog_tasks // args.backlog_job_chunks)
        backlog_text = _document("Normal", chunks=args.backlog_job_chunks,
                                 chunk_chars=args.chunk_chars)  # fmt: skip
        low_text = _document("Low", chunks=args.low_chunks, chunk_chars=args.chunk_chars)
        before = await _delivered(client)
        window_started = time.perf_counter()
        backlog_ids = [await client.submit(backlog_text) for _ in range(backlog_jobs)]
        low_ids = [await client.submit(low_text, priority="low") for _ in range(args.low_jobs)]
        # the backlog is queued once most of its tasks wait on the normal consumer
        deadline = time.monotonic() + 120
        while await _normal_pending(client) < args.backlog_tasks // 2:
            if time.monotonic() > deadline:
                raise TimeoutError("the backlog never built up")
            await asyncio.sleep(0.05)
        queued = await _normal_pending(client)
        busy = [await _high_job(client, high_text) for _ in range(args.high_jobs)]
        pending_after_high = await _normal_pending(client)
        low_done_at: list[float] = []
        for job_id in low_ids:
            await client.wait(job_id, timeout_s=600)
            low_done_at.append(time.perf_counter() - window_started)
        during = await _delivered(client)
        pending_when_low_done = await _normal_pending(client)
        for job_id in backlog_ids:
            await client.wait(job_id, timeout_s=900)
        backlog_s = time.perf_counter() - window_started

    delta = {p: during[p] - before[p] for p in PRIORITIES}
    total = sum(delta.values())
    idle_median = statistics.median(idle)
    busy_median = statistics.median(busy)
    return {
        "high_job_idle_ms": summary_ms(idle),
        "high_job_behind_backlog_ms": summary_ms(busy),
        "ratio_high_behind_backlog_vs_idle": busy_median / idle_median,
        "target_ratio": TARGET_RATIO,
        "backlog_tasks_queued_when_high_jobs_started": queued,
        "backlog_tasks_left_when_high_jobs_done": pending_after_high,
        "low_jobs_done_s": low_done_at,
        "backlog_tasks_left_when_low_jobs_done": pending_when_low_done,
        "backlog_drained_s": backlog_s,
        "completions_until_low_done": {p.value: n for p, n in delta.items()},
        "low_share_during_backlog": delta[Priority.LOW] / total if total else 0.0,
        "ok": busy_median <= TARGET_RATIO * idle_median and delta[Priority.LOW] > 0,
    }


async def _run(args: Any, data: Path) -> dict[str, Any]:
    stack = Stack(
        data_dir=data,
        workers=args.workers,
        env=agentbus_env(
            latency_ms=args.latency_ms,
            worker_concurrency=args.worker_concurrency,
            extra={
                "AGENTBUS_ORCHESTRATOR__CHUNK_CHARS": str(args.chunk_chars),
                "AGENTBUS_ORCHESTRATOR__CHUNK_SUMMARY_CHARS": str(args.chunk_chars // 4),
            },
        ),
        ready_timeout_s=60,
    )
    await asyncio.to_thread(stack.start)
    try:
        return await _measure(stack, args)
    finally:
        await asyncio.to_thread(stack.stop)


def run(args: Any) -> dict[str, Any]:
    result = header("priority", vars(args) | {"name": "priority"})
    with scratch_dir("priority") as data:
        result["result"] = asyncio.run(_run(args, data))
    return result
