"""`agentbus up` as a user runs it, for the e2e tiers: started as a subprocess, its NATS
URL and service pids read from the stack file, stopped with Ctrl-C (SIGINT)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["AGENTBUS", "UpStack", "agentbus_up", "pid_alive"]

AGENTBUS = [sys.executable, "-m", "agentbus"]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by a parent that is gone) is not running
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@dataclass
class UpStack:
    url: str
    pids: list[int]
    data_dir: Path
    process: subprocess.Popen[str]
    output: str = ""


def wait_until_up(up: subprocess.Popen[str], state_file: Path, *, timeout_s: float) -> None:
    """Until `agentbus up` (`up`, its output piped) has written `state_file`; fails with
    what it printed as soon as it exits instead (a child that died at start-up)."""
    deadline = time.monotonic() + timeout_s
    while not state_file.exists():
        if up.poll() is not None:
            out = up.stdout.read() if up.stdout else ""
            raise AssertionError(f"agentbus up exited {up.returncode} at start-up:\n{out}")
        assert time.monotonic() < deadline, f"stack not up within {timeout_s}s"
        time.sleep(0.1)


@contextlib.contextmanager
def agentbus_up(
    tmp_path: Path, *args: str, start_timeout_s: float = 60.0, env: dict[str, str] | None = None
) -> Iterator[UpStack]:
    """Run `agentbus up ARGS` until the block ends; then Ctrl-C, and check that it exited
    0 and left no service running (`output` holds what it printed)."""
    data_dir = tmp_path / "stack"
    up = subprocess.Popen(
        [*AGENTBUS, "up", *args, "--data-dir", str(data_dir)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )
    stack: UpStack | None = None
    try:
        state_file = data_dir / "stack.json"
        wait_until_up(up, state_file, timeout_s=start_timeout_s)
        state = json.loads(state_file.read_text())
        pids: Sequence[int] = [s["pid"] for s in state["services"]]
        stack = UpStack(url=state["nats_url"], pids=list(pids), data_dir=data_dir, process=up)
        yield stack
    finally:
        up.send_signal(signal.SIGINT)
        try:
            out, _ = up.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            up.kill()
            out, _ = up.communicate()
        if stack is not None:
            stack.output = out
    assert up.returncode == 0, out
    for pid in stack.pids if stack is not None else []:
        assert not pid_alive(pid), f"process {pid} left running"
