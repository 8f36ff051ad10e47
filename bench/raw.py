"""The raw floors: minimal nats-py programs with no framework, each its own process.

    python -m bench.raw pipeline-orchestrator URL --batch 32
    python -m bench.raw pipeline-worker URL --batch 32
    python -m bench.raw rpc-responder URL
    python -m bench.raw events-consumer URL --batch 256 [--sqlite PATH]

They send the same JetStream messages in the same process layout as agentbus, and do the
same application work (chunking the document; the simulated backend at 0 ms: one await,
then the lead summary), so that an agentbus/floor ratio measures what the framework
costs: envelopes and validation, events, job state with compare-and-set, tracing hooks,
metrics, logging.

- pipeline: job (work-queue stream) -> orchestrator pulls, publishes the task, acks ->
  worker pulls, publishes the result, acks -> orchestrator pulls the result, writes the
  job's final state to a KV bucket, acks. Messages are plain JSON.
- rpc: a core NATS responder in a queue group, replying with the lead summary.
- events: pull + ack of a stream (optionally inserting each batch into SQLite first).

Each program prints `ready` once its subscriptions are bound.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any, Final

import nats
import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from agentbus.bus.connect import flush_barrier
from agentbus.contract.chunking import chunk_text
from agentbus_summarize_worker.backends.simulated import lead_summary

__all__ = [
    "JOBS_STREAM",
    "JOBS_SUBJECT",
    "KV_BUCKET",
    "RPC_QUEUE",
    "RPC_SUBJECT",
    "provision_pipeline_floor",
    "task_subject",
]

JOBS_STREAM: Final = "FLOOR_JOBS"
JOBS_SUBJECT: Final = "floor.jobs.submit"
TASKS_STREAM: Final = "FLOOR_TASKS"
TASKS_SUBJECT: Final = "floor.tasks.summarize.assign"
RESULTS_STREAM: Final = "FLOOR_RESULTS"
RESULTS_SUBJECTS: Final = "floor.results.>"
KV_BUCKET: Final = "floor-jobs"
ORCH_CONSUMER: Final = "floor-orchestrator"
ORCH_RESULTS_CONSUMER: Final = "floor-orchestrator-results"
WORKERS_CONSUMER: Final = "floor-workers"
RPC_SUBJECT: Final = "floor.rpc.summarize"
RPC_QUEUE: Final = "floor-workers"
CHUNK_CHARS: Final = 6000
SUMMARY_CHARS: Final = 1200


def task_subject() -> str:
    return TASKS_SUBJECT


async def provision_pipeline_floor(js: JetStreamContext, *, storage: str = "file") -> None:
    """The floor's streams, consumers and KV bucket (same kinds and storage as agentbus)."""
    st = StorageType.FILE if storage == "file" else StorageType.MEMORY
    for name, subject, retention in (
        (JOBS_STREAM, JOBS_SUBJECT, RetentionPolicy.WORK_QUEUE),
        (TASKS_STREAM, TASKS_SUBJECT, RetentionPolicy.WORK_QUEUE),
        (RESULTS_STREAM, RESULTS_SUBJECTS, RetentionPolicy.LIMITS),
    ):
        await js.add_stream(
            StreamConfig(
                name=name, subjects=[subject], retention=retention, storage=st,
                duplicate_window=120.0,
            )
        )  # fmt: skip
    for stream, durable, filter_subject in (
        (JOBS_STREAM, ORCH_CONSUMER, JOBS_SUBJECT),
        (RESULTS_STREAM, ORCH_RESULTS_CONSUMER, RESULTS_SUBJECTS),
        (TASKS_STREAM, WORKERS_CONSUMER, TASKS_SUBJECT),
    ):
        await js.add_consumer(
            stream,
            ConsumerConfig(
                durable_name=durable, ack_policy=AckPolicy.EXPLICIT, ack_wait=30.0,
                filter_subject=filter_subject, max_ack_pending=10_000,
            ),
        )  # fmt: skip
    await js.create_key_value(KeyValueConfig(bucket=KV_BUCKET, history=1, storage=st))


async def _pull_loop(
    sub: JetStreamContext.PullSubscription, handle: Callable[[Msg], Awaitable[None]], batch: int
) -> None:
    while True:
        try:
            msgs = await sub.fetch(batch, timeout=1.0)
        except (TimeoutError, nats.errors.TimeoutError):
            continue
        await asyncio.gather(*(handle(m) for m in msgs))


async def _connect(url: str) -> NatsClient:
    return await nats.connect(url, name="bench-floor")


async def pipeline_orchestrator(url: str, *, batch: int) -> None:
    nc = await _connect(url)
    js = nc.jetstream()
    kv = await js.key_value(KV_BUCKET)
    jobs = await js.pull_subscribe_bind(durable=ORCH_CONSUMER, stream=JOBS_STREAM)
    results = await js.pull_subscribe_bind(durable=ORCH_RESULTS_CONSUMER, stream=RESULTS_STREAM)

    async def on_job(msg: Msg) -> None:
        job = json.loads(msg.data)
        chunks = chunk_text(job["text"], max_chars=CHUNK_CHARS)
        job_id = job["job_id"]
        task = {"job_id": job_id, "task_id": "0-0", "text": chunks[0], "max_chars": SUMMARY_CHARS}
        await js.publish(
            TASKS_SUBJECT, json.dumps(task).encode(), headers={"Nats-Msg-Id": f"{job_id}:0-0"}
        )
        await msg.ack()

    async def on_result(msg: Msg) -> None:
        result = json.loads(msg.data)
        state = {"job_id": result["job_id"], "status": "completed", "summary": result["summary"]}
        await kv.put(result["job_id"], json.dumps(state).encode())
        await msg.ack()

    print("ready", flush=True)
    await asyncio.gather(_pull_loop(jobs, on_job, batch), _pull_loop(results, on_result, batch))


async def pipeline_worker(url: str, *, batch: int) -> None:
    nc = await _connect(url)
    js = nc.jetstream()
    tasks = await js.pull_subscribe_bind(durable=WORKERS_CONSUMER, stream=TASKS_STREAM)

    async def on_task(msg: Msg) -> None:
        task = json.loads(msg.data)
        await asyncio.sleep(0)  # the backend's await, as the simulated backend at 0 ms does
        summary = lead_summary(task["text"], max_chars=task["max_chars"])
        job_id, task_id = task["job_id"], task["task_id"]
        result = {"job_id": job_id, "task_id": task_id, "ok": True, "summary": summary}
        await js.publish(
            f"floor.results.{job_id}.{task_id}",
            json.dumps(result).encode(),
            headers={"Nats-Msg-Id": f"{job_id}:{task_id}"},
        )
        await msg.ack()

    print("ready", flush=True)
    await _pull_loop(tasks, on_task, batch)


async def rpc_responder(url: str) -> None:
    nc = await _connect(url)

    async def on_request(msg: Msg) -> None:
        req = json.loads(msg.data)
        await asyncio.sleep(0)  # the backend's await, as the simulated backend at 0 ms does
        summary = lead_summary(req["text"], max_chars=req["max_chars"])
        await msg.respond(json.dumps({"ok": True, "summary": summary}).encode())

    await nc.subscribe(RPC_SUBJECT, queue=RPC_QUEUE, cb=on_request)
    await flush_barrier(nc)  # setup, not the measured path: "ready" must be true
    print("ready", flush=True)
    await asyncio.Event().wait()


async def events_consumer(
    url: str, *, stream: str, durable: str, batch: int, sqlite_path: str | None
) -> None:
    nc = await _connect(url)
    js = nc.jetstream()
    sub = await js.pull_subscribe_bind(durable=durable, stream=stream)
    db: sqlite3.Connection | None = None
    if sqlite_path:
        db = sqlite3.connect(sqlite_path)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(
            "CREATE TABLE IF NOT EXISTS events (event_id TEXT PRIMARY KEY, seq INTEGER, "
            "subject TEXT, data TEXT)"
        )
        db.commit()
    print("ready", flush=True)
    while True:
        try:
            msgs = await sub.fetch(batch, timeout=1.0)
        except (TimeoutError, nats.errors.TimeoutError):
            continue
        if db is not None:
            rows: list[tuple[Any, ...]] = []
            for m in msgs:
                env = json.loads(m.data)
                ev = env["payload"]
                rows.append((ev["event_id"], m.metadata.sequence.stream, m.subject, m.data))
            db.executemany("INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?)", rows)
            db.commit()
        await asyncio.gather(*(m.ack() for m in msgs))


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.raw", description=__doc__.split("\n")[0])
    p.add_argument(
        "role",
        choices=["pipeline-orchestrator", "pipeline-worker", "rpc-responder", "events-consumer"],
    )
    p.add_argument("url")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--stream", default="AGENT_EVENTS")
    p.add_argument("--durable", default="floor-events")
    p.add_argument("--sqlite", default=None)
    a = p.parse_args()
    if a.role == "pipeline-orchestrator":
        coro = pipeline_orchestrator(a.url, batch=a.batch)
    elif a.role == "pipeline-worker":
        coro = pipeline_worker(a.url, batch=a.batch)
    elif a.role == "rpc-responder":
        coro = rpc_responder(a.url)
    else:
        coro = events_consumer(
            a.url, stream=a.stream, durable=a.durable, batch=a.batch, sqlite_path=a.sqlite
        )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(coro)


if __name__ == "__main__":
    main()
