"""rpc: `rpc.summarize` request/reply round trips through a worker process (simulated
backend at 0 ms) against a raw nats-py responder in its own process on the same
nats-server, at concurrency 1 and 64, in alternating rounds.

agentbus side: `AgentBusClient.summarize_sync` (envelope, validation, tracing hooks,
metrics, the worker's nats.micro endpoint). Raw side: `nc.request` with a JSON body and a
plain subscription in a queue group replying with the same lead summary.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

from nats.aio.client import Client as NatsClient

from agentbus.client.api import AgentBusClient
from agentbus.dev.stack import Stack
from bench import raw
from bench.common import (
    CpuMeter,
    Proc,
    header,
    load_average,
    summary_ms,
    words_document,
)
from bench.stacks import FloorProcs, agentbus_env, agentbus_procs, connect, scratch_dir

__all__ = ["run"]

TARGET_P50_DELTA_MS: Final = 0.2
MAX_CHARS: Final = 200

Call = Callable[[str], Awaitable[str]]


async def _measure(call: Call, *, requests: int, concurrency: int) -> dict[str, Any]:
    texts = [words_document(i, sentences=4) for i in range(64)]
    latencies: list[float] = []
    counter = iter(range(requests))

    async def client() -> None:
        for i in counter:
            t0 = time.perf_counter()
            summary = await call(texts[i % len(texts)])
            latencies.append(time.perf_counter() - t0)
            if not summary:
                raise RuntimeError("empty summary")

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {
        "requests": requests,
        "elapsed_s": elapsed,
        "requests_per_s": requests / elapsed,
        "latency": summary_ms(latencies),
    }


async def _round(
    call: Call, procs: list[Proc], *, requests: int, concurrency: int
) -> dict[str, Any]:
    meter = CpuMeter(procs)
    meter.start()
    out = await _measure(call, requests=requests, concurrency=concurrency)
    cpu = meter.read()
    out["cpu_us_per_request"] = cpu["total"] / requests * 1e6
    out["cpu_us_per_request_by_role"] = {
        k: v / requests * 1e6 for k, v in sorted(cpu["per_role"].items())
    }
    return out


def _combine(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The median round (by p50), with every round's p50 and throughput alongside."""
    ordered = sorted(rounds, key=lambda r: r["latency"]["p50_ms"])
    out = dict(ordered[(len(ordered) - 1) // 2])
    out["p50_ms_rounds"] = [r["latency"]["p50_ms"] for r in rounds]
    out["requests_per_s_rounds"] = [r["requests_per_s"] for r in rounds]
    out["requests_per_s_median"] = statistics.median(out["requests_per_s_rounds"])
    return out


async def _run(args: Any) -> dict[str, Any]:
    params = {
        "requests_c1": args.requests_c1,
        "requests_c64": args.requests_c64,
        "rounds": args.rounds,
        "worker_concurrency": 64,
        "simulated_latency_ms": 0,
        "max_chars": MAX_CHARS,
        "text_chars": len(words_document(0, sentences=4)),
    }
    result = header("rpc", params)
    with scratch_dir("rpc") as data:
        stack = Stack(
            data_dir=data / "agentbus",
            workers=1,
            env=agentbus_env(latency_ms=0, worker_concurrency=64),
        )
        await asyncio.to_thread(stack.start)
        responder: FloorProcs | None = None
        try:
            assert stack.server is not None
            responder = FloorProcs(server=stack.server)
            responder.start("responder-1", "rpc-responder", log_dir=data / "raw")
            await asyncio.to_thread(responder.wait_ready)
            me = os.getpid()
            worker = [p for p in agentbus_procs(stack, client_pid=me) if p.role != "orchestrator"]
            worker = [p for p in worker if p.role != "archiver"]
            raw_procs = [
                *(p for p in responder.measured(client_pid=me) if p.role == "responder"),
                Proc("nats-server", stack.server.pid or 0, "nats-server"),
                Proc("client", me, "client"),
            ]
            async with AgentBusClient(stack.nats_url) as client:
                nc: NatsClient = await connect(stack.nats_url)

                async def agentbus_call(text: str) -> str:
                    return await client.summarize_sync(text, max_chars=MAX_CHARS, timeout_s=10)

                async def raw_call(text: str) -> str:
                    body = json.dumps({"text": text, "max_chars": MAX_CHARS}).encode()
                    msg = await nc.request(raw.RPC_SUBJECT, body, timeout=10)
                    return str(json.loads(msg.data)["summary"])

                systems: dict[str, tuple[Call, list[Proc]]] = {
                    "agentbus": (agentbus_call, worker),
                    "raw": (raw_call, raw_procs),
                }
                for call, _ in systems.values():  # warm-up
                    await _measure(call, requests=300, concurrency=8)
                for concurrency, requests in ((1, args.requests_c1), (64, args.requests_c64)):
                    rounds: dict[str, list[dict[str, Any]]] = {k: [] for k in systems}
                    for r in range(args.rounds):
                        order = list(systems) if r % 2 == 0 else list(reversed(systems))
                        for name in order:
                            call, procs = systems[name]
                            rounds[name].append(
                                await _round(
                                    call, procs, requests=requests, concurrency=concurrency
                                )
                            )
                    a, f = _combine(rounds["agentbus"]), _combine(rounds["raw"])
                    delta = a["latency"]["p50_ms"] - f["latency"]["p50_ms"]
                    result[f"concurrency_{concurrency}"] = {
                        "agentbus": a,
                        "raw": f,
                        "p50_delta_ms": delta,
                        "p99_delta_ms": a["latency"]["p99_ms"] - f["latency"]["p99_ms"],
                        "throughput_ratio": a["requests_per_s_median"] / f["requests_per_s_median"],
                        "cpu_ratio": a["cpu_us_per_request"] / f["cpu_us_per_request"],
                    }
                await nc.close()
            c1 = result["concurrency_1"]
            result["targets"] = {
                "p50_delta_ms_max": TARGET_P50_DELTA_MS,
                "p50_met": c1["p50_delta_ms"] <= TARGET_P50_DELTA_MS,
            }
        finally:
            if responder is not None:
                for proc in responder.procs.values():
                    proc.terminate()
                    await asyncio.to_thread(proc.wait, 10)
            await asyncio.to_thread(stack.stop)
    result["load_average_after"] = load_average()
    return result


def add_arguments(p: Any) -> None:
    p.add_argument("--requests-c1", type=int, default=3000, help="requests per round at 1")
    p.add_argument("--requests-c64", type=int, default=8000, help="requests per round at 64")
    p.add_argument("--rounds", type=int, default=3)


def run(args: Any) -> dict[str, Any]:
    return asyncio.run(_run(args))
