"""cancel: time from `AgentBusClient.cancel` to the last activity of a canceled job.

A 300-chunk job (default chunk size) runs on worker processes with a 200 ms simulated
backend; once a number of its tasks are recorded (mid-map) it is canceled. Watched on
the wire (a plain subscription to the events and results subjects): the last task of the
job started, completed (result published) or interrupted after the cancel call, and the
moment its queued tasks are all drained (dropped when pulled). Target: the last activity
under 1 s after the call. Floor: a raw nats-py request/reply round trip on the same
server (the least a cancel, itself a request answered by the orchestrator, can cost).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any, Final

from nats.aio.msg import Msg

from agentbus.bus.connect import flush_barrier
from agentbus.client.api import AgentBusClient
from agentbus.contract import subjects
from agentbus.contract.errors import MessageDecodeError
from agentbus.contract.messages import EventKind, JobStatus, decode_events
from agentbus.dev.stack import Stack
from bench.common import header, load_average, summary_ms, wait_until
from bench.stacks import agentbus_env, connect, scratch_dir

__all__ = ["run"]

TARGET_LAST_ACTIVITY_S: Final = 1.0
CHUNK_CHARS: Final = 6000
SENTENCE: Final = "The river floods every spring and the farmers plant rice after it. "
_WORK: Final = (EventKind.TASK_STARTED, EventKind.TASK_COMPLETED)


class _Activity:
    """Wall-clock times of what the job's tasks do, from the events and results."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.work: list[float] = []  # task started / completed / result / interrupted
        self.dropped: list[float] = []  # queued tasks dropped when pulled

    async def on_event(self, msg: Msg) -> None:
        try:
            _env, events = decode_events(msg.data)
        except MessageDecodeError:
            return
        for e in events:
            if e.job_id != self.job_id:
                continue
            at = e.ts.timestamp()
            if e.kind in _WORK:
                self.work.append(at)
            elif e.kind is EventKind.TASK_CANCELED:
                (self.work if e.data.get("stage") == "running" else self.dropped).append(at)

    async def on_result(self, _msg: Msg) -> None:
        self.work.append(time.time())


async def _round(
    client: AgentBusClient, url: str, *, chunks: int, cancel_after: int
) -> dict[str, Any]:
    text = SENTENCE * (chunks * CHUNK_CHARS // len(SENTENCE))
    job_id = await client.submit(text, title="bench-cancel")
    activity = _Activity(job_id)
    nc = await connect(url)
    subs = [await nc.subscribe(s, cb=activity.on_event) for s in subjects.AGENT_EVENTS_SUBJECTS]
    subs.append(await nc.subscribe(subjects.job_results_wildcard(job_id), cb=activity.on_result))
    await flush_barrier(nc)

    async def mid_map() -> bool:
        state = await client.status(job_id)
        return state is not None and state.level_done >= cancel_after

    await wait_until(mid_map, timeout_s=120, what="the job's first results")
    before = await client.status(job_id)
    t_call = time.time()
    reply = await client.cancel(job_id, reason="bench")
    call_s = time.time() - t_call

    async def drained() -> bool:
        info = await client.bus.js.stream_info(subjects.TASKS_STREAM)
        return info.state.messages == 0

    await wait_until(drained, timeout_s=60, what="the canceled job's tasks drained")
    await asyncio.sleep(1.5)  # late events would land here
    state = await client.status(job_id)
    for sub in subs:
        await sub.unsubscribe()
    await nc.close()
    after = [t for t in activity.work if t >= t_call]
    last_s = (max(after) - t_call) if after else 0.0
    return {
        "chunks": state.chunks if state else None,
        "recorded_at_cancel": before.level_done if before else None,
        "canceled": reply.canceled,
        "status": state.status.value if state else None,
        "cancel_call_ms": call_s * 1000,
        "last_activity_s": last_s,
        "work_events_after_call": len(after),
        "dropped_tasks": len(activity.dropped),
        "drained_s": (max(activity.dropped) - t_call) if activity.dropped else None,
        "ok": bool(state and state.status is JobStatus.CANCELED and reply.canceled),
    }


async def _floor_request_ms(url: str, *, requests: int = 200) -> dict[str, float]:
    """Raw nats-py core request/reply round trips on the same server."""
    nc = await connect(url)

    async def echo(msg: Msg) -> None:
        await msg.respond(b"ok")

    sub = await nc.subscribe("bench.cancel.floor", cb=echo)
    latencies: list[float] = []
    for _ in range(requests):
        t0 = time.perf_counter()
        await nc.request("bench.cancel.floor", b"x", timeout=5)
        latencies.append(time.perf_counter() - t0)
    await sub.unsubscribe()
    await nc.close()
    return summary_ms(latencies)


async def _run(args: Any) -> dict[str, Any]:
    params = {
        "rounds": args.rounds, "chunks": args.chunks, "cancel_after": args.cancel_after,
        "workers": args.workers, "worker_concurrency": args.worker_concurrency,
        "simulated_latency_ms": args.latency_ms,
    }  # fmt: skip
    result = header("cancel", params)
    with scratch_dir("cancel") as data:
        stack = Stack(
            data_dir=data / "agentbus",
            workers=args.workers,
            env=agentbus_env(
                latency_ms=args.latency_ms, worker_concurrency=args.worker_concurrency
            ),
        )
        await asyncio.to_thread(stack.start)
        try:
            async with AgentBusClient(stack.nats_url) as client:
                rounds = [
                    await _round(
                        client, stack.nats_url, chunks=args.chunks, cancel_after=args.cancel_after
                    )
                    for _ in range(args.rounds)
                ]
            result["floor_request"] = await _floor_request_ms(stack.nats_url)
        finally:
            await asyncio.to_thread(stack.stop)
    result["rounds"] = rounds
    lasts = [r["last_activity_s"] for r in rounds]
    result["last_activity_s_median"] = statistics.median(lasts)
    result["last_activity_s_max"] = max(lasts)
    result["cancel_call_ms_median"] = statistics.median(r["cancel_call_ms"] for r in rounds)
    result["targets"] = {
        "last_activity_s_max": TARGET_LAST_ACTIVITY_S,
        "met": max(lasts) < TARGET_LAST_ACTIVITY_S and all(r["ok"] for r in rounds),
    }
    result["load_average_after"] = load_average()
    return result


def add_arguments(p: Any) -> None:
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--chunks", type=int, default=300)
    p.add_argument("--cancel-after", type=int, default=20, help="tasks recorded first")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--worker-concurrency", type=int, default=8)
    p.add_argument("--latency-ms", type=float, default=200.0)


def run(args: Any) -> dict[str, Any]:
    return asyncio.run(_run(args))
