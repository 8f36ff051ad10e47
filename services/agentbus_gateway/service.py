"""The gateway service: the HTTP front door (REST/SSE, the web console) over the client
API. Stateless: any number of replicas; it talks to the rest only over NATS, as its own
NATS user (`gateway`). `/metrics`, `/healthz`, `/readyz` on the health port as every
service; `/healthz`, `/readyz` on the gateway port too."""

from __future__ import annotations

import logging
from typing import ClassVar

from aiohttp import web

from agentbus.bus.consume import ConsumerLoop
from agentbus.bus.core import Bus
from agentbus.client.api import AgentBusClient
from agentbus.contract.settings import Settings
from agentbus.contract.tenants import DEFAULT_TENANT
from agentbus.observability import metrics
from agentbus.runtime.service import AgentService
from agentbus_gateway.a2a_rpc import add_a2a_routes
from agentbus_gateway.app import build_app
from agentbus_gateway.errors import ApiKeysError, GatewayError
from agentbus_gateway.keys import KeyRing, load_keys
from agentbus_gateway.rest import GatewayContext

__all__ = ["Gateway"]

log = logging.getLogger("gateway")


class Gateway(AgentService):
    name: ClassVar[str] = "gateway"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.cfg = settings.gateway
        self.keys: KeyRing = load_keys(self.cfg.api_keys_file)  # bad file: fail at start
        configured = {DEFAULT_TENANT, *settings.tenants.configured}
        for key in self.keys:
            if key.tenant not in configured:
                # its jobs would be the default tenant's, and invisible to the key itself
                raise ApiKeysError(
                    f"API key {key.name}: tenant {key.tenant!r} is not configured "
                    "(AGENTBUS_TENANTS__CONFIGURED)"
                )
        self._runner: web.AppRunner | None = None
        self.bound_port: int | None = None
        self.client: AgentBusClient | None = None

    async def setup(self, bus: Bus) -> list[ConsumerLoop]:
        metrics.init_gateway(bus.service)
        self.client = AgentBusClient.over(
            bus, nats_settings=self.settings.nats, limits=self.settings.limits
        )
        ctx = GatewayContext(
            client=self.client, keys=self.keys, settings=self.settings, service=bus.service
        )
        app = build_app(ctx, readiness=self.readiness, extra=add_a2a_routes)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
        await runner.setup()
        site = web.TCPSite(runner, self.cfg.host, self.cfg.port)
        try:
            await site.start()
        except OSError as e:
            await runner.cleanup()
            raise GatewayError(
                f"cannot listen on {self.cfg.host}:{self.cfg.port} "
                f"(AGENTBUS_GATEWAY__HOST/PORT): {e.strerror or e}"
            ) from e
        self._runner = runner
        sockets = getattr(site._server, "sockets", None) or []
        self.bound_port = sockets[0].getsockname()[1] if sockets else self.cfg.port
        if not len(self.keys):
            log.warning("no API keys (AGENTBUS_GATEWAY__API_KEYS_FILE): every request is refused")
        log.info("gateway listening on http://%s:%s", self.cfg.host, self.bound_port)
        return []

    async def teardown(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.client is not None:
            await self.client.close()
