"""scaling: job throughput with 1, 2, 4, 8 worker replicas (separate processes), the
`simulated` backend at 100 ms and a fixed concurrency per worker, against the ideal
`replicas x concurrency / latency`: efficiency = measured / ideal. Plus a PNG plot.

One stack per concurrency is started and grown (`Stack.add_worker`) between the steps.
Each step keeps twice the ideal number of jobs in flight (enough to fill every slot) and
measures the steady-state rate: completions between the 10% and 90% marks of its jobs.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any, Final

from agentbus.client.api import AgentBusClient
from agentbus.contract import subjects
from agentbus.dev.stack import Stack
from bench.common import (
    RESULTS_DIR,
    CpuMeter,
    header,
    load_average,
    summary_ms,
    wait_until,
    words_document,
)
from bench.load import drive
from bench.stacks import agentbus_env, agentbus_procs, archiver_drained, scratch_dir

__all__ = ["run"]

TARGET_EFFICIENCY: Final = 0.9


def _plot(series: dict[int, list[dict[str, Any]]], *, latency_ms: float) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    replicas: list[int] = []
    for concurrency, steps in sorted(series.items()):
        replicas = [s["replicas"] for s in steps]
        (line,) = ax1.plot(
            replicas, [s["jobs_per_s"] for s in steps], "o-", label=f"{concurrency} slots/worker"
        )
        ax1.plot(
            replicas, [s["ideal_jobs_per_s"] for s in steps], "--", color=line.get_color(),
            alpha=0.6, label=f"ideal, {concurrency} slots",
        )  # fmt: skip
        ax2.plot(
            replicas, [s["efficiency"] for s in steps], "o-", label=f"{concurrency} slots/worker"
        )
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xticks(replicas, [str(r) for r in replicas])
        ax.set_xlabel("worker replicas (processes)")
    ax1.set_yscale("log", base=2)
    ax1.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax1.set_ylabel("jobs/s")
    ax1.set_title(f"throughput, simulated backend at {latency_ms:g} ms")
    ax1.legend(fontsize=8)
    ax2.axhline(TARGET_EFFICIENCY, color="grey", linestyle=":", label="target 0.9")
    ax2.set_ylim(0, 1.05)
    ax2.set_ylabel("efficiency = measured / ideal")
    ax2.set_title("scaling efficiency")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / "scaling.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path.relative_to(RESULTS_DIR.parent.parent))


async def _series(
    data: Path, *, replicas_list: list[int], concurrency: int, args: Any
) -> list[dict[str, Any]]:
    """One stack, grown from the first to the last replica count."""
    latency_s = args.latency_ms / 1000
    steps: list[dict[str, Any]] = []
    stack = Stack(
        data_dir=data,
        workers=replicas_list[0],
        env=agentbus_env(latency_ms=args.latency_ms, worker_concurrency=concurrency),
        ready_timeout_s=60,
    )
    await asyncio.to_thread(stack.start)
    try:
        async with AgentBusClient(stack.nats_url) as client:
            kv = await client.bus.kv(subjects.JOBS_BUCKET)

            async def submit(job_id: str, text: str) -> None:
                await client.submit(text, job_id=job_id)

            for replicas in replicas_list:
                while len(stack.by_role("worker")) < replicas:
                    await asyncio.to_thread(stack.add_worker)
                ideal = replicas * concurrency / latency_s
                window = max(8, int(ideal * latency_s * args.window_factor))
                jobs = max(50, int(ideal * args.seconds))
                await drive(
                    kv=kv, submit=submit, document=words_document, jobs=min(jobs, 2 * window),
                    window=window, prefix=f"w{replicas}-",
                )  # fmt: skip
                meter = CpuMeter(agentbus_procs(stack, client_pid=os.getpid()))
                meter.start()
                load = await drive(
                    kv=kv, submit=submit, document=words_document, jobs=jobs, window=window,
                    prefix=f"s{replicas}-",
                )  # fmt: skip
                cpu = meter.read()
                measured = load.steady_jobs_per_s()
                steps.append(
                    {
                        "replicas": replicas,
                        "worker_concurrency": concurrency,
                        "ideal_jobs_per_s": ideal,
                        "jobs": jobs,
                        "window": window,
                        "jobs_per_s": measured,
                        "jobs_per_s_overall": load.jobs_per_s,
                        "efficiency": measured / ideal,
                        "latency": summary_ms(load.latencies_s),
                        "cpu_utilization_cores": cpu["total"] / load.elapsed_s,
                        "load_average": load_average(),
                    }
                )
                await wait_until(
                    lambda: archiver_drained(client.bus.nc), timeout_s=120, what="drained"
                )
    finally:
        await asyncio.to_thread(stack.stop)
    return steps


async def _run(args: Any) -> dict[str, Any]:
    replicas_list = [int(r) for r in args.replicas.split(",")]
    concurrencies = [int(c) for c in str(args.worker_concurrency).split(",")]
    params = {
        "replicas": replicas_list,
        "worker_concurrency": concurrencies,
        "simulated_latency_ms": args.latency_ms,
        "seconds_per_step": args.seconds,
        "jobs_in_flight_per_slot": args.window_factor,
    }
    result = header("scaling", params)
    series: dict[int, list[dict[str, Any]]] = {}
    with scratch_dir("scaling") as data:
        for concurrency in concurrencies:
            series[concurrency] = await _series(
                data / f"c{concurrency}", replicas_list=replicas_list, concurrency=concurrency,
                args=args,
            )  # fmt: skip
    result["series"] = {f"concurrency_{c}": steps for c, steps in series.items()}
    result["plot"] = _plot(series, latency_ms=args.latency_ms)
    result["targets"] = {"efficiency_min": TARGET_EFFICIENCY}
    for c, steps in series.items():
        worst = min(s["efficiency"] for s in steps)
        result["targets"][f"concurrency_{c}"] = {
            "worst_efficiency": worst,
            "met": worst >= TARGET_EFFICIENCY,
        }
    result["load_average_after"] = load_average()
    return result


def add_arguments(p: Any) -> None:
    p.add_argument("--replicas", default="1,2,4,8")
    p.add_argument(
        "--worker-concurrency", default="4,2", help="slots per worker; a list runs one series each"
    )
    p.add_argument("--latency-ms", type=float, default=100.0)
    p.add_argument("--seconds", type=float, default=8.0, help="length of each step")
    p.add_argument(
        "--window-factor", type=float, default=2.0, help="jobs in flight per worker slot"
    )


def run(args: Any) -> dict[str, Any]:
    return asyncio.run(_run(args))
