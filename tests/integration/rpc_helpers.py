"""Helpers of the request/reply, control and discovery tests: a skill whose behaviour the
text picks, the `agentbus` command line as a process, polling."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

from agentbus.contract import subjects
from agentbus.contract.errors import SkillError
from agentbus.contract.messages import TaskAssign
from agentbus.contract.settings import Settings
from agentbus.runtime.worker import SkillOutput


class ScriptedSkill:
    """A `summarize` skill whose behaviour the text picks: `slow` (waits for `release`),
    `fail`, `crash`."""

    name: ClassVar[str] = subjects.SUMMARIZE_SKILL
    backend: ClassVar[str] = "scripted"

    def __init__(self) -> None:
        self.seen: list[TaskAssign] = []
        self.release = asyncio.Event()

    async def run(self, task: TaskAssign) -> SkillOutput:
        self.seen.append(task)
        if task.text.startswith("slow"):
            await asyncio.wait_for(self.release.wait(), 30)
        if task.text.startswith("fail"):
            raise SkillError("the backend refused this text", retryable=False)
        if task.text.startswith("crash"):
            raise RuntimeError("boom")
        return SkillOutput(text=f"summary of [{task.text}]"[: task.max_chars])

    async def aclose(self) -> None:
        return None


async def cli(settings: Settings, cwd: Path, *args: str) -> tuple[int, str, str]:
    """Run `agentbus ARGS` as a process (the event loop keeps serving meanwhile)."""
    env = {**os.environ, "AGENTBUS_NATS__URL": settings.nats.url, "AGENTBUS_LOG_FORMAT": "text"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agentbus", *args,
        cwd=cwd, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def wait_for(predicate: Callable[[], bool], *, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)
