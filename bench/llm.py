"""llm: agentbus's overhead on an LLM-bound workload, against a real llama.cpp server.

The same chunks (parts of the sample documents, each over its summary budget) are
summarized twice by SmolLM2-135M-Instruct on llama-cpp-python's OpenAI-compatible server
(`.ci/install-llm.sh` installs both): the floor sends the very requests the openai
backend sends (same prompt, `max_tokens`, temperature 0, no streaming) straight to the
server with the same concurrency; agentbus submits one job per chunk to a stack (`agentbus
up`'s processes: nats-server, orchestrator, one worker with that concurrency, archiver)
pointed at the same server. Rounds alternate floor and agentbus; the result is the ratio
of the median wall times (target: agentbus <= 1.1x the floor) and completion tokens/s of
each. The server answers one request at a time, so the model's time dominates both.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path
from typing import Any, Final

import aiohttp

from agentbus.client.api import AgentBusClient
from agentbus.contract.messages import JobStatus
from agentbus.dev.stack import Stack
from agentbus_summarize_worker.backends.openai import max_tokens_for, prompt_messages
from bench.common import header, load_average, ratio
from bench.stacks import scratch_dir
from tests.llm.server import MODEL_ALIAS, LlamaServer, missing

__all__ = ["run"]

TARGET_RATIO: Final = 1.1
SAMPLES: Final = Path(__file__).resolve().parents[1] / "samples"
MAX_TOKENS_CAP: Final = 2048


def _chunks(count: int, *, chars: int) -> list[str]:
    texts = [" ".join(p.read_text().split()) for p in sorted(SAMPLES.glob("*.txt"))]
    out: list[str] = []
    offset = 0
    while len(out) < count:
        for text in texts:
            piece = text[offset : offset + chars]
            if len(piece) == chars and len(out) < count:
                out.append(piece)
        offset += chars
        if offset > max(len(t) for t in texts):
            offset = 0
    return out


async def _floor(url: str, chunks: list[str], *, budget: int, concurrency: int) -> dict[str, Any]:
    """The backend's requests, sent straight to the server `concurrency` at a time."""
    gate = asyncio.Semaphore(concurrency)
    completion = 0

    async def one(session: aiohttp.ClientSession, text: str) -> None:
        nonlocal completion
        body = {
            "model": MODEL_ALIAS,
            "messages": prompt_messages(text, max_chars=budget),
            "temperature": 0.0,
            "max_tokens": max_tokens_for(budget, cap=MAX_TOKENS_CAP),
            "stream": False,
        }
        async with gate, session.post(f"{url}/chat/completions", json=body) as resp:
            resp.raise_for_status()
            data = await resp.json()
        completion += int(data["usage"]["completion_tokens"])

    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        started = time.perf_counter()
        await asyncio.gather(*(one(session, t) for t in chunks))
        seconds = time.perf_counter() - started
    return {"seconds": seconds, "completion_tokens": completion}


async def _agentbus(client: AgentBusClient, chunks: list[str], *, budget: int) -> dict[str, Any]:
    started = time.perf_counter()
    ids = [await client.submit(t, summary_chars=budget, title="bench-llm") for t in chunks]
    states = [await client.wait(i, timeout_s=1800) for i in ids]
    seconds = time.perf_counter() - started
    failed = [s.error for s in states if s.status is not JobStatus.COMPLETED]
    if failed:
        raise RuntimeError(f"{len(failed)} job(s) did not complete: {failed[0]}")
    completion = sum(s.usage.completion_tokens for s in states if s.usage is not None)
    return {"seconds": seconds, "completion_tokens": completion}


def _tokens_per_s(runs: list[dict[str, Any]]) -> float:
    tokens = sum(int(r["completion_tokens"]) for r in runs)
    return tokens / sum(float(r["seconds"]) for r in runs)


async def _run(args: Any) -> dict[str, Any]:
    reason = missing()
    if reason is not None:
        raise SystemExit(f"bench llm: {reason}")
    params = {
        "chunks": args.chunks, "chunk_chars": args.chunk_chars, "budget_chars": args.budget,
        "concurrency": args.concurrency, "rounds": args.rounds, "model": MODEL_ALIAS,
    }  # fmt: skip
    result = header("llm", params)
    chunks = _chunks(args.chunks, chars=args.chunk_chars)
    with scratch_dir("llm") as data:
        server = LlamaServer(log_path=data / "llama-server.log")
        await asyncio.to_thread(server.start)
        stack = Stack(
            data_dir=data / "agentbus",
            workers=1,
            env={
                "AGENTBUS_SUMMARIZER__BACKEND": "openai",
                "AGENTBUS_SUMMARIZER__OPENAI_BASE_URL": server.url,
                "AGENTBUS_SUMMARIZER__OPENAI_MODEL": MODEL_ALIAS,
                "AGENTBUS_SUMMARIZER__OPENAI_TEMPERATURE": "0",
                "AGENTBUS_SUMMARIZER__OPENAI_STREAM": "false",
                "AGENTBUS_SUMMARIZER__OPENAI_TIMEOUT_S": "600",
                "AGENTBUS_SUMMARIZER__OPENAI_MAX_TOKENS": str(MAX_TOKENS_CAP),
                "AGENTBUS_WORKER__CONCURRENCY": str(args.concurrency),
            },
        )
        floors: list[dict[str, Any]] = []
        ours: list[dict[str, Any]] = []
        try:
            await asyncio.to_thread(stack.start)
            async with AgentBusClient(stack.nats_url) as client:
                await _floor(server.url, chunks[:1], budget=args.budget, concurrency=1)  # warm
                for _ in range(args.rounds):
                    floors.append(
                        await _floor(
                            server.url, chunks, budget=args.budget, concurrency=args.concurrency
                        )
                    )
                    ours.append(await _agentbus(client, chunks, budget=args.budget))
        finally:
            await asyncio.to_thread(stack.stop)
            await asyncio.to_thread(server.stop)
    floor_s = statistics.median(r["seconds"] for r in floors)
    agentbus_s = statistics.median(r["seconds"] for r in ours)
    result["floor"] = {"rounds": floors, "seconds_median": floor_s}
    result["agentbus"] = {"rounds": ours, "seconds_median": agentbus_s}
    result["ratio_job_time_to_floor"] = ratio(agentbus_s, floor_s)
    result["tokens_per_s"] = {"floor": _tokens_per_s(floors), "agentbus": _tokens_per_s(ours)}
    result["targets"] = {
        "ratio_max": TARGET_RATIO,
        "met": (result["ratio_job_time_to_floor"] or 0) <= TARGET_RATIO,
    }
    result["load_average_after"] = load_average()
    return result


def add_arguments(p: Any) -> None:
    p.add_argument("--chunks", type=int, default=8)
    p.add_argument("--chunk-chars", type=int, default=900)
    p.add_argument("--budget", type=int, default=300, help="summary budget of each chunk")
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)


def run(args: Any) -> dict[str, Any]:
    return asyncio.run(_run(args))
