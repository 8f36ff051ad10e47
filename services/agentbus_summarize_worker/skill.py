"""The `summarize` skill: one task's text in, a summary within the task's budget out."""

from __future__ import annotations

from typing import ClassVar

from agentbus.contract.errors import SkillError
from agentbus.contract.messages import TaskAssign
from agentbus.contract.settings import Settings
from agentbus.contract.subjects import SUMMARIZE_SKILL
from agentbus.runtime.deltas import task_delta_sink
from agentbus.runtime.skills import SkillFactory
from agentbus.runtime.worker import SkillOutput
from agentbus_summarize_worker.backends import Summarizer, make_summarizer
from agentbus_summarize_worker.errors import SummarizerError

__all__ = ["SummarizeSkill"]


class SummarizeSkill:
    name: ClassVar[str] = SUMMARIZE_SKILL

    def __init__(self, settings: Settings, *, summarizer: Summarizer | None = None) -> None:
        self.summarizer = summarizer or make_summarizer(settings.summarizer)
        self.backend = self.summarizer.name

    async def run(self, task: TaskAssign) -> SkillOutput:
        try:
            summary = await self.summarizer.summarize(
                task.text,
                max_chars=task.max_chars,
                on_delta=task_delta_sink(),
                reduce=task.level > 0,
            )
        except SummarizerError as e:
            raise SkillError(f"{self.backend}: {e}", retryable=e.retryable) from e
        if len(summary.text) > task.max_chars:
            raise SkillError(
                f"{self.backend} returned {len(summary.text)} chars over the budget of "
                f"{task.max_chars}",
                retryable=True,
            )
        return SkillOutput(text=summary.text, usage=summary.usage)

    async def aclose(self) -> None:
        await self.summarizer.aclose()


_checked: SkillFactory = SummarizeSkill  # mypy: the skill satisfies the protocol
