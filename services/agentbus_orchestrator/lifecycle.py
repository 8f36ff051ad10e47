"""The job lifecycle as a pure state machine: no I/O, no clock of its own.

Every transition takes a `JobState` (never modified) and returns the new state, or None
when the event changes nothing (a duplicate, a late result, a job already finished). The
orchestrator's I/O code loads a state, calls one of these, and writes the result with a
compare-and-set; on a conflict it reloads and calls the same function again, so a
transition must be a function of its inputs only (`now` is passed in).

The state stays small whatever the number of chunks: the tasks recorded at the current
level are a count and a bitmap (one bit per task, base64 in JSON: a 3,500-task level is
~600 characters), never a list of indices, and the task summaries live under their own
keys in the job-parts bucket.

    intake ──> RUNNING (level 0: one task per chunk)
    record ──> the level's bitmap and count (successes; a failure fails the job)
    level complete ──> plan_next: COMPLETED (fits, one part, the last reduce level, or
                       no reduce would shrink it: cut to the budget at a sentence
                       boundary) or REDUCING (level + 1); so every job ends, whatever
                       its summarizer answers
    fail / deadline ──> FAILED with the reason (a failed job still records successes,
                        so a replayed dead letter can take it on to completion)
    cancel ──> CANCELED (from any unfinished state, or a tombstone for a job not taken
               in yet): final, records nothing more, starts no level, never resumed
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Final

from agentbus.contract.chunking import cut_at_sentence, pack
from agentbus.contract.messages import DocumentRef, JobState, JobStatus, TokenUsage
from agentbus.contract.priority import Priority

__all__ = [
    "CancelVerdict",
    "Completion",
    "DeadlineVerdict",
    "NextLevel",
    "Outcome",
    "ResultKey",
    "bits_count",
    "bits_has",
    "cancel",
    "cancel_detail",
    "canceled_before_intake",
    "check_deadline",
    "complete",
    "fail",
    "fit_summary",
    "intake",
    "level_complete",
    "next_level",
    "plan_next",
    "record",
    "recorded_indices",
    "resumable",
    "task_id_for",
]

TASK_FAILURE: Final = "task"
"""`failed_by` of a job failed by one of its tasks (the only kind a replay resumes)."""
TIMEOUT_FAILURE: Final = "timeout"

MIN_RECHECK_S: Final = 1.0
"""A deadline check is never scheduled sooner than this after the last one."""
MAX_RECHECK_S: Final = 30.0
"""Nor later: a running job's message comes back at least this often. An ack or nak of
it can be lost (a consumer leader gone before it replicated one it had confirmed), and
the next check then settles it - an ended job's message is acked - within this bound
rather than at a deadline up to `no_progress_timeout_s` away. One delivery per running
job per interval is the whole cost."""


def recheck_delay_s(wait_s: float) -> float:
    """The delay of the next deadline check for a deadline `wait_s` away."""
    return min(max(wait_s, MIN_RECHECK_S), MAX_RECHECK_S)


def task_id_for(level: int, index: int) -> str:
    return f"{level}-{index}"


# --- the bitmap of recorded tasks ------------------------------------------------------


def _bits(encoded: str, tasks: int) -> bytearray:
    size = (tasks + 7) // 8
    try:
        raw = base64.b64decode(encoded, validate=True) if encoded else b""
    except (binascii.Error, ValueError):
        raw = b""  # unreadable: treated as nothing recorded (results are re-sent anyway)
    out = bytearray(raw[:size])
    out.extend(b"\x00" * (size - len(out)))
    return out


def _encode_bits(bits: bytearray) -> str:
    return base64.b64encode(bytes(bits)).decode() if any(bits) else ""


def bits_has(state: JobState, index: int) -> bool:
    """Is task `index` of the current level recorded?"""
    if not 0 <= index < state.level_tasks:
        return False
    bits = _bits(state.level_bits, state.level_tasks)
    return bool(bits[index >> 3] & (1 << (index & 7)))


def bits_count(state: JobState) -> int:
    """Number of tasks recorded in the bitmap (equals `level_done` in a sound state)."""
    return sum(bin(b).count("1") for b in _bits(state.level_bits, state.level_tasks))


# --- transitions ------------------------------------------------------------------------


def intake(
    *,
    job_id: str,
    title: str,
    skill: str,
    document_chars: int,
    summary_chars: int,
    chunks: int,
    now: datetime,
    timeout_s: float | None,
    document_sha256: str | None,
    trace_id: str | None,
    timer: str | None = None,
    priority: Priority = Priority.NORMAL,
    tenant: str = "default",
) -> JobState:
    """The state of a job whose map tasks (one per chunk) are about to be published
    (`publishing` until `published` records them)."""
    if chunks < 1:
        raise ValueError(f"job {job_id}: a job has at least one chunk, got {chunks}")
    return JobState(
        job_id=job_id,
        status=JobStatus.RUNNING,
        title=title,
        skill=skill,
        document_chars=document_chars,
        summary_chars=summary_chars,
        chunks=chunks,
        level=0,
        level_tasks=chunks,
        created_at=now,
        updated_at=now,
        timeout_s=timeout_s,
        document_sha256=document_sha256,
        trace_id=trace_id,
        timer=timer,
        publishing=True,
        priority=priority,
        tenant=tenant,
    )


def past_intake(state: JobState) -> bool:
    """Is the job known to be past its intake (finished, reducing, or its map tasks all
    published)? The job's message coming back for such a job is its timer (the deadline
    check); for any other, its intake may have died before publishing every task, and
    is redone (the tasks' ids make a second publish within the duplicate window a no-op)."""
    return state.status.terminal or state.level > 0 or not state.publishing


def published(state: JobState) -> JobState | None:
    """Record a job's map tasks as all published (None: nothing to record). The progress
    clock (`updated_at`) is left alone: bookkeeping, not progress."""
    if past_intake(state):
        return None
    return state.model_copy(update={"publishing": False})


def reopenable(state: JobState) -> bool:
    """Does a replayed dead letter of this job's message (`agentbus dlq replay`) take the
    job in again from the start? Only when it failed at intake with nothing done."""
    return (
        state.status is JobStatus.FAILED
        and state.failed_by in (None, "intake", "rejected")
        and state.level == 0
        and state.level_done == 0
    )


def is_timer(state: JobState, *, replay: bool) -> bool:
    """Is a job message that comes back (or a replayed dead letter of it) the job's timer,
    rather than an intake to do or redo?"""
    return past_intake(state) and not (replay and reopenable(state))


class Outcome(StrEnum):
    """What `record` made of one result."""

    RECORDED = "recorded"
    """New: counted at the current level."""
    DUPLICATE = "duplicate"
    """Already recorded, or a late result of a finished level or job: ack, nothing to do."""
    AHEAD = "ahead"
    """Of a level the state has not moved to yet (its tasks are published before the state
    moves): retry shortly, never drop."""
    INVALID = "invalid"
    """Names a task the level does not have."""
    FAILED = "failed"
    """A task failure that failed the job (its first reason is kept)."""


@dataclass(frozen=True)
class ResultKey:
    """The part of a task result the state machine looks at."""

    level: int
    index: int
    ok: bool = True
    task_id: str = ""
    error: str | None = None
    usage: TokenUsage | None = None
    """The model's token usage for this task (added to the job's once, when recorded)."""


def resumable(state: JobState) -> bool:
    """Not finished for good: running, or failed by a task (whose dead letter, replayed,
    can still succeed and take the job on)."""
    if state.status in (JobStatus.COMPLETED, JobStatus.CANCELED):
        return False
    return state.status is not JobStatus.FAILED or state.failed_by in (None, TASK_FAILURE)


def _outcome(state: JobState, r: ResultKey, bits: bytearray) -> Outcome:
    if not resumable(state) or r.level < state.level:
        return Outcome.DUPLICATE
    if r.level > state.level:
        return Outcome.AHEAD
    if not 0 <= r.index < state.level_tasks:
        return Outcome.INVALID
    if bits[r.index >> 3] & (1 << (r.index & 7)):
        return Outcome.DUPLICATE
    return Outcome.RECORDED if r.ok else Outcome.FAILED


def record(
    state: JobState, results: Sequence[ResultKey], *, now: datetime
) -> tuple[JobState | None, list[Outcome]]:
    """Record a batch of results of one job in one transition.

    Successes of the current level are counted once each (the bitmap makes any repetition
    a no-op, in any order), their token usage added to the job's; a failure of a task not
    yet recorded fails a running job with its reason (a failed job keeps its first
    reason). Returns the new state (None when nothing changed) and one outcome per
    result, in order."""
    bits = _bits(state.level_bits, state.level_tasks)
    outcomes: list[Outcome] = []
    recorded = 0
    usage = state.usage
    failure: ResultKey | None = None
    for r in results:
        outcome = _outcome(state, r, bits)
        if outcome is Outcome.RECORDED:
            bits[r.index >> 3] |= 1 << (r.index & 7)
            recorded += 1
            if r.usage is not None:
                usage = r.usage if usage is None else usage + r.usage
        elif outcome is Outcome.FAILED:
            if state.status is JobStatus.FAILED or failure is not None:
                outcome = Outcome.DUPLICATE  # the job keeps its first reason
            else:
                failure = r
        outcomes.append(outcome)
    # a failure whose task succeeded in the same batch changes nothing
    if failure is not None and bits[failure.index >> 3] & (1 << (failure.index & 7)):
        outcomes = [Outcome.DUPLICATE if o is Outcome.FAILED else o for o in outcomes]
        failure = None
    if not recorded and failure is None:
        return None, outcomes
    update: dict[str, object] = {"updated_at": now}
    if recorded:
        update |= {
            "level_bits": _encode_bits(bits),
            "level_done": state.level_done + recorded,
            "tasks_done_total": state.tasks_done_total + recorded,
            "usage": usage,
        }
    if failure is not None:
        reason = failure.error or "task failed"
        update |= {
            "status": JobStatus.FAILED,
            "failed_by": TASK_FAILURE,
            "error": f"task {failure.task_id or task_id_for(failure.level, failure.index)}: "
            f"{reason}",
        }
    return state.model_copy(update=update), outcomes


def level_complete(state: JobState) -> bool:
    """Every task of the current level is recorded and the job is not completed."""
    return resumable(state) and state.level_tasks > 0 and state.level_done >= state.level_tasks


@dataclass(frozen=True)
class Completion:
    """The level's parts are the final summary."""

    summary: str


@dataclass(frozen=True)
class NextLevel:
    """Another reduce level: one task per group, each summarized within `max_chars`."""

    level: int
    groups: list[str]
    max_chars: int


PART_SEPARATOR: Final = "\n\n"
MIN_PART_SHARE_CHARS: Final = 160
"""`fit_summary` gives each part its share of the budget only if a share is at least this
long (a few sentences); below it the parts are cut as one text."""


def fit_summary(parts: Sequence[str], *, max_chars: int) -> str:
    """The final summary from the parts of the last level, within `max_chars`.

    Parts that fit together are joined as they are. Otherwise each part is cut at a
    sentence boundary to an equal share of the budget, so the summary still covers the
    whole document; when the shares would be too short to say anything
    (`MIN_PART_SHARE_CHARS`), the joined parts are cut at a sentence boundary instead.
    Raises `ValueError` if `max_chars < 1`."""
    present = [p.strip() for p in parts if p.strip()]
    combined = PART_SEPARATOR.join(present)
    if len(combined) <= max_chars:
        return combined
    n = len(present)
    share = (max_chars - len(PART_SEPARATOR) * (n - 1)) // n
    if n > 1 and share >= MIN_PART_SHARE_CHARS:
        return PART_SEPARATOR.join(cut_at_sentence(p, max_chars=share) for p in present)
    return cut_at_sentence(combined, max_chars=max_chars)


def plan_next(
    state: JobState,
    parts: Sequence[str],
    *,
    chunk_chars: int,
    chunk_summary_chars: int,
    max_reduce_levels: int,
) -> Completion | NextLevel:
    """After a complete level: the final summary, or the next reduce level's tasks.

    The combined parts complete the job when they fit the job's summary budget. Otherwise
    they are packed into tasks of at most `chunk_chars` for another reduce level, unless
    that cannot end better: a single part (one summarizer's answer), the level is the
    last one allowed (`max_reduce_levels` reduce levels after the map level), or packing
    would not reduce the number of parts (no progress). Then the parts are cut to the
    budget at sentence boundaries (`fit_summary`): a job always ends, within its budget,
    whatever its summarizer returns."""
    present = [p for p in parts if p]
    combined = PART_SEPARATOR.join(present)
    if len(combined) <= state.summary_chars:
        return Completion(combined)
    if len(present) <= 1 or state.level >= max_reduce_levels:
        return Completion(fit_summary(present, max_chars=state.summary_chars))
    groups = pack(present, max_chars=chunk_chars, separator=PART_SEPARATOR)
    if len(groups) >= len(present):
        return Completion(fit_summary(present, max_chars=state.summary_chars))
    per_task = state.summary_chars if len(groups) == 1 else chunk_summary_chars
    return NextLevel(level=state.level + 1, groups=groups, max_chars=per_task)


def next_level(state: JobState, *, level: int, tasks: int, now: datetime) -> JobState | None:
    """Move from the complete `level` to `level + 1` with `tasks` tasks; a failed job
    whose replayed task succeeded goes on (its error is cleared)."""
    if state.level != level or not level_complete(state):
        return None
    return state.model_copy(
        update={
            "status": JobStatus.REDUCING,
            "error": None,
            "failed_by": None,
            "level": level + 1,
            "level_tasks": tasks,
            "level_done": 0,
            "level_bits": "",
            "updated_at": now,
        }
    )


def complete(
    state: JobState,
    *,
    level: int,
    summary: str | None,
    summary_ref: DocumentRef | None,
    now: datetime,
    final: ResultKey | None = None,
) -> JobState | None:
    """Complete the job at `level` with its final summary (inline or by reference).

    `final` is the single task of a one-task level whose summary this is: it is recorded
    in the same transition (a one-chunk job completes with one write)."""
    if not resumable(state) or state.level != level:
        return None
    if final is not None:
        recorded, outcomes = record(state, [final], now=now)
        if outcomes[0] not in (Outcome.RECORDED, Outcome.DUPLICATE):
            return None
        state = recorded or state
    if not level_complete(state):
        return None
    return state.model_copy(
        update={
            "status": JobStatus.COMPLETED,
            "publishing": False,
            "summary": summary if summary_ref is None else None,
            "summary_ref": summary_ref,
            "error": None,
            "failed_by": None,
            "updated_at": now,
        }
    )


def fail(state: JobState, *, reason: str, failed_by: str, now: datetime) -> JobState | None:
    """Fail a job that is not finished yet; a finished job keeps its outcome."""
    if state.status.terminal:
        return None
    return state.model_copy(
        update={
            "status": JobStatus.FAILED,
            "error": reason,
            "publishing": False,
            "failed_by": failed_by,
            "updated_at": now,
        }
    )


def _cancel_error(reason: str) -> str:
    return f"canceled: {reason}" if reason else "canceled"


def cancel(state: JobState, *, reason: str, now: datetime) -> JobState | None:
    """Cancel a job that is not finished; None for a finished one (completed, failed or
    already canceled: it keeps its outcome, so a repeated cancel changes nothing).

    A canceled job records nothing more (`resumable` is False: every later result is a
    duplicate), so no level completes and no reduce starts after it; the timer and the
    state of the current level are kept for the I/O around it (ack the job message)."""
    if state.status.terminal:
        return None
    return state.model_copy(
        update={
            "status": JobStatus.CANCELED,
            "publishing": False,
            "error": _cancel_error(reason),
            "failed_by": None,
            "updated_at": now,
        }
    )


def canceled_before_intake(job_id: str, *, reason: str, now: datetime) -> JobState:
    """The state of a job canceled before the orchestrator took it in (its message still
    queued): created in its place, it makes the intake ack the message and run nothing."""
    return JobState(
        job_id=job_id,
        status=JobStatus.CANCELED,
        error=_cancel_error(reason),
        created_at=now,
        updated_at=now,
    )


@dataclass(frozen=True)
class CancelVerdict:
    """What a cancel request did: `canceled` only for the call that canceled the job."""

    canceled: bool
    status: JobStatus
    detail: str


def cancel_detail(before: JobState, after: JobState | None) -> CancelVerdict:
    """The one line a cancel answers, from the state before and the written one (None: the
    transition declined, the job had finished)."""
    if after is not None:
        done = f"level {before.level}: {before.level_done}/{before.level_tasks} task(s) done"
        return CancelVerdict(True, after.status, f"job {before.job_id} canceled ({done})")
    if before.status is JobStatus.CANCELED:
        return CancelVerdict(
            False, before.status, f"job {before.job_id} was already canceled: nothing changed"
        )
    return CancelVerdict(
        False,
        before.status,
        f"job {before.job_id} already {before.status.value}: nothing to cancel, nothing changed",
    )


@dataclass(frozen=True)
class DeadlineVerdict:
    """`reason` set: fail the job now; else check again in `recheck_s` (None: never)."""

    reason: str | None = None
    recheck_s: float | None = None


def check_deadline(
    state: JobState, *, now: datetime, job_timeout_s: float, no_progress_timeout_s: float
) -> DeadlineVerdict:
    """Is a running job past its deadline (`timeout_s` of the job, else `job_timeout_s`;
    0 = none) or without progress (no state change) for `no_progress_timeout_s` (0 =
    never)? Finished jobs need no more checks."""
    if state.status.terminal:
        return DeadlineVerdict()
    timeout = state.timeout_s if state.timeout_s is not None else job_timeout_s
    age = (now - state.created_at).total_seconds()
    idle = (now - state.updated_at).total_seconds()
    waits: list[float] = []
    if timeout > 0:
        if age >= timeout:
            return DeadlineVerdict(reason=f"job deadline passed: not finished within {timeout:g}s")
        waits.append(timeout - age)
    if no_progress_timeout_s > 0:
        if idle >= no_progress_timeout_s:
            return DeadlineVerdict(
                reason=(
                    f"no progress for {idle:.0f}s (limit {no_progress_timeout_s:g}s) at level "
                    f"{state.level}: {state.level_done}/{state.level_tasks} task(s) done"
                )
            )
        waits.append(no_progress_timeout_s - idle)
    if not waits:
        return DeadlineVerdict()
    return DeadlineVerdict(recheck_s=recheck_delay_s(min(waits)))


def recorded_indices(state: JobState) -> Iterable[int]:
    """Indices of the current level's recorded tasks, ascending (for tools and tests)."""
    bits = _bits(state.level_bits, state.level_tasks)
    return (i for i in range(state.level_tasks) if bits[i >> 3] & (1 << (i & 7)))
