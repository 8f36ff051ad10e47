"""Listing jobs: the most recently written states of the `jobs` KV bucket, bounded.

The bucket has no index by time, tenant or status, and its key listing (`kv.keys()`)
reads every key. So a listing reads the bucket's stream (`KV_jobs`, one message per job:
history 1) from its newest end backwards, in windows of stream sequences that grow
(an ordered consumer over each window delivers only the live messages in it), until
`want` states passed `keep`, the stream's start is reached, or `max_scan` live states
were read: the work per listing is bounded by `max_scan` (each window spans at most the
states left to read), whatever the bucket holds; older jobs beyond it are not listed.
The states found are the most recently written ones (a running job's state is written
on every recorded task, a finished one no more).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Final

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from agentbus.contract import subjects
from agentbus.contract.errors import BusError, MessageDecodeError
from agentbus.contract.messages import JobState, decode_job_state

__all__ = ["JOBS_STREAM_NAME", "recent_job_states"]

JOBS_STREAM_NAME: Final = f"KV_{subjects.JOBS_BUCKET}"
_FIRST_WINDOW_MIN: Final = 64
_WINDOW_GROWTH: Final = 4
_NEXT_TIMEOUT_S: Final = 2.0
_KV_OPERATION: Final = "KV-Operation"
_INACTIVE_THRESHOLD_S: Final = 5.0
"""The server removes a window's ephemeral consumer this soon after it was read (a
console polls the list every second: no consumers pile up)."""


async def _read_window(js: JetStreamContext, *, start: int, end: int) -> tuple[list[JobState], int]:
    """The live job states with stream sequence in [start, end], oldest first, and how
    many messages were read (at most end - start + 1)."""
    config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start)
    subject = f"$KV.{subjects.JOBS_BUCKET}.>"
    try:
        sub = await js.subscribe(
            subject, stream=JOBS_STREAM_NAME, ordered_consumer=True, config=config,
            inactive_threshold=_INACTIVE_THRESHOLD_S,
        )  # fmt: skip
    except (nats.errors.Error, TimeoutError) as e:
        raise BusError(f"cannot read the {JOBS_STREAM_NAME} stream: {e or type(e).__name__}") from e
    found: list[JobState] = []
    read = 0
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=_NEXT_TIMEOUT_S)
            except nats.errors.TimeoutError:
                break  # nothing more live in the window (removed as it was read)
            meta = msg.metadata
            seq = int(meta.sequence.stream)
            if seq > end:
                break
            read += 1
            operation = (msg.headers or {}).get(_KV_OPERATION)
            if msg.data and operation is None:
                with contextlib.suppress(MessageDecodeError, ValueError):
                    found.append(decode_job_state(msg.data))
            if seq >= end or not meta.num_pending:
                break
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    return found, read


async def recent_job_states(
    js: JetStreamContext,
    *,
    want: int,
    keep: Callable[[JobState], bool],
    max_scan: int,
) -> list[JobState]:
    """Up to `want` of the most recently written job states that pass `keep`, newest
    written first, reading at most about `max_scan` live states (see the module)."""
    if want < 1 or max_scan < 1:
        raise ValueError(f"want={want}, max_scan={max_scan}: both must be 1 or more")
    try:
        info = await js.stream_info(JOBS_STREAM_NAME)
    except nats.js.errors.NotFoundError as e:
        raise BusError(
            f"KV bucket {subjects.JOBS_BUCKET!r} not found: run `agentbus provision`"
        ) from e
    except (nats.errors.Error, TimeoutError) as e:
        raise BusError(f"cannot read the {JOBS_STREAM_NAME} stream: {e or type(e).__name__}") from e
    first, end = int(info.state.first_seq), int(info.state.last_seq)
    if not info.state.messages or end < first:
        return []
    out: list[JobState] = []
    scanned = 0
    window = max(want * 2, _FIRST_WINDOW_MIN)
    while end >= first and len(out) < want and scanned < max_scan:
        # a window spans at most the states left to read: it cannot deliver more
        start = max(first, end - min(window, max_scan - scanned) + 1)
        states, read = await _read_window(js, start=start, end=end)
        scanned += read
        out.extend(s for s in reversed(states) if keep(s))
        end = start - 1
        window *= _WINDOW_GROWTH
    return out[:want]
