"""`agentbus nats-auth-secret` (the chart's hook Job) against a stand-in Kubernetes API
server on 127.0.0.1: it creates the Secret once, keeps its passwords on every later run,
adds a new user's, takes the operator's Secret, and fails in one line naming the Secret."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from agentbus.cli.nats_auth_secret import KubeApi, NatsAuthSecretError, ensure_auth_secret
from agentbus.contract import permissions
from tests.chart.render import CHART_DIR

pytestmark = pytest.mark.chart

NS = "agentbus-test"
TOKEN = "t0ken"
PERMS = (CHART_DIR / "files" / "nats-permissions.json").read_text()
AUTH_FILE = (CHART_DIR / "files" / "nats-auth.conf").read_text()


class FakeApi:
    """Secrets of one namespace behind the Kubernetes REST paths, with resourceVersion
    conflicts (409) like the real server."""

    def __init__(self) -> None:
        self.secrets: dict[str, dict[str, Any]] = {}
        self.version = 0
        self.calls: list[str] = []
        self.lock = threading.Lock()
        self.race: dict[str, str] | None = None
        """Data another writer stores right after the next GET of a Secret."""

    def handle(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        base = f"/api/v1/namespaces/{NS}/secrets"
        self.calls.append(f"{method} {path}")
        with self.lock:
            if method == "POST" and path == base:
                name = body["metadata"]["name"]
                if name in self.secrets:
                    return 409, {"reason": "AlreadyExists"}
                return 201, self._store(body)
            name = path.removeprefix(base + "/")
            if method == "GET":
                found = self.secrets.get(name)
                if found and self.race is not None:
                    answer = json.loads(json.dumps(found))
                    self._store({"metadata": {"name": name}, "data": _b64(self.race)})
                    self.race = None
                    return 200, answer
                return (200, found) if found else (404, {"reason": "NotFound"})
            if method == "PUT":
                old = self.secrets.get(name)
                if not old or old["metadata"]["resourceVersion"] != body["metadata"].get(
                    "resourceVersion"
                ):
                    return 409, {"reason": "Conflict"}
                return 200, self._store(body)
        return 405, {}

    def _store(self, body: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        stored: dict[str, Any] = json.loads(json.dumps(body))
        stored["metadata"]["resourceVersion"] = str(self.version)
        self.secrets[stored["metadata"]["name"]] = stored
        return stored

    def put_secret(self, name: str, data: dict[str, str]) -> None:
        self._store({"metadata": {"name": name}, "data": _b64(data)})

    def data(self, name: str) -> dict[str, str]:
        return {k: base64.b64decode(v).decode() for k, v in self.secrets[name]["data"].items()}


def _b64(data: dict[str, str]) -> dict[str, str]:
    return {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}


@pytest.fixture
def api() -> Iterator[tuple[FakeApi, KubeApi]]:
    fake = FakeApi()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            answer: Any
            if self.headers["Authorization"] != f"Bearer {TOKEN}":
                code, answer = 401, {}
            else:
                size = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(size)) if size else None
                code, answer = fake.handle(self.command, self.path, body)
            raw = json.dumps(answer).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        do_GET = do_POST = do_PUT = _serve  # noqa: N815  # http.server's naming

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake, KubeApi(base_url=f"http://127.0.0.1:{server.server_address[1]}", token=TOKEN)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _ensure(client: KubeApi, *, passwords_secret: str = "", auth: bool = True) -> str:
    return ensure_auth_secret(
        client,
        namespace=NS,
        name="agentbus-nats-auth",
        labels={"app.kubernetes.io/part-of": "agentbus"},
        permissions_json=PERMS if auth else None,
        auth_file=AUTH_FILE if auth else None,
        passwords_secret=passwords_secret,
    )


def test_created_once_then_kept(api: tuple[FakeApi, KubeApi]) -> None:
    fake, client = api
    assert _ensure(client) == "created"
    first = fake.data("agentbus-nats-auth")
    assert set(first) == {*permissions.ROLES, "auth.conf"}
    assert len({first[u] for u in permissions.ROLES}) == len(permissions.ROLES)
    assert all(len(first[u]) == 32 and first[u].isalnum() for u in permissions.ROLES)
    labels = fake.secrets["agentbus-nats-auth"]["metadata"]["labels"]
    assert labels == {"app.kubernetes.io/part-of": "agentbus"}
    for _ in range(3):  # every upgrade runs the Job again
        assert _ensure(client) == "unchanged"
    assert fake.data("agentbus-nats-auth") == first
    assert _ensure(client, auth=False) == "updated"  # auth off: no users, passwords kept
    assert _ensure(client) == "updated"  # and on again: the same passwords
    assert fake.data("agentbus-nats-auth") == first


def test_a_new_user_gets_a_password_the_others_keep_theirs(api: tuple[FakeApi, KubeApi]) -> None:
    fake, client = api
    old = {u: f"old-{u}-password" for u in permissions.ROLES if u != permissions.ADMIN}
    fake.put_secret("agentbus-nats-auth", {**old, "auth.conf": "# an older chart's"})
    assert _ensure(client) == "updated"
    data = fake.data("agentbus-nats-auth")
    assert {u: data[u] for u in old} == old
    assert len(data[permissions.ADMIN]) == 32
    assert data["auth.conf"].endswith(AUTH_FILE)


def test_the_operators_passwords(api: tuple[FakeApi, KubeApi]) -> None:
    fake, client = api
    mine = {u: f"mine-{u}-Zq8rT2" for u in permissions.ROLES}
    fake.put_secret("my-passwords", {u: p + "\n" for u, p in mine.items()})
    assert _ensure(client, passwords_secret="my-passwords") == "created"
    data = fake.data("agentbus-nats-auth")
    assert {u: data[u] for u in mine} == mine


def test_failures_name_the_secret(api: tuple[FakeApi, KubeApi]) -> None:
    fake, client = api
    with pytest.raises(NatsAuthSecretError, match="no Secret 'absent' in namespace agentbus-test"):
        _ensure(client, passwords_secret="absent")
    assert fake.secrets == {}
    bad = KubeApi(base_url=client.base_url, token="wrong")
    with pytest.raises(NatsAuthSecretError, match="GET /api/v1/namespaces/agentbus-test/secrets"):
        _ensure(bad)


def test_a_concurrent_writer_makes_the_job_fail_and_retry_not_overwrite(
    api: tuple[FakeApi, KubeApi],
) -> None:
    """The update is a PUT with the resourceVersion read: a write in between (another
    upgrade's Job) makes it fail with 409, and the Job's retry reads the new state."""
    fake, client = api
    old = {u: f"old-{u}-password" for u in permissions.ROLES if u != permissions.ADMIN}
    fake.put_secret("agentbus-nats-auth", old)
    theirs = {u: f"theirs-{u}-password" for u in permissions.ROLES}
    fake.race = theirs
    with pytest.raises(NatsAuthSecretError, match="HTTP 409"):
        _ensure(client)
    assert fake.data("agentbus-nats-auth") == theirs  # their write stands
    assert _ensure(client) == "updated"  # the retry keeps their passwords
    data = fake.data("agentbus-nats-auth")
    assert {u: data[u] for u in theirs} == theirs
