"""helm install into a kind cluster: the whole delivery path, as a user meets it.

Create (or reuse) a kind cluster, build the image and load it into the cluster,
`helm dependency build` (downloads the official NATS chart), install, wait for the
rollout, port-forward NATS, submit jobs, scale the workers 1 -> 3 with `helm upgrade` and
check that all three take tasks, read every service's metrics, `helm test`, uninstall.

Needs docker (a running engine), kind, helm and kubectl, and network access for the NATS
chart and images; skipped with the reason when any is missing (as on the development
machines of this project, which have no registry access). Settings:
AGENTBUS_KIND_CLUSTER (default agentbus-e2e; reused when it exists, deleted afterwards only
when this test created it and AGENTBUS_KIND_KEEP is unset), AGENTBUS_BASE_IMAGE (the
Dockerfile's BASE_IMAGE; default the Dockerfile's own).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest

pytestmark = [pytest.mark.kind, pytest.mark.timeout(2400)]

REPO_ROOT: Final = Path(__file__).resolve().parents[3]
CHART_DIR: Final = REPO_ROOT / "charts" / "agentbus"
CLUSTER: Final = os.environ.get("AGENTBUS_KIND_CLUSTER", "agentbus-e2e")
IMAGE_REPO: Final = "agentbus"
IMAGE_TAG: Final = "kind-e2e"
RELEASE: Final = "agentbus"
AGENTBUS: Final = Path(sys.executable).parent / "agentbus"
WORDS: Final = (
    "river delta harbor tide current sediment estuary marsh channel levee flood drought "
    "farmer village market bridge ferry boat salt fresh water season spring autumn storm"
).split()

# Small volumes, one task per worker at a time with a fixed latency (so that every worker
# replica takes tasks), and small chunks (so that every document is several tasks).
E2E_VALUES: Final = {
    "image": {"repository": IMAGE_REPO, "tag": IMAGE_TAG, "pullPolicy": "IfNotPresent"},
    "nats": {"config": {"jetstream": {"fileStore": {"pvc": {"size": "1Gi"}}}}},
    "archiver": {"persistence": {"size": "256Mi", "keepOnUninstall": False}},
    "orchestrator": {
        "settings": {"orchestrator": {"chunk_chars": 1000, "chunk_summary_chars": 300}}
    },
    "worker": {
        "replicas": 1,
        "concurrency": 1,
        "summarizer": {"backend": "simulated"},
        "settings": {"summarizer": {"simulated_latency_ms": 200}},
    },
}


def _missing_tools() -> list[str]:
    return [t for t in ("docker", "kind", "helm", "kubectl") if shutil.which(t) is None]


def _run(
    *args: str, timeout_s: float = 600, check: bool = True
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        list(args), capture_output=True, text=True, timeout=timeout_s, check=False
    )
    if check and done.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited {done.returncode}:\n"
            f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
        )
    return done


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _document(rng: random.Random, sentences: int) -> str:
    out = []
    for i in range(sentences):
        out.append(
            " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 16))).capitalize() + "."
        )
        if i % 6 == 5:
            out.append("\n\n")
    return " ".join(out)


@contextlib.contextmanager
def port_forward(namespace: str, target: str, remote_port: int) -> Iterator[int]:
    """`kubectl port-forward` to 127.0.0.1:<free port>; stopped (by its pid) at exit."""
    local = _free_port()
    proc = subprocess.Popen(
        ["kubectl", "-n", namespace, "port-forward", "--address", "127.0.0.1", target,
         f"{local}:{remote_port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, f"port-forward {target} exited: {proc.stderr}"
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", local), 1):
                break
            assert time.monotonic() < deadline, f"port-forward {target} not up"
            time.sleep(0.2)
        yield local
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _client(nats_port: int, *args: str, timeout_s: float = 600) -> Any:
    env = {**os.environ, "AGENTBUS_NATS__URL": f"nats://127.0.0.1:{nats_port}"}
    done = subprocess.run(
        [str(AGENTBUS), *args], capture_output=True, text=True, timeout=timeout_s, env=env,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"agentbus {' '.join(args)}: {done.stdout}\n{done.stderr}"
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    missing = _missing_tools()
    if missing:
        pytest.skip(f"kind e2e needs docker, kind, helm and kubectl; missing: {', '.join(missing)}")
    if _run("docker", "info", check=False, timeout_s=30).returncode != 0:
        pytest.skip("kind e2e needs a running Docker engine (`docker info` fails)")
    existing = _run("kind", "get", "clusters").stdout.split()
    created = CLUSTER not in existing
    if created:
        _run("kind", "create", "cluster", "--name", CLUSTER, "--wait", "120s", timeout_s=900)
    _run("kubectl", "config", "use-context", f"kind-{CLUSTER}")
    try:
        yield CLUSTER
    finally:
        if created and not os.environ.get("AGENTBUS_KIND_KEEP"):
            _run("kind", "delete", "cluster", "--name", CLUSTER, check=False, timeout_s=300)


@pytest.fixture(scope="module")
def image(cluster: str) -> str:
    ref = f"{IMAGE_REPO}:{IMAGE_TAG}"
    args = ["docker", "build", "--tag", ref]
    if os.environ.get("AGENTBUS_BASE_IMAGE"):
        args += ["--build-arg", f"BASE_IMAGE={os.environ['AGENTBUS_BASE_IMAGE']}"]
    _run(*args, str(REPO_ROOT), timeout_s=1200)
    _run("kind", "load", "docker-image", ref, "--name", cluster, timeout_s=600)
    return ref


@pytest.fixture(scope="module")
def chart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the chart with its dependencies built (leaves the work tree alone)."""
    copy = tmp_path_factory.mktemp("chart") / "agentbus"
    shutil.copytree(CHART_DIR, copy, ignore=shutil.ignore_patterns("charts"))
    _run("helm", "repo", "add", "nats", "https://nats-io.github.io/k8s/helm/charts/",
         "--force-update")  # fmt: skip
    _run("helm", "dependency", "build", str(copy), timeout_s=300)
    return copy


@pytest.fixture
def release(cluster: str, image: str, chart: Path, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A release in a fresh namespace: (namespace, chart directory)."""
    namespace = f"agentbus-e2e-{uuid.uuid4().hex[:6]}"
    values = tmp_path / "e2e-values.yaml"
    values.write_text(json.dumps(E2E_VALUES))  # JSON is YAML
    try:
        # as most pipelines install: the release fails (and is rolled back) unless every
        # Deployment is ready and the provisioning Job has completed
        _run("helm", "upgrade", "--install", RELEASE, str(chart), "--namespace", namespace,
             "--create-namespace", "--values", str(values), "--wait", "--wait-for-jobs",
             "--atomic", "--timeout", "10m", timeout_s=900)  # fmt: skip
        yield namespace, chart
    finally:
        _run("helm", "uninstall", RELEASE, "--namespace", namespace, "--wait",
             "--timeout", "5m", check=False, timeout_s=400)  # fmt: skip
        _run("kubectl", "delete", "namespace", namespace, "--wait=true", "--timeout=300s",
             check=False, timeout_s=400)  # fmt: skip


def _rollout(namespace: str) -> None:
    for name in ("orchestrator", "summarize-worker", "event-archiver", "gateway"):
        _run("kubectl", "-n", namespace, "rollout", "status", f"deployment/{RELEASE}-{name}",
             "--timeout", "600s", timeout_s=660)  # fmt: skip


def _worker_pods(namespace: str) -> set[str]:
    out = _run(
        "kubectl",
        "-n",
        namespace,
        "get",
        "pods",
        "-l",
        "app.kubernetes.io/component=summarize-worker",
        "--field-selector",
        "status.phase=Running",
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ).stdout
    return set(out.split())  # fmt: skip


def _task_agents(nats_port: int, job_ids: list[str]) -> set[str]:
    agents: set[str] = set()
    for job_id in job_ids:
        deadline = time.monotonic() + 60
        while True:
            events = _client(nats_port, "history", job_id, "--json")
            if any(e["kind"] == "job.completed" for e in events):
                break
            assert time.monotonic() < deadline, f"job {job_id} not archived"
            time.sleep(1)
        agents |= {e["agent_id"] for e in events if e["kind"] == "task.completed"}
    return agents


def _submit(nats_port: int, tmp_path: Path, count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    files = []
    for i in range(count):
        path = tmp_path / f"doc-{seed}-{i}.txt"
        path.write_text(_document(rng, rng.randint(30, 80)))
        files.append(str(path))
    records = _client(nats_port, "submit", "--json", "--timeout", "600", *files, timeout_s=700)
    assert [r["status"] for r in records] == ["completed"] * count, records
    return [r["job_id"] for r in records]


def _use_client_user(namespace: str, directory: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Connect as the chart's `client` NATS user (natsAuth): its password from the
    release's Secret, like the `helm test` Pod."""
    import base64

    encoded = _run("kubectl", "-n", namespace, "get", "secret", f"{RELEASE}-nats-auth",
                   "-o", "jsonpath={.data.client}").stdout  # fmt: skip
    password_file = directory / "client-password"
    password_file.write_text(base64.b64decode(encoded).decode())
    password_file.chmod(0o600)
    monkeypatch.setenv("AGENTBUS_NATS__USER", "client")
    monkeypatch.setenv("AGENTBUS_NATS__PASSWORD_FILE", str(password_file))
    monkeypatch.setenv("AGENTBUS_NATS__INBOX_PREFIX", "_INBOX_client")


def test_helm_install_scale_observe_test_uninstall(
    release: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    namespace, chart = release
    _rollout(namespace)  # already ready: `helm upgrade --install --wait` waited for it
    _use_client_user(namespace, tmp_path, monkeypatch)
    assert len(_worker_pods(namespace)) == 1

    with port_forward(namespace, f"svc/{RELEASE}-nats", 4222) as nats_port:
        jobs = _submit(nats_port, tmp_path, 3, seed=1)
        assert len(_task_agents(nats_port, jobs)) == 1

    # scale 1 -> 3 (helm upgrade --wait --atomic: the NATS auth hook Job runs again and
    # keeps the passwords; the running services keep working)
    secret = ("kubectl", "-n", namespace, "get", "secret", f"{RELEASE}-nats-auth",
              "-o", "jsonpath={.data}")  # fmt: skip
    before = _run(*secret).stdout
    _run("helm", "upgrade", RELEASE, str(chart), "--namespace", namespace, "--reuse-values",
         "--set", "worker.replicas=3", "--wait", "--wait-for-jobs", "--atomic",
         "--timeout", "10m", timeout_s=900)  # fmt: skip
    assert _run(*secret).stdout == before  # no password (nor auth.conf) changed
    _rollout(namespace)
    workers = _worker_pods(namespace)
    assert len(workers) == 3
    with port_forward(namespace, f"svc/{RELEASE}-nats", 4222) as nats_port:
        jobs = _submit(nats_port, tmp_path, 6, seed=2)
        assert _task_agents(nats_port, jobs) == workers

    # every service's metrics endpoint
    for name in ("orchestrator", "summarize-worker", "event-archiver", "gateway"):
        with port_forward(namespace, f"svc/{RELEASE}-{name}", 9090) as port:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                body = r.read().decode()
            assert "agentbus_" in body, name
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10) as r:
                assert r.status == 200, name

    # helm test: the chart's own check (submits a document, waits for the summary)
    _run("helm", "test", RELEASE, "--namespace", namespace, "--timeout", "5m", timeout_s=400)
