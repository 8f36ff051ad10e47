"""The REST API (`/v1/...`): jobs, their live streams (SSE), workers, dead letters.

Every handler talks to the rest of agentbus through `AgentBusClient` over NATS. Errors
are JSON `{"error": "one line"}` with the status the OpenAPI document names.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar, cast

from aiohttp import BodyPartReader, web

from agentbus.client.api import AgentBusClient
from agentbus.client.stream import PartialResult
from agentbus.contract import subjects
from agentbus.contract.errors import (
    AgentBusError,
    DeadLetterError,
    DocumentRejected,
    JobExistsError,
)
from agentbus.contract.messages import AgentEvent, JobState, JobStatus
from agentbus.contract.priority import Priority
from agentbus.contract.settings import Settings
from agentbus.contract.tenants import DEFAULT_TENANT
from agentbus.observability import metrics
from agentbus_gateway.keys import ApiKey, KeyRing, Role
from agentbus_gateway.sse import KEEPALIVE, format_event, parse_cursor

__all__ = ["CONTEXT", "GatewayContext", "add_routes", "json_error", "route_role"]

ENVELOPE_BYTES: Final = 64 * 1024
"""A request body may exceed the document cap by this much (JSON, multipart framing)."""
_READ_CHUNK: Final = 64 * 1024


T = TypeVar("T")
_RECENT_JOBS: Final = 10_000
_RECORDED_POLL_S: Final = 0.05


@dataclass
class GatewayContext:
    client: AgentBusClient
    keys: KeyRing
    settings: Settings
    service: str
    recent: OrderedDict[str, JobState] = field(default_factory=OrderedDict)
    """Jobs this replica accepted, as `accepted` until an orchestrator records them (the
    PubAck is the acceptance; the jobs KV entry comes a moment later)."""

    def remember(self, state: JobState) -> None:
        self.recent[state.job_id] = state
        while len(self.recent) > _RECENT_JOBS:
            self.recent.popitem(last=False)

    @property
    def max_body_bytes(self) -> int:
        return self.settings.limits.max_document_bytes + ENVELOPE_BYTES


CONTEXT: Final = web.AppKey("agentbus_gateway", GatewayContext)
KEY: Final = web.RequestKey("agentbus_api_key", ApiKey)

# (method, route pattern) -> the least role it needs; a route not here needs no key
_ROLES: Final[dict[tuple[str, str], Role]] = {
    ("POST", "/v1/jobs"): Role.SUBMIT,
    ("GET", "/v1/jobs"): Role.READ,  # a key below operate: its own tenant's (listing.py)
    ("GET", "/v1/tenants"): Role.READ,  # a key below operate: its own tenant's row
    ("GET", "/v1/jobs/{job_id}"): Role.READ,
    ("GET", "/v1/jobs/{job_id}/stream"): Role.READ,
    ("GET", "/v1/jobs/{job_id}/events"): Role.READ,
    ("DELETE", "/v1/jobs/{job_id}"): Role.SUBMIT,
    ("GET", "/v1/workers"): Role.READ,
    ("GET", "/v1/dlq"): Role.OPERATE,
    ("POST", "/v1/dlq/{dlq_id}/replay"): Role.OPERATE,
    ("GET", "/v1/whoami"): Role.READ,
    ("POST", "/a2a"): Role.READ,  # and each method its own (agentbus_gateway.a2a_rpc)
}


def route_role(method: str, pattern: str) -> Role | None:
    """The least role a route needs; None: public (health, OpenAPI, console, agent card)."""
    return _ROLES.get((method, pattern))


def json_error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers or None)


def _ctx(request: web.Request) -> GatewayContext:
    return request.app[CONTEXT]


def _key(request: web.Request) -> ApiKey:
    key: ApiKey = request[KEY]
    return key


def job_json(state: JobState, *, summary: str | None = None) -> dict[str, Any]:
    return {
        "job_id": state.job_id,
        "status": state.status.value,
        "title": state.title,
        "skill": state.skill,
        "tenant": state.tenant,
        "priority": state.priority.value,
        "progress": round(state.progress, 4),
        "chunks": state.chunks,
        "level": state.level,
        "tasks_done": state.tasks_done_total,
        "document_chars": state.document_chars,
        "summary": summary if summary is not None else state.summary,
        "error": state.error,
        "created_at": state.created_at.isoformat(),
        "updated_at": state.updated_at.isoformat(),
    }


def _job_id(request: web.Request) -> str:
    job_id = request.match_info["job_id"]
    try:
        return subjects.check_job_id(job_id)
    except ValueError:
        raise web.HTTPNotFound(
            text='{"error": "no such job"}', content_type="application/json"
        ) from None


async def visible_job(
    ctx: GatewayContext, key: ApiKey, job_id: str, *, recorded: bool = False
) -> JobState | None:
    """The job's state if it exists and `key` may see it (else None: 404, not 403, so a
    key cannot learn which ids other tenants use). `recorded`: a job this replica just
    accepted is waited for (up to the request timeout) until an orchestrator has recorded
    it, as a cancel needs (a cancel before intake would not know the job's tenant)."""
    timeout_s = ctx.settings.gateway.request_timeout_s
    deadline = time.monotonic() + timeout_s
    while True:
        state = await asyncio.wait_for(ctx.client.status(job_id), timeout=timeout_s)
        if state is not None:
            ctx.recent.pop(job_id, None)
            break
        state = ctx.recent.get(job_id)
        if state is None or not recorded or time.monotonic() > deadline:
            break
        if not key.sees_tenant(state.tenant):
            return None
        await asyncio.sleep(_RECORDED_POLL_S)
    if state is None or not key.sees_tenant(state.tenant):
        return None
    return state


def _not_found(job_id: str) -> web.Response:
    return json_error(404, f"no job {job_id}")


# --- submit ------------------------------------------------------------------------------


@dataclass
class Submission:
    data: bytes
    title: str = ""
    priority: str = Priority.NORMAL.value
    job_id: str | None = None
    summary_chars: int | None = None


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def _read_json(request: web.Request, *, cap: int) -> Submission:
    body = await _read_capped(request.content.read, cap=cap)
    try:
        doc = json.loads(body)
    except ValueError as e:
        raise BadRequest(400, f"request body is not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise BadRequest(400, "request body must be a JSON object")
    unknown = set(doc) - {"text", "title", "priority", "job_id", "summary_chars"}
    if unknown:
        raise BadRequest(400, f"unknown field(s): {', '.join(sorted(unknown))}")
    text = doc.get("text")
    if not isinstance(text, str):
        raise BadRequest(400, "field text: a string is required")
    sub = Submission(data=text.encode())
    for name in ("title", "priority", "job_id"):
        value = doc.get(name)
        if value is not None:
            if not isinstance(value, str):
                raise BadRequest(400, f"field {name}: must be a string")
            setattr(sub, name, value)
    chars = doc.get("summary_chars")
    if chars is not None:
        if not isinstance(chars, int) or isinstance(chars, bool) or not 50 <= chars <= 100_000:
            raise BadRequest(400, "field summary_chars: an integer from 50 to 100000")
        sub.summary_chars = chars
    return sub


async def _read_capped(read: Callable[[int], Awaitable[bytes]], *, cap: int) -> bytes:
    """Everything `read(size)` gives until it gives b"", refused (413) above `cap`."""
    out = bytearray()
    while True:
        chunk = await read(_READ_CHUNK)
        if not chunk:
            return bytes(out)
        out += chunk
        if len(out) > cap:
            raise BadRequest(413, f"request body above the cap of {cap} bytes")


async def _read_multipart(request: web.Request, *, cap: int) -> Submission:
    reader = await request.multipart()
    sub: Submission | None = None
    fields: dict[str, str] = {}
    while True:
        part = await reader.next()
        if part is None:
            break
        if not isinstance(part, BodyPartReader):
            raise BadRequest(400, "nested multipart is not accepted")
        if part.name == "file":
            data = await _read_capped(part.read_chunk, cap=cap)
            sub = Submission(data=data, title=part.filename or "")
        elif part.name in ("title", "priority", "job_id"):
            fields[part.name] = (await _read_capped(part.read_chunk, cap=4096)).decode(
                errors="replace"
            )
        else:
            raise BadRequest(400, f"unknown form field {part.name!r}")
    if sub is None:
        raise BadRequest(400, "form field file: a document is required")
    for name, value in fields.items():
        if value:
            setattr(sub, name, value)
    return sub


async def submit_job(request: web.Request) -> web.Response:
    ctx, key = _ctx(request), _key(request)
    cap = ctx.max_body_bytes
    if request.content_length is not None and request.content_length > cap:
        return json_error(413, f"request body of {request.content_length} bytes above {cap}")
    try:
        if request.content_type == "multipart/form-data":
            try:
                sub = await _read_multipart(request, cap=cap)
            except (BadRequest, ConnectionResetError):
                raise
            except Exception as e:  # aiohttp's parser: no boundary, broken framing, ...
                raise BadRequest(400, f"malformed multipart body: {e or type(e).__name__}") from e
        elif request.content_type == "application/json":
            sub = await _read_json(request, cap=cap)
        else:
            return json_error(415, "send application/json or multipart/form-data")
    except BadRequest as e:
        return json_error(e.status, str(e))
    if len(sub.data) > ctx.settings.limits.max_document_bytes:
        return json_error(
            413,
            f"document of {len(sub.data)} bytes above the cap of "
            f"{ctx.settings.limits.max_document_bytes} (AGENTBUS_LIMITS__MAX_DOCUMENT_BYTES)",
        )
    tenant = None if key.tenant == DEFAULT_TENANT else key.tenant
    try:
        job_id = await asyncio.wait_for(
            ctx.client.submit(
                sub.data, job_id=sub.job_id, title=sub.title[:256], priority=sub.priority,
                summary_chars=sub.summary_chars, tenant=tenant, name="document",
            ),
            timeout=ctx.settings.gateway.request_timeout_s,
        )  # fmt: skip
    except DocumentRejected as e:
        return json_error(400, str(e))
    except JobExistsError as e:
        return json_error(409, str(e))
    except ValueError as e:
        return json_error(400, str(e))
    ctx.remember(
        JobState(
            job_id=job_id,
            status=JobStatus.ACCEPTED,
            title=sub.title[:256],
            tenant=key.tenant,
            priority=Priority(sub.priority),
            document_chars=len(sub.data),
        )
    )
    return web.json_response(
        {
            "job_id": job_id,
            "tenant": key.tenant,
            "status_url": f"/v1/jobs/{job_id}",
            "stream_url": f"/v1/jobs/{job_id}/stream",
        },
        status=202,
    )


# --- read --------------------------------------------------------------------------------


async def get_job(request: web.Request) -> web.Response:
    ctx, key = _ctx(request), _key(request)
    job_id = _job_id(request)
    state = await visible_job(ctx, key, job_id)
    if state is None:
        return _not_found(job_id)
    summary = None
    if state.summary is None and state.summary_ref is not None:
        with contextlib.suppress(AgentBusError):
            summary = await ctx.client.fetch_summary(state)
    return web.json_response(job_json(state, summary=summary))


def event_json(event: AgentEvent) -> dict[str, Any]:
    return {
        "ts": event.ts.isoformat(),
        "agent_id": event.agent_id,
        "kind": str(event.kind),
        "task_id": event.task_id,
        "data": event.data,
    }


async def job_events(request: web.Request) -> web.Response:
    ctx, key = _ctx(request), _key(request)
    job_id = _job_id(request)
    if await visible_job(ctx, key, job_id) is None:
        return _not_found(job_id)
    events = await ctx.client.history(job_id, timeout_s=ctx.settings.gateway.request_timeout_s)
    return web.json_response({"job_id": job_id, "events": [event_json(e) for e in events]})


async def cancel_job(request: web.Request) -> web.Response:
    ctx, key = _ctx(request), _key(request)
    job_id = _job_id(request)
    if await visible_job(ctx, key, job_id, recorded=True) is None:
        return _not_found(job_id)
    reason = request.query.get("reason", "")[:512] or f"canceled through the gateway ({key.name})"
    reply = await ctx.client.cancel(
        job_id, reason=reason, timeout_s=ctx.settings.gateway.request_timeout_s
    )
    return web.json_response(
        {
            "job_id": job_id,
            "canceled": reply.canceled,
            "status": reply.status,
            "detail": reply.detail,
        }
    )


# --- the live stream (SSE) ---------------------------------------------------------------


async def relay(
    items: AsyncIterator[T],
    send: Callable[[T], Awaitable[None]],
    *,
    keepalive: Callable[[], Awaitable[None]],
    keepalive_s: float,
) -> None:
    """`send` every item of the async generator `items` until its end, `keepalive` on each
    quiet spell of `keepalive_s`. The generator is closed when this returns or raises (a
    client gone: `send` raised), in this task, so its subscription goes with it at once."""
    gen = cast(AsyncGenerator[T, None], items)
    pending: asyncio.Future[T] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(gen.__anext__())
            done, _ = await asyncio.wait({pending}, timeout=keepalive_s)
            if not done:
                await keepalive()
                continue
            ready, pending = pending, None
            try:
                item = ready.result()
            except StopAsyncIteration:
                return
            await send(item)
    finally:
        if pending is not None and not pending.done():
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
        with contextlib.suppress(Exception):
            await gen.aclose()


async def stream_job(request: web.Request) -> web.StreamResponse:
    ctx, key = _ctx(request), _key(request)
    job_id = _job_id(request)
    try:
        after = parse_cursor(request.headers.get("Last-Event-ID") or request.query.get("after"))
    except ValueError as e:
        return json_error(400, str(e))
    if await visible_job(ctx, key, job_id) is None:
        return _not_found(job_id)
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)

    async def send(item: PartialResult) -> None:
        frame = format_event(event_id=str(item.cursor), event=item.kind.value, data=item.as_json())
        await response.write(frame)

    async def keepalive() -> None:
        await response.write(KEEPALIVE)

    gauge = metrics.GATEWAY_OPEN_STREAMS.labels(ctx.service, "rest")
    gauge.inc()
    try:
        await relay(
            ctx.client.stream(job_id, after=after), send, keepalive=keepalive,
            keepalive_s=ctx.settings.gateway.stream_keepalive_s,
        )  # fmt: skip
    except (ConnectionResetError, asyncio.CancelledError):
        return response  # the client went away
    except AgentBusError as e:
        with contextlib.suppress(ConnectionResetError):
            await response.write(format_event(event="error", data={"error": str(e)}))
    finally:
        gauge.dec()
    with contextlib.suppress(ConnectionResetError):
        await response.write_eof()
    return response


# --- operations --------------------------------------------------------------------------


async def list_workers(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    workers = await ctx.client.workers(timeout_s=min(ctx.settings.gateway.request_timeout_s, 2.0))
    return web.json_response(
        {
            "workers": [
                {
                    "id": w.id,
                    "skill": w.skill,
                    "backend": w.backend,
                    "state": w.state,
                    "concurrency": w.concurrency,
                    "in_flight": w.in_flight,
                    "started": w.started,
                    "version": w.version,
                }
                for w in workers
            ]
        }
    )


async def list_dlq(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    try:
        limit = int(request.query.get("limit", "100"))
    except ValueError:
        return json_error(400, "limit: an integer from 1 to 1000")
    if not 1 <= limit <= 1000:
        return json_error(400, "limit: an integer from 1 to 1000")
    letters = await ctx.client.dead_letters(limit=limit)
    return web.json_response(
        {
            "dead_letters": [
                {
                    "id": d.id,
                    "time": d.time.isoformat() if d.time else None,
                    "stream": d.stream,
                    "subject": d.original_subject,
                    "job_id": d.job_id,
                    "task_id": d.task_id,
                    "deliveries": d.deliveries,
                    "reason": d.reason,
                    "bytes": len(d.data),
                }
                for d in letters
            ]
        }
    )


async def replay_dlq(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    raw = request.match_info["dlq_id"]
    if not raw.isdigit() or len(raw) > 19 or int(raw) < 1:
        return json_error(404, f"no dead letter {raw[:40]}")
    try:
        result = await ctx.client.replay(int(raw))
    except DeadLetterError as e:
        status = 404 if "no dead letter" in str(e) else 503
        return json_error(status, str(e))
    return web.json_response(
        {
            "id": result.dead_letter.id,
            "subject": result.dead_letter.original_subject,
            "stream": result.stream,
            "seq": result.seq,
            "duplicate": result.duplicate,
            "removed": result.removed,
        }
    )


async def whoami(request: web.Request) -> web.Response:
    key = _key(request)
    return web.json_response({"name": key.name, "tenant": key.tenant, "role": key.role.value})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/jobs", submit_job)
    app.router.add_get("/v1/jobs/{job_id}", get_job, allow_head=False)
    app.router.add_get("/v1/jobs/{job_id}/stream", stream_job, allow_head=False)
    app.router.add_get("/v1/jobs/{job_id}/events", job_events, allow_head=False)
    app.router.add_delete("/v1/jobs/{job_id}", cancel_job)
    app.router.add_get("/v1/workers", list_workers, allow_head=False)
    app.router.add_get("/v1/dlq", list_dlq, allow_head=False)
    app.router.add_post("/v1/dlq/{dlq_id}/replay", replay_dlq)
    app.router.add_get("/v1/whoami", whoami, allow_head=False)
