"""Discovery of running workers through nats.micro (`$SRV.PING|INFO|STATS`).

Every worker replica registers one nats.micro service named `agentbus-worker` whose
endpoint is its skill's request/reply subject (`rpc.{skill}`, queue group
`{skill}-workers`). The endpoint's stats carry a `WorkerStats` (state, in-flight count,
task and RPC counters), so `$SRV.STATS.agentbus-worker` answers, from every replica at
once, the question "which workers are running and what are they doing" — the standard
`nats micro ls|info|stats` tools see the same thing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Final

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from pydantic import ValidationError

from agentbus.contract.errors import AgentBusError
from agentbus.contract.subjects import WORKER_SERVICE, srv_subject
from agentbus.contract.workers import WorkerInfo, WorkerStats

__all__ = ["list_workers"]

_DEFAULT_SETTLE_S: Final = 0.25


def _parse_stats(data: bytes) -> WorkerInfo | None:
    try:
        doc = json.loads(data)
    except ValueError:
        return None
    if not isinstance(doc, dict) or doc.get("name") != WORKER_SERVICE:
        return None
    endpoints = [e for e in doc.get("endpoints") or [] if isinstance(e, dict)]
    endpoint = next((e for e in endpoints if isinstance(e.get("data"), dict)), None)
    metadata = doc.get("metadata") or {}
    try:
        stats = WorkerStats.model_validate(
            endpoint["data"]
            if endpoint
            else {"agent_id": metadata.get("agent_id", "?"), "skill": metadata.get("skill", "?")}
        )
        return WorkerInfo(
            id=stats.agent_id,
            service_id=str(doc.get("id", "")),
            version=str(doc.get("version", "")),
            skill=stats.skill,
            backend=stats.backend,
            state=stats.state,
            concurrency=stats.concurrency,
            in_flight=stats.in_flight,
            started=str(doc.get("started", "")),
            endpoint=str(endpoint.get("subject", "")) if endpoint else "",
            queue_group=str(endpoint.get("queue_group", "")) if endpoint else "",
            stats=stats,
        )
    except (ValidationError, TypeError, KeyError):
        return None


async def list_workers(
    nc: NatsClient,
    *,
    timeout_s: float = 2.0,
    settle_s: float = _DEFAULT_SETTLE_S,
    expected: int | None = None,
) -> list[WorkerInfo]:
    """Ask every worker for its stats (`$SRV.STATS.agentbus-worker`) and collect the answers.

    Answers are gathered until `expected` workers answered, or `settle_s` passed without a
    new one after the first, or `timeout_s` in all. Sorted by skill, then id."""
    inbox = nc.new_inbox()
    found: dict[str, WorkerInfo] = {}
    changed = asyncio.Event()

    async def on_reply(msg: Msg) -> None:
        info = _parse_stats(msg.data)
        if info is not None:
            found[info.service_id or info.id] = info
            changed.set()

    try:
        sub = await nc.subscribe(inbox, cb=on_reply)
    except nats.errors.Error as e:
        raise AgentBusError(f"cannot subscribe to {inbox}: {e}") from e
    try:
        await nc.publish(srv_subject("STATS", WORKER_SERVICE), b"", reply=inbox)
        await nc.flush()
        deadline = time.monotonic() + timeout_s
        while True:
            if expected is not None and len(found) >= expected:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                break
            wait = left if not found else min(left, settle_s)
            changed.clear()
            try:
                await asyncio.wait_for(changed.wait(), wait)
            except TimeoutError:
                if found:
                    break
    except nats.errors.Error as e:
        raise AgentBusError(f"discovery on {srv_subject('STATS', WORKER_SERVICE)}: {e}") from e
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    return sorted(found.values(), key=lambda w: (w.skill, w.id, w.service_id))
