"""A fake OpenAI-compatible chat-completions server for the tests (`POST
/v1/chat/completions`, plain and streamed as server-sent events) that plays scripted
answers: statuses, delays, bodies, streams that break off."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from tests.local_http import LocalHttpServer

__all__ = ["Answer", "FakeOpenAI", "fake_openai"]


@dataclass
class Answer:
    status: int = 200
    content: str = "A short summary."
    usage: dict[str, int] | None = field(
        default_factory=lambda: {"prompt_tokens": 50, "completion_tokens": 7}
    )
    headers: dict[str, str] = field(default_factory=dict)
    body: str | None = None
    delay_s: float = 0.0
    break_after: int | None = None
    """Streamed: drop the connection after this many content chunks."""
    error_after: int | None = None
    """Streamed: send an error event after this many content chunks."""
    empty_stream: bool = False
    """Streamed: a 200 stream without a single event (llama.cpp's server refusing)."""


class FakeOpenAI(LocalHttpServer):
    """A chat-completions server that plays scripted answers, then a default one."""

    def __init__(self) -> None:
        super().__init__()
        self.script: list[Answer] = []
        self.default = Answer()
        self.requests: list[dict[str, Any]] = []
        self.auth: list[str | None] = []
        self.url = ""

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        self.auth.append(request.headers.get("Authorization"))
        answer = self.script.pop(0) if self.script else self.default
        if answer.delay_s:
            await asyncio.sleep(answer.delay_s)
        if answer.body is not None:
            return web.Response(status=answer.status, text=answer.body, headers=answer.headers)
        if answer.status != 200:
            error = {"error": {"message": f"scripted {answer.status}", "type": "test"}}
            return web.json_response(error, status=answer.status, headers=answer.headers)
        if body.get("stream"):
            return await self._stream(request, body, answer)
        completion: dict[str, Any] = {
            "id": f"chatcmpl-{len(self.requests)}",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": answer.content},
                    "finish_reason": "stop",
                }
            ],
        }
        if answer.usage is not None:
            completion["usage"] = {**answer.usage, "total_tokens": sum(answer.usage.values())}
        return web.json_response(completion, headers=answer.headers)

    async def _stream(
        self, request: web.Request, body: dict[str, Any], answer: Answer
    ) -> web.StreamResponse:
        """The answer as server-sent events: one chunk per word, usage last when asked."""
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", **answer.headers})
        await resp.prepare(request)
        if answer.empty_stream:
            await resp.write_eof()
            return resp

        async def event(data: dict[str, Any] | str) -> None:
            text = data if isinstance(data, str) else json.dumps(data)
            await resp.write(f"data: {text}\n\n".encode())

        def chunk(delta: dict[str, str], finish: str | None) -> dict[str, Any]:
            return {
                "id": f"chatcmpl-{len(self.requests)}", "object": "chat.completion.chunk",
                "created": 0, "model": body["model"],
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }  # fmt: skip

        await event(chunk({"role": "assistant", "content": ""}, None))
        words = answer.content.split(" ")
        for i, word in enumerate(words):
            if i == answer.break_after:
                assert request.transport is not None
                request.transport.close()  # mid-stream: the connection just drops
                return resp
            if i == answer.error_after:
                await event({"error": {"message": "scripted mid-stream error", "type": "test"}})
                await resp.write_eof()
                return resp
            await event(chunk({"content": word if i == 0 else " " + word}, None))
        await event(chunk({}, "stop"))
        if answer.usage is not None and (body.get("stream_options") or {}).get("include_usage"):
            usage = {**answer.usage, "total_tokens": sum(answer.usage.values())}
            await event({**chunk({}, None), "choices": [], "usage": usage})
        await event("[DONE]")
        await resp.write_eof()
        return resp

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self._handle)

    async def start(self) -> None:
        await super().start()
        self.url = f"http://127.0.0.1:{self.port}/v1"


@pytest.fixture
async def fake_openai() -> AsyncIterator[FakeOpenAI]:
    server = FakeOpenAI()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
