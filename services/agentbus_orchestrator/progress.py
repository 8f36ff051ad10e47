"""What a job's live partial results say (`progress.{job_id}`), decided purely from the
job's known state and the results being recorded; `collect` publishes them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from agentbus.contract.messages import (
    DocumentRef,
    JobState,
    JobStatus,
    StreamItem,
    StreamKind,
    TaskResult,
)
from agentbus_orchestrator import lifecycle

__all__ = ["chunk_items", "final_item", "recorded"]

_ERROR_CHARS = 1000


def recorded(view: JobState, r: TaskResult) -> bool:
    """Is `r` already recorded in (or behind) the known state `view`?"""
    if view.level == r.level:
        return lifecycle.bits_has(view, r.index)
    return r.level < view.level


def chunk_items(
    view: JobState | None,
    job_id: str,
    results: Sequence[TaskResult],
    refs: Mapping[int, DocumentRef],
) -> list[StreamItem]:
    """A `chunk` item for each new summary of `results` (by reference for those stored
    in `refs`, by position), but none on a one-task level, whose summary is the final
    item's. `view`: the job's state as this replica knows it (None: unknown)."""
    out = []
    for i, r in enumerate(results):
        if not r.ok or (view is not None and recorded(view, r)):
            continue
        same_level = view is not None and view.level == r.level
        if view is not None and same_level and view.level_tasks == 1:
            continue
        out.append(
            StreamItem(
                job_id=job_id,
                kind=StreamKind.CHUNK,
                level=r.level,
                index=r.index,
                count=view.level_tasks if view is not None and same_level else None,
                text="" if i in refs else r.summary,
                summary_ref=refs.get(i),
                worker_id=r.worker_id,
            )
        )
    return out


def final_item(state: JobState) -> StreamItem:
    """The last live partial result of a finished job: `completed`, `failed` or
    `canceled`."""
    if state.status is JobStatus.COMPLETED:
        return StreamItem(
            job_id=state.job_id, kind=StreamKind.COMPLETED, level=state.level,
            text=state.summary or "", summary_ref=state.summary_ref,
        )  # fmt: skip
    if state.status is JobStatus.CANCELED:
        return StreamItem(
            job_id=state.job_id, kind=StreamKind.CANCELED, error=(state.error or "")[:_ERROR_CHARS]
        )
    return StreamItem(
        job_id=state.job_id, kind=StreamKind.FAILED, error=(state.error or "")[:_ERROR_CHARS]
    )
