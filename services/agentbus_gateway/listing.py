"""The REST listings of the console: recent jobs (`GET /v1/jobs`) and tenants
(`GET /v1/tenants`). Both go through `AgentBusClient`; a key of a role below `operate`
sees only its own tenant's jobs and its own tenant's row."""

from __future__ import annotations

import asyncio
from typing import Final

from aiohttp import web

from agentbus.client.api import JOBS_LIST_MAX
from agentbus.contract import plugins, subjects
from agentbus.contract.messages import JobStatus
from agentbus_gateway.keys import Role
from agentbus_gateway.rest import CONTEXT, KEY, job_json, json_error

__all__ = ["JOBS_LIST_DEFAULT", "add_routes"]

JOBS_LIST_DEFAULT: Final = 50
_STATUSES: Final = ", ".join(s.value for s in JobStatus)


def _limit(raw: str | None) -> int | None:
    if raw is None:
        return JOBS_LIST_DEFAULT
    if not raw.isdigit() or len(raw) > 6:
        return None
    value = int(raw)
    return value if 1 <= value <= JOBS_LIST_MAX else None


async def list_jobs(request: web.Request) -> web.Response:
    ctx, key = request.app[CONTEXT], request[KEY]
    limit = _limit(request.query.get("limit"))
    if limit is None:
        return json_error(400, f"limit: an integer from 1 to {JOBS_LIST_MAX}")
    raw_status = request.query.get("status")
    status: JobStatus | None = None
    if raw_status is not None:
        try:
            status = JobStatus(raw_status)
        except ValueError:
            return json_error(400, f"status: one of {_STATUSES}")
    tenant = request.query.get("tenant")
    if tenant is not None:
        try:
            subjects.check_token(tenant, field="tenant")
        except ValueError:
            return json_error(400, "tenant: 1-128 of [A-Za-z0-9_-]")
        if not key.sees_tenant(tenant):
            return json_error(403, f"the key {key.name} sees only tenant {key.tenant}'s jobs")
    elif key.role is not Role.OPERATE:
        tenant = key.tenant
    states = await asyncio.wait_for(
        ctx.client.jobs(limit=limit, tenant=tenant, status=status),
        timeout=ctx.settings.gateway.request_timeout_s,
    )
    jobs = [job_json(s) for s in states]
    for job in jobs:  # no summaries in a list (each can be long): GET /v1/jobs/{id} has it
        job["summary"] = None
    return web.json_response({"jobs": jobs})


async def list_tenants(request: web.Request) -> web.Response:
    ctx, key = request.app[CONTEXT], request[KEY]
    rows = await asyncio.wait_for(
        ctx.client.tenants(ctx.settings.tenants, skills=plugins.installed_skills()),
        timeout=ctx.settings.gateway.request_timeout_s,
    )
    visible = [r for r in rows if key.sees_tenant(str(r["tenant"]))]
    return web.json_response({"tenants": visible})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/jobs", list_jobs, allow_head=False)
    app.router.add_get("/v1/tenants", list_tenants, allow_head=False)
