"""The orchestrator: job intake, chunking, fan-out, result collection, reduce, job state.

All job state lives in JetStream (the jobs KV bucket; the task summaries of a level in the
job-parts bucket), changed only through the pure transitions of `orchestrator.lifecycle`
written with compare-and-set (`orchestrator.state.JobStore`), so any number of replicas
can share the work and a replica restarted mid-job picks up where the last one stopped:

- a job message is taken in by `orchestrator.intake` (settled only once its state is
  recorded and every task published; then kept as the job's timer, checked by
  `orchestrator.deadlines`);
- a result is acked only after it is recorded (results of one job are batched into one
  write per replica: `orchestrator.collect`); the write that completes a level starts the
  next level (publish first, then move the state, so a crash in between is repaired by the
  redelivered result);
- a job that stops moving is failed with the reason when its timer comes back (its job
  message, re-delivered until the job has ended), never left running.
"""

from __future__ import annotations

import functools
import logging
from typing import ClassVar, Final

from nats.aio.msg import Msg

from agentbus.bus.consume import ConsumerLoop
from agentbus.bus.core import Bus
from agentbus.bus.headers import delivery_count
from agentbus.bus.tenant_pull import TenantConsumerLoop
from agentbus.contract import subjects
from agentbus.contract.errors import MessageDecodeError
from agentbus.contract.messages import (
    JobSubmit,
    TaskResult,
    decode,
)
from agentbus.contract.settings import Settings
from agentbus.contract.tenants import (
    DEFAULT_TENANT,
    intake_consumer,
    limits_of,
    tenant_names,
)
from agentbus.observability import metrics, telemetry
from agentbus.observability.logs import log_context
from agentbus.runtime.service import AgentService
from agentbus_orchestrator.admission import Admission
from agentbus_orchestrator.advisories import MAX_DELIVERIES_ADVISORY, on_max_deliveries
from agentbus_orchestrator.cancel import Canceller
from agentbus_orchestrator.collect import Collector
from agentbus_orchestrator.deadlines import JobTimer
from agentbus_orchestrator.intake import Intake
from agentbus_orchestrator.lifecycle import Outcome, task_id_for
from agentbus_orchestrator.state import JobStore, StateConflict, UnknownJob

__all__ = ["Orchestrator", "task_id_for"]

log = logging.getLogger("orchestrator")

_AHEAD_RETRY_S: Final = 0.2
_CONFLICT_RETRY_S: Final = 1.0


class Orchestrator(AgentService):
    name: ClassVar[str] = "orchestrator"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.cfg = settings.orchestrator
        self._store: JobStore | None = None
        self._collector: Collector | None = None
        self._admission: Admission | None = None
        self._intake: Intake | None = None

    async def setup(self, bus: Bus) -> list[ConsumerLoop]:
        await bus.kv(subjects.JOBS_BUCKET)
        await bus.kv(subjects.JOB_PARTS_BUCKET)
        self._store = JobStore(bus)
        self._collector = Collector(bus, self._store, self.settings, service=self.name)
        await bus.kv(subjects.TENANTS_BUCKET)
        self._admission = Admission(bus, self.settings.tenants, service=self.name)
        self._intake = Intake(
            bus, self.settings, store=self._store, collector=self._collector,
            admission=self._admission, timer=JobTimer(self.cfg, self._collector),
            service=self.name,
        )  # fmt: skip
        metrics.init_orchestrator(bus.service)
        await bus.nc.subscribe(
            MAX_DELIVERIES_ADVISORY,
            queue=subjects.ORCHESTRATOR_CONSUMER,  # one replica handles each advisory
            cb=functools.partial(on_max_deliveries, bus, self.collector),
        )
        canceller = Canceller(bus, self._store, self._collector, service=self.name)
        for subject in (subjects.JOBS_CANCEL, subjects.JOBS_CANCEL_TENANTS):
            await bus.nc.subscribe(
                subject,
                queue=subjects.ORCHESTRATOR_CONSUMER,  # one replica answers each cancel
                cb=canceller.on_request,
            )
        tenants = tenant_names(self.settings.tenants)
        intake: ConsumerLoop = ConsumerLoop(
            bus,
            stream=subjects.JOBS_STREAM,
            durable=subjects.ORCHESTRATOR_CONSUMER,
            handler=self.handle_job,
            concurrency=self.cfg.concurrency,
        )
        if len(tenants) > 1:
            # each configured tenant's jobs on their own consumer, taken in by weight
            intake = TenantConsumerLoop(
                bus,
                stream=subjects.JOBS_STREAM,
                durables={t: intake_consumer(t) for t in tenants},
                weights={t: limits_of(t, self.settings.tenants).weight for t in tenants},
                handler=self.handle_job,
                concurrency=self.cfg.concurrency,
            )
        return [
            intake,
            ConsumerLoop(
                bus,
                stream=subjects.RESULTS_STREAM,
                durable=subjects.ORCHESTRATOR_RESULTS_CONSUMER,
                handler=self.handle_result,
                concurrency=self.cfg.concurrency,
            ),
        ]

    async def teardown(self) -> None:
        if self._admission is not None:
            await self._admission.flush()
        if self._collector is not None:
            await self._collector.close()

    @property
    def store(self) -> JobStore:
        assert self._store is not None
        return self._store

    @property
    def admission(self) -> Admission:
        assert self._admission is not None
        return self._admission

    @property
    def collector(self) -> Collector:
        assert self._collector is not None
        return self._collector

    @property
    def intake(self) -> Intake:
        assert self._intake is not None
        return self._intake

    # --- intake --------------------------------------------------------------------

    async def handle_job(self, msg: Msg) -> None:
        bus = self.bus
        assert bus is not None
        try:
            env = decode(msg.data, JobSubmit, max_bytes=self.settings.limits.max_message_bytes)
        except MessageDecodeError as e:
            await bus.reject(msg, reason=f"undecodable job: {e}", stream=subjects.JOBS_STREAM)
            return
        job = env.payload
        refusal = subjects.job_id_refusal(job.job_id, subject=msg.subject, claimed=job.tenant)
        if refusal is not None:  # a job in another tenant's namespace: no state is written
            await bus.reject(msg, reason=refusal, stream=subjects.JOBS_STREAM)
            return
        with (
            log_context(job_id=job.job_id, trace_id=telemetry.trace_id_of(msg.headers)),
            telemetry.span(
                "orchestrator job",
                headers=msg.headers,
                kind="consumer",
                attributes={"agentbus.job_id": job.job_id},
            ),
        ):
            await self.intake.take(msg, job)

    # --- collection ----------------------------------------------------------------------

    async def handle_result(self, msg: Msg) -> None:
        bus = self.bus
        assert bus is not None
        try:
            env = decode(msg.data, TaskResult, max_bytes=self.settings.limits.max_message_bytes)
        except MessageDecodeError as e:
            await bus.reject(msg, reason=f"undecodable result: {e}", stream=subjects.RESULTS_STREAM)
            return
        r = env.payload
        with (
            log_context(
                job_id=r.job_id, task_id=r.task_id, trace_id=telemetry.trace_id_of(msg.headers)
            ),
            telemetry.span(
                "orchestrator result",
                headers=msg.headers,
                kind="consumer",
                attributes={"agentbus.job_id": r.job_id, "agentbus.task_id": r.task_id},
            ),
        ):
            if delivery_count(msg) > 1:
                # the last try may have died after its write, before its event
                loaded = await self.store.load(r.job_id)
                if loaded is not None:
                    await self.collector.emit_state(loaded[0])
            try:
                outcome = await self.collector.collect(r)
            except StateConflict as e:
                log.info("result retried later: %s", e)
                await msg.nak(delay=_CONFLICT_RETRY_S)
                return
            except UnknownJob as e:
                await bus.dead_letter(
                    msg, reason=f"result rejected: {e}", stream=subjects.RESULTS_STREAM
                )
                return
            if outcome is Outcome.AHEAD:
                # The next level's tasks are published before the state moves to it, so a
                # fast worker's result can arrive first: it is retried shortly, never dropped.
                await msg.nak(delay=_AHEAD_RETRY_S)
                return
            if outcome in (Outcome.RECORDED, Outcome.FAILED) and r.tokens:
                await self.admission.count_tokens(r.tenant or DEFAULT_TENANT, r.tokens)
            if outcome is Outcome.INVALID:
                await bus.dead_letter(
                    msg,
                    reason=f"result rejected: task {r.task_id} is not a task of job "
                    f"{r.job_id} at level {r.level}",
                    stream=subjects.RESULTS_STREAM,
                )
                return
            await msg.ack()
