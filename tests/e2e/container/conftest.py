"""Container tier fixtures: a Docker engine, the locally built base image, and the agentbus
image built from the Dockerfile on it.

No registry can be reached here, so the base is a debootstrapped Debian (made once by
.ci/build-base-image.sh and cached). The engine runs without a bridge or iptables
(`dockerd --bridge=none --iptables=false ...`): every container uses --network host. An
engine this fixture starts is stopped by its pid at the end of the session; one that was
already running is left alone. Without CI, a machine where the engine cannot be started
skips the tier; in CI that is a failure.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest
from docker_engine import Docker, docker_cli, unavailable

REPO_ROOT: Final = Path(__file__).resolve().parents[3]
BASE_IMAGE: Final = os.environ.get("AGENTBUS_BASE_IMAGE", "agentbus-base:bookworm")
IMAGE: Final = "agentbus:container-test"
DOCKERD_ARGS: Final = (
    "--bridge=none",
    "--iptables=false",
    "--ip-forward=false",
    "--ip-masq=false",
)
MEASURED: dict[str, str] = {}


@pytest.fixture(scope="session")
def docker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Docker]:
    cli = docker_cli()
    if cli is None:
        unavailable("no docker CLI (apt-get install docker.io)")
    assert cli is not None
    d = Docker(cli)
    proc: subprocess.Popen[bytes] | None = None
    if not d.ok():
        dockerd = shutil.which("dockerd")
        if dockerd is None:
            unavailable("no Docker engine running and no dockerd (apt-get install docker.io)")
        if os.geteuid() != 0:
            unavailable("no Docker engine running, and starting dockerd needs root")
        assert dockerd is not None
        log = (tmp_path_factory.mktemp("dockerd") / "dockerd.log").open("wb")
        proc = subprocess.Popen(
            [dockerd, *DOCKERD_ARGS], stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + 60
        while not d.ok():
            if proc.poll() is not None or time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(10)
                unavailable(f"dockerd did not start (exit {proc.returncode}); see {log.name}")
            time.sleep(0.5)
    try:
        yield d
    finally:
        d.remove_started()
        if proc is not None:  # only the engine this fixture started
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


@pytest.fixture(scope="session")
def base_image(docker: Docker) -> str:
    if docker.run("image", "inspect", BASE_IMAGE, check=False).returncode == 0:
        return BASE_IMAGE
    if shutil.which("debootstrap") is None:
        unavailable(f"no base image {BASE_IMAGE} and no debootstrap to build it")
    started = time.monotonic()
    done = subprocess.run(
        ["bash", str(REPO_ROOT / ".ci" / "build-base-image.sh")],
        capture_output=True, text=True, timeout=900, check=False,
        env={**os.environ, "AGENTBUS_BASE_IMAGE": BASE_IMAGE},
    )  # fmt: skip
    assert done.returncode == 0, f"base image build failed:\n{done.stdout}\n{done.stderr}"
    MEASURED["base image build"] = f"{time.monotonic() - started:.1f} s"
    return BASE_IMAGE


@pytest.fixture(scope="session")
def agentbus_image(docker: Docker, base_image: str) -> str:
    started = time.monotonic()
    docker.run(
        "build", "--network", "host", "--build-arg", f"BASE_IMAGE={base_image}",
        "--tag", IMAGE, str(REPO_ROOT),
        timeout_s=900,
    )  # fmt: skip
    MEASURED["image build"] = f"{time.monotonic() - started:.1f} s (base {base_image})"
    _drop_stale_builds(docker)
    size = int(docker.run("image", "inspect", "--format", "{{.Size}}", IMAGE).stdout.strip())
    base = int(docker.run("image", "inspect", "--format", "{{.Size}}", base_image).stdout.strip())
    MEASURED["image size"] = f"{size / 1e6:.0f} MB ({(size - base) / 1e6:.0f} MB above the base)"
    return IMAGE


def _drop_stale_builds(docker: Docker) -> None:
    """Untagged images of earlier builds of this Dockerfile (stage labels): all of the final
    stage, all but the newest of the builder stage (the layer cache of the next build)."""
    for stage, keep in (("final", 0), ("builder", 1)):
        ids = docker.run(
            "images", "--quiet", "--filter", "dangling=true",
            "--filter", f"label=io.agentbus.stage={stage}",
        ).stdout.split()  # fmt: skip
        stale = list(dict.fromkeys(ids))[keep:]  # newest first
        if stale:
            docker.run("rmi", *stale, check=False)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if MEASURED:
        terminalreporter.section("container image")
        for key, value in MEASURED.items():
            terminalreporter.write_line(f"{key}: {value}")
