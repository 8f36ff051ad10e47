"""pipeline: single-chunk jobs through the whole stack as processes (orchestrator, workers,
archiver, nats-server; the client is this process), `simulated` backend at 0 ms, against
the raw floor (`bench.raw`: the same JetStream messages in the same process layout).

Both systems run side by side (each on its own nats-server) and are measured in
alternating rounds, so that a change of load on a shared machine hits both. Reported per
system: jobs/s, submit-to-summary latency (p50/p99) with `window` jobs in flight, and CPU
seconds per job summed over every process (services, nats-server, client), with the
agentbus archiver given time to archive the run's events before CPU is read.

`--profile` then samples the orchestrator and one worker with py-spy during one more
agentbus run and writes the hottest functions to `bench/results/profile-*.txt`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import statistics
import sys
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from nats.aio.client import Client as NatsClient
from nats.js.kv import KeyValue

from agentbus.client.api import AgentBusClient
from agentbus.contract import subjects
from agentbus.dev.stack import Stack
from bench import raw
from bench.common import (
    RESULTS_DIR,
    CpuMeter,
    Proc,
    header,
    load_average,
    ratio,
    summary_ms,
    wait_until,
    words_document,
)
from bench.load import LoadResult, drive
from bench.stacks import (
    FloorProcs,
    agentbus_env,
    agentbus_procs,
    archiver_drained,
    connect,
    scratch_dir,
    start_floor,
)

__all__ = ["run"]

TARGET_THROUGHPUT_RATIO: Final = 0.5
TARGET_CPU_RATIO: Final = 2.0
ORCHESTRATOR_BATCH: Final = 32
"""The agentbus orchestrator's default concurrency per consumer; the floor fetches as many."""


@dataclass
class System:
    name: str
    kv: KeyValue
    submit: Callable[[str, str], Coroutine[Any, Any, None]]
    procs: list[Proc]
    drained: Callable[[], Awaitable[bool]]


def _measure(load: LoadResult, cpu: dict[str, Any], cpu_at_done: dict[str, Any]) -> dict[str, Any]:
    n = load.jobs
    per_role = {k: v / n for k, v in sorted(cpu["per_role"].items())}
    services = sum(v for k, v in per_role.items() if k not in ("nats-server", "client"))
    return {
        "jobs": n,
        "failed": load.failed,
        "elapsed_s": load.elapsed_s,
        "jobs_per_s": load.jobs_per_s,
        "latency": summary_ms(load.latencies_s),
        "cpu_ms_per_job": cpu["total"] / n * 1000,
        "cpu_ms_per_job_services": services * 1000,
        "cpu_ms_per_job_by_role": {k: v * 1000 for k, v in per_role.items()},
        "cpu_ms_per_job_at_completion": cpu_at_done["total"] / n * 1000,
        "cpu_system_share": cpu["system_share"],
        "cpu_utilization_cores": cpu_at_done["total"] / load.elapsed_s,
    }


async def _round(system: System, *, jobs: int, window: int, prefix: str) -> dict[str, Any]:
    meter = CpuMeter(system.procs)
    meter.start()
    load = await drive(
        kv=system.kv, submit=system.submit, document=words_document, jobs=jobs, window=window,
        prefix=prefix,
    )  # fmt: skip
    at_done = meter.read()
    await wait_until(system.drained, timeout_s=120, what=f"{system.name} drained")
    return _measure(load, meter.read(), at_done)


def _median_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the median throughput (its own latency and CPU figures)."""
    ordered = sorted(rounds, key=lambda r: r["jobs_per_s"])
    best = dict(ordered[(len(ordered) - 1) // 2])
    best["jobs_per_s_rounds"] = [r["jobs_per_s"] for r in rounds]
    best["cpu_ms_per_job_rounds"] = [r["cpu_ms_per_job"] for r in rounds]
    best["jobs_per_s_median"] = statistics.median(best["jobs_per_s_rounds"])
    best["cpu_ms_per_job_median"] = statistics.median(best["cpu_ms_per_job_rounds"])
    return best


async def _agentbus_system(stack: Stack, client: AgentBusClient) -> System:
    kv = await client.bus.kv(subjects.JOBS_BUCKET)
    nc = client.bus.nc

    async def submit(job_id: str, text: str) -> None:
        await client.submit(text, job_id=job_id)

    async def drained() -> bool:
        return await archiver_drained(nc)

    return System("agentbus", kv, submit, agentbus_procs(stack, client_pid=os.getpid()), drained)


async def _floor_system(floor: FloorProcs, nc: NatsClient) -> System:
    js = nc.jetstream()
    kv = await js.key_value(raw.KV_BUCKET)

    async def submit(job_id: str, text: str) -> None:
        data = json.dumps({"job_id": job_id, "text": text}, separators=(",", ":")).encode()
        await js.publish(raw.JOBS_SUBJECT, data, headers={"Nats-Msg-Id": job_id})

    async def drained() -> bool:
        info = await js.consumer_info(raw.RESULTS_STREAM, raw.ORCH_RESULTS_CONSUMER)
        return not info.num_pending and not info.num_ack_pending

    return System("floor", kv, submit, floor.measured(client_pid=os.getpid()), drained)


_OWN_FRAME: Final = re.compile(r"\((agentbus|orchestrator|summarize_worker|event_archiver)/")
_RUNNER_FRAME: Final = re.compile(
    r"\((agentbus/(cli|__main__|service)\.py|typer/|asyncio/|<frozen)"
)


def _collapsed_top(path: Path, *, top: int = 25) -> dict[str, Any]:
    """From py-spy's raw (collapsed) output: the hottest functions by self time, the
    project's functions by inclusive time, and self time by module (asyncio, nats, ...)."""
    self_count: Counter[str] = Counter()
    own_count: Counter[str] = Counter()
    module_count: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_s = line.rpartition(" ")
        try:
            count = int(count_s)
        except ValueError:
            continue
        frames = [f for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        leaf = frames[-1]
        self_count[leaf] += count
        where = re.search(r"\(([^:)]*)", leaf)
        module_count[(where.group(1) if where else leaf).split("/")[0]] += count
        # inclusive time of the project's own functions (each counted once per sample)
        for f in {re.sub(r":\d+\)$", ")", f) for f in frames}:
            if _OWN_FRAME.search(f) and not _RUNNER_FRAME.search(f):
                own_count[f] += count

    def rows(c: Counter[str]) -> list[dict[str, Any]]:
        return [
            {"function": f, "samples": n, "share": round(n / total, 4)}
            for f, n in c.most_common(top)
        ]

    return {
        "samples": total,
        "self": rows(self_count),
        "inclusive_own": rows(own_count),
        "self_by_module": rows(module_count),
    }


async def _profile(
    system: System, stack: Stack, *, jobs: int, window: int, out_dir: Path
) -> dict[str, Any]:
    py_spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if py_spy is None:
        return {"error": "py-spy not found (pip install py-spy)"}
    profiled = ("orchestrator-1", "worker-1", "archiver-1")
    targets = [p for p in stack.processes if p.agent_id in profiled]
    spies: list[tuple[str, asyncio.subprocess.Process, Path]] = []
    for p in targets:
        out = out_dir / f"profile-{p.role}.collapsed"
        spy = await asyncio.create_subprocess_exec(
            py_spy, "record", "--format", "raw", "--rate", "250", "--nonblocking", "--gil",
            "--pid", str(p.pid), "--output", str(out),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        spies.append((p.role, spy, out))
    await asyncio.sleep(1.0)  # py-spy attaches
    load = await drive(
        kv=system.kv, submit=system.submit, document=words_document, jobs=jobs, window=window,
        prefix="prof-",
    )  # fmt: skip
    report: dict[str, Any] = {"jobs": jobs, "jobs_per_s_while_profiled": load.jobs_per_s}
    for role, spy, out in spies:
        spy.send_signal(signal.SIGINT)
        try:
            _, err = await asyncio.wait_for(spy.communicate(), 30)
        except TimeoutError:
            spy.kill()
            _, err = await spy.communicate()
        if not out.exists():
            report[role] = {"error": (err or b"").decode(errors="replace")[-500:]}
            continue
        top = _collapsed_top(out)
        report[role] = top
        lines = [f"py-spy profile of the agentbus {role} ({top['samples']} samples)", ""]
        for kind in ("self_by_module", "inclusive_own", "self"):
            lines.append(f"top {kind}:")
            lines += [f"  {r['share'] * 100:5.1f}%  {r['function']}" for r in top[kind]]
            lines.append("")
        (out_dir / f"profile-{role}.txt").write_text("\n".join(lines))
    return report


async def _run(args: Any) -> dict[str, Any]:
    params = {
        "jobs": args.jobs,
        "rounds": args.rounds,
        "warmup_jobs": args.warmup,
        "window": args.window,
        "workers": args.workers,
        "worker_concurrency": args.worker_concurrency,
        "orchestrator_batch": ORCHESTRATOR_BATCH,
        "simulated_latency_ms": 0,
        "document_chars": len(words_document(0)),
    }
    result = header("pipeline", params)
    with scratch_dir("pipeline") as data:
        stack = Stack(
            data_dir=data / "agentbus",
            workers=args.workers,
            env=agentbus_env(latency_ms=0, worker_concurrency=args.worker_concurrency),
        )
        await asyncio.to_thread(stack.start)
        floor = start_floor(data / "floor")
        try:
            floor_nc = await connect(floor.server.url)
            await raw.provision_pipeline_floor(floor_nc.jetstream())
            floor.start("orchestrator-1", "pipeline-orchestrator", "--batch",
                        str(ORCHESTRATOR_BATCH), log_dir=data / "floor")  # fmt: skip
            for i in range(args.workers):
                floor.start(f"worker-{i + 1}", "pipeline-worker", "--batch",
                            str(args.worker_concurrency), log_dir=data / "floor")  # fmt: skip
            await asyncio.to_thread(floor.wait_ready)
            async with AgentBusClient(stack.nats_url) as client:
                systems = [
                    await _agentbus_system(stack, client),
                    await _floor_system(floor, floor_nc),
                ]
                for s in systems:  # warm-up: imports, caches, consumers bound
                    await drive(
                        kv=s.kv, submit=s.submit, document=words_document, jobs=args.warmup,
                        window=args.window, prefix="warm-",
                    )  # fmt: skip
                    await wait_until(s.drained, timeout_s=60, what=f"{s.name} drained")
                rounds: dict[str, list[dict[str, Any]]] = {s.name: [] for s in systems}
                for r in range(args.rounds):
                    for s in systems if r % 2 == 0 else list(reversed(systems)):
                        rounds[s.name].append(
                            await _round(s, jobs=args.jobs, window=args.window, prefix=f"r{r}-")
                        )
                a, f = (_median_round(rounds[s.name]) for s in systems)
                result["agentbus"], result["floor"] = a, f
                result["ratios"] = {
                    "throughput": ratio(a["jobs_per_s_median"], f["jobs_per_s_median"]),
                    "cpu_per_job": ratio(a["cpu_ms_per_job_median"], f["cpu_ms_per_job_median"]),
                    "cpu_per_job_services": ratio(
                        a["cpu_ms_per_job_services"], f["cpu_ms_per_job_services"]
                    ),
                    "latency_p50": ratio(a["latency"]["p50_ms"], f["latency"]["p50_ms"]),
                }
                ratios = result["ratios"]
                result["targets"] = {
                    "throughput_ratio_min": TARGET_THROUGHPUT_RATIO,
                    "throughput_met": (ratios["throughput"] or 0) >= TARGET_THROUGHPUT_RATIO,
                    "cpu_ratio_max": TARGET_CPU_RATIO,
                    "cpu_met": (ratios["cpu_per_job"] or 1e9) <= TARGET_CPU_RATIO,
                }
                if args.profile:
                    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
                    result["profile"] = await _profile(
                        systems[0], stack, jobs=args.jobs, window=args.window, out_dir=RESULTS_DIR
                    )
            await floor_nc.close()
        finally:
            floor.stop()
            await asyncio.to_thread(stack.stop)
    result["load_average_after"] = load_average()
    return result


def add_arguments(p: Any) -> None:
    p.add_argument("--jobs", type=int, default=1500, help="jobs per measured round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--window", type=int, default=64, help="jobs in flight")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--worker-concurrency", type=int, default=32)
    p.add_argument(
        "--profile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="then py-spy the orchestrator, a worker and the archiver during one more run",
    )


def run(args: Any) -> dict[str, Any]:
    return asyncio.run(_run(args))
