"""The Docker image, built on the local base, run as the services' containers.

Orchestrator, two workers and the archiver run as containers with --network host against
a local nats-server (each on its own AGENTBUS_HTTP__PORT), hardened the way the chart runs
them: non-root, read-only root filesystem, a tmpfs /tmp, all capabilities dropped, no new
privileges, the archive on a volume. The client commands run from the same image.
"""

from __future__ import annotations

import json
import random
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from docker_engine import Docker

from agentbus.dev.embedded import EmbeddedNatsServer
from agentbus.dev.stack import free_port
from tests.documents import make_document

pytestmark = [pytest.mark.container, pytest.mark.timeout(600)]

HARDENED = (
    "--network", "host",
    "--read-only",
    "--tmpfs", "/tmp:rw,nosuid,nodev,size=64m",
    "--cap-drop", "ALL",
    "--security-opt", "no-new-privileges",
)  # fmt: skip


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return int(r.status), r.read().decode()
    except urllib.error.HTTPError as e:
        return int(e.code), e.read().decode()
    except (urllib.error.URLError, OSError) as e:
        return 0, str(e)


@pytest.fixture
def volume(docker: Docker) -> Iterator[str]:
    name = f"agentbus-ct-{uuid.uuid4().hex[:8]}-archive"
    docker.run("volume", "create", name)
    try:
        yield name
    finally:
        docker.remove_started()
        docker.run("volume", "rm", "--force", name, check=False)


def test_image_is_small_non_root_and_has_no_build_tools(
    docker: Docker, agentbus_image: str
) -> None:
    (info,) = json.loads(docker.run("image", "inspect", agentbus_image).stdout)
    config = info["Config"]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["agentbus"]
    assert "9090/tcp" in config["ExposedPorts"]
    assert "AGENTBUS_LOG_FORMAT=json" in config["Env"]
    probe = docker.run(
        "run", "--rm", *HARDENED, "--entrypoint", "sh", agentbus_image, "-c",
        "id -u; id -g; for t in gcc cc c++ make ld as; do command -v $t || true; done; "
        "ls /opt/agentbus/bin",
    ).stdout.split()  # fmt: skip
    assert probe[:2] == ["10001", "10001"]
    tools = [p for p in probe[2:] if p.startswith("/")]
    assert tools == [], f"build tools in the final image: {tools}"
    assert "agentbus" in probe and not [p for p in probe if p.startswith("pip")]
    # every entrypoint answers
    for command in ("orchestrator", "worker", "archiver", "provision", "submit"):
        out = docker.run("run", "--rm", *HARDENED, agentbus_image, command, "--help").stdout
        assert "Usage" in out, command


def test_services_as_containers_process_jobs(
    docker: Docker,
    agentbus_image: str,
    nats_server: EmbeddedNatsServer,
    volume: str,
    tmp_path: Path,
) -> None:
    tag = uuid.uuid4().hex[:6]
    nats = ("-e", f"AGENTBUS_NATS__URL={nats_server.url}")

    out = docker.run("run", "--rm", *HARDENED, *nats, agentbus_image, "provision").stdout
    assert "topology ready" in out

    services: dict[str, tuple[int, list[str]]] = {
        f"ct-{tag}-orchestrator": (
            free_port(),
            ["-e", "AGENTBUS_ORCHESTRATOR__CHUNK_CHARS=1000",
             "-e", "AGENTBUS_ORCHESTRATOR__CHUNK_SUMMARY_CHARS=300", agentbus_image,
             "orchestrator"],
        ),
        f"ct-{tag}-archiver": (
            free_port(),
            ["--volume", f"{volume}:/var/lib/agentbus", agentbus_image, "archiver"],
        ),
    }  # fmt: skip
    for i in (1, 2):
        # one task at a time with a fixed latency: both workers must take tasks
        services[f"ct-{tag}-worker-{i}"] = (
            free_port(),
            ["-e", "AGENTBUS_WORKER__CONCURRENCY=1",
             "-e", "AGENTBUS_SUMMARIZER__BACKEND=simulated",
             "-e", "AGENTBUS_SUMMARIZER__SIMULATED_LATENCY_MS=150", agentbus_image, "worker"],
        )  # fmt: skip
    for name, (port, args) in services.items():
        docker.start_container(
            name,
            [*HARDENED, *nats,
             "-e", f"AGENTBUS_HTTP__PORT={port}", "-e", "AGENTBUS_HTTP__HOST=127.0.0.1",
             "-e", f"AGENTBUS_AGENT_ID={name}", "-e", "AGENTBUS_WORKER__GRACE_PERIOD_S=20",
             *args],
        )  # fmt: skip

    # every container becomes ready
    deadline = time.monotonic() + 60
    pending = dict(services)
    while pending:
        for name, (port, _args) in list(pending.items()):
            state = docker.run("inspect", "--format", "{{.State.Status}}", name).stdout.strip()
            assert state == "running", f"{name} {state}:\n{docker.run('logs', name).stderr}"
            if _get(port, "/readyz")[0] == 200:
                del pending[name]
        assert time.monotonic() < deadline or not pending, f"not ready: {list(pending)}"
        time.sleep(0.3)

    # non-root, read-only root filesystem, writable /tmp only
    for name in services:
        assert docker.run("exec", name, "id", "-u").stdout.strip() == "10001"
        denied = docker.run("exec", name, "sh", "-c", "touch /probe", check=False)
        assert denied.returncode != 0 and "Read-only file system" in denied.stderr
        docker.run("exec", name, "sh", "-c", "touch /tmp/probe")
        (info,) = json.loads(docker.run("inspect", name).stdout)
        assert info["HostConfig"]["ReadonlyRootfs"] is True
        assert info["HostConfig"]["CapDrop"] == ["ALL"]

    # jobs submitted with the image's client, from files mounted read-only
    docs = tmp_path / "docs"
    docs.mkdir(mode=0o755)
    docs.chmod(0o755)
    rng = random.Random(11)
    for i, sentences in enumerate((40, 70, 25)):
        path = docs / f"doc-{i}.txt"
        path.write_text(make_document(rng, sentences))
        path.chmod(0o644)
    submitted = docker.run(
        "run", "--rm", *HARDENED, *nats, "--volume", f"{docs}:/docs:ro", agentbus_image,
        "submit", "--json", "--timeout", "240",
        "/docs/doc-0.txt", "/docs/doc-1.txt", "/docs/doc-2.txt",
        timeout_s=300,
    ).stdout  # fmt: skip
    records: list[dict[str, Any]] = json.loads(submitted)
    assert [r["status"] for r in records] == ["completed"] * 3, records
    assert all(r["summary"] and r["chunks"] >= 2 for r in records), records

    # every job's events reach the archive (asked through the image's client)
    workers: set[str] = set()
    for r in records:
        deadline = time.monotonic() + 30
        while True:
            done = docker.run(
                "run", "--rm", *HARDENED, *nats, agentbus_image, "history", r["job_id"], "--json",
                check=False,
            )  # fmt: skip
            events = json.loads(done.stdout) if done.returncode == 0 else []
            kinds = [e["kind"] for e in events]
            if "job.completed" in kinds:
                break
            assert time.monotonic() < deadline, f"job {r['job_id']} not archived: {done}"
            time.sleep(0.5)
        tasks = [e for e in events if e["kind"] == "task.completed"]
        assert len(tasks) >= r["chunks"]
        workers |= {e["agent_id"] for e in tasks}
    assert workers == {f"ct-{tag}-worker-1", f"ct-{tag}-worker-2"}

    for name, (port, _args) in services.items():
        status, body = _get(port, "/metrics")
        assert status == 200 and "agentbus_" in body, name
        assert _get(port, "/healthz")[0] == 200

    # SIGTERM (docker stop): workers and orchestrator first, the archiver last; exit 0
    order = sorted(services, key=lambda n: n.endswith("archiver"))
    for name in order:
        docker.run("stop", "--time", "30", name, timeout_s=60)
        code = docker.run("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip()
        assert code == "0", f"{name} exited {code}:\n{docker.run('logs', name).stderr[-2000:]}"

    # the archive is on the volume
    size = docker.run(
        "run", "--rm", *HARDENED, "--volume", f"{volume}:/var/lib/agentbus",
        "--entrypoint", "python3", agentbus_image, "-c",
        "import os; print(os.path.getsize('/var/lib/agentbus/archive.db'))",
    ).stdout.strip()  # fmt: skip
    assert int(size) > 0
