"""A base for the fake HTTP peers of the tests (OTLP receiver, NATS exporter, OpenAI
server): an aiohttp app on 127.0.0.1 at a port the OS picks, stopped by the test."""

from __future__ import annotations

from aiohttp import web


class LocalHttpServer:
    def __init__(self) -> None:
        self.port = 0
        self._runner: web.AppRunner | None = None

    def add_routes(self, app: web.Application) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        app = web.Application()
        self.add_routes(app)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
