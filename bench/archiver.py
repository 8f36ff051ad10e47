"""archiver: events/s archived into SQLite by the event-archiver process, against raw
nats-py consumers of the same stream: pull + ack only (the floor), and pull + one SQLite
`executemany` per batch + ack (what a hand-written archiver would do).

The AGENT_EVENTS stream is filled first (the mix of events a job produces), then each
consumer, on its own durable with the archiver's configuration, reads all of it. The rate
is measured from the consumer's first delivery to its last ack, by polling its info.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import time
from dataclasses import replace
from typing import Any, Final

from nats.js import JetStreamContext

from agentbus.bus.topology import consumer_configs, provision
from agentbus.contract import subjects
from agentbus.contract.messages import AgentEvent, EventKind, encode
from agentbus.contract.settings import NatsSettings, load_settings
from agentbus.dev.embedded import EmbeddedNatsServer
from agentbus.dev.stack import ServiceProcess, free_port
from bench.common import CpuMeter, Proc, header, load_average, spawn_python, stop_proc
from bench.stacks import connect, scratch_dir

__all__ = ["run"]

_KINDS: Final = (
    (EventKind.JOB_ACCEPTED, "orchestrator-1", "orchestrator", {"title": "", "chars": 900}),
    (EventKind.JOB_CHUNKED, "orchestrator-1", "orchestrator", {"chunks": 1, "chunk_chars": 6000}),
    (EventKind.TASK_STARTED, "worker-1", "worker", {"attempt": 1, "level": 0, "chars": 900}),
    (
        EventKind.TASK_COMPLETED,
        "worker-1",
        "worker",
        {"attempt": 1, "duration_ms": 0.2, "summary_chars": 400, "usage": None},
    ),
    (EventKind.JOB_COMPLETED, "orchestrator-1", "orchestrator", {"summary_chars": 400}),
)


def _event(i: int) -> tuple[str, bytes, str]:
    kind, agent, service, data = _KINDS[i % len(_KINDS)]
    job = f"job{i // len(_KINDS):07d}"
    ev = AgentEvent(
        event_id=f"{job}-{kind.value.replace('.', '-')}",
        agent_id=agent,
        service=service,
        kind=kind,
        job_id=job,
        task_id="0-0" if service == "worker" else None,
        data=data,
    )
    completed = kind is EventKind.TASK_COMPLETED
    subject = subjects.agent_results(agent) if completed else subjects.agent_events(agent)
    return subject, encode(ev, sender=agent, msg_id=ev.event_id), ev.event_id


async def _fill(js: JetStreamContext, events: int) -> None:
    batch = 256
    for start in range(0, events, batch):
        msgs = [_event(i) for i in range(start, min(start + batch, events))]
        await asyncio.gather(
            *(js.publish(s, data, headers={"Nats-Msg-Id": mid}) for s, data, mid in msgs)
        )


async def _consume_rate(
    js: JetStreamContext, durable: str, *, events: int, pid: int, server_pid: int, role: str
) -> dict[str, Any]:
    """Poll the consumer: time from its first delivery to the last ack; CPU in between."""
    meter = CpuMeter([Proc(role, pid), Proc("nats-server", server_pid)])
    stream = subjects.AGENT_EVENTS_STREAM
    deadline = time.monotonic() + 300
    t0 = None
    while True:
        info = await js.consumer_info(stream, durable)
        now = time.perf_counter()
        if t0 is None and (info.delivered.stream_seq or 0) > 0:
            t0 = now
            meter.start()
        acked = info.ack_floor.stream_seq or 0
        if t0 is not None and acked >= events and not info.num_ack_pending:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"{durable}: {acked} of {events} acked in 300s")
        await asyncio.sleep(0.01)
    elapsed = now - t0
    cpu = meter.read()
    return {
        "events": events,
        "elapsed_s": elapsed,
        "events_per_s": events / elapsed,
        "cpu_us_per_event": cpu["total"] / events * 1e6,
        "cpu_us_per_event_by_role": {k: v / events * 1e6 for k, v in cpu["per_role"].items()},
    }


async def _run(args: Any) -> dict[str, Any]:
    params = {"events": args.events, "batch_size": 256, "storage": "file"}
    result = header("archiver", params)
    with scratch_dir("archiver") as data:
        server = EmbeddedNatsServer(store_dir=data / "jetstream").start()
        procs: list[subprocess.Popen[bytes]] = []
        archiver: ServiceProcess | None = None
        try:
            assert server.pid is not None
            settings = load_settings(nats=NatsSettings(url=server.url))
            nc = await connect(server.url)
            js = nc.jetstream()
            await provision(js, settings)
            t = time.perf_counter()
            await _fill(js, args.events)
            result["fill_events_per_s"] = args.events / (time.perf_counter() - t)
            archiver_cfg = next(
                c for _s, c in consumer_configs(settings) if c.durable_name == "event-archiver"
            )
            for name in ("floor-events", "floor-events-sqlite"):
                await js.add_consumer(
                    subjects.AGENT_EVENTS_STREAM, replace(archiver_cfg, durable_name=name)
                )

            # 1. the floor: pull + ack
            floor = spawn_python(
                "bench.raw", "events-consumer", server.url, "--durable", "floor-events",
                "--batch", "256", log_path=data / "floor-events.log",
            )  # fmt: skip
            procs.append(floor)
            result["floor_pull_ack"] = await _consume_rate(
                js, "floor-events", events=args.events, pid=floor.pid, server_pid=server.pid,
                role="consumer",
            )  # fmt: skip
            stop_proc(floor)

            # 2. a hand-written archiver: pull + SQLite executemany + ack
            db = data / "floor.db"
            floor_sql = spawn_python(
                "bench.raw", "events-consumer", server.url, "--durable", "floor-events-sqlite",
                "--batch", "256", "--sqlite", str(db), log_path=data / "floor-sqlite.log",
            )  # fmt: skip
            procs.append(floor_sql)
            result["floor_pull_sqlite_ack"] = await _consume_rate(
                js, "floor-events-sqlite", events=args.events, pid=floor_sql.pid,
                server_pid=server.pid, role="consumer",
            )  # fmt: skip
            stop_proc(floor_sql)

            # 3. the agentbus event-archiver process
            archive = data / "archive.db"
            port = free_port()
            env = dict(os.environ)
            env.update(
                {
                    "AGENTBUS_NATS__URL": server.url,
                    "AGENTBUS_AGENT_ID": "archiver-bench",
                    "AGENTBUS_HTTP__PORT": str(port),
                    "AGENTBUS_HTTP__HOST": "127.0.0.1",
                    "AGENTBUS_LOG_FORMAT": "json",
                    "AGENTBUS_ARCHIVER__DATABASE_URL": f"sqlite+aiosqlite:///{archive}",
                }
            )
            archiver = ServiceProcess(
                role="archiver", agent_id="archiver-bench", http_port=port,
                log_path=data / "archiver.log", env=env,
            )  # fmt: skip
            archiver.start()
            assert archiver.pid is not None
            a = await _consume_rate(
                js, subjects.ARCHIVER_CONSUMER, events=args.events, pid=archiver.pid,
                server_pid=server.pid, role="archiver",
            )  # fmt: skip
            with sqlite3.connect(archive) as conn:
                a["rows_in_sqlite"] = conn.execute("SELECT count(*) FROM agent_events").fetchone()[
                    0
                ]
            result["agentbus"] = a
            await nc.close()
        finally:
            if archiver is not None:
                await asyncio.to_thread(archiver.stop, timeout_s=30)
            for p in procs:
                stop_proc(p)
            server.stop()
    f, fs, a = result["floor_pull_ack"], result["floor_pull_sqlite_ack"], result["agentbus"]
    result["ratios"] = {
        "throughput_vs_pull_ack": a["events_per_s"] / f["events_per_s"],
        "throughput_vs_pull_sqlite_ack": a["events_per_s"] / fs["events_per_s"],
        "cpu_vs_pull_ack": a["cpu_us_per_event"] / f["cpu_us_per_event"],
        "cpu_vs_pull_sqlite_ack": a["cpu_us_per_event"] / fs["cpu_us_per_event"],
    }
    result["load_average_after"] = load_average()
    return result


def add_arguments(p: Any) -> None:
    p.add_argument("--events", type=int, default=20000)


def run(args: Any) -> dict[str, Any]:
    return asyncio.run(_run(args))
