"""Idempotent provisioning of the JetStream topology: streams, durable consumers, the jobs
KV buckets and the documents object store. Safe to run any number of times, by any
number of processes at once (`agentbus provision`, the Helm hook Job, `agentbus up`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    ObjectStoreConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from agentbus.contract import plugins, subjects
from agentbus.contract.errors import TopologyError
from agentbus.contract.priority import PRIORITIES, task_consumer, task_subject
from agentbus.contract.settings import Settings
from agentbus.contract.tenants import (
    intake_consumer,
    intake_subject,
    slot_consumer,
    slot_subject,
    tenant_names,
)
from agentbus.contract.tenants import limits_of as tenant_limits
from agentbus.contract.tenants import task_consumer as tenant_task_consumer
from agentbus.contract.tenants import task_subject as tenant_task_subject

__all__ = ["ProvisionReport", "consumer_configs", "provision", "stream_configs"]

log = logging.getLogger("agentbus.topology")

_RUNNING_JOBS_MAX: Final = 1_000_000
"""Jobs in flight at once (their messages are pending while they run): past this, new
jobs wait in the stream until others end."""


@dataclass
class ProvisionReport:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)


def _storage(settings: Settings) -> StorageType:
    return StorageType.FILE if settings.topology.storage == "file" else StorageType.MEMORY


def stream_configs(settings: Settings) -> list[StreamConfig]:
    t = settings.topology
    storage = _storage(settings)

    def stream(
        name: str,
        subject_list: list[str],
        retention: RetentionPolicy,
        *,
        max_age_s: float | None = None,
        max_msgs: int | None = None,
        max_msg_size: int | None = None,
        allow_direct: bool | None = None,
    ) -> StreamConfig:
        return StreamConfig(
            name=name,
            subjects=subject_list,
            retention=retention,
            storage=storage,
            num_replicas=t.replicas,
            duplicate_window=t.duplicate_window_s,
            max_age=max_age_s,
            max_msgs=max_msgs,
            max_msg_size=max_msg_size,
            discard=DiscardPolicy.OLD,
            allow_direct=allow_direct,
        )

    # Streams carry envelopes of at most max_message_bytes; anything bigger goes by reference.
    max_msg = settings.limits.max_message_bytes + 64 * 1024
    work, limits = RetentionPolicy.WORK_QUEUE, RetentionPolicy.LIMITS
    return [
        stream(
            subjects.JOBS_STREAM,
            # and each configured tenant's `jobs.submit.{tenant}` (only theirs: a job
            # submitted as another tenant finds no stream, and the client submits it as
            # the default tenant's)
            [intake_subject(t) for t in tenant_names(settings.tenants)],
            work,
            max_msg_size=max_msg,
        ),
        stream(
            subjects.TASKS_STREAM,
            # normal-priority tasks keep the subject of old; high and low have their own,
            # and so has each configured tenant at each priority
            [
                subjects.TASKS_SUBJECTS,
                subjects.TASKS_PRIORITY_SUBJECTS,
                subjects.TASKS_TENANT_SUBJECTS,
                # a capped tenant's run permits (never acked: they stay)
                subjects.TASKS_SLOT_SUBJECTS,
            ],
            work,
            max_msg_size=max_msg,
        ),
        stream(
            subjects.RESULTS_STREAM,
            [subjects.RESULTS_SUBJECTS],
            limits,
            max_age_s=t.results_max_age_s,
            max_msg_size=max_msg,
        ),
        stream(
            subjects.AGENT_EVENTS_STREAM,
            list(subjects.AGENT_EVENTS_SUBJECTS),
            limits,
            max_age_s=t.events_max_age_s,
            max_msgs=t.events_max_msgs,
            max_msg_size=max_msg,
        ),
        stream(subjects.DLQ_STREAM, [subjects.DLQ_SUBJECTS], limits, max_age_s=t.dlq_max_age_s),
        # live partial results: replayable for progress_max_age_s, read by ephemeral
        # ordered consumers (no durable)
        stream(
            subjects.PROGRESS_STREAM,
            [subjects.PROGRESS_SUBJECTS],
            limits,
            max_age_s=t.progress_max_age_s,
            max_msg_size=max_msg,
            # a job's last item by `$JS.API.DIRECT.GET.PROGRESS.progress.{job_id}`: a
            # subject NATS permissions can restrict to one tenant's jobs
            allow_direct=True,
        ),
    ]


def consumer_configs(
    settings: Settings, *, skills: Sequence[str] | None = None
) -> list[tuple[str, ConsumerConfig]]:
    """Every durable consumer; the workers' of `skills` (default: every installed skill)."""
    t = settings.topology
    skills = plugins.installed_skills() if skills is None else skills

    def durable(
        name: str, filter_subject: str, *, max_ack_pending: int = 10_000, bounded: bool = True
    ) -> ConsumerConfig:
        return ConsumerConfig(
            durable_name=name,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=t.ack_wait_s,
            # Handlers dead-letter on delivery max_deliver themselves; the one extra
            # delivery lets them do so for a message whose last handler crashed.
            # Results and events are never given up on (their handlers are idempotent).
            max_deliver=t.max_deliver + 1 if bounded else -1,
            filter_subject=filter_subject,
            max_ack_pending=max_ack_pending,
            max_waiting=512,
        )

    out = [
        (
            # a job's message stays pending as its timer until the job ends (nak with a
            # delay), so pending messages are running jobs; the handler itself gives up
            # on an intake that keeps failing (delivery count over max_deliver)
            subjects.JOBS_STREAM,
            durable(
                subjects.ORCHESTRATOR_CONSUMER,
                subjects.JOBS_SUBJECT,
                max_ack_pending=_RUNNING_JOBS_MAX,
                bounded=False,
            ),
        ),
        (
            subjects.RESULTS_STREAM,
            durable(
                subjects.ORCHESTRATOR_RESULTS_CONSUMER, subjects.RESULTS_SUBJECTS, bounded=False
            ),
        ),
        (
            subjects.AGENT_EVENTS_STREAM,
            durable(subjects.ARCHIVER_CONSUMER, ">", max_ack_pending=50_000, bounded=False),
        ),
    ]
    # each configured tenant's jobs have their own consumer: the orchestrator shares its
    # intake among tenants by weight, as workers do their tasks
    for tenant in tenant_names(settings.tenants)[1:]:
        cfg = durable(
            intake_consumer(tenant),
            intake_subject(tenant),
            max_ack_pending=_RUNNING_JOBS_MAX,
            bounded=False,
        )
        out.append((subjects.JOBS_STREAM, cfg))
    for skill in skills:
        # one consumer per priority (`agentbus.contract.priority` says why)
        for priority in PRIORITIES:
            cfg = durable(task_consumer(skill, priority), task_subject(skill, priority))
            out.append((subjects.TASKS_STREAM, cfg))
            # and per configured tenant (`agentbus.contract.tenants`); a capped tenant's
            # hold no more than its cap (one priority alone: the permits hold them all)
            for tenant in tenant_names(settings.tenants)[1:]:
                cap = tenant_limits(tenant, settings.tenants).max_in_flight
                cfg = durable(
                    tenant_task_consumer(skill, priority, tenant),
                    tenant_task_subject(skill, priority, tenant),
                    max_ack_pending=cap or 10_000,
                )
                out.append((subjects.TASKS_STREAM, cfg))
        for tenant, cap in _capped(settings):
            # its run permits: redelivered for ever (never acked, handed back by `nak`),
            # at most all of them out (one more allowed: a pull finds none rather than
            # being refused for max_ack_pending)
            cfg = durable(
                slot_consumer(skill, tenant),
                slot_subject(skill, tenant, cap),
                max_ack_pending=cap + 1,
                bounded=False,
            )
            out.append((subjects.TASKS_STREAM, cfg))
    return out


def _capped(settings: Settings) -> list[tuple[str, int]]:
    """The configured tenants with a cap of tasks in flight, and their caps."""
    out: list[tuple[str, int]] = []
    for tenant in tenant_names(settings.tenants)[1:]:
        cap = tenant_limits(tenant, settings.tenants).max_in_flight
        if cap is not None:
            out.append((tenant, cap))
    return out


async def _ensure_permits(
    js: JetStreamContext, subject: str, cap: int, report: ProvisionReport
) -> None:
    """`cap` run permits on `subject` (the cap is in the subject: a new cap gets a subject
    of its own, and its consumer is pointed there; the permits of the old cap stay unused,
    nothing is deleted). Each permit has its own message id, so that provisioners running
    at once add each one once."""
    info = await js.stream_info(subjects.TASKS_STREAM, subjects_filter=subject)
    have = int((info.state.subjects or {}).get(subject, 0))
    name = f"permits {subject}"
    if have >= cap:
        report.unchanged.append(name)
        return
    for i in range(have, cap):
        await js.publish(subject, b"", stream=subjects.TASKS_STREAM, headers={
            "Nats-Msg-Id": f"{subject}:{i}"})  # fmt: skip
    (report.updated if have else report.created).append(name)


async def _ensure_stream(js: JetStreamContext, cfg: StreamConfig, report: ProvisionReport) -> None:
    try:
        info = await js.stream_info(cfg.name or "")
    except nats.js.errors.NotFoundError:
        await js.add_stream(cfg)
        report.created.append(f"stream {cfg.name}")
        return
    current = info.config
    wanted = cfg.as_dict()
    have = current.as_dict()
    if all(have.get(k) == v for k, v in wanted.items()):
        report.unchanged.append(f"stream {cfg.name}")
        return
    await js.update_stream(cfg)
    report.updated.append(f"stream {cfg.name}")


async def _ensure_consumer(
    js: JetStreamContext, stream: str, cfg: ConsumerConfig, report: ProvisionReport
) -> None:
    name = f"consumer {stream}/{cfg.durable_name}"
    try:
        info = await js.consumer_info(stream, cfg.durable_name or "")
    except nats.js.errors.NotFoundError:
        await js.add_consumer(stream, cfg)
        report.created.append(name)
        return
    have = info.config.as_dict()
    if all(have.get(k) == v for k, v in cfg.as_dict().items()):
        report.unchanged.append(name)
        return
    await js.add_consumer(stream, cfg)  # an existing durable is updated in place
    report.updated.append(name)


async def provision(
    js: JetStreamContext,
    settings: Settings,
    *,
    skills: Sequence[str] | None = None,
) -> ProvisionReport:
    """Create or update everything; raises `TopologyError` naming the object that failed."""
    report = ProvisionReport()
    t = settings.topology
    what = "?"
    try:
        for scfg in stream_configs(settings):
            what = f"stream {scfg.name}"
            await _ensure_stream(js, scfg, report)
        for stream, ccfg in consumer_configs(settings, skills=skills):
            what = f"consumer {stream}/{ccfg.durable_name}"
            await _ensure_consumer(js, stream, ccfg, report)
        for skill in plugins.installed_skills() if skills is None else skills:
            for tenant, cap in _capped(settings):
                subject = slot_subject(skill, tenant, cap)
                what = f"permits {subject}"
                await _ensure_permits(js, subject, cap, report)
        for bucket, ttl in (
            (subjects.JOBS_BUCKET, t.jobs_ttl_s),
            (subjects.JOB_PARTS_BUCKET, t.jobs_ttl_s),
            # two keys per tenant (jobs this minute, tokens this window), no expiry
            (subjects.TENANTS_BUCKET, 0.0),
        ):
            what = f"KV bucket {bucket}"
            # gets by `$JS.API.DIRECT.GET.KV_{bucket}.$KV.{bucket}.{key}`: a subject NATS
            # permissions can restrict (a tenant's users read only their jobs' states)
            try:
                info = await js.stream_info(f"KV_{bucket}")
            except nats.js.errors.NotFoundError:
                await js.create_key_value(
                    KeyValueConfig(
                        bucket=bucket,
                        history=1,
                        ttl=ttl or None,
                        storage=_storage(settings),
                        replicas=t.replicas,
                        max_value_size=settings.limits.max_message_bytes,
                        direct=True,
                    )
                )
                report.created.append(what)
            else:
                if info.config.allow_direct:
                    report.unchanged.append(what)
                else:  # provisioned by an older release
                    info.config.allow_direct = True
                    await js.update_stream(info.config)
                    report.updated.append(what)
        what = f"object store {subjects.DOCUMENTS_BUCKET}"
        try:
            await js.object_store(subjects.DOCUMENTS_BUCKET)
            report.unchanged.append(what)
        except nats.js.errors.NotFoundError:
            await js.create_object_store(
                subjects.DOCUMENTS_BUCKET,
                ObjectStoreConfig(
                    bucket=subjects.DOCUMENTS_BUCKET,
                    ttl=t.jobs_ttl_s,
                    storage=_storage(settings),
                    replicas=t.replicas,
                ),
            )
            report.created.append(what)
    except (nats.errors.Error, TimeoutError) as e:
        raise TopologyError(f"provisioning {what} failed: {e or type(e).__name__}") from e
    log.info(
        "topology: %d created, %d updated, %d unchanged",
        len(report.created), len(report.updated), len(report.unchanged),
    )  # fmt: skip
    return report
