"""A2A v1.0 over JSON-RPC at `POST /a2a` (aiohttp), on the official a2a-sdk's types and
error codes; the agent card at `/.well-known/agent-card.json`.

Methods (v1.0 names, and the names of the issue/A2A 0.3 as aliases): SendMessage
(`message/send`; blocking unless `returnImmediately`, or 0.3's `blocking: false`),
SendStreamingMessage (`message/stream`, SSE), GetTask (`tasks/get`), CancelTask
(`tasks/cancel`), SubscribeToTask (`tasks/resubscribe`, SSE; `Last-Event-ID` resumes
after that event, nothing lost or repeated). Reading needs a `read` key, sending and
canceling a `submit` key; a key sees only its tenant's tasks (`operate`: every tenant's).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, Final, TypeVar, cast

from a2a.types.a2a_pb2 import (
    CancelTaskRequest,
    GetTaskRequest,
    SendMessageRequest,
    SendMessageResponse,
    StreamResponse,
    SubscribeToTaskRequest,
    Task,
)
from a2a.utils.errors import (
    JSON_RPC_ERROR_CODE_MAP,
    A2AError,
    InvalidParamsError,
    InvalidRequestError,
    JSONParseError,
    MethodNotFoundError,
    TaskNotCancelableError,
    TaskNotFoundError,
)
from aiohttp import web
from google.protobuf.json_format import MessageToDict, ParseDict, ParseError
from google.protobuf.message import Message as ProtoMessage

from agentbus.client.stream import PartialResult
from agentbus.contract import plugins, subjects
from agentbus.contract.errors import AgentBusError, DocumentRejected
from agentbus.contract.messages import JobState, JobStatus
from agentbus.contract.priority import Priority
from agentbus.contract.tenants import DEFAULT_TENANT
from agentbus.contract.version import agentbus_version
from agentbus.observability import metrics
from agentbus_gateway import rest
from agentbus_gateway.a2a_map import EventId, agent_card, job_task, stream_events
from agentbus_gateway.keys import ApiKey, Role
from agentbus_gateway.sse import KEEPALIVE

__all__ = ["A2A_PATH", "AGENT_CARD_PATH", "EVENT_ID_KEY", "METHODS", "add_a2a_routes"]

A2A_PATH: Final = "/a2a"
AGENT_CARD_PATH: Final = "/.well-known/agent-card.json"
_ALIASES: Final = {
    "message/send": "SendMessage",
    "message/stream": "SendStreamingMessage",
    "tasks/get": "GetTask",
    "tasks/cancel": "CancelTask",
    "tasks/resubscribe": "SubscribeToTask",
}
METHODS: Final = frozenset({*_ALIASES.values(), *_ALIASES})
_NEEDS: Final = {
    "SendMessage": Role.SUBMIT,
    "SendStreamingMessage": Role.SUBMIT,
    "CancelTask": Role.SUBMIT,
    "GetTask": Role.READ,
    "SubscribeToTask": Role.READ,
}
EVENT_ID_KEY: Final = "agentbus.eventId"
"""In each stream event's metadata: its SSE id, to send back as Last-Event-ID."""
_BLOCKING_WAIT_S: Final = 3600.0
"""A blocking SendMessage waits at most this long for the job to end."""
_ROLES_03: Final = {"user": "ROLE_USER", "agent": "ROLE_AGENT"}


class _Call:
    def __init__(self, request: web.Request, key: ApiKey, rpc_id: object) -> None:
        self.request = request
        self.key = key
        self.rpc_id = rpc_id
        self.ctx = request.app[rest.CONTEXT]


def _error(rpc_id: object, error: A2AError, status: int = 200) -> web.Response:
    code = JSON_RPC_ERROR_CODE_MAP.get(type(error), -32603)
    body = {"jsonrpc": "2.0", "id": rpc_id, "error": {"code": code, "message": str(error)}}
    return web.json_response(body, status=status)


def _result(rpc_id: object, message: ProtoMessage) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rpc_id, "result": MessageToDict(message)}


def _v03_params(params: dict[str, Any]) -> dict[str, Any]:
    """The 0.3 shapes that differ from 1.0's: lowercase roles, `blocking`, `kind`."""
    out = dict(params)
    message = out.get("message")
    if isinstance(message, dict):
        message = {k: v for k, v in message.items() if k != "kind"}
        role = message.get("role")
        if isinstance(role, str) and role in _ROLES_03:
            message["role"] = _ROLES_03[role]
        parts = message.get("parts")
        if isinstance(parts, list):
            message["parts"] = [
                {k: v for k, v in p.items() if k != "kind"} if isinstance(p, dict) else p
                for p in parts
            ]
        out["message"] = message
    config = out.get("configuration")
    if isinstance(config, dict) and "blocking" in config:
        config = {k: v for k, v in config.items() if k != "blocking"}
        config["returnImmediately"] = not params["configuration"]["blocking"]
        out["configuration"] = config
    return out


M = TypeVar("M", bound=ProtoMessage)


def _parse(params: Any, message: M) -> M:
    if not isinstance(params, dict):
        raise InvalidParamsError("params must be an object")
    try:
        ParseDict(params, message, ignore_unknown_fields=True)
    except ParseError as e:
        raise InvalidParamsError(f"invalid params: {e}") from None
    return message


async def _visible(call: _Call, task_id: str, *, recorded: bool = False) -> JobState:
    try:
        subjects.check_job_id(task_id, field="id")
    except ValueError:
        raise TaskNotFoundError(f"no task {task_id[:64]!r}") from None
    state = await rest.visible_job(call.ctx, call.key, task_id, recorded=recorded)
    if state is None:
        raise TaskNotFoundError(f"no task {task_id}")
    return state


async def _task(call: _Call, state: JobState) -> Task:
    summary = None
    if state.summary is None and state.summary_ref is not None:
        with contextlib.suppress(AgentBusError):
            summary = await call.ctx.client.fetch_summary(state)
    return job_task(state, summary=summary)


async def _submit(call: _Call, req: SendMessageRequest) -> JobState:
    if not req.message.parts:
        raise InvalidParamsError("message.parts: a text part (the document) is required")
    pieces: list[bytes] = []
    for part in req.message.parts:
        kind = part.WhichOneof("content")
        if kind == "text":
            pieces.append(part.text.encode())
        elif kind == "raw":
            pieces.append(part.raw)
        else:
            raise InvalidParamsError(f"message.parts: {kind} parts are not accepted (text, raw)")
    data = b"\n\n".join(pieces)
    meta = dict(req.metadata) | dict(req.message.metadata)
    skill = str(meta.get("skill", subjects.SUMMARIZE_SKILL))
    tenant = None if call.key.tenant == DEFAULT_TENANT else call.key.tenant
    title = str(meta.get("title", ""))[:256]
    priority = str(meta.get("priority", Priority.NORMAL.value))
    if len(data) > call.ctx.settings.limits.max_document_bytes:
        raise InvalidParamsError("the document is above AGENTBUS_LIMITS__MAX_DOCUMENT_BYTES")
    try:
        job_id = await call.ctx.client.submit(
            data, title=title, skill=skill, priority=priority, tenant=tenant, name="message"
        )
    except (DocumentRejected, ValueError) as e:
        raise InvalidParamsError(str(e)) from None
    state = JobState(
        job_id=job_id, status=JobStatus.ACCEPTED, title=title, skill=skill,
        tenant=call.key.tenant, priority=Priority(priority), document_chars=len(data),
    )  # fmt: skip
    call.ctx.remember(state)
    return state


async def _send(call: _Call, params: dict[str, Any]) -> web.Response:
    req = _parse(params, SendMessageRequest())
    state = await _submit(call, req)
    if not req.configuration.return_immediately:
        state = await call.ctx.client.wait(state.job_id, timeout_s=_BLOCKING_WAIT_S)
    task = await _task(call, state)
    return web.json_response(_result(call.rpc_id, SendMessageResponse(task=task)))


async def _get(call: _Call, params: dict[str, Any]) -> web.Response:
    req = _parse(params, GetTaskRequest())
    state = await _visible(call, req.id)
    return web.json_response(_result(call.rpc_id, await _task(call, state)))


async def _cancel(call: _Call, params: dict[str, Any]) -> web.Response:
    req = _parse(params, CancelTaskRequest())
    state = await _visible(call, req.id, recorded=True)
    if state.status.terminal:
        raise TaskNotCancelableError(f"task {req.id} is {state.status.value}")
    await call.ctx.client.cancel(req.id, reason=f"A2A CancelTask ({call.key.name})")
    state = await _visible(call, req.id)
    return web.json_response(_result(call.rpc_id, await _task(call, state)))


def _sse(rpc_id: object, message: ProtoMessage, event_id: EventId | None) -> bytes:
    data = json.dumps(_result(rpc_id, message), separators=(",", ":"))
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}data: {data}\n\n".encode()


async def _events(
    call: _Call, job_id: str, after: EventId | None
) -> AsyncIterator[tuple[EventId, StreamResponse]]:
    cursor = None if after is None or after.cursor == 0 else after.cursor - 1
    items = call.ctx.client.stream(job_id, after=cursor)
    async with contextlib.aclosing(cast(AsyncGenerator[PartialResult], items)) as results:
        async for item in results:
            summary = None
            if item.summary_ref is not None:
                state = await call.ctx.client.status(job_id)
                if state is not None:
                    with contextlib.suppress(AgentBusError):
                        summary = await call.ctx.client.fetch_summary(state)
            for n, event in enumerate(stream_events(item, summary=summary)):
                eid = EventId(item.cursor, n)
                if after is None or eid > after:
                    # the SSE id, also where a client library that hides SSE ids can read it
                    update = getattr(event, event.WhichOneof("payload") or "status_update")
                    update.metadata.update({EVENT_ID_KEY: str(eid)})
                    yield eid, event


async def _stream(
    call: _Call, state: JobState, *, first: ProtoMessage, after: EventId | None
) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(call.request)
    gauge = metrics.GATEWAY_OPEN_STREAMS.labels(call.ctx.service, "a2a")
    gauge.inc()

    async def send(pair: tuple[EventId, StreamResponse]) -> None:
        await response.write(_sse(call.rpc_id, pair[1], pair[0]))

    async def keepalive() -> None:
        await response.write(KEEPALIVE)

    try:
        await response.write(_sse(call.rpc_id, first, None))
        await rest.relay(
            _events(call, state.job_id, after), send, keepalive=keepalive,
            keepalive_s=call.ctx.settings.gateway.stream_keepalive_s,
        )  # fmt: skip
    except (ConnectionResetError, asyncio.CancelledError):
        return response  # the client went away
    except AgentBusError as e:
        err = {"jsonrpc": "2.0", "id": call.rpc_id, "error": {"code": -32603, "message": str(e)}}
        with contextlib.suppress(ConnectionResetError):
            await response.write(f"event: error\ndata: {json.dumps(err)}\n\n".encode())
    finally:
        gauge.dec()
    with contextlib.suppress(ConnectionResetError):
        await response.write_eof()
    return response


async def _send_stream(call: _Call, params: dict[str, Any]) -> web.StreamResponse:
    req = _parse(params, SendMessageRequest())
    state = await _submit(call, req)
    first = StreamResponse(task=job_task(state))
    return await _stream(call, state, first=first, after=None)


async def _subscribe(call: _Call, params: dict[str, Any]) -> web.StreamResponse:
    req = _parse(params, SubscribeToTaskRequest())
    try:
        after = EventId.parse(call.request.headers.get("Last-Event-ID"))
    except ValueError as e:
        raise InvalidParamsError(str(e)) from None
    state = await _visible(call, req.id)
    first = StreamResponse(task=await _task(call, state))
    return await _stream(call, state, first=first, after=after)


_HANDLERS: Final = {
    "SendMessage": _send,
    "SendStreamingMessage": _send_stream,
    "GetTask": _get,
    "CancelTask": _cancel,
    "SubscribeToTask": _subscribe,
}


async def a2a_endpoint(request: web.Request) -> web.StreamResponse:
    key = request[rest.KEY]
    try:
        body = json.loads(await request.read())
    except ValueError:
        return _error(None, _parse_error())
    if not isinstance(body, dict) or body.get("jsonrpc") != "2.0" or "method" not in body:
        return _error(body.get("id") if isinstance(body, dict) else None, InvalidRequestError())
    rpc_id = body.get("id")
    method = body["method"]
    name = _ALIASES.get(method, method) if isinstance(method, str) else None
    if name not in _HANDLERS:
        return _error(rpc_id, MethodNotFoundError(f"method {str(method)[:64]!r} not found"))
    if not key.role.allows(_NEEDS[name]):
        return rest.json_error(
            403, f"the key {key.name} has role {key.role.value}; {name} needs {_NEEDS[name].value}"
        )
    params = body.get("params", {})
    if method in _ALIASES and isinstance(params, dict):
        params = _v03_params(params)
    try:
        return await _HANDLERS[name](_Call(request, key, rpc_id), params)
    except A2AError as e:
        return _error(rpc_id, e)


def _parse_error() -> A2AError:
    return JSONParseError("the body is not JSON")


def _card_url(request: web.Request, public_url: str) -> str:
    base = public_url.rstrip("/") or f"{request.scheme}://{request.host}"
    return base + A2A_PATH


def add_a2a_routes(app: web.Application) -> None:
    skills = plugins.installed_skills() or [subjects.SUMMARIZE_SKILL]
    version = agentbus_version()

    async def card(request: web.Request) -> web.Response:
        public_url = request.app[rest.CONTEXT].settings.gateway.public_url
        doc = agent_card(url=_card_url(request, public_url), skills=skills, version=version)
        return web.json_response(MessageToDict(doc))

    app.router.add_get(AGENT_CARD_PATH, card, allow_head=False)
    app.router.add_post(A2A_PATH, a2a_endpoint)
