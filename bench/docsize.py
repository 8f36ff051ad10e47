"""docsize: documents of 1 to 60 MB through the stack at default settings.

For each size a fresh stack (`agentbus up`'s processes: orchestrator, 3 workers,
archiver, extractive summarizer, every setting at its default) summarizes the same
prose document `--runs` times, one job after the other. Reported per size: how many
completed, job seconds (submit to final summary), the orchestrator's CPU per chunk, the
peak RSS of every process, and the floor: the same map-reduce (same chunks, same reduce
groups, same extractive summarizer) run in one process with no bus at all; its
summarizer seconds divided by the worker count is the best the stack could do with
perfect parallelism, and `job_s / floor_s` is the overhead ratio (target <= 1.3). With
3 workers on a 2-core machine the workers cannot all run at once, so the ratio against
the summarizer time divided by min(workers, cores) is reported beside it.

The floor's summarizer seconds are CPU seconds of this process (`time.process_time`:
the summarizer is single-threaded and CPU-bound, so on a quiet machine they equal its
wall time, and on a loaded one they are not inflated by other processes' time slices).
`stack_cpu_vs_floor` is every stack process's CPU seconds for the job (orchestrator,
workers, archiver, nats-server, the client) over the floor's: what the bus costs beside
the summarizing itself, a figure that does not move with the machine's load.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from typing import Any

from agentbus.client.api import AgentBusClient
from agentbus.contract.chunking import chunk_text
from agentbus.contract.messages import JobStatus, utcnow
from agentbus.contract.settings import OrchestratorSettings
from agentbus.dev.stack import Stack
from agentbus_orchestrator import lifecycle
from agentbus_orchestrator.lifecycle import Completion
from agentbus_summarize_worker.backends.extractive import summarize_extractive
from bench.common import CpuMeter, Proc, header, load_average, rss_mib
from bench.stacks import agentbus_procs, scratch_dir
from tests.documents import prose_document, single_word

__all__ = ["run"]

_MB = 1_000_000


def floor_s(text: str, *, summary_chars: int, cfg: OrchestratorSettings) -> dict[str, Any]:
    """The job's map-reduce in this process: summarizer seconds, tasks and levels."""
    chunks = chunk_text(text, max_chars=cfg.chunk_chars)
    state = lifecycle.intake(
        job_id="floor", title="", skill="summarize", document_chars=len(text),
        summary_chars=summary_chars, chunks=len(chunks), now=utcnow(), timeout_s=None,
        document_sha256=None, trace_id=None,
    )  # fmt: skip
    texts = chunks
    per_task = summary_chars if len(chunks) == 1 else cfg.chunk_summary_chars
    seconds, tasks, levels = 0.0, 0, 0
    while True:
        started = time.process_time()
        parts = [summarize_extractive(t, max_chars=per_task) for t in texts]
        seconds += time.process_time() - started
        tasks += len(texts)
        levels += 1
        state = state.model_copy(
            update={"level_tasks": len(texts), "level_done": len(texts), "level": levels - 1}
        )
        plan = lifecycle.plan_next(
            state,
            parts,
            chunk_chars=cfg.chunk_chars,
            chunk_summary_chars=cfg.chunk_summary_chars,
            max_reduce_levels=cfg.max_reduce_levels,
        )
        if isinstance(plan, Completion):
            return {
                "summarizer_s": seconds,
                "tasks": tasks,
                "levels": levels,
                "chunks": len(chunks),
            }
        texts, per_task = plan.groups, plan.max_chars


async def _one_size(name: str, text: str, args: Any) -> dict[str, Any]:
    cfg = OrchestratorSettings()
    floor = floor_s(text, summary_chars=cfg.summary_chars, cfg=cfg)
    out: dict[str, Any] = {"chars": len(text), "floor": floor, "runs": []}
    with scratch_dir(f"docsize-{name}") as data:
        stack = Stack(data_dir=data / "agentbus", workers=args.workers, env={})
        await asyncio.to_thread(stack.start)
        try:
            procs = agentbus_procs(stack, client_pid=os.getpid())
            peak = {p.name: 0.0 for p in procs}
            stop = asyncio.Event()

            async def sample() -> None:
                while not stop.is_set():
                    for p in procs:
                        peak[p.name] = max(peak[p.name], rss_mib(p.pid)["rss_mib"])
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), 0.2)

            sampler = asyncio.create_task(sample())
            async with AgentBusClient(stack.nats_url) as client:
                for run in range(args.runs):
                    orch = [p for p in procs if p.role == "orchestrator"]
                    meter, orch_meter = CpuMeter(procs), CpuMeter(orch)
                    meter.start()
                    orch_meter.start()
                    started = time.monotonic()
                    job_id = await client.submit(text, title=f"{name} run {run}")
                    state = await client.wait(job_id, timeout_s=args.timeout_s)
                    seconds = time.monotonic() - started
                    cpu = orch_meter.read()["total"]
                    by_role: dict[str, float] = meter.read()["per_role"]
                    out["runs"].append(
                        {
                            "status": state.status.value,
                            "error": state.error,
                            "job_s": seconds,
                            "chunks": state.chunks,
                            "levels": state.level + 1,
                            "tasks": state.tasks_done_total,
                            "orchestrator_cpu_ms_per_chunk": cpu * 1000 / max(state.chunks, 1),
                            "cpu_s_by_role": by_role,
                            "stack_cpu_s": sum(by_role.values()),
                        }
                    )
            stop.set()
            await sampler
            out["peak_rss_mib"] = _by_role(procs, peak)
        finally:
            await asyncio.to_thread(stack.stop)
    done = [r for r in out["runs"] if r["status"] == JobStatus.COMPLETED.value]
    out["completed"] = f"{len(done)}/{args.runs}"
    if done:
        job_s = sorted(r["job_s"] for r in done)[len(done) // 2]
        per_workers = floor["summarizer_s"] / args.workers
        per_cores = floor["summarizer_s"] / min(args.workers, os.cpu_count() or 1)
        out["median_job_s"] = job_s
        out["floor_s"] = per_workers
        out["ratio_to_floor"] = job_s / per_workers
        out["ratio_to_floor_on_cores"] = job_s / per_cores
        out["stack_cpu_vs_floor"] = (
            sorted(r["stack_cpu_s"] for r in done)[len(done) // 2] / floor["summarizer_s"]
        )
        out["median_orchestrator_cpu_ms_per_chunk"] = sorted(
            r["orchestrator_cpu_ms_per_chunk"] for r in done
        )[len(done) // 2]
    return out


def _by_role(procs: list[Proc], peak: dict[str, float]) -> dict[str, float]:
    """Peak RSS per process, workers as their largest."""
    out: dict[str, float] = {}
    for p in procs:
        out[p.role] = max(out.get(p.role, 0.0), peak[p.name])
    return out


async def _run(args: Any) -> dict[str, Any]:
    sizes = [float(s) for s in args.sizes_mb.split(",") if s]
    params = {
        "sizes_mb": sizes,
        "runs": args.runs,
        "workers": args.workers,
        "word_mb": args.word_mb,
    }
    result = header("docsize", params)
    result["sizes"] = {}
    for mb in sizes:
        text = prose_document(int(mb * 10), int(mb * _MB))
        result["sizes"][f"{mb:g}MB"] = await _one_size(f"{mb:g}MB", text, args)
        print(f"docsize {mb:g} MB: {result['sizes'][f'{mb:g}MB'].get('completed')}", flush=True)
    if args.word_mb > 0:
        result["sizes"][f"word-{args.word_mb:g}MB"] = await _one_size(
            "word", single_word(int(args.word_mb * _MB)), args
        )
    first: dict[str, Any] = next(iter(result["sizes"].values()), {})
    base = first.get("median_orchestrator_cpu_ms_per_chunk")
    for entry in result["sizes"].values():
        cpu = entry.get("median_orchestrator_cpu_ms_per_chunk")
        if base and cpu:
            entry["orchestrator_cpu_per_chunk_vs_smallest"] = cpu / base
    result["load_average_after"] = load_average()
    return result


def add_arguments(p: Any) -> None:
    p.add_argument("--sizes-mb", default="1,5,20,60", help="comma-separated sizes in MB")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--workers", type=int, default=3)
    p.add_argument("--word-mb", type=float, default=2.0, help="a single word of this size")
    p.add_argument("--timeout-s", type=float, default=1800.0)


def run(args: Any) -> dict[str, Any]:
    return asyncio.run(_run(args))
