"""A closed-loop load generator: keep `window` jobs in flight, learn each job's completion
from one watcher on the job-state KV bucket, record submit-to-completion latencies.

The same generator drives agentbus (jobs submitted with `AgentBusClient.submit`, state in
the `jobs` bucket) and the raw floor (a plain JetStream publish, state in `floor-jobs`),
so both pay the same client-side cost for watching.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Final

import nats.errors
from nats.js.kv import KeyValue

__all__ = ["LoadResult", "drive"]

_COMPLETED: Final = (b'"status":"completed"', b'"status": "completed"')
_FAILED: Final = (b'"status":"failed"', b'"status": "failed"')


@dataclass
class LoadResult:
    jobs: int
    elapsed_s: float
    latencies_s: list[float] = field(default_factory=list)
    failed: int = 0
    completion_times: list[float] = field(default_factory=list)
    """Monotonic completion time of each job, relative to the first submit."""

    @property
    def jobs_per_s(self) -> float:
        return self.jobs / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def steady_jobs_per_s(self, *, lo: float = 0.1, hi: float = 0.9) -> float:
        """Throughput between the `lo` and `hi` fractions of completions (no ramp-up/down)."""
        t = sorted(self.completion_times)
        if len(t) < 10:
            return self.jobs_per_s
        i, j = int(len(t) * lo), int(len(t) * hi) - 1
        return (j - i) / (t[j] - t[i]) if t[j] > t[i] else self.jobs_per_s


async def drive(
    *,
    kv: KeyValue,
    submit: Callable[[str, str], Coroutine[Any, Any, None]],
    document: Callable[[int], str],
    jobs: int,
    window: int,
    prefix: str,
    timeout_s: float = 300.0,
) -> LoadResult:
    """Submit `jobs` jobs (ids `{prefix}{i}`), at most `window` unfinished at a time."""
    submitted: dict[str, float] = {}
    done: dict[str, float] = {}
    failed: set[str] = set()
    slots = asyncio.Semaphore(window)
    all_done = asyncio.Event()
    watcher = await kv.watchall()

    async def watch() -> None:
        while len(done) < jobs:
            try:
                entry = await watcher.updates(timeout=1.0)  # type: ignore[no-untyped-call]  # nats-py's KV watcher is untyped
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            if entry is None or not entry.value or not entry.key.startswith(prefix):
                continue
            key = entry.key
            if key in done or key not in submitted:
                continue
            value = entry.value
            is_failed = any(m in value for m in _FAILED)
            if is_failed or any(m in value for m in _COMPLETED):
                done[key] = time.perf_counter()
                if is_failed:
                    failed.add(key)
                slots.release()
        all_done.set()

    watching = asyncio.create_task(watch())
    pending: set[asyncio.Task[None]] = set()
    started = time.perf_counter()
    try:
        for i in range(jobs):
            await slots.acquire()
            job_id = f"{prefix}{i:07d}"
            submitted[job_id] = time.perf_counter()
            task = asyncio.create_task(submit(job_id, document(i)))
            pending.add(task)
            task.add_done_callback(pending.discard)
        await asyncio.wait_for(all_done.wait(), timeout_s)
        elapsed = max(done.values()) - started
    finally:
        watching.cancel()
        with contextlib.suppress(BaseException):
            await watching
        with contextlib.suppress(Exception):
            await watcher.stop()  # type: ignore[no-untyped-call]  # nats-py's KV watcher is untyped
    for task in list(pending):
        await task  # surface a failed submit
    return LoadResult(
        jobs=jobs,
        elapsed_s=elapsed,
        latencies_s=[done[k] - submitted[k] for k in done],
        failed=len(failed),
        completion_times=[t - started for t in done.values()],
    )
