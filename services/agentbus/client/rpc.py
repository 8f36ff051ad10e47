"""The client side of the request/reply path (`rpc.{skill}`, served by `SkillEndpoint`
in every worker): `request_summary` and `fan_out` never raise for a per-request failure:
each returns `RpcResult`s whose `error` says what happened (no responders, timeout, the
worker's error)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import nats.errors
from nats.aio.client import Client as NatsClient

from agentbus.contract import subjects
from agentbus.contract.errors import MessageDecodeError
from agentbus.contract.messages import SummarizeReply, SummarizeRequest, decode, encode
from agentbus.observability import telemetry

__all__ = ["DEFAULT_FAN_OUT_CONCURRENCY", "RpcResult", "fan_out", "request_summary"]

DEFAULT_FAN_OUT_CONCURRENCY: Final = 64
_REQUEST_OVERHEAD_BYTES: Final = 512


@dataclass(frozen=True, slots=True)
class RpcResult:
    """The outcome of one request: a summary, or an error saying why not."""

    index: int
    summary: str | None = None
    error: str | None = None
    worker_id: str | None = None
    duration_ms: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


async def request_summary(
    nc: NatsClient,
    text: str,
    *,
    sender: str,
    max_chars: int = 1200,
    timeout_s: float = 30.0,
    skill: str = subjects.SUMMARIZE_SKILL,
    max_bytes: int | None = None,
    index: int = 0,
) -> RpcResult:
    """One request on `rpc.{skill}`; never raises for a failed request (see `RpcResult`)."""
    subject = subjects.rpc_subject(skill)
    started = time.perf_counter()

    def result(**kw: object) -> RpcResult:
        ms = round((time.perf_counter() - started) * 1000, 3)
        return RpcResult(index=index, duration_ms=ms, **kw)  # type: ignore[arg-type]  # RpcResult's own fields

    if not text.strip():
        return result(error="empty text")
    try:
        payload = encode(SummarizeRequest(text=text, max_chars=max_chars), sender=sender)
    except ValueError as e:
        return result(error=f"invalid request: {e}")
    caps = [c for c in (max_bytes, nc.max_payload) if c]
    cap = min(caps) if caps else 0
    if cap and len(payload) > cap:
        return result(
            error=f"request of {len(payload)} bytes is above the {cap}-byte message limit of "
            f"{subject}; submit large documents as jobs instead"
        )
    headers: dict[str, str] = {}
    telemetry.inject(headers)
    try:
        msg = await nc.request(subject, payload, timeout=timeout_s, headers=headers or None)
    except nats.errors.NoRespondersError:
        return result(error=f"no responders: no {skill} worker serves {subject}")
    except (TimeoutError, nats.errors.TimeoutError):
        return result(
            error=f"timeout: no reply on {subject} within {timeout_s:g}s (at-most-once: "
            "not retried)"
        )
    except nats.errors.Error as e:
        return result(error=f"request on {subject} failed: {e or type(e).__name__}")
    try:
        reply = decode(msg.data, SummarizeReply).payload
    except MessageDecodeError as e:
        return result(error=f"bad reply on {subject}: {e}")
    if not reply.ok:
        return result(error=f"worker {reply.worker_id}: {reply.error}", worker_id=reply.worker_id)
    return result(summary=reply.summary, worker_id=reply.worker_id)


async def fan_out(
    nc: NatsClient,
    texts: Sequence[str],
    *,
    sender: str,
    max_chars: int = 1200,
    timeout_s: float = 30.0,
    skill: str = subjects.SUMMARIZE_SKILL,
    concurrency: int = DEFAULT_FAN_OUT_CONCURRENCY,
    max_bytes: int | None = None,
) -> list[RpcResult]:
    """Summarize `texts` in parallel (at most `concurrency` requests outstanding); the
    results are in the order of `texts`, each with its own error if it failed."""
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int, text: str) -> RpcResult:
        async with gate:
            return await request_summary(
                nc,
                text,
                sender=sender,
                max_chars=max_chars,
                timeout_s=timeout_s,
                skill=skill,
                max_bytes=max_bytes,
                index=i,
            )

    return list(await asyncio.gather(*(one(i, t) for i, t in enumerate(texts))))
