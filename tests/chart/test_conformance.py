"""Chart conformance: the rendered release, run as local processes.

The default scenario's provisioning Job, Deployments and `helm test` Pod are started with
exactly their container's command, args and env (on top of the image's ENV from the
Dockerfile), against a real nats-server configured the way the NATS chart configures its
own from our values: nats.conf (in /etc/nats-config) includes the `$include` files of
`nats.config.merge`, resolved against the Secret volume that `nats.container.patch` /
`nats.podTemplate.patch` mount, with the rendered Secret's content. So the server has
exactly the users, passwords and permissions of the rendered `auth.conf`, and each pod
connects with its rendered user, password file (the mounted Secret item) and inbox prefix.

Only what must differ on one machine is rewritten: the NATS URL (the local server), each
HTTP port (one free port per process, bound to 127.0.0.1), volume mount paths (to per-pod
directories holding the ConfigMap/Secret items), the pod name given by the downward API,
and `agentbus` resolved from this virtualenv. Then every service must become ready,
connected as its own user, answer its probes, process the test Pod's job without a single
permission violation, and exit 0 on SIGTERM. A variant runs with natsAuth off.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agentbus.contract import permissions
from agentbus.dev.embedded import EmbeddedNatsServer
from agentbus.dev.stack import free_port
from tests.chart.render import (
    NATS_CONFIG_DIR,
    Rendered,
    env_of,
    image_env,
    load_values,
    nats_auth_wiring,
    render,
    secret_data,
)

pytestmark = [pytest.mark.chart, pytest.mark.timeout(120)]

AGENTBUS = Path(sys.executable).parent / "agentbus"
READY_TIMEOUT_S = 40.0


@dataclass
class PodProcess:
    pod: str
    proc: subprocess.Popen[bytes]
    http_port: int | None
    log: Path
    container: dict[str, Any]
    grace_s: float

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def get(self, path: str) -> tuple[int, str]:
        assert self.http_port is not None
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=2) as r:
                return int(r.status), r.read().decode()
        except urllib.error.HTTPError as e:
            return int(e.code), e.read().decode()
        except (urllib.error.URLError, OSError) as e:
            return 0, str(e)


class LocalPods:
    """Pod specs turned into local processes; everything started is stopped at the end."""

    def __init__(self, root: Path, nats_url: str) -> None:
        self.root = root
        self.nats_url = nats_url
        self.base_env = image_env()
        self.running: list[PodProcess] = []
        self.api_ports: dict[str, int] = {}

    def _mounts(
        self, pod: str, spec: dict[str, Any], c: dict[str, Any], r: Rendered
    ) -> dict[str, Path]:
        """mountPath -> a local directory standing in for the volume."""
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        out: dict[str, Path] = {}
        for m in c.get("volumeMounts", []):
            local = self.root / pod / m["name"]
            local.mkdir(parents=True, exist_ok=True)
            volume = volumes[m["name"]]
            if "configMap" in volume:
                for key, text in r.named("ConfigMap", volume["configMap"]["name"])["data"].items():
                    (local / key).write_text(text)
            elif "secret" in volume:
                # the Secret must be one the release renders (we have no others here)
                data = secret_data(r, volume["secret"]["secretName"])
                items = volume["secret"].get("items") or [{"key": k, "path": k} for k in data]
                for item in items:
                    assert item["key"] in data, f"{pod}: Secret has no key {item['key']}"
                    (local / item["path"]).write_text(data[item["key"]])
                    (local / item["path"]).chmod(volume["secret"].get("defaultMode", 0o644))
            out[m["mountPath"]] = local
        return out

    @staticmethod
    def _local_path(value: str, mounts: dict[str, Path]) -> str:
        for mount, local in sorted(mounts.items(), key=lambda kv: -len(kv[0])):
            if mount in value:
                return value.replace(mount, str(local))
        return value

    def command(
        self, pod: str, spec: dict[str, Any], c: dict[str, Any], r: Rendered
    ) -> tuple[list[str], dict[str, str], int | None]:
        mounts = self._mounts(pod, spec, c, r)
        env = {"PATH": os.environ["PATH"], "HOME": str(self.root / pod)}
        for name, value in self.base_env.items():
            if name.startswith(("AGENTBUS_", "PYTHON")):
                env[name] = self._local_path(value, mounts)
        http_port: int | None = None
        for name, var in env_of(c).items():
            if "value" in var:
                value = var["value"]
            elif var.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name":
                value = pod
            else:
                raise AssertionError(f"{pod}: {name} needs a Secret: {var}")
            if name == "AGENTBUS_NATS__URL":
                value = self.nats_url
            elif name == "AGENTBUS_HTTP__PORT":
                http_port = free_port()
                value = str(http_port)
                env["AGENTBUS_HTTP__HOST"] = "127.0.0.1"
            elif name == "AGENTBUS_GATEWAY__PORT":  # the gateway's API
                self.api_ports[pod] = free_port()
                value = str(self.api_ports[pod])
                env["AGENTBUS_GATEWAY__HOST"] = "127.0.0.1"
            env[name] = self._local_path(value, mounts)
        assert c["command"] == ["agentbus"], c["command"]
        argv = [str(AGENTBUS), *(self._local_path(a, mounts) for a in c.get("args", []))]
        return argv, env, http_port

    def start(self, pod: str, spec: dict[str, Any], r: Rendered) -> PodProcess:
        (c,) = spec["containers"]
        argv, env, port = self.command(pod, spec, c, r)
        log = self.root / f"{pod}.log"
        workdir = self.root / pod / "workdir"
        workdir.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as out:
            proc = subprocess.Popen(
                argv, env=env, cwd=workdir, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        p = PodProcess(
            pod=pod, proc=proc, http_port=port, log=log, container=c,
            grace_s=float(spec.get("terminationGracePeriodSeconds", 30)),
        )  # fmt: skip
        self.running.append(p)
        return p

    def run(self, pod: str, spec: dict[str, Any], r: Rendered, *, timeout_s: float) -> str:
        """Run a Job/Pod container to completion; its output."""
        (c,) = spec["containers"]
        argv, env, _port = self.command(pod, spec, c, r)
        workdir = self.root / pod / "workdir"
        workdir.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            argv, env=env, cwd=workdir, stdin=subprocess.DEVNULL, capture_output=True,
            timeout=timeout_s, check=False,
        )  # fmt: skip
        output = done.stdout.decode(errors="replace")
        assert done.returncode == 0, f"{pod} exited {done.returncode}:\n{output}\n{done.stderr!r}"
        return output

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        pending = list(self.running)
        while pending:
            for p in list(pending):
                assert p.proc.poll() is None, f"{p.pod} exited at start-up:\n{p.tail()}"
                if p.get("/readyz")[0] == 200:
                    pending.remove(p)
            if pending:
                assert time.monotonic() < deadline, "not ready: " + ", ".join(
                    f"{p.pod} ({p.get('/readyz')[1].strip()})\n{p.tail()}" for p in pending
                )
                time.sleep(0.2)

    def stop_all(self) -> dict[str, int | None]:
        codes: dict[str, int | None] = {}
        for p in self.running:
            if p.proc.poll() is None:
                p.proc.send_signal(signal.SIGTERM)
        for p in self.running:
            try:
                codes[p.pod] = p.proc.wait(p.grace_s)
            except subprocess.TimeoutExpired:
                p.proc.kill()  # what the kubelet does after the grace period
                p.proc.wait(5)
                codes[p.pod] = None
        self.running.clear()
        return codes


@dataclass
class ChartNats:
    """A nats-server laid out like the NATS chart's pod, from the rendered release."""

    server: EmbeddedNatsServer
    monitor_port: int
    users: dict[str, str]
    """user -> password, from the rendered Secret (empty with natsAuth off)."""

    def connections(self) -> list[dict[str, Any]]:
        url = f"http://127.0.0.1:{self.monitor_port}/connz?auth=true&limit=1024"
        with urllib.request.urlopen(url, timeout=5) as resp:
            return list(json.loads(resp.read())["connections"] or [])


def start_chart_nats(r: Rendered, root: Path) -> ChartNats:
    wiring = nats_auth_wiring(r)
    data = secret_data(r, wiring.secret_name)
    auth_dir = root / wiring.mount_path.lstrip("/")
    auth_dir.mkdir(parents=True)
    for key, path in wiring.items.items():
        (auth_dir / path).write_text(data[key])
    config_dir = root / NATS_CONFIG_DIR.lstrip("/")
    config_dir.mkdir(parents=True)
    monitor_port = free_port()
    conf = [
        f'jetstream {{ store_dir: "{root / "jetstream"}" }}',
        f"http: 127.0.0.1:{monitor_port}",
        *(f"include {path};" for path in wiring.includes),  # as the NATS chart writes them
    ]
    (config_dir / "nats.conf").write_text("\n".join(conf) + "\n")
    server = EmbeddedNatsServer(config_file=config_dir / "nats.conf", jetstream=False)
    server.start()
    users = {k: v for k, v in data.items() if k not in wiring.items}
    return ChartNats(server=server, monitor_port=monitor_port, users=users)


def connect_as(url: str, user: str | None = None, password: str = "", then: str = "") -> str:
    """What the server answers a client (without credentials when `user` is None) that
    connects, sends `then` (protocol lines) and pings: PONG or the first -ERR line."""
    host, port = url.removeprefix("nats://").rsplit(":", 1)
    connect: dict[str, Any] = {"verbose": False, "pedantic": False}
    if user is not None:
        connect |= {"user": user, "pass": password}
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"INFO ")
        sock.sendall(f"CONNECT {json.dumps(connect)}\r\n{then}PING\r\n".encode())
        return reader.readline().decode().strip()


def anonymous_connect(url: str) -> str:
    """What the server answers a client without credentials: PONG or an -ERR line."""
    return connect_as(url)


VARIANTS = {
    "default": None,  # natsAuth on (the default): every pod on its own user
    "auth-off": {"natsAuth": {"enabled": False}},
}


def test_rendered_auth_conf_on_a_real_nats_server(
    rendered: Callable[[str], Rendered], tmp_path: Path
) -> None:
    """The Secret's auth.conf (the password variables, then files/nats-auth.conf) included
    as the NATS chart includes it: nats-server resolves each `password: $VARIABLE` from the
    definitions above it, every user (admin too) logs in with its Secret key, a wrong
    password is refused, permissions hold, and a changed password is taken on a reload
    (what the NATS chart's config reloader does when the Secret changes)."""
    r = rendered("default")
    root = tmp_path / "nats-pod"
    chart_nats = start_chart_nats(r, root)
    try:
        url, users = chart_nats.server.url, chart_nats.users
        assert set(users) == set(permissions.ROLES)
        for user, password in users.items():
            assert connect_as(url, user, password) == "PONG", user
            wrong = connect_as(url, user, password[::-1])
            assert "authorization violation" in wrong.lower(), (user, wrong)
        client = ("client", users["client"])
        denied = connect_as(url, *client, "PUB tasks.summarize.assign 0\r\n\r\n")
        assert "permissions violation for publish" in denied.lower(), denied
        assert connect_as(url, *client, "PUB jobs.submit 0\r\n\r\n") == "PONG"

        wiring = nats_auth_wiring(r)
        auth_conf = root / wiring.mount_path.lstrip("/") / wiring.items["auth.conf"]
        old, new = users["worker"], "n3w-worker-password-" + "k" * 12
        text = auth_conf.read_text()
        assert text.count(f'"{old}"') == 1  # only in its variable's definition
        auth_conf.write_text(text.replace(f'"{old}"', f'"{new}"'))
        assert chart_nats.server.pid is not None
        os.kill(chart_nats.server.pid, signal.SIGHUP)  # our own server: reload its config
        deadline = time.monotonic() + 10
        while connect_as(url, "worker", new) != "PONG":
            assert time.monotonic() < deadline, chart_nats.server.log[-2000:]
            time.sleep(0.1)
        assert "authorization violation" in connect_as(url, "worker", old).lower()
        assert connect_as(url, "client", users["client"]) == "PONG"
    finally:
        chart_nats.server.stop()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_rendered_release_runs_and_processes_a_job(
    rendered: Callable[[str], Rendered], chart_dir: Path, tmp_path: Path, variant: str
) -> None:
    extra = VARIANTS[variant]
    r = rendered("default") if extra is None else render(chart_dir, load_values("default") | extra)
    chart_nats = start_chart_nats(r, tmp_path / "nats-pod")
    local_pods = LocalPods(tmp_path / "pods", chart_nats.server.url)
    try:
        _run_release(r, local_pods, chart_nats, auth=extra is None)
    finally:
        local_pods.stop_all()
        chart_nats.server.stop()


def _run_release(r: Rendered, local_pods: LocalPods, chart_nats: ChartNats, *, auth: bool) -> None:
    if auth:
        assert set(chart_nats.users) >= {"orchestrator", "worker", "archiver", "client"}
        assert "authorization violation" in anonymous_connect(chart_nats.server.url).lower()
    else:
        assert chart_nats.users == {}
        assert anonymous_connect(chart_nats.server.url) == "PONG"

    # 1. every Deployment, with its replica count, and 2. the provisioning Job after them:
    # Helm creates both at once (no hook) and `--wait` waits for the services, which must
    # become ready once the Job has run, whichever started first
    started = []
    for d in r.of_kind("Deployment"):
        for i in range(int(d["spec"].get("replicas", 1))):
            pod = f"{d['metadata']['name']}-5d8f9c7b6-p{i}"
            started.append(local_pods.start(pod, d["spec"]["template"]["spec"], r))
    assert sorted(p.pod.rsplit("-", 2)[0] for p in started) == [
        "agentbus-event-archiver",
        "agentbus-gateway",
        "agentbus-orchestrator",
        "agentbus-summarize-worker",
        "agentbus-summarize-worker",
    ]
    (job,) = [
        j for j in r.of_kind("Job") if j["metadata"]["name"].startswith("agentbus-provision-")
    ]
    assert "helm.sh/hook" not in (job["metadata"].get("annotations") or {})
    out = local_pods.run(
        f"{job['metadata']['name']}-x7k2p", job["spec"]["template"]["spec"], r, timeout_s=60
    )
    assert "topology ready" in out
    local_pods.wait_ready(READY_TIMEOUT_S)

    # every service is connected as the user its env names (and with auth, its own role)
    by_pod: dict[str, set[str]] = {}
    for conn in chart_nats.connections():
        pod = str(conn.get("name", "")).rsplit(":", 1)[-1]
        by_pod.setdefault(pod, set()).add(conn.get("authorized_user", ""))
    for p in started:
        want = env_of(p.container).get("AGENTBUS_NATS__USER", {}).get("value", "")
        assert bool(want) == auth and want != "admin", p.pod
        assert by_pod.get(p.pod) == {want}, (p.pod, by_pod)

    # 3. each probe the kubelet would run answers 200
    for p in started:
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            path = p.container[probe]["httpGet"]["path"]
            status, body = p.get(path)
            assert status == 200, f"{p.pod} {probe} {path}: {status} {body}\n{p.tail()}"

    # the gateway's API answers on its port: its OpenAPI document; no keys (none given to
    # the chart), every API call refused
    ((gateway_pod, api_port),) = local_pods.api_ports.items()
    api = f"http://127.0.0.1:{api_port}"
    with urllib.request.urlopen(api + "/openapi.json", timeout=5) as resp:
        assert json.loads(resp.read())["paths"], gateway_pod
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(api + "/v1/workers", timeout=5)
    assert refused.value.code == 401
    refused.value.close()

    # 4. the `helm test` Pod: submit its document and wait for the summary
    (test_pod,) = r.of_kind("Pod")
    out = local_pods.run("agentbus-test-submit", test_pod["spec"], r, timeout_s=90)
    (record,) = json.loads(out)
    assert record["status"] == "completed", record
    assert record["summary"] and len(record["summary"]) < record["chars"]

    # 5. metrics on every service
    for p in started:
        status, body = p.get("/metrics")
        assert status == 200 and "agentbus_" in body, p.pod

    # 6. SIGTERM: everyone exits 0 within the pod's grace period
    logs = {p.pod: p for p in started}
    codes = local_pods.stop_all()
    bad = {pod: code for pod, code in codes.items() if code != 0}
    assert bad == {}, "\n".join(f"{pod}: {code}\n{logs[pod].tail()}" for pod, code in bad.items())
    archive = next((local_pods.root).glob("agentbus-event-archiver-*/data/archive.db"))
    assert archive.stat().st_size > 0

    # 7. nobody did anything its NATS user may not do
    assert "violation" not in chart_nats.server.log.lower(), chart_nats.server.log[-3000:]
