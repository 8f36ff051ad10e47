"""The gateway against a real nats-server whose users are the generated ones: the gateway
runs as its own NATS user (`gateway`) beside the orchestrator, a worker and the archiver,
each on theirs. Jobs submitted as JSON and as a file carry the key's tenant; the SSE
stream resumed with Last-Event-ID loses and repeats nothing; cancel, history, workers,
the DLQ and a replay; 401/403 on every route; size caps; CORS off unless configured; no
permission violation in the server's log."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from agentbus.contract import subjects
from agentbus_gateway.keys import Role
from agentbus_gateway.rest import _ROLES
from tests.conftest import Running
from tests.documents import prose_document
from tests.gateway_front import KEYS, Front, assert_no_violations, auth, front_running, start_front
from tests.security import SecureNats

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture
async def front(secure: SecureNats, tmp_path: Path, running: Running) -> AsyncIterator[Front]:
    async with front_running(secure, tmp_path, running) as f:
        yield f


async def _sse(
    http: aiohttp.ClientSession, url: str, *, headers: dict[str, str], stop_after: int | None = None
) -> list[tuple[int, str, dict[str, object]]]:
    """The events of an SSE stream as (id, event, data); after `stop_after` events the
    connection is dropped."""
    out: list[tuple[int, str, dict[str, object]]] = []
    async with http.get(url, headers=headers) as r:
        assert r.status == 200, await r.text()
        assert r.content_type == "text/event-stream"
        fields: dict[str, str] = {}
        async for raw in r.content:
            line = raw.decode().rstrip("\n")
            if line.startswith(":"):
                continue
            if line == "":
                if "data" in fields:
                    out.append((int(fields["id"]), fields["event"], json.loads(fields["data"])))
                    if stop_after is not None and len(out) >= stop_after:
                        return out
                fields = {}
                continue
            name, _, value = line.partition(": ")
            fields[name] = value
    return out


async def _wait_status(
    http: aiohttp.ClientSession, url: str, want: set[str], *, timeout_s: float = 60
) -> dict[str, object]:
    deadline = time.monotonic() + timeout_s
    while True:
        async with http.get(url, headers=auth("operate")) as r:
            assert r.status == 200
            job: dict[str, object] = await r.json()
        if job["status"] in want:
            return job
        assert time.monotonic() < deadline, f"job not {want} within {timeout_s}s: {job}"
        await asyncio.sleep(0.1)


async def test_submit_stream_resume_and_results(front: Front) -> None:
    text = prose_document(3, 12_000)
    async with aiohttp.ClientSession(front.url) as http:
        async with http.post(
            "/v1/jobs", json={"text": text, "title": "t1"}, headers=auth("submit")
        ) as r:
            assert r.status == 202, await r.text()
            job_id = (await r.json())["job_id"]
        # the job is the key's tenant's: the other tenant's key does not see it
        state = await front.gateway.client.status(job_id)  # type: ignore[union-attr]  # set up
        assert state is not None and state.tenant == "acme"
        async with http.get(f"/v1/jobs/{job_id}", headers=auth("other")) as r:
            assert r.status == 404
        # a first reader drops the connection after 2 events; a second resumes with
        # Last-Event-ID: together exactly the whole stream, in order
        first = await _sse(http, f"/v1/jobs/{job_id}/stream", headers=auth("read"), stop_after=2)
        rest = await _sse(
            http, f"/v1/jobs/{job_id}/stream",
            headers={**auth("read"), "Last-Event-ID": str(first[-1][0])},
        )  # fmt: skip
        whole = await _sse(http, f"/v1/jobs/{job_id}/stream", headers=auth("read"))
        assert [e[0] for e in first + rest] == [e[0] for e in whole]
        # the dropped reader's subscription went with it (not at garbage collection)
        nc = front.gateway.bus.nc  # type: ignore[union-attr]  # started
        deadline = time.monotonic() + 10
        while any(not sub.subject.endswith(".*") for sub in nc._subs.values()):
            assert time.monotonic() < deadline, [sub.subject for sub in nc._subs.values()]
            await asyncio.sleep(0.05)
        assert whole[-1][1] == "completed" and whole[0][1] == "started"
        assert sum(1 for e in whole if e[1] == "chunk") >= 12
        job = await _wait_status(http, f"/v1/jobs/{job_id}", {"completed"})
        assert job["progress"] == 1.0 and job["summary"] and job["tenant"] == "acme"
        async with http.get(f"/v1/jobs/{job_id}/events", headers=auth("read")) as r:
            kinds = [e["kind"] for e in (await r.json())["events"]]
        assert "job.accepted" in kinds or kinds, kinds

        # a file upload, as the console sends it
        form = aiohttp.FormData()
        form.add_field("file", b"Short text to summarize. " * 40, filename="a.txt")
        form.add_field("priority", "high")
        async with http.post("/v1/jobs", data=form, headers=auth("operate")) as r:
            assert r.status == 202, await r.text()
            up_id = (await r.json())["job_id"]
        job = await _wait_status(http, f"/v1/jobs/{up_id}", {"completed"})
        assert job["title"] == "a.txt" and job["priority"] == "high" and job["tenant"] == "default"

        async with http.get("/v1/workers", headers=auth("read")) as r:
            workers = (await r.json())["workers"]
        assert [w["id"] for w in workers] == ["worker-g1"]


async def test_cancel_and_bad_input(front: Front) -> None:
    long_text = prose_document(5, 280_000)
    async with aiohttp.ClientSession(front.url) as http:
        async with http.post("/v1/jobs", json={"text": long_text}, headers=auth("submit")) as r:
            job_id = (await r.json())["job_id"]
        async with http.delete(f"/v1/jobs/{job_id}", headers=auth("other")) as r:
            assert r.status == 404  # another tenant's job
        async with http.delete(f"/v1/jobs/{job_id}?reason=test", headers=auth("submit")) as r:
            assert r.status == 200
            body = await r.json()
        job = await _wait_status(http, f"/v1/jobs/{job_id}", {"canceled", "completed"})
        assert job["status"] == "canceled" or not body["canceled"], (job, body)

        for payload, status in [
            ({"text": ""}, 400),
            ({"text": "x", "nope": 1}, 400),
            ({"text": "x", "priority": "urgent"}, 400),
            ({"text": "y" * 300_001}, 413),
        ]:
            async with http.post("/v1/jobs", json=payload, headers=auth("submit")) as r:
                assert r.status == status, (
                    payload if len(str(payload)) < 80 else "big",
                    await r.text(),
                )
                assert "error" in await r.json()
        async with http.post(
            "/v1/jobs",
            data=b"x" * 400_000,
            headers={**auth("submit"), "Content-Type": "application/json"},
        ) as r:
            assert r.status == 413
        async with http.post(
            "/v1/jobs", data=b"hi", headers={**auth("submit"), "Content-Type": "text/plain"}
        ) as r:
            assert r.status == 415
        async with http.get("/v1/jobs/no-such-job", headers=auth("read")) as r:
            assert r.status == 404
        async with http.get(
            "/v1/jobs/x/stream", headers={**auth("read"), "Last-Event-ID": "abc"}
        ) as r:
            assert r.status == 400


@pytest.mark.parametrize(("method", "pattern"), sorted(k for k in _ROLES if k[1] != "/a2a"))
async def test_every_route_needs_a_key_and_its_role(
    front: Front, method: str, pattern: str
) -> None:
    path = pattern.replace("{job_id}", "some-job").replace("{dlq_id}", "1")
    needed = _ROLES[(method, pattern)]
    async with aiohttp.ClientSession(front.url) as http:
        for headers in (
            {},
            {"Authorization": "Bearer wrong-key-0123456789"},
            {"X-API-Key": "nope"},
        ):
            async with http.request(method, path, headers=headers) as r:
                assert r.status == 401, (method, path, headers)
                assert r.headers["WWW-Authenticate"].startswith("Bearer")
        for name in ("read", "submit", "operate"):
            async with http.request(method, path, headers=auth(name)) as r:
                role = Role(KEYS[name][2])
                if not role.allows(needed):
                    assert r.status == 403, (method, path, name, r.status)
                else:
                    assert r.status not in (401, 403), (method, path, name, r.status)


async def test_dlq_list_and_replay(front: Front) -> None:
    # garbage on jobs.submit is dead-lettered by the orchestrator
    await front.admin.js.publish(
        subjects.JOBS_SUBJECT, b"not a job", headers={"Nats-Msg-Id": "junk-1"}
    )
    async with aiohttp.ClientSession(front.url) as http:
        deadline = time.monotonic() + 30
        while True:
            async with http.get("/v1/dlq", headers=auth("operate")) as r:
                assert r.status == 200
                letters = (await r.json())["dead_letters"]
            if letters:
                break
            assert time.monotonic() < deadline, "no dead letter"
            await asyncio.sleep(0.1)
        dlq_id = letters[0]["id"]
        assert letters[0]["subject"] == subjects.JOBS_SUBJECT
        async with http.post(f"/v1/dlq/{dlq_id}/replay", headers=auth("operate")) as r:
            assert r.status == 200, await r.text()
            assert (await r.json())["removed"] is True
        async with http.post(f"/v1/dlq/{dlq_id}/replay", headers=auth("operate")) as r:
            assert r.status == 404


async def test_cors_off_unless_configured_and_public_routes(front: Front) -> None:
    async with aiohttp.ClientSession(front.url) as http:
        async with http.get(
            "/v1/workers", headers={**auth("read"), "Origin": "http://evil.example"}
        ) as r:
            assert r.status == 200 and "Access-Control-Allow-Origin" not in r.headers
        for path in ("/healthz", "/readyz", "/openapi.json", "/"):
            async with http.get(path) as r:
                assert r.status == 200, path
        async with http.get("/openapi.json") as r:
            doc = await r.json()
        assert set(doc["paths"]) >= {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/stream"}
        async with http.get("/metrics") as r:
            assert r.status == 404  # metrics live on the health port, as every service's


async def test_cors_when_configured(secure: SecureNats, tmp_path: Path, running: Running) -> None:
    f = await start_front(
        secure, tmp_path, running, gateway={"cors_origins": ["https://console.example"]}
    )
    try:
        async with aiohttp.ClientSession(f.url) as http:
            preflight = {
                "Origin": "https://console.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            }
            async with http.options("/v1/jobs", headers=preflight) as r:
                assert r.status == 204
                assert r.headers["Access-Control-Allow-Origin"] == "https://console.example"
                assert "Authorization" in r.headers["Access-Control-Allow-Headers"]
            headers = {**auth("read"), "Origin": "https://console.example"}
            async with http.get("/v1/workers", headers=headers) as r:
                assert r.status == 200
                assert r.headers["Access-Control-Allow-Origin"] == "https://console.example"
            headers = {**auth("read"), "Origin": "https://elsewhere.example"}
            async with http.get("/v1/workers", headers=headers) as r:
                assert "Access-Control-Allow-Origin" not in r.headers
    finally:
        await f.admin.close()
    assert_no_violations(secure)
