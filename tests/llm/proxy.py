"""A recording pass-through in front of the llama.cpp server: what the server reported
(usage of each plain answer) and how each streamed answer ended (finished, or closed by
the client before the server was done), seen from outside the code under test."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from tests.local_http import LocalHttpServer

__all__ = ["Exchange", "RecordingProxy"]


@dataclass
class Exchange:
    request: dict[str, Any]
    status: int = 0
    usage: dict[str, int] | None = None
    streamed: bool = False
    chunks: int = 0
    finished: bool = False
    """The server's answer reached its end (`[DONE]` or the whole JSON body)."""
    client_closed: bool = False
    """The client closed the connection while the answer was still streaming."""


class RecordingProxy(LocalHttpServer):
    def __init__(self, *, upstream: str) -> None:
        super().__init__()
        self.upstream = upstream
        self.exchanges: list[Exchange] = []
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self._handle)

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None),
            # a connection per request: the server's state after a refused stream is
            # never inherited by the next request
            connector=aiohttp.TCPConnector(force_close=True),
        )
        await super().start()

    async def stop(self) -> None:
        await super().stop()
        if self._session is not None:
            await self._session.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        body = await request.json()
        ex = Exchange(request=body, streamed=bool(body.get("stream")))
        self.exchanges.append(ex)
        try:
            upstream = await self._session.post(f"{self.upstream}/chat/completions", json=body)
        except aiohttp.ClientError as e:
            ex.status = 502
            return web.json_response({"error": {"message": f"upstream: {e}"}}, status=502)
        async with upstream:
            ex.status = upstream.status
            if not ex.streamed or upstream.status != 200:
                data = await upstream.read()
                if upstream.status == 200:
                    ex.usage = json.loads(data).get("usage")
                    ex.finished = True
                return web.Response(
                    body=data, status=upstream.status, content_type="application/json"
                )
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            try:
                async for line in upstream.content:
                    if line.startswith(b"data: [DONE]"):
                        ex.finished = True
                    elif line.startswith(b"data: "):
                        ex.chunks += 1
                    await resp.write(line)
                    if request.transport is None or request.transport.is_closing():
                        raise ConnectionResetError("client gone")
            except (ConnectionResetError, asyncio.CancelledError):
                ex.client_closed = not ex.finished
                upstream.close()  # and so the server's stream
                raise
            except aiohttp.ClientPayloadError:
                pass  # the server died mid-stream: the client sees the stream break off
            await resp.write_eof()
            return resp
