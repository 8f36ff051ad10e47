"""memory: resident memory (RSS) of each service process and the nats-server, idle and
under load.

The stack (orchestrator, 2 workers, archiver) starts and sits idle for a few seconds:
idle RSS. Then a load of small single-chunk jobs mixed with large multi-chunk documents
(fan-out and reduce) runs through it while RSS is sampled: loaded RSS is the highest
sample (and the kernel's high-water mark, VmHWM). RSS after the load shows what stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any

from agentbus.client.api import AgentBusClient
from agentbus.contract import subjects
from agentbus.dev.stack import Stack
from bench.common import header, load_average, rss_mib, summary_ms, wait_until, words_document
from bench.load import drive
from bench.stacks import agentbus_env, agentbus_procs, archiver_drained, scratch_dir

__all__ = ["run"]


def _document(every: int, big_sentences: int) -> Any:
    def document(i: int) -> str:
        if i % every == every - 1:
            return words_document(i, sentences=big_sentences)
        return words_document(i)

    return document


async def _run(args: Any) -> dict[str, Any]:
    params = {
        "jobs": args.jobs,
        "window": args.window,
        "workers": 2,
        "worker_concurrency": 32,
        "big_document_every": args.big_every,
        "big_document_chars": len(words_document(0, sentences=args.big_sentences)),
        "idle_s": args.idle_s,
    }
    result = header("memory", params)
    with scratch_dir("memory") as data:
        stack = Stack(
            data_dir=data / "agentbus", workers=2,
            env=agentbus_env(latency_ms=0, worker_concurrency=32),
        )  # fmt: skip
        await asyncio.to_thread(stack.start)
        try:
            procs = agentbus_procs(stack)
            await asyncio.sleep(args.idle_s)
            idle = {p.name: rss_mib(p.pid)["rss_mib"] for p in procs}
            peak = dict.fromkeys(idle, 0.0)
            stop = asyncio.Event()

            async def sample() -> None:
                while not stop.is_set():
                    for p in procs:
                        peak[p.name] = max(peak[p.name], rss_mib(p.pid)["rss_mib"])
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), 0.1)

            async with AgentBusClient(stack.nats_url) as client:
                kv = await client.bus.kv(subjects.JOBS_BUCKET)

                async def submit(job_id: str, text: str) -> None:
                    await client.submit(text, job_id=job_id)

                sampler = asyncio.create_task(sample())
                load = await drive(
                    kv=kv, submit=submit,
                    document=_document(args.big_every, args.big_sentences),
                    jobs=args.jobs, window=args.window, prefix="mem-",
                )  # fmt: skip
                await wait_until(
                    lambda: archiver_drained(client.bus.nc), timeout_s=120, what="drained"
                )
                stop.set()
                await sampler
            after = {p.name: rss_mib(p.pid) for p in procs}
            result["services"] = {
                p.name: {
                    "role": p.role,
                    "idle_rss_mib": idle[p.name],
                    "loaded_rss_mib": max(peak[p.name], idle[p.name]),
                    "high_water_mib": after[p.name]["peak_rss_mib"],
                    "after_rss_mib": after[p.name]["rss_mib"],
                }
                for p in procs
            }
            result["load"] = {
                "jobs": load.jobs,
                "failed": load.failed,
                "jobs_per_s": load.jobs_per_s,
                "latency": summary_ms(load.latencies_s),
            }
            result["bench_client_rss_mib"] = rss_mib(os.getpid())["rss_mib"]
        finally:
            await asyncio.to_thread(stack.stop)
    result["load_average_after"] = load_average()
    return result


def add_arguments(p: Any) -> None:
    p.add_argument("--jobs", type=int, default=2000)
    p.add_argument("--window", type=int, default=64)
    p.add_argument("--big-every", type=int, default=50, help="every Nth job is a big document")
    p.add_argument("--big-sentences", type=int, default=2500, help="size of a big document")
    p.add_argument("--idle-s", type=float, default=5.0)


def run(args: Any) -> dict[str, Any]:
    return asyncio.run(_run(args))
