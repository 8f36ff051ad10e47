"""`agentbus submit --follow FILE`: a job's live partial results as they arrive.

On a terminal a rich live view (progress of each level, the latest chunk summaries, text
being written token by token, then the final summary); with `--json` one JSON object per
item and line (`cursor`, `kind`, ...), for scripts. `FollowView` is the pure part: it
folds items into what the view shows.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.text import Text

from agentbus.client.stream import PartialResult
from agentbus.contract.messages import StreamKind
from agentbus.contract.priority import Priority
from agentbus.contract.settings import Settings

__all__ = ["FollowView", "follow_file"]

_RECENT_CHUNKS: Final = 5
_LINE_CHARS: Final = 160
_REFRESH_PER_S: Final = 8


def _line(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= _LINE_CHARS else flat[: _LINE_CHARS - 1] + "…"


@dataclass
class FollowView:
    """What the live view shows, folded from a job's items (see `apply`)."""

    title: str
    chunks: int | None = None
    level: int = 0
    level_tasks: int | None = None
    done: set[int] = field(default_factory=set)
    recent: deque[tuple[int, int, str]] = field(
        default_factory=lambda: deque(maxlen=_RECENT_CHUNKS)
    )
    writing: dict[tuple[int, int | None], str] = field(default_factory=dict)
    summary: str | None = None
    error: str | None = None
    canceled: str | None = None
    cursor: int | None = None

    def apply(self, item: PartialResult) -> None:
        self.cursor = item.cursor
        match item.kind:
            case StreamKind.STARTED:
                self.chunks = self.level_tasks = item.count
            case StreamKind.REDUCE:
                self.level, self.level_tasks = item.level, item.count
                self.done = set()
            case StreamKind.DELTA:
                key = (item.level, item.index)
                before = "" if item.restart else self.writing.get(key, "")
                self.writing[key] = before + item.text
            case StreamKind.CHUNK:
                self.writing.pop((item.level, item.index), None)
                if item.level == self.level and item.index is not None:
                    self.done.add(item.index)
                self.recent.append((item.level, item.index or 0, item.text or "(by reference)"))
            case StreamKind.COMPLETED:
                self.writing.clear()
                self.summary = item.text
            case StreamKind.FAILED:
                self.writing.clear()
                self.error = item.error or "failed"
            case StreamKind.CANCELED:
                self.writing.clear()
                self.canceled = item.error or "no reason given"

    def status_line(self) -> str:
        if self.summary is not None:
            return "completed"
        if self.error is not None:
            return f"failed: {self.error}"
        if self.canceled is not None:
            return f"canceled: {self.canceled}"
        if self.chunks is None:
            return "queued"
        step = "map" if self.level == 0 else f"reduce level {self.level}"
        total = self.level_tasks if self.level_tasks is not None else "?"
        return f"{step}: {len(self.done)}/{total} · {self.chunks} chunk(s)"

    def render(self) -> RenderableType:
        parts: list[RenderableType] = [Text(self.status_line(), style="bold")]
        for level, index, text in self.recent:
            parts.append(Text(f"[{level}.{index}] {_line(text)}", style="dim"))
        for (wlevel, windex), partial in list(self.writing.items())[-3:]:
            parts.append(Text(f"[{wlevel}.{windex} …] {_line(partial)}", style="cyan"))
        if self.summary is not None:
            parts.append(Text(self.summary))
        return Panel(Group(*parts), title=self.title, title_align="left")


async def follow_file(
    settings: Settings,
    path: Path,
    *,
    summary_chars: int | None,
    as_json: bool,
    out: Console,
    priority: Priority = Priority.NORMAL,
) -> bool:
    """Submit `path` and print its live partial results; True when it completed."""
    from agentbus.bus.documents import read_document
    from agentbus.client.api import AgentBusClient

    text = read_document(path, max_bytes=settings.limits.max_document_bytes)
    async with AgentBusClient(settings.nats, limits=settings.limits) as client:
        job_id = await client.submit(
            text, title=path.name, summary_chars=summary_chars, name=str(path), priority=priority
        )
        view = FollowView(title=f"{path.name} · job {job_id}")
        if as_json or not out.is_terminal:
            async for item in client.stream(job_id):
                view.apply(item)
                line = {"job_id": job_id, **item.as_json()}
                out.print(json.dumps(line, ensure_ascii=False), markup=False, highlight=False)
        else:
            with Live(view.render(), console=out, refresh_per_second=_REFRESH_PER_S) as live:
                async for item in client.stream(job_id):
                    view.apply(item)
                    live.update(view.render())
        if view.summary == "" or (view.summary is None and view.error is None):
            state = await client.wait(job_id, timeout_s=30)
            view.summary = await client.fetch_summary(state)
            if not as_json:
                out.print(view.summary or "", markup=False, highlight=False)
    return view.error is None
