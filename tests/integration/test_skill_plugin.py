"""A skill is declared once: a second skill (`echo`, tests/plugins/echo_skill.py) installed
as a plugin (an `agentbus.skills` entry point in a dist-info directory on the path) is
provisioned by `agentbus provision`, permitted by `agentbus permissions`, served
by `agentbus worker --skill echo`, and a job of that skill completes through the
orchestrator; nothing in the core names it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from agentbus.client.api import AgentBusClient
from agentbus.contract import subjects
from agentbus.contract.messages import JobStatus
from agentbus.dev.embedded import EmbeddedNatsServer
from agentbus.dev.stack import free_port
from tests.documents import make_document

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]
AGENTBUS = [sys.executable, "-m", "agentbus"]


@pytest.fixture
def plugin_env(tmp_path: Path, nats_server: EmbeddedNatsServer) -> dict[str, str]:
    """The environment of a machine where the `echo` plugin is installed."""
    site = tmp_path / "site"
    dist = site / "agentbus_echo_skill-0.1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: agentbus-echo-skill\nVersion: 0.1.0\n"
    )
    (dist / "entry_points.txt").write_text(
        "[agentbus.skills]\necho = tests.plugins.echo_skill:EchoSkill\n"
    )
    path = os.pathsep.join([str(site), str(ROOT), os.environ.get("PYTHONPATH", "")])
    return {
        **os.environ,
        "PYTHONPATH": path.rstrip(os.pathsep),
        "AGENTBUS_NATS__URL": nats_server.url,
        "AGENTBUS_HTTP__HOST": "127.0.0.1",
    }


def _ready(port: int, proc: subprocess.Popen[bytes], log: Path, *, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    pytest.fail(f"not ready on port {port} within {timeout_s}s")


def test_a_plugin_skill_is_provisioned_permitted_served_and_runs_jobs(
    plugin_env: dict[str, str], nats_server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            args, env=plugin_env, capture_output=True, text=True, timeout=60, cwd=tmp_path
        )

    perms = run(*AGENTBUS, "permissions")
    assert perms.returncode == 0, perms.stderr
    doc = json.loads(perms.stdout)
    assert doc["skills"] == ["echo", "summarize"]
    worker = next(u for u in doc["users"] if u["user"] == "worker")["permissions"]
    pull = f"$JS.API.CONSUMER.MSG.NEXT.{subjects.TASKS_STREAM}.echo-workers"
    assert pull in worker["publish"]["allow"]
    assert "rpc.echo" in worker["subscribe"]["allow"]

    provision = run(*AGENTBUS, "provision")
    assert provision.returncode == 0, provision.stderr
    assert f"consumer {subjects.TASKS_STREAM}/echo-workers" in provision.stdout

    procs: list[subprocess.Popen[bytes]] = []
    try:
        started = []
        for role, args in (
            ("orchestrator", ["orchestrator"]),
            ("worker", ["worker", "--skill", "echo"]),
        ):
            port = free_port()
            env = {**plugin_env, "AGENTBUS_HTTP__PORT": str(port), "AGENTBUS_AGENT_ID": role}
            log = tmp_path / f"{role}.log"
            with log.open("wb") as sink:
                proc = subprocess.Popen(
                    [*AGENTBUS, *args], env=env, cwd=tmp_path, stdout=sink,
                    stderr=subprocess.STDOUT,
                )  # fmt: skip
            procs.append(proc)
            started.append((port, proc, log))
        for port, proc, log in started:
            _ready(port, proc, log)

        async def submit() -> None:
            import random

            text = make_document(random.Random(5), 400)  # several chunks and a reduce
            async with AgentBusClient(nats_server.url) as client:
                job_id = await client.submit(text, skill="echo")
                state = await client.wait(job_id, timeout_s=60)
            assert state.status is JobStatus.COMPLETED, state.error
            assert state.skill == "echo" and state.chunks > 1 and state.level >= 1
            assert state.summary and state.summary == state.summary.upper()

        asyncio.run(submit())
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    assert [p.returncode for p in procs] == [0, 0]


def test_an_unknown_skill_is_one_clear_line(plugin_env: dict[str, str], tmp_path: Path) -> None:
    done = subprocess.run(
        [*AGENTBUS, "worker", "--skill", "translate"], env=plugin_env, capture_output=True,
        text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode != 0
    assert "no agentbus.skills entry point named 'translate'" in done.stderr
    assert "installed: echo, summarize" in done.stderr
    assert "Traceback" not in done.stderr
