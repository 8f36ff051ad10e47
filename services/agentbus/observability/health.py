"""One HTTP port per service: `/metrics` (Prometheus), `/healthz` (alive), `/readyz`
(NATS connected and the service's consumers bound; 503 with the reason otherwise)."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

__all__ = ["HEALTH_PATHS", "HealthServer", "Readiness"]

Readiness = Callable[[], tuple[bool, str]]
HEALTH_PATHS = ("/metrics", "/healthz", "/readyz")


class HealthServer:
    def __init__(self, *, host: str, port: int, readiness: Readiness) -> None:
        self.host = host
        self.port = port
        self.readiness = readiness
        self._runner: web.AppRunner | None = None
        self.bound_port: int | None = None

    async def _metrics(self, _request: web.Request) -> web.Response:
        body = generate_latest(REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, _request: web.Request) -> web.Response:
        ok, reason = self.readiness()
        return web.Response(text=(reason or "ready") + "\n", status=200 if ok else 503)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.bound_port = sockets[0].getsockname()[1] if sockets else self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
