"""`AgentBusClient`: submit documents, wait for summaries, watch progress, read history.

    async with AgentBusClient("nats://127.0.0.1:4222") as client:
        job_id = await client.submit("long text ...")
        state = await client.wait(job_id, timeout_s=60)
        print(state.summary)

A job is accepted when JetStream acknowledges its publish on `jobs.submit` (the PubAck);
documents above the inline limit go to the object store first and travel by reference.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Final, Self

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg

from agentbus.bus.core import Bus
from agentbus.bus.deadletters import (
    DeadLetter,
    ReplayResult,
    list_dead_letters,
    replay_dead_letter,
)
from agentbus.bus.discovery import list_workers
from agentbus.bus.documents import check_document, fetch_document, read_document, store_document
from agentbus.bus.job_list import JOBS_STREAM_NAME, recent_job_states
from agentbus.bus.ordered_read import SubjectReader
from agentbus.bus.tenant_usage import tenant_report
from agentbus.client.rpc import RpcResult, fan_out, request_summary
from agentbus.client.stream import PartialResult, read_partial_results
from agentbus.contract import subjects
from agentbus.contract.errors import (
    BusError,
    JobExistsError,
    JobFailed,
    MessageDecodeError,
    NoStreamError,
    RpcError,
)
from agentbus.contract.messages import (
    HISTORY_PAGE_EVENTS,
    MAX_HISTORY_PAGE_EVENTS,
    AgentEvent,
    CancelReply,
    CancelRequest,
    EventKind,
    HistoryQuery,
    HistoryReply,
    JobState,
    JobStatus,
    JobSubmit,
    decode,
    decode_job_state,
    encode,
    new_id,
)
from agentbus.contract.priority import Priority
from agentbus.contract.settings import LimitsSettings, NatsSettings, TenantsSettings
from agentbus.contract.tenants import DEFAULT_TENANT
from agentbus.contract.workers import WorkerInfo
from agentbus.observability import telemetry

__all__ = ["AgentBusClient"]

_KV_OPERATION: Final = "KV-Operation"


def _is_put(msg: Msg) -> bool:
    """A KV entry with a value (not a delete or purge marker)."""
    return bool(msg.data) and (msg.headers or {}).get(_KV_OPERATION) not in ("DEL", "PURGE")


_JOB_END_EVENTS: Final = frozenset(
    {EventKind.JOB_COMPLETED, EventKind.JOB_FAILED, EventKind.JOB_CANCELED}
)
_HISTORY_RETRY_FIRST_S: Final = 0.05
_HISTORY_RETRY_MAX_S: Final = 1.0
JOBS_LIST_MAX: Final = 500
"""The most jobs one `jobs()` call returns."""
JOBS_SCAN_MAX: Final = 5000
"""The most job states one `jobs()` call reads (the bucket has no index: see
`agentbus.bus.job_list`)."""


class AgentBusClient:
    def __init__(
        self,
        nats_settings: NatsSettings | str,
        *,
        limits: LimitsSettings | None = None,
        client_id: str | None = None,
        tenant: str | None = None,
    ) -> None:
        """`tenant`: submit every job as this tenant (on `jobs.submit.{tenant}`, which
        NATS permissions reserve for the tenant's users); None: the `default` tenant,
        unless `submit(tenant=...)` says otherwise."""
        self.nats_settings = (
            NatsSettings(url=nats_settings) if isinstance(nats_settings, str) else nats_settings
        )
        self.limits = limits or LimitsSettings()
        self.client_id = client_id or f"client-{new_id()[:12]}"
        self.tenant = None if tenant is None else subjects.check_token(tenant, field="tenant")
        self._bus: Bus | None = None
        self._borrowed = False

    @classmethod
    def over(
        cls,
        bus: Bus,
        *,
        nats_settings: NatsSettings,
        limits: LimitsSettings | None = None,
        tenant: str | None = None,
    ) -> AgentBusClient:
        """A client on a connection its caller owns (a service's, e.g. the gateway's,
        made with `nats_settings`): `close` leaves that connection open."""
        client = cls(nats_settings, limits=limits, client_id=bus.agent_id, tenant=tenant)
        client._bus = bus
        client._borrowed = True
        return client

    async def connect(self) -> Self:
        if self._bus is None:
            self._bus = await Bus.connect(
                self.nats_settings, agent_id=self.client_id, service="client"
            )
            telemetry.adopt_global_tracing(service="client", agent_id=self.client_id)
        return self

    async def close(self) -> None:
        if self._bus is not None:
            if not self._borrowed:
                await self._bus.close()
            self._bus = None

    async def __aenter__(self) -> Self:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def bus(self) -> Bus:
        if self._bus is None:
            raise BusError("client is not connected: use `async with AgentBusClient(...)`")
        return self._bus

    # --- submit ----------------------------------------------------------------------

    async def submit(
        self,
        text: str | bytes,
        *,
        job_id: str | None = None,
        title: str = "",
        summary_chars: int | None = None,
        name: str = "document",
        timeout_s: float | None = None,
        skill: str = subjects.SUMMARIZE_SKILL,
        priority: Priority | str = Priority.NORMAL,
        tenant: str | None = None,
    ) -> str:
        """Submit one document; returns its job id once JetStream has accepted it.

        A job of a tenant other than `default` is named in that tenant's namespace,
        `{tenant}.{id}` (`job_id` is qualified so if it is not already), the only job ids
        that tenant's users may read. A job id names one document: submitting the same
        document under an existing id returns that job (nothing new runs); a different one
        raises `JobExistsError`.
        `timeout_s` is the job's deadline (default: the orchestrator's
        `AGENTBUS_ORCHESTRATOR__JOB_TIMEOUT_S`). `priority` (`high`, `normal`, `low`):
        workers take a higher priority's tasks first, without starving the lower ones.
        `tenant` (default: the client's): whose job it is, for fair share, caps, rates
        and budgets; a tenant that is not configured counts as `default`.
        Raises `DocumentRejected` (empty, not UTF-8 text, above the size cap) and
        `ValueError` for an unknown priority or an invalid tenant name."""
        owner = tenant if tenant is not None else self.tenant
        if owner is not None:
            subjects.check_token(owner, field="tenant")
        try:
            level = Priority(priority)
        except ValueError:
            choices = ", ".join(p.value for p in Priority)
            raise ValueError(f"priority {priority!r} is not one of {choices}") from None
        data = text.encode() if isinstance(text, str) else text
        check_document(data, max_bytes=self.limits.max_document_bytes, name=name)
        sha256 = hashlib.sha256(data).hexdigest()
        if job_id is not None:
            subjects.check_job_id(job_id)
            if owner is not None and owner != DEFAULT_TENANT:
                job_id = subjects.qualify_job_id(job_id, owner)
            existing = await self.status(job_id)
            if existing is not None:
                if existing.document_sha256 not in (None, sha256):
                    raise JobExistsError(
                        f"job {job_id} exists with a different document "
                        f"(sha256 {existing.document_sha256[:12]}..., this one "
                        f"{sha256[:12]}...): submit it under a new job id"
                    )
                return job_id  # the same document: that job, idempotently
        if job_id is None:
            job_id = new_id()
            if owner is not None and owner != DEFAULT_TENANT:
                job_id = subjects.qualify_job_id(job_id, owner)
        job = JobSubmit(
            job_id=job_id, skill=subjects.check_token(skill, field="skill"), title=title,
            summary_chars=summary_chars, document_sha256=sha256, timeout_s=timeout_s,
            priority=None if level is Priority.NORMAL else level, tenant=owner,
        )  # fmt: skip
        # the job's trace starts here; its context travels in the job message's headers
        attributes = {"agentbus.job_id": job_id, "messaging.destination": subjects.JOBS_SUBJECT}
        with telemetry.span("submit job", kind="producer", attributes=attributes):
            await self._submit(job, data)
        return job_id

    async def _submit(self, job: JobSubmit, data: bytes) -> None:
        if len(data) > self.limits.inline_limit_bytes:
            ref = await store_document(
                self.bus.js, name=f"{job.job_id}.txt", data=data, sha256=job.document_sha256
            )
            job = job.model_copy(update={"document": ref})
        else:
            job = job.model_copy(update={"text": data.decode()})
        if job.tenant is not None:
            try:
                await self.bus.publish(
                    subjects.tenant_submit(job.tenant), job, msg_id=job.job_id,
                    stream=subjects.JOBS_STREAM,
                )  # fmt: skip
                return
            except NoStreamError:
                # a tenant that is not configured (no stream takes its subject): the job
                # goes in as the default tenant's, its claim kept (a tenant's own user may
                # not publish there, and gets the permission error instead)
                pass
        await self.bus.publish(
            subjects.JOBS_SUBJECT, job, msg_id=job.job_id, stream=subjects.JOBS_STREAM
        )

    async def submit_file(
        self,
        path: Path | str,
        *,
        job_id: str | None = None,
        summary_chars: int | None = None,
        priority: Priority | str = Priority.NORMAL,
    ) -> str:
        path = Path(path)
        data = read_document(path, max_bytes=self.limits.max_document_bytes)
        return await self.submit(
            data, job_id=job_id, title=path.name, summary_chars=summary_chars, name=str(path),
            priority=priority,
        )  # fmt: skip

    # --- state -----------------------------------------------------------------------

    async def status(self, job_id: str) -> JobState | None:
        # a tenant's client reads by direct get only (its user may not ask the bucket's
        # stream info, which lists every job id)
        kv = await self.bus.kv(subjects.JOBS_BUCKET, direct=self.tenant is not None)
        try:
            entry = await kv.get(subjects.check_job_id(job_id))
        except nats.js.errors.KeyNotFoundError:
            return None
        except nats.errors.NoRespondersError as e:
            raise BusError(
                f"KV bucket {subjects.JOBS_BUCKET!r} not found: run `agentbus provision`"
            ) from e
        return decode_job_state(entry.value) if entry.value else None

    async def jobs(
        self,
        *,
        limit: int = 50,
        tenant: str | None = None,
        status: JobStatus | str | None = None,
        max_scan: int = JOBS_SCAN_MAX,
    ) -> list[JobState]:
        """Recent jobs, newest first: the `limit` (1 to `JOBS_LIST_MAX`) most recently
        written states of `tenant`'s jobs (None: every tenant's) in `status` (None: any),
        ordered by creation time. Reads at most `max_scan` states, newest written first:
        a job not written among those is not listed (see `agentbus.bus.job_list`).
        Raises `ValueError` for a bad limit, tenant or status."""
        if not 1 <= limit <= JOBS_LIST_MAX:
            raise ValueError(f"limit={limit}: must be from 1 to {JOBS_LIST_MAX}")
        if tenant is not None:
            subjects.check_token(tenant, field="tenant")
        try:
            wanted = None if status is None else JobStatus(status)
        except ValueError:
            choices = ", ".join(s.value for s in JobStatus)
            raise ValueError(f"status {status!r} is not one of {choices}") from None

        def keep(state: JobState) -> bool:
            return (tenant is None or state.tenant == tenant) and (
                wanted is None or state.status is wanted
            )

        states = await recent_job_states(
            self.bus.js, want=limit, keep=keep, max_scan=min(max_scan, JOBS_SCAN_MAX)
        )
        return sorted(states, key=lambda s: (s.created_at, s.job_id), reverse=True)

    async def watch(
        self, job_id: str, *, timeout_s: float | None = None
    ) -> AsyncIterator[JobState]:
        """Yield the job's state on every change until it is completed or failed (and
        again after each quiet spell of 2 s, read afresh)."""
        if self.tenant is None:  # a clear error when it is not provisioned
            await self.bus.kv(subjects.JOBS_BUCKET)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        # its own consumer on the key's subject (a tenant's users may create no other)
        reader = SubjectReader(
            self.bus.js, self.bus.nc, stream=JOBS_STREAM_NAME,
            subject=subjects.job_state_subject(job_id), last_only=True,
        )  # fmt: skip
        try:
            while True:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"job {job_id} not finished within {timeout_s}s")
                msgs = await reader.read(batch=16, wait_s=min(left or 2.0, 2.0))
                states: list[JobState | None]
                if msgs:
                    states = [decode_job_state(m.data) for m in msgs if _is_put(m)]
                else:  # a quiet spell: read the state once
                    states = [await self.status(job_id)]
                for state in states:
                    if state is None:
                        continue
                    yield state
                    if state.status.terminal:
                        return
        finally:
            await reader.close()

    def stream(self, job_id: str, *, after: int | None = None) -> AsyncIterator[PartialResult]:
        """The job's live partial results (`progress.{job_id}`), in order, until its final
        item (`completed` or `failed`): each has a `.cursor`, a `.kind` and its content.
        `after=cursor` resumes right after that item (nothing missed, nothing repeated);
        a finished job replays within the PROGRESS stream's retention."""
        subjects.check_job_id(job_id)
        return read_partial_results(
            self.bus.js, job_id, nc=self.bus.nc, after=after,
            max_bytes=self.limits.max_message_bytes,
        )  # fmt: skip

    async def wait(
        self, job_id: str, *, timeout_s: float = 300.0, raise_on_failure: bool = False
    ) -> JobState:
        """Wait until the job is completed or failed; returns its final state."""
        last: JobState | None = None
        async for state in self.watch(job_id, timeout_s=timeout_s):
            last = state
        assert last is not None
        if last.summary is None and last.summary_ref is not None:
            last.summary = await self.fetch_summary(last)
        if raise_on_failure and last.error is not None and last.summary is None:
            verb = "was" if last.status is JobStatus.CANCELED else "failed:"
            raise JobFailed(f"job {job_id} {verb} {last.error}")
        return last

    async def fetch_summary(self, state: JobState) -> str | None:
        """The final summary of a job, read from the object store if it travelled by
        reference (above the inline limit)."""
        if state.summary is not None or state.summary_ref is None:
            return state.summary
        return (await fetch_document(self.bus.js, state.summary_ref)).decode()

    # --- cancel ----------------------------------------------------------------------

    async def cancel(
        self, job_id: str, *, reason: str = "", timeout_s: float = 10.0
    ) -> CancelReply:
        """Cancel a job: asks an orchestrator on `jobs.cancel`, which writes the terminal
        status `canceled` and tells every worker (queued tasks dropped, running ones
        interrupted, no reduce after it, the job's documents removed). Idempotent: a job
        already finished or canceled is left as it is, and the reply says so
        (`canceled` is True only for the call that canceled it; `detail` is one line).
        Raises `BusError` when no orchestrator answers or the cancel failed."""
        subject = subjects.cancel_subject(job_id)  # jobs.cancel.{tenant} for a tenant's
        request = CancelRequest(job_id=job_id, reason=reason[:512])
        try:
            msg = await self.bus.nc.request(
                subject, encode(request, sender=self.client_id), timeout=timeout_s
            )
        except nats.errors.NoRespondersError as e:
            raise BusError(
                f"no orchestrator answers on {subject}: job {job_id} not canceled"
            ) from e
        except (TimeoutError, nats.errors.TimeoutError) as e:
            raise BusError(
                f"no answer on {subject} within {timeout_s}s: job {job_id} may or may not "
                "be canceled (cancel is idempotent: ask again)"
            ) from e
        try:
            reply = decode(msg.data, CancelReply).payload
        except MessageDecodeError as e:
            raise BusError(f"bad reply on {subject}: {e}") from e
        if reply.error:
            raise BusError(reply.error)
        return reply

    # --- operations: workers, dead letters -------------------------------------------

    async def workers(self, *, timeout_s: float = 2.0) -> list[WorkerInfo]:
        """Every running worker (nats.micro discovery), with its state and in-flight."""
        return await list_workers(self.bus.nc, timeout_s=timeout_s)

    async def dead_letters(
        self, *, stream: str | None = None, limit: int = 1000
    ) -> list[DeadLetter]:
        """Dead letters, oldest first (`stream`: only those of one stream)."""
        return await list_dead_letters(self.bus.js, stream=stream, limit=limit)

    async def replay(self, dlq_id: int, *, keep: bool = False) -> ReplayResult:
        """Republish dead letter `dlq_id` to its original subject (`agentbus dlq replay`)."""
        return await replay_dead_letter(self.bus.js, dlq_id, keep=keep)

    async def tenants(
        self, settings: TenantsSettings, *, skills: Sequence[str] = (subjects.SUMMARIZE_SKILL,)
    ) -> list[dict[str, object]]:
        """Per tenant of `settings` (`default` first): its limits, use this minute and
        this budget window, tasks queued and in flight over `skills` (`agentbus tenants`)."""
        return await tenant_report(self.bus, settings, skills=skills)

    # --- request/reply (at-most-once, low latency) -------------------------------------

    async def summarize_sync(
        self,
        text: str,
        *,
        max_chars: int = 1200,
        timeout_s: float = 30.0,
        skill: str = subjects.SUMMARIZE_SKILL,
    ) -> str:
        """Summarize `text` now through `rpc.{skill}` (one worker, no job, no retry).

        Raises `RpcError` on no responders, no reply within `timeout_s`, or the worker's
        error."""
        result = await request_summary(
            self.bus.nc, text, sender=self.client_id, max_chars=max_chars, timeout_s=timeout_s,
            skill=skill, max_bytes=self.limits.max_message_bytes,
        )  # fmt: skip
        if result.error is not None:
            raise RpcError(result.error)
        return result.summary or ""

    async def fan_out(
        self,
        texts: Sequence[str],
        *,
        max_chars: int = 1200,
        timeout_s: float = 30.0,
        concurrency: int = 64,
        skill: str = subjects.SUMMARIZE_SKILL,
    ) -> list[RpcResult]:
        """Summarize many texts in parallel through `rpc.{skill}`; results in input order,
        each with its own `error` (timeout, no responders, the worker's error)."""
        return await fan_out(
            self.bus.nc, texts, sender=self.client_id, max_chars=max_chars, timeout_s=timeout_s,
            concurrency=concurrency, skill=skill, max_bytes=self.limits.max_message_bytes,
        )  # fmt: skip

    async def summarize(self, text: str, *, timeout_s: float = 300.0, **kw: object) -> str:
        """Submit and wait; returns the summary or raises `JobFailed`."""
        job_id = await self.submit(text, **kw)  # type: ignore[arg-type]  # submit's keywords, checked there
        state = await self.wait(job_id, timeout_s=timeout_s, raise_on_failure=True)
        return state.summary or ""

    async def history(
        self,
        job_id: str,
        *,
        timeout_s: float = 5.0,
        page_size: int = HISTORY_PAGE_EVENTS,
        wait_for_end_s: float = 0.0,
    ) -> list[AgentEvent]:
        """Every archived event of a job, oldest first (asks the event-archiver on
        `rpc.history`, page by page; `timeout_s` is the wait for each page).

        The archive is eventually consistent: a job's last events reach it a moment after
        the job ends. With `wait_for_end_s` > 0 the history is read again (backing off)
        until it holds the job's end (job.completed, job.failed or job.canceled); after
        that many seconds without it, TimeoutError."""
        deadline = time.monotonic() + wait_for_end_s
        delay_s = _HISTORY_RETRY_FIRST_S
        while True:
            events = [
                event
                async for page in self.history_pages(
                    job_id, timeout_s=timeout_s, page_size=page_size
                )
                for event in page
            ]
            if wait_for_end_s <= 0 or any(e.kind in _JOB_END_EVENTS for e in events):
                return events
            left_s = deadline - time.monotonic()
            if left_s <= 0:
                raise TimeoutError(
                    f"the archive holds {len(events)} event(s) of job {job_id} but not its "
                    f"end after {wait_for_end_s:g}s (is the job still running?)"
                )
            await asyncio.sleep(min(delay_s, left_s))
            delay_s = min(delay_s * 2, _HISTORY_RETRY_MAX_S)

    async def history_pages(
        self,
        job_id: str,
        *,
        timeout_s: float = 5.0,
        page_size: int = HISTORY_PAGE_EVENTS,
    ) -> AsyncIterator[list[AgentEvent]]:
        """A job's archived events in pages of at most `page_size` (fewer when a page
        would not fit in one NATS message), oldest first, until the last one. Events
        archived during the walk are included if they sort after the page being read."""
        job_id = subjects.check_job_id(job_id)
        if not 1 <= page_size <= MAX_HISTORY_PAGE_EVENTS:
            raise ValueError(
                f"page_size must be between 1 and {MAX_HISTORY_PAGE_EVENTS}, got {page_size}"
            )
        after: str | None = None
        for page in itertools.count(1):
            query = HistoryQuery(job_id=job_id, limit=page_size, after=after)
            reply = await self._history_page(query, page=page, timeout_s=timeout_s)
            if reply.events:
                yield list(reply.events)
            if reply.next is None:
                if len(reply.events) >= page_size:  # an archiver that answers one page only
                    raise BusError(
                        f"the event-archiver on {subjects.RPC_HISTORY} answered a full page "
                        f"of job {job_id} without a cursor: it does not page (older than "
                        "this client); upgrade it"
                    )
                return
            if reply.next == after:
                raise BusError(
                    f"the cursor of {subjects.RPC_HISTORY} did not advance on page {page} "
                    f"of job {job_id}"
                )
            after = reply.next

    async def _history_page(
        self, query: HistoryQuery, *, page: int, timeout_s: float
    ) -> HistoryReply:
        subject = subjects.history_subject(query.job_id)  # rpc.history.{tenant} for a tenant's
        try:
            msg = await self.bus.nc.request(
                subject, encode(query, sender=self.client_id), timeout=timeout_s
            )
        except nats.errors.NoRespondersError as e:
            raise BusError(f"no event-archiver answers on {subject}") from e
        except (TimeoutError, nats.errors.TimeoutError) as e:
            raise BusError(
                f"no answer on {subject} within {timeout_s}s (page {page} of job {query.job_id})"
            ) from e
        try:
            reply = decode(msg.data, HistoryReply).payload
        except MessageDecodeError as e:
            raise BusError(f"bad reply on {subject}: {e}") from e
        if reply.error:
            raise BusError(f"history of job {query.job_id} on {subject}: {reply.error}")
        return reply
