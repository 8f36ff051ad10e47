"""The job's timer: its job message, kept after intake and nak'ed with the delay to the
next deadline check (no extra message, publish or delivery on the hot path); the verdict
is `lifecycle.check_deadline`'s."""

from __future__ import annotations

from nats.aio.msg import Msg

from agentbus.contract.messages import JobState, JobSubmit, utcnow
from agentbus.contract.settings import OrchestratorSettings
from agentbus_orchestrator import lifecycle
from agentbus_orchestrator.collect import Collector


class JobTimer:
    """Deadline checks on a job's message: fail the job past its deadline or idle too
    long, else check again later."""

    def __init__(self, cfg: OrchestratorSettings, collector: Collector) -> None:
        self.cfg = cfg
        self.collector = collector

    def first_check_s(self, job: JobSubmit) -> float:
        """When a job's first deadline check is due (0: the job has no deadline)."""
        timeout = job.timeout_s if job.timeout_s is not None else self.cfg.job_timeout_s
        due = [t for t in (timeout, self.cfg.no_progress_timeout_s) if t > 0]
        return lifecycle.recheck_delay_s(min(due)) if due else 0.0

    async def end_intake(self, msg: Msg, job: JobSubmit, state: JobState) -> None:
        """A job past intake keeps its message as its timer: nak'ed with the delay to its
        first deadline check (no extra message, publish or delivery on the hot path), or
        acked when it has no deadline or has ended. No need to wait for the server's
        confirmation: a redelivery because this was lost finds the state and re-sends only
        duplicates, which are dropped."""
        first = self.first_check_s(job)
        if first > 0 and not state.status.terminal:
            await msg.nak(delay=first)
        else:
            await msg.ack()

    async def check(self, msg: Msg, job: JobSubmit, state: JobState) -> None:
        """Fail the job past its deadline or idle too long, else check again later (nak
        with the delay); a finished job ends its timer (ack)."""
        verdict = self.verdict(state)
        if verdict.reason is not None:
            await self.collector.fail(
                job.job_id, verdict.reason, category=lifecycle.TIMEOUT_FAILURE
            )
            await msg.ack()
        elif verdict.recheck_s is not None:
            await msg.nak(delay=verdict.recheck_s)
        else:
            await msg.ack()

    def verdict(self, state: JobState) -> lifecycle.DeadlineVerdict:
        return lifecycle.check_deadline(
            state,
            now=utcnow(),
            job_timeout_s=self.cfg.job_timeout_s,
            no_progress_timeout_s=self.cfg.no_progress_timeout_s,
        )
