"""Container hardening without a container: each service runs as a process in its own
mount namespace where every filesystem is read-only except a fresh tmpfs on /tmp and the
archive's data directory (as in a pod with `readOnlyRootFilesystem: true`, an emptyDir on
/tmp and a volume for the archive), as the unprivileged uid 65534 with no capabilities,
HOME pointing nowhere, and its NATS password in a read-only mounted file. The pipeline
still runs end to end, each service exits 0 on SIGTERM, and no service logged a write
failure or a secret."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

from agentbus.bus.core import Bus
from agentbus.bus.topology import provision
from agentbus.client.api import AgentBusClient
from agentbus.contract import permissions
from agentbus.contract.messages import EventKind, JobStatus
from agentbus.dev.stack import free_port
from tests.conftest import archived_history, make_settings
from tests.security import SecureNats

pytestmark = pytest.mark.integration

UID = 65534
DATA_MOUNT = "/mnt"  # the archive's volume inside the sandbox
SECRETS_MOUNT = "/media"  # read-only secrets inside the sandbox
STAGE = "/srv"  # scratch mount point used while building the sandbox

# Runs as root inside `unshare --mount`: builds the read-only view, checks it, then execs
# the service as uid 65534 without capabilities. Paths the service needs that /root
# (mode 700) or the fresh /tmp would hide (the interpreter, the venv, the source tree)
# are bound back in, read-only like everything else.
SANDBOX = textwrap.dedent(
    r"""
    import errno, json, os, subprocess, sys

    cfg = json.loads(sys.argv[1])
    command = sys.argv[2:]

    def mount(*args):
        subprocess.run(["mount", *args], check=True)

    mount("--make-rprivate", "/")
    mount("--bind", cfg["data"], cfg["data_mount"])
    mount("--bind", cfg["secrets"], cfg["secrets_mount"])
    rebind = [p for p in cfg["rebind"] if p.startswith(("/root/", "/tmp/"))]
    mount("-t", "tmpfs", "-o", "mode=755,size=1m", "tmpfs", cfg["stage"])
    for i, path in enumerate(rebind):
        os.mkdir(f"{cfg['stage']}/{i}")
        mount("--bind", path, f"{cfg['stage']}/{i}")
    mount("-t", "tmpfs", "-o", "mode=755,size=1m", "tmpfs", "/root")
    mount("-t", "tmpfs", "-o", "mode=1777,size=64m", "tmpfs", "/tmp")
    for i, path in enumerate(rebind):
        os.makedirs(path, exist_ok=True)
        mount("--bind", f"{cfg['stage']}/{i}", path)
    targets = subprocess.run(
        ["findmnt", "-rno", "TARGET"], check=True, capture_output=True, text=True
    ).stdout.split()
    for target in targets:
        target = target.encode().decode("unicode_escape")
        if target in (cfg["data_mount"], "/tmp") or target.startswith(("/proc", "/sys", "/dev")):
            continue
        subprocess.run(["mount", "-o", "remount,bind,ro", target], check=False,
                       stderr=subprocess.DEVNULL)
    for probe in ["/", cfg["secrets_mount"], *cfg["rebind"]]:
        probe = probe.rstrip("/") + "/probe"
        try:
            os.close(os.open(probe, os.O_CREAT | os.O_WRONLY, 0o600))
        except OSError as e:
            assert e.errno == errno.EROFS, (probe, e)
        else:
            sys.exit(f"sandbox: {probe} is writable")
    uid = str(cfg["uid"])
    os.execvp("setpriv", ["setpriv", "--reuid", uid, "--regid", uid, "--clear-groups",
                          "--inh-caps=-all", "--bounding-set=-all", "--", *command])
    """
)


def _needed_paths() -> list[str]:
    """Directories the service processes read: interpreter, venv, source tree."""
    import agentbus

    paths = {
        os.path.realpath(sys.base_prefix),
        os.path.realpath(sys.prefix),
        str(Path(agentbus.__file__).resolve().parents[2]),
    }
    # the shortest ones cover the others
    return sorted(p for p in paths if not any(p.startswith(q + "/") for q in paths))


def _sandbox_available() -> str | None:
    if os.geteuid() != 0:
        return "needs root (mount namespaces)"
    for tool in ("unshare", "setpriv", "findmnt", "mount"):
        if shutil.which(tool) is None:
            return f"needs {tool} (util-linux)"
    for path in (DATA_MOUNT, SECRETS_MOUNT, STAGE):
        if not Path(path).is_dir():
            return f"needs the mount point {path}"
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "--", "mount", "-t", "tmpfs",
         "tmpfs", "/mnt"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if probe.returncode != 0:
        return f"cannot create a mount namespace: {probe.stderr.strip()}"
    return None


def _start_sandboxed(
    sandbox: Path, data: Path, secrets_dir: Path, role: str, env: dict[str, str], log_path: Path
) -> subprocess.Popen[bytes]:
    cfg = {
        "data": str(data), "data_mount": DATA_MOUNT, "secrets": str(secrets_dir),
        "secrets_mount": SECRETS_MOUNT, "stage": STAGE, "rebind": _needed_paths(), "uid": UID,
    }  # fmt: skip
    with log_path.open("wb") as log:
        return subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "--",
             sys.executable, str(sandbox), json.dumps(cfg), sys.executable, "-m", "agentbus",
             role],
            env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


@pytest.mark.timeout(120)
async def test_services_run_on_a_read_only_root_as_an_unprivileged_user(
    secure: SecureNats, tmp_path: Path
) -> None:
    reason = _sandbox_available()
    if reason is not None:
        pytest.skip(reason)
    data = tmp_path / "data"
    secrets_dir = tmp_path / "secrets"
    data.mkdir()
    secrets_dir.mkdir()
    os.chown(data, UID, UID)
    roles = {"orchestrator": "orchestrator", "worker": "worker", "archiver": "archiver"}
    for user in roles.values():
        f = secrets_dir / f"{user}.password"
        f.write_text(secure.passwords[user] + "\n")
        os.chown(f, UID, UID)
        f.chmod(0o400)
    sandbox = tmp_path / "sandbox.py"
    sandbox.write_text(SANDBOX)

    s = make_settings(secure.url, tmp_path)
    prov = await Bus.connect(
        secure.nats_settings(permissions.PROVISIONER), agent_id="prov", service="provision"
    )
    await provision(prov.js, s)
    await prov.close()

    procs: dict[str, tuple[subprocess.Popen[bytes], int, Path]] = {}
    base_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": "/nonexistent",
        "AGENTBUS_NATS__URL": secure.url,
        "AGENTBUS_HTTP__HOST": "127.0.0.1",
        "AGENTBUS_LOG_FORMAT": "json",
        "AGENTBUS_ARCHIVER__DATABASE_URL": f"sqlite+aiosqlite:///{DATA_MOUNT}/archive.db",
        "AGENTBUS_WORKER__FETCH_TIMEOUT_S": "0.5",
        "AGENTBUS_WORKER__GRACE_PERIOD_S": "5",
    }
    try:
        for role, user in roles.items():
            port = free_port()
            log_path = tmp_path / f"{role}.log"
            env = {
                **base_env,
                **permissions.user_env(user),
                "AGENTBUS_NATS__PASSWORD_FILE": f"{SECRETS_MOUNT}/{user}.password",
                "AGENTBUS_HTTP__PORT": str(port),
                "AGENTBUS_AGENT_ID": f"{role}-ro",
            }
            proc = _start_sandboxed(sandbox, data, secrets_dir, role, env, log_path)
            procs[role] = (proc, port, log_path)
        deadline = time.monotonic() + 60
        for role, (proc, port, log_path) in procs.items():
            while not _ready(port):
                assert proc.poll() is None, f"{role} exited:\n{log_path.read_text()}"
                assert time.monotonic() < deadline, f"{role} not ready:\n{log_path.read_text()}"
                await asyncio.sleep(0.1)

        async with AgentBusClient(secure.nats_settings(permissions.CLIENT)) as client:
            text = "\n\n".join(
                f"Part {i} is about a lighthouse. It guides ships." for i in range(9)
            )
            job_id = await client.submit(text)
            state = await client.wait(job_id, timeout_s=60)
            assert state.status is JobStatus.COMPLETED, state.error
            history = await archived_history(client, job_id)
            assert any(e.kind is EventKind.JOB_COMPLETED for e in history)
    finally:
        for proc, _port, _log in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes = {}
        for role, (proc, _port, _log) in procs.items():
            try:
                codes[role] = proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[role] = proc.wait(10)
    logs = {
        role: log_path.read_text(errors="replace") for role, (_p, _q, log_path) in procs.items()
    }
    for role, code in codes.items():
        assert code == 0, f"{role} exited {code}:\n{logs[role]}"
    for role, text in logs.items():
        for line in text.splitlines():
            record = json.loads(line)  # every line is a JSON log record
            assert record["level"] != "error", (role, record)
        for marker in ("Read-only file system", "Permission denied", "Errno 30", "Errno 13"):
            assert marker not in text, (role, marker, text)
        for user, password in secure.passwords.items():
            assert password not in text, f"the password of {user} is in the {role} log"
    # the only files written outside /tmp are the archive's
    written = sorted(p.name for p in data.iterdir())
    assert written and all(name.startswith("archive.db") for name in written), written
    assert all(p.stat().st_uid == UID for p in data.iterdir())
