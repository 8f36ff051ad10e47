"""The Docker CLI and engine as the container tier uses them (see conftest.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

__all__ = ["Docker", "docker_cli", "unavailable"]


def unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"container tier cannot run in CI: {reason} (see .ci/install-docker.sh)")
    pytest.skip(f"container tier: {reason}")


def docker_cli() -> str | None:
    """The CLI of Debian's docker.io (matching its engine) first, else whatever is on PATH."""
    if Path("/usr/bin/docker").exists():
        return "/usr/bin/docker"
    return shutil.which("docker")


@dataclass
class Docker:
    cli: str
    started: list[str] = field(default_factory=list)

    def run(
        self,
        *args: str,
        check: bool = True,
        timeout_s: float = 120,
        input_bytes: bytes | None = None,
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [self.cli, *args], capture_output=True, text=True, timeout=timeout_s, check=False,
            input=None if input_bytes is None else input_bytes.decode(),
        )  # fmt: skip
        if check and done.returncode != 0:
            raise AssertionError(
                f"docker {' '.join(args[:3])} ... exited {done.returncode}:\n"
                f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            )
        return done

    def ok(self) -> bool:
        try:
            return self.run("info", check=False, timeout_s=20).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False

    def start_container(self, name: str, args: Sequence[str]) -> None:
        self.run("run", "--detach", "--name", name, *args)
        self.started.append(name)

    def remove_started(self) -> None:
        for name in reversed(self.started):
            self.run("rm", "--force", "--volumes", name, check=False, timeout_s=60)
        self.started.clear()
