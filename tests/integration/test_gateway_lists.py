"""The console's listings against the stack on generated NATS users: `GET /v1/jobs`
(recent jobs, newest first, one tenant's for a key below operate, `?status=`,
`?limit=`) and `GET /v1/tenants` (every tenant for operate, the key's own otherwise);
the listing's bound on a bucket of many jobs; no permission violation."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest

from agentbus.client.api import AgentBusClient
from agentbus.contract import subjects
from agentbus.contract.messages import JobState, JobStatus
from tests.conftest import Running
from tests.gateway_front import Front, auth, front_running
from tests.security import SecureNats

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture
async def front(secure: SecureNats, tmp_path: Path, running: Running) -> AsyncIterator[Front]:
    async with front_running(secure, tmp_path, running) as f:
        yield f


async def _jobs(http: aiohttp.ClientSession, key: str, query: str = "") -> list[dict[str, object]]:
    async with http.get(f"/v1/jobs{query}", headers=auth(key)) as r:
        assert r.status == 200, await r.text()
        jobs: list[dict[str, object]] = (await r.json())["jobs"]
        return jobs


async def _submit(http: aiohttp.ClientSession, key: str, text: str) -> str:
    async with http.post("/v1/jobs", json={"text": text}, headers=auth(key)) as r:
        assert r.status == 202, await r.text()
        job_id: str = (await r.json())["job_id"]
        return job_id


async def test_jobs_list_tenant_isolation_filters_and_limits(front: Front) -> None:
    async with aiohttp.ClientSession(front.url) as http:
        acme = await _submit(http, "submit", "An acme document to summarize. " * 30)
        default = await _submit(http, "operate", "A default tenant document. " * 30)
        deadline = time.monotonic() + 60
        while True:
            every = await _jobs(http, "operate")
            done = {j["job_id"] for j in every if j["status"] == "completed"}
            if {acme, default} <= done:
                break
            assert time.monotonic() < deadline, every
            await asyncio.sleep(0.1)
        # operate: every tenant's, newest first, no summaries in a list
        assert {j["job_id"] for j in every} == {default, acme}
        created = [str(j["created_at"]) for j in every]
        assert created == sorted(created, reverse=True)
        assert {j["tenant"] for j in every} == {"acme", "default"}
        assert all(j["summary"] is None and j["progress"] == 1.0 for j in every)
        # below operate: the key's own tenant's only
        assert [j["job_id"] for j in await _jobs(http, "read")] == [acme]
        assert await _jobs(http, "other") == []
        assert [j["job_id"] for j in await _jobs(http, "operate", "?tenant=acme")] == [acme]
        assert [j["job_id"] for j in await _jobs(http, "operate", "?limit=1")] in (
            [default], [acme],
        )  # fmt: skip
        assert await _jobs(http, "operate", "?status=running") == []
        completed = await _jobs(http, "operate", "?status=completed")
        assert {j["job_id"] for j in completed} == {acme, default}
        async with http.get("/v1/jobs?tenant=default", headers=auth("read")) as r:
            assert r.status == 403  # another tenant's jobs
        for query in ("?limit=0", "?limit=501", "?limit=x", "?status=done", "?tenant=a.b"):
            async with http.get(f"/v1/jobs{query}", headers=auth("operate")) as r:
                assert r.status == 400, query
                assert "error" in await r.json()


async def test_tenants_operate_sees_all_others_their_own(front: Front) -> None:
    async with aiohttp.ClientSession(front.url) as http:
        async with http.get("/v1/tenants", headers=auth("operate")) as r:
            assert r.status == 200, await r.text()
            rows = (await r.json())["tenants"]
        assert rows[0]["tenant"] == "default"
        assert {row["tenant"] for row in rows} == {"default", "acme", "beta"}
        assert all(row["weight"] >= 1 and row["queued"] >= 0 for row in rows)
        for key, tenant in (("read", "acme"), ("other", "beta")):
            async with http.get("/v1/tenants", headers=auth(key)) as r:
                assert r.status == 200
                assert [row["tenant"] for row in (await r.json())["tenants"]] == [tenant]


async def test_jobs_listing_is_bounded(front: Front) -> None:
    """400 states in the bucket: the newest come back without reading them all; a filter
    matching only old jobs finds nothing within a small scan budget."""
    kv = await front.admin.kv(subjects.JOBS_BUCKET)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for i in range(400):
        state = JobState(
            job_id=f"bulk-{i:04d}", status=JobStatus.COMPLETED,
            tenant="beta" if i < 10 else "acme", created_at=start + timedelta(seconds=i),
        )  # fmt: skip
        await kv.put(state.job_id, state.model_dump_json().encode())
    for i in range(0, 400, 3):  # rewritten: sequences with gaps, as a busy bucket has
        state = JobState(
            job_id=f"bulk-{i:04d}", status=JobStatus.COMPLETED,
            tenant="beta" if i < 10 else "acme", created_at=start + timedelta(seconds=i),
        )  # fmt: skip
        await kv.put(state.job_id, state.model_dump_json().encode())
    client = front.gateway.client
    assert client is not None
    # the most recently written (the rewrites), newest created first
    newest = await client.jobs(limit=5)
    assert [s.job_id for s in newest] == [f"bulk-{i:04d}" for i in range(399, 384, -3)]
    every = await client.jobs(limit=500)
    assert [s.job_id for s in every] == [f"bulk-{i:04d}" for i in range(399, -1, -1)]
    assert [s.job_id for s in await client.jobs(limit=3, tenant="beta")] == [
        "bulk-0009", "bulk-0006", "bulk-0003",
    ]  # fmt: skip
    assert len(await client.jobs(limit=20, tenant="beta")) == 10
    # the beta jobs were last written before the last 100 writes: a scan of 100 states
    # does not reach them
    assert await client.jobs(limit=3, tenant="beta", max_scan=100) == []
    with pytest.raises(ValueError, match="limit"):
        await client.jobs(limit=0)
    with pytest.raises(ValueError, match="status"):
        await client.jobs(status="done")
    assert isinstance(client, AgentBusClient)
