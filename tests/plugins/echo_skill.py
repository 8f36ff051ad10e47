"""`echo`: a second skill that lives outside the project, installed as a plugin by the
tests (an `agentbus.skills` entry point). It answers with the start of its text in upper
case, within the task's budget."""

from __future__ import annotations

from typing import ClassVar

from agentbus.contract.messages import TaskAssign
from agentbus.contract.settings import Settings
from agentbus.runtime.skills import SkillFactory
from agentbus.runtime.worker import SkillOutput

__all__ = ["EchoSkill"]


class EchoSkill:
    name: ClassVar[str] = "echo"
    backend: ClassVar[str] = "echo"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def run(self, task: TaskAssign) -> SkillOutput:
        return SkillOutput(text=task.text[: task.max_chars].upper())

    async def aclose(self) -> None:
        return None


_checked: SkillFactory = EchoSkill  # mypy: the plugin satisfies the protocol
