"""A2A v1.0 through the gateway, with the official a2a-sdk client as the real peer: the
agent card lists every installed skill; SendMessage blocking and not; SendStreamingMessage;
GetTask; CancelTask; SubscribeToTask resumed with Last-Event-ID continues the job's stream
with nothing lost or repeated; the names of the issue (`message/send`, ...) too; roles
and tenants as on the REST API."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import cast

import aiohttp
import httpx
import pytest
from a2a.client import Client, ClientCallContext, ClientConfig, create_client
from a2a.client.errors import A2AClientError
from a2a.types.a2a_pb2 import (
    GetTaskRequest,
    Message,
    Part,
    Role,
    SendMessageConfiguration,
    SendMessageRequest,
    StreamResponse,
    SubscribeToTaskRequest,
    TaskState,
)
from a2a.utils.errors import TaskNotFoundError

from agentbus.contract import plugins
from agentbus_gateway.a2a_rpc import EVENT_ID_KEY
from tests.conftest import Running
from tests.documents import prose_document
from tests.gateway_front import KEYS, Front, auth, front_running
from tests.security import SecureNats

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture
async def front(secure: SecureNats, tmp_path: Path, running: Running) -> AsyncIterator[Front]:
    async with front_running(
        secure, tmp_path, running,
        summarizer={"backend": "simulated", "simulated_latency_ms": 40.0},
    ) as f:  # fmt: skip
        yield f


@contextlib.asynccontextmanager
async def _client(front: Front, key: str, *, streaming: bool = True) -> AsyncIterator[Client]:
    """The a2a-sdk client of the gateway's agent card, with `key`'s API key."""
    async with httpx.AsyncClient(headers=auth(key), timeout=60) as http:
        client = await create_client(
            front.url, client_config=ClientConfig(streaming=streaming, httpx_client=http)
        )
        try:
            yield client
        finally:
            await client.close()


def _message(text: str) -> Message:
    return Message(message_id=uuid.uuid4().hex, role=Role.ROLE_USER, parts=[Part(text=text)])


def _event_id(event: StreamResponse) -> str | None:
    kind = event.WhichOneof("payload")
    if kind not in ("status_update", "artifact_update"):
        return None
    value = getattr(event, kind).metadata.fields.get(EVENT_ID_KEY)
    return value.string_value if value is not None else None


def _shape(event: StreamResponse) -> tuple[str, str, str]:
    """What an update says (its kind, artifact or state, text), without the metadata."""
    kind = event.WhichOneof("payload") or ""
    if kind == "artifact_update":
        a = event.artifact_update.artifact
        return kind, a.artifact_id, "".join(p.text for p in a.parts)
    if kind == "status_update":
        s = event.status_update.status
        return kind, TaskState.Name(s.state), "".join(p.text for p in s.message.parts)
    return kind, "", ""


async def test_agent_card_lists_every_installed_skill(front: Front) -> None:
    async with (
        aiohttp.ClientSession(front.url) as http,
        http.get("/.well-known/agent-card.json") as r,
    ):
        assert r.status == 200
        card = await r.json()
    assert {s["id"] for s in card["skills"]} == set(plugins.installed_skills())
    assert card["capabilities"]["streaming"] is True
    assert card["supportedInterfaces"][0]["url"] == front.url + "/a2a"
    assert card["supportedInterfaces"][0]["protocolVersion"] == "1.0"


async def test_send_blocking_and_not_get_and_tenants(front: Front) -> None:
    async with _client(front, "submit", streaming=False) as client:
        # blocking: the answer is the finished task, its summary the artifact
        text = prose_document(4, 6_000)
        events = [e async for e in client.send_message(SendMessageRequest(message=_message(text)))]
        task = events[-1].task
        assert task.status.state == TaskState.TASK_STATE_COMPLETED, task
        assert task.artifacts[0].artifact_id == "summary" and task.artifacts[0].parts[0].text
        assert task.metadata.fields["tenant"].string_value == "acme"
        # non-blocking: at once, submitted; GetTask later finds it completed
        req = SendMessageRequest(
            message=_message(text), configuration=SendMessageConfiguration(return_immediately=True)
        )
        first = [e async for e in client.send_message(req)][-1].task
        assert first.status.state == TaskState.TASK_STATE_SUBMITTED
        for _ in range(600):
            got = await client.get_task(GetTaskRequest(id=first.id))
            if got.status.state == TaskState.TASK_STATE_COMPLETED:
                break
            await asyncio.sleep(0.1)
        assert got.status.state == TaskState.TASK_STATE_COMPLETED and got.artifacts
    async with _client(front, "other", streaming=False) as other:
        with pytest.raises(TaskNotFoundError):
            await other.get_task(GetTaskRequest(id=first.id))  # another tenant's


async def test_stream_then_resubscribe_with_last_event_id(front: Front) -> None:
    text = prose_document(6, 14_000)
    async with _client(front, "submit") as client:
        stream = cast(
            AsyncGenerator[StreamResponse],
            client.send_message(SendMessageRequest(message=_message(text))),
        )
        seen: list[StreamResponse] = []
        async for event in stream:
            seen.append(event)
            if len(seen) == 5:
                break
        await stream.aclose()  # the connection drops mid-job
        assert seen[0].WhichOneof("payload") == "task"
        task_id = seen[0].task.id
        last = _event_id(seen[-1])
        assert last is not None
        ctx = ClientCallContext(service_parameters={"Last-Event-ID": last})
        rest = [e async for e in client.subscribe(SubscribeToTaskRequest(id=task_id), context=ctx)]
        whole = [e async for e in client.subscribe(SubscribeToTaskRequest(id=task_id))]
    assert rest[0].WhichOneof("payload") == "task"  # the task as it is now, then the events
    resumed = [_event_id(e) for e in seen[1:] + rest[1:]]
    assert resumed == [_event_id(e) for e in whole[1:]], "lost or repeated events"
    assert [_shape(e) for e in seen[1:] + rest[1:]] == [_shape(e) for e in whole[1:]]
    assert _shape(whole[-1])[:2] == ("status_update", "TASK_STATE_COMPLETED")
    assert _shape(whole[-2])[:2] == ("artifact_update", "summary")
    assert sum(1 for e in whole if _shape(e)[1].startswith("part-0-")) >= 14


async def test_cancel_and_the_issue_method_names(front: Front) -> None:
    long_text = prose_document(8, 280_000)
    async with aiohttp.ClientSession(front.url, headers=auth("submit")) as http:

        async def rpc(method: str, params: dict[str, object]) -> dict[str, object]:
            body = {"jsonrpc": "2.0", "id": 7, "method": method, "params": params}
            async with http.post("/a2a", json=body) as r:
                assert r.status == 200, await r.text()
                reply: dict[str, object] = await r.json()
                return reply

        sent = await rpc(
            "message/send",
            {
                "message": {
                    "kind": "message", "messageId": "m1", "role": "user",
                    "parts": [{"kind": "text", "text": long_text}],
                },
                "configuration": {"blocking": False},
            },
        )  # fmt: skip
        task = sent["result"]["task"]  # type: ignore[index]  # a JSON-RPC result
        task_id = task["id"]
        assert task["status"]["state"] == "TASK_STATE_SUBMITTED"
        got = await rpc("tasks/get", {"id": task_id})
        assert got["result"]["id"] == task_id  # type: ignore[index]  # a JSON-RPC result
        canceled = await rpc("tasks/cancel", {"id": task_id})
        assert "result" in canceled, canceled
        assert canceled["result"]["status"]["state"] == "TASK_STATE_CANCELED", canceled  # type: ignore[index]  # a JSON-RPC result
        again = await rpc("tasks/cancel", {"id": task_id})
        assert again["error"]["code"] == -32002  # type: ignore[index]  # not cancelable
        missing = await rpc("tasks/get", {"id": "no-such-task"})
        assert missing["error"]["code"] == -32001  # type: ignore[index]  # not found
        unknown = await rpc("tasks/pushNotificationConfig/set", {})
        assert unknown["error"]["code"] == -32601  # type: ignore[index]  # no such method
        async with http.post(
            "/a2a", json={"jsonrpc": "2.0", "id": 1, "method": "tasks/resubscribe",
                          "params": {"id": task_id}},
        ) as r:  # fmt: skip
            assert r.content_type == "text/event-stream"
            body = await r.text()
        assert "TASK_STATE_CANCELED" in body


async def test_roles_on_a2a(front: Front) -> None:
    async with aiohttp.ClientSession(front.url) as http:
        body = {"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": {}}
        async with http.post("/a2a", json=body) as r:
            assert r.status == 401
        async with http.post("/a2a", json=body, headers=auth("read")) as r:
            assert r.status == 403
        body = {"jsonrpc": "2.0", "id": 1, "method": "GetTask", "params": {"id": "x"}}
        async with http.post("/a2a", json=body, headers=auth("read")) as r:
            assert r.status == 200 and (await r.json())["error"]["code"] == -32001
    assert KEYS["read"][2] == "read"
    async with _client(front, "read", streaming=False) as client:
        with pytest.raises(A2AClientError):
            [e async for e in client.send_message(SendMessageRequest(message=_message("hi")))]
