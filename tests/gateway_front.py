"""The gateway in front of a real stack, for the gateway's tests: a nats-server whose users
are the generated ones, the orchestrator, a worker, the archiver and the gateway, each in
this process on its own NATS user; API keys of two tenants and three roles."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from agentbus.bus.core import Bus
from agentbus.bus.topology import provision
from agentbus.contract import permissions
from agentbus.contract.settings import Settings, TenantLimits
from agentbus.runtime.worker import TaskWorker
from agentbus_event_archiver import EventArchiver
from agentbus_gateway import Gateway
from agentbus_orchestrator import Orchestrator
from agentbus_summarize_worker import SummarizeSkill
from tests.conftest import Running, make_settings, with_sections
from tests.security import SecureNats, settings_as

__all__ = [
    "KEYS", "Front", "assert_no_violations", "auth", "front_running", "start_front", "write_keys",
]  # fmt: skip

KEYS = {
    "operate": ("op-key-0123456789abcdef", "default", "operate"),
    "submit": ("acme-submit-0123456789ab", "acme", "submit"),
    "read": ("acme-read-0123456789abcd", "acme", "read"),
    "other": ("beta-submit-0123456789ab", "beta", "submit"),
}


def auth(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name][0]}"}


def write_keys(path: Path) -> Path:
    doc = {"keys": [{"key": k, "tenant": t, "role": r, "name": n} for n, (k, t, r) in KEYS.items()]}
    path.write_text(json.dumps(doc))
    return path


@dataclass
class Front:
    url: str
    gateway: Gateway
    settings: Settings
    admin: Bus


async def start_front(
    secure: SecureNats, tmp_path: Path, running: Running, **sections: dict[str, object]
) -> Front:
    """The stack and its gateway (stopped by `running`); close `Front.admin` after."""
    s = make_settings(secure.url, tmp_path)
    s = with_sections(
        s,
        gateway={
            "host": "127.0.0.1", "port": 0, "api_keys_file": write_keys(tmp_path / "keys.json"),
            "stream_keepalive_s": 0.5,
        },
        limits={"max_document_bytes": 300_000},
        orchestrator={"chunk_chars": 1000, "chunk_summary_chars": 200},
        tenants={"configured": {"acme": TenantLimits(), "beta": TenantLimits()}},
    )  # fmt: skip
    if sections:
        s = with_sections(s, **sections)
    prov = await Bus.connect(
        secure.nats_settings(permissions.PROVISIONER), agent_id="provisioner", service="provision"
    )
    await provision(prov.js, s)
    await prov.close()
    admin = await Bus.connect(secure.nats_settings(permissions.ADMIN), agent_id="adm", service="t")
    await running.start(Orchestrator, settings_as(secure, s, "orchestrator"), "orch-g1")
    await running.start(
        lambda st: TaskWorker(st, SummarizeSkill(st)), settings_as(secure, s, "worker"), "worker-g1"
    )
    await running.start(EventArchiver, settings_as(secure, s, "archiver"), "arch-g1")
    gw = await running.start(Gateway, settings_as(secure, s, "gateway"), "gateway-g1")
    assert isinstance(gw, Gateway) and gw.bound_port
    return Front(url=f"http://127.0.0.1:{gw.bound_port}", gateway=gw, settings=s, admin=admin)


@contextlib.asynccontextmanager
async def front_running(
    secure: SecureNats, tmp_path: Path, running: Running, **sections: dict[str, object]
) -> AsyncIterator[Front]:
    """`start_front` for a fixture: closes `Front.admin` after, then asserts that nothing
    was refused by the server."""
    f = await start_front(secure, tmp_path, running, **sections)
    try:
        yield f
    finally:
        await f.admin.close()
    assert_no_violations(secure)


def assert_no_violations(secure: SecureNats) -> None:
    """No service, the gateway included, was refused anything by the server."""
    assert "violation" not in secure.server.log.lower(), secure.server.log[-3000:]
