"""fairness: tenant B's jobs behind tenant A's backlog vs on an idle stack (target: B's
median submit-to-summary at most 2x idle), A's throughput with B vs alone (target: at most
10% less), and the measured shares of two backlogged tenants for weights 1:1 and 3:1.

Each weight setting runs its own stack (its processes; tenants `a` and `b` configured with
`AGENTBUS_TENANTS__CONFIGURED`) of `--workers` workers x `--worker-concurrency` slots on
the `simulated` backend at `--latency-ms`, one chunk per job. With weights 1:1: B submits
`--b-jobs` jobs on the idle stack (each timed from its submit to its summary); A submits
`--a-jobs` jobs alone (throughput: jobs per second from the first submit until A's tasks
are all done); then A submits `--a-jobs` again and, once most are queued, B submits its
`--b-jobs` (timed); all of it `--rounds` times, alternating, and the ratios' medians
reported. A and B are two clients, each on its own connection, as two tenants are
(`--shared-connection`: B submits and waits on A's connection, behind A's submits in
flight, as this benchmark did until the pull fix of ca2c027).
Shares (both weight settings): A and B each submit `--share-jobs` jobs at once,
and the tasks each tenant's consumer delivered are read while both still have work
queued. No raw floor: every figure is a ratio of the same stack's own runs.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any, Final

from agentbus.client.api import AgentBusClient
from agentbus.contract import subjects
from agentbus.contract.messages import JobStatus
from agentbus.contract.priority import Priority
from agentbus.contract.tenants import intake_consumer, task_consumer
from agentbus.dev.stack import Stack
from bench.common import header, summary_ms
from bench.stacks import agentbus_env, scratch_dir

__all__ = ["run"]

TARGET_LATENCY_RATIO: Final = 2.0
TARGET_THROUGHPUT_LOSS: Final = 0.10
_SUBMIT_BATCH: Final = 50
_DOC: Final = (
    "The harbour of the town grew with its trade in salt and fish. Ships from many ports "
    "called there every season, and the town grew with them, street by street."
)


def add_arguments(p: Any) -> None:
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--worker-concurrency", type=int, default=4)
    p.add_argument("--latency-ms", type=float, default=20.0)
    p.add_argument("--a-jobs", type=int, default=2000)
    p.add_argument("--b-jobs", type=int, default=20)
    p.add_argument("--share-jobs", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--shared-connection", action="store_true")


def _consumer(tenant: str) -> str:
    return task_consumer(subjects.SUMMARIZE_SKILL, Priority.NORMAL, tenant)


async def _queue(client: AgentBusClient, tenant: str) -> tuple[int, int]:
    """(tasks delivered so far, jobs and tasks queued or in flight) of the tenant: its
    intake consumer's (jobs not taken in yet) and its task consumer's."""
    tasks = await client.bus.js.consumer_info(subjects.TASKS_STREAM, _consumer(tenant))
    jobs = await client.bus.js.consumer_info(subjects.JOBS_STREAM, intake_consumer(tenant))
    # a taken-in job's message stays pending as its timer: count only the unread ones
    backlog = int(jobs.num_pending or 0) + int(tasks.num_pending or 0)
    return tasks.delivered.consumer_seq, backlog + int(tasks.num_ack_pending or 0)


async def _submit_many(client: AgentBusClient, tenant: str, n: int) -> list[str]:
    ids: list[str] = []
    for start in range(0, n, _SUBMIT_BATCH):
        ids += await asyncio.gather(
            *(
                client.submit(f"{_DOC} ({tenant} {i})", tenant=tenant)
                for i in range(start, min(n, start + _SUBMIT_BATCH))
            )
        )
    return ids


async def _drained(client: AgentBusClient, tenant: str, *, timeout_s: float = 900) -> None:
    deadline = time.monotonic() + timeout_s
    while (await _queue(client, tenant))[1]:
        if time.monotonic() > deadline:
            raise TimeoutError(f"tenant {tenant}'s tasks never drained")
        await asyncio.sleep(0.02)


async def _timed_jobs(client: AgentBusClient, tenant: str, n: int) -> list[float]:
    """Submit `n` jobs one after the other without waiting; each job's submit-to-summary."""

    async def one(i: int) -> float:
        started = time.perf_counter()
        job_id = await client.submit(f"{_DOC} ({tenant} timed {i})", tenant=tenant)
        state = await client.wait(job_id, timeout_s=600)
        if state.status is not JobStatus.COMPLETED:
            raise RuntimeError(f"job {job_id} of {tenant} {state.status}: {state.error}")
        return time.perf_counter() - started

    return list(await asyncio.gather(*(one(i) for i in range(n))))


async def _a_alone(client: AgentBusClient, n: int) -> float:
    started = time.perf_counter()
    await _submit_many(client, "a", n)
    await _drained(client, "a")
    return n / (time.perf_counter() - started)


async def _a_with_b(
    client: AgentBusClient, b_client: AgentBusClient, args: Any
) -> tuple[float, list[float], int]:
    started = time.perf_counter()
    submit_a = asyncio.ensure_future(_submit_many(client, "a", args.a_jobs))
    # B comes once most of A's backlog is queued
    while (queued := (await _queue(client, "a"))[1]) < args.a_jobs // 2:
        if submit_a.done():
            break
        await asyncio.sleep(0.02)
    b_times = await _timed_jobs(b_client, "b", args.b_jobs)
    await submit_a
    await _drained(client, "a")
    return args.a_jobs / (time.perf_counter() - started), b_times, queued


async def _shares(client: AgentBusClient, n: int) -> dict[str, Any]:
    before = {t: (await _queue(client, t))[0] for t in ("a", "b")}
    await asyncio.gather(_submit_many(client, "a", n), _submit_many(client, "b", n))
    # read while both have work queued (the first reading once both are busy)
    await asyncio.sleep(0.5)
    start = {t: (await _queue(client, t))[0] for t in ("a", "b")}
    readings = []
    while True:
        await asyncio.sleep(0.5)
        now = {t: await _queue(client, t) for t in ("a", "b")}
        if min(q for _, q in now.values()) < 20:
            break
        readings.append({t: d for t, (d, _) in now.items()})
    await _drained(client, "a")
    await _drained(client, "b")
    if not readings:
        return {"error": "a tenant drained before a reading"}
    end = readings[-1]
    delta = {t: end[t] - start[t] for t in ("a", "b")}
    total = sum(delta.values())
    return {
        "tasks_while_both_queued": delta,
        "share_a": round(delta["a"] / total, 3) if total else None,
        "share_b": round(delta["b"] / total, 3) if total else None,
        "before": before,
    }


def _stack(data: Path, args: Any, *, weight_a: int) -> Stack:
    tenants = {"a": {"weight": weight_a}, "b": {"weight": 1}}
    return Stack(
        data_dir=data,
        workers=args.workers,
        env=agentbus_env(
            latency_ms=args.latency_ms,
            worker_concurrency=args.worker_concurrency,
            extra={"AGENTBUS_TENANTS__CONFIGURED": json.dumps(tenants)},
        ),
        ready_timeout_s=90,
    )


async def _with_stack(stack: Stack, body: Any, *, shared: bool = True) -> Any:
    await asyncio.to_thread(stack.start)
    try:
        async with (
            AgentBusClient(stack.nats_url) as client,
            AgentBusClient(stack.nats_url) as other,
        ):
            return await body(client, client if shared else other)
    finally:
        await asyncio.to_thread(stack.stop)


async def _run(args: Any, data: Path) -> dict[str, Any]:
    async def equal(client: AgentBusClient, b_client: AgentBusClient) -> dict[str, Any]:
        await _timed_jobs(b_client, "b", 4)  # warm-up
        rounds: list[dict[str, Any]] = []
        for _ in range(args.rounds):  # alternating, so that the machine's load falls alike
            idle = await _timed_jobs(b_client, "b", args.b_jobs)
            alone = await _a_alone(client, args.a_jobs)
            with_b, busy, queued = await _a_with_b(client, b_client, args)
            rounds.append(
                {
                    "b_job_idle_ms": summary_ms(idle),
                    "b_job_behind_a_backlog_ms": summary_ms(busy),
                    "ratio_b_behind_backlog_vs_idle": round(
                        statistics.median(busy) / statistics.median(idle), 3
                    ),
                    "a_tasks_queued_when_b_submitted": queued,
                    "a_jobs_per_s_alone": round(alone, 1),
                    "a_jobs_per_s_with_b": round(with_b, 1),
                    "a_throughput_ratio_with_b_vs_alone": round(with_b / alone, 3),
                }
            )
        shares = await _shares(client, args.share_jobs)
        latency = statistics.median(r["ratio_b_behind_backlog_vs_idle"] for r in rounds)
        throughput = statistics.median(r["a_throughput_ratio_with_b_vs_alone"] for r in rounds)
        return {
            "rounds": rounds,
            "median_ratio_b_behind_backlog_vs_idle": latency,
            "median_a_throughput_ratio_with_b_vs_alone": throughput,
            "shares_weights_1_1": shares,
            "ok": latency <= TARGET_LATENCY_RATIO and throughput >= 1 - TARGET_THROUGHPUT_LOSS,
        }

    async def three_to_one(client: AgentBusClient, _: AgentBusClient) -> dict[str, Any]:
        return await _shares(client, args.share_jobs)

    shared = bool(args.shared_connection)
    w11 = _stack(data / "w11", args, weight_a=1)
    out: dict[str, Any] = await _with_stack(w11, equal, shared=shared)
    out["b_connection"] = "shared with A" if shared else "its own"
    out["shares_weights_3_1"] = await _with_stack(
        _stack(data / "w31", args, weight_a=3), three_to_one
    )
    out["target_latency_ratio"] = TARGET_LATENCY_RATIO
    out["target_throughput_loss"] = TARGET_THROUGHPUT_LOSS
    return out


def run(args: Any) -> dict[str, Any]:
    result = header("fairness", vars(args) | {"name": "fairness"})
    with scratch_dir("fairness") as data:
        result["result"] = asyncio.run(_run(args, data))
    return result
