"""The gateway's aiohttp application: middlewares (errors, metrics, CORS, API keys), the
REST routes, the OpenAPI document, health, and the web console's static files."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final

from aiohttp import web

from agentbus.contract.errors import AgentBusError, BusError
from agentbus.observability import metrics
from agentbus.observability.health import Readiness
from agentbus_gateway import listing, rest
from agentbus_gateway.keys import bearer_token
from agentbus_gateway.openapi import openapi_document

__all__ = ["CONSOLE_DIR", "build_app"]

log = logging.getLogger("gateway")

CONSOLE_DIR: Final = Path(__file__).parent / "console"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_CORS_METHODS: Final = "GET, POST, DELETE, OPTIONS"
_CORS_HEADERS: Final = "Authorization, Content-Type, Last-Event-ID, X-API-Key"


def _pattern(request: web.Request) -> str:
    """The matched route's pattern (a bounded metric label), `unmatched` for a 404."""
    info = request.match_info
    resource = info.route.resource if info.http_exception is None else None
    if resource is None:
        return "unmatched"
    return resource.canonical


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure is JSON with one line; the bus being unavailable is 503."""
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status >= 400 and e.content_type != "application/json":
            return rest.json_error(e.status, e.reason, **_allow(e))
        raise
    except (BusError, TimeoutError) as e:
        return rest.json_error(503, str(e) or "the bus did not answer in time")
    except AgentBusError as e:
        return rest.json_error(503, str(e))
    except Exception:
        log.exception("%s %s failed", request.method, _pattern(request))
        return rest.json_error(500, "internal error (logged by the gateway)")


def _allow(e: web.HTTPException) -> dict[str, str]:
    allow = e.headers.get("Allow")
    return {"Allow": allow} if allow else {}


def _metrics_middleware(service: str) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        start = time.perf_counter()
        route = _pattern(request)
        code = 500
        try:
            response = await handler(request)
            code = response.status
            return response
        except web.HTTPException as e:
            code = e.status
            raise
        finally:
            metrics.GATEWAY_REQUESTS.labels(service, route, request.method, str(code)).inc()
            metrics.GATEWAY_REQUEST_SECONDS.labels(service, route).observe(
                time.perf_counter() - start
            )

    return middleware


def _cors_middleware(origins: list[str]) -> Callable[..., Awaitable[web.StreamResponse]]:
    allowed = set(origins)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        ok = origin is not None and ("*" in allowed or origin in allowed)
        if (
            request.method == "OPTIONS"
            and ok
            and "Access-Control-Request-Method" in request.headers
        ):
            response: web.StreamResponse = web.Response(status=204)
        else:
            response = await handler(request)
        if ok and origin is not None and not response.prepared:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"
            response.headers["Access-Control-Allow-Methods"] = _CORS_METHODS
            response.headers["Access-Control-Allow-Headers"] = _CORS_HEADERS
        return response

    return middleware


@web.middleware
async def _auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """401 without a valid key, 403 when its role is below the route's."""
    needed = rest.route_role(request.method, _pattern(request))
    if needed is None:
        return await handler(request)
    ctx = request.app[rest.CONTEXT]
    key = ctx.keys.authenticate(bearer_token(request.headers))
    if key is None:
        return rest.json_error(
            401, "a valid API key is required (Authorization: Bearer KEY)",
            **{"WWW-Authenticate": 'Bearer realm="agentbus"'},
        )  # fmt: skip
    if not key.role.allows(needed):
        return rest.json_error(
            403, f"the key {key.name} has role {key.role.value}; this needs {needed.value}"
        )
    request[rest.KEY] = key
    return await handler(request)


def build_app(
    ctx: rest.GatewayContext,
    *,
    readiness: Readiness,
    extra: Callable[[web.Application], None] | None = None,
) -> web.Application:
    """The whole application; `extra` adds more routes (the A2A endpoint)."""
    middlewares = [_metrics_middleware(ctx.service), _errors]
    if ctx.settings.gateway.cors_origins:
        middlewares.insert(1, _cors_middleware(ctx.settings.gateway.cors_origins))
    middlewares.append(_auth)
    app = web.Application(middlewares=middlewares, client_max_size=ctx.max_body_bytes)
    app[rest.CONTEXT] = ctx
    rest.add_routes(app)
    listing.add_routes(app)
    if extra is not None:
        extra(app)
    document = openapi_document()

    async def openapi(_request: web.Request) -> web.Response:
        return web.json_response(document)

    async def healthz(_request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_request: web.Request) -> web.Response:
        ok, reason = readiness()
        return web.Response(text=(reason or "ready") + "\n", status=200 if ok else 503)

    async def console(_request: web.Request) -> web.FileResponse:
        return web.FileResponse(CONSOLE_DIR / "index.html")

    app.router.add_get("/openapi.json", openapi, allow_head=False)
    app.router.add_get("/healthz", healthz, allow_head=False)
    app.router.add_get("/readyz", readyz, allow_head=False)
    app.router.add_get("/", console, allow_head=False)
    app.router.add_static("/console/", CONSOLE_DIR, append_version=False)
    return app
