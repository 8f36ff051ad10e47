"""The event-archiver: a durable consumer on AGENT_EVENTS writing batches into SQL,
acking only after the commit; answers history queries on `rpc.history`."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar, Final

from nats.aio.msg import Msg

from agentbus.bus.consume import BatchConsumerLoop, ConsumerLoop
from agentbus.bus.core import Bus
from agentbus.contract import subjects
from agentbus.contract.errors import MessageDecodeError
from agentbus.contract.headers import TRACEPARENT_HEADER, TRACESTATE_HEADER
from agentbus.contract.messages import (
    MAX_HISTORY_PAGE_EVENTS,
    AgentEvent,
    HistoryQuery,
    HistoryReply,
    decode,
    decode_events,
    encode,
)
from agentbus.contract.settings import Settings
from agentbus.observability import metrics, telemetry
from agentbus.runtime.service import AgentService
from agentbus_event_archiver.errors import ArchiveError
from agentbus_event_archiver.paging import (
    CursorError,
    HistoryKey,
    PageBuilder,
    decode_cursor,
    fill_page,
    reply_budget_bytes,
)
from agentbus_event_archiver.store import EventStore, redact_url

__all__ = ["EventArchiver"]

log = logging.getLogger("event_archiver")

_MAX_QUERY_BYTES: Final = 64 * 1024


def _ensure_sqlite_dir(url: str) -> None:
    prefix = "sqlite+aiosqlite:///"
    if url.startswith(prefix) and url[len(prefix) :] not in ("", ":memory:"):
        directory = Path(url[len(prefix) :]).parent
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # e.g. a read-only root filesystem: point it at a volume
            raise ArchiveError(
                f"cannot create the archive directory {directory} of "
                f"AGENTBUS_ARCHIVER__DATABASE_URL: {e.strerror or e}"
            ) from e


def _trace_headers(event: AgentEvent) -> dict[str, str] | None:
    if event.traceparent is None:
        return None
    headers = {TRACEPARENT_HEADER: event.traceparent}
    if event.tracestate:
        headers[TRACESTATE_HEADER] = event.tracestate
    return headers


class EventArchiver(AgentService):
    name: ClassVar[str] = "archiver"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.cfg = settings.archiver
        _ensure_sqlite_dir(self.cfg.database_url)
        self.store = EventStore(self.cfg.database_url)

    async def setup(self, bus: Bus) -> list[ConsumerLoop]:
        await self.store.create_schema()
        metrics.init_archiver(bus.service)
        log.info("archive at %s", redact_url(self.cfg.database_url))
        for subject in (subjects.RPC_HISTORY, subjects.RPC_HISTORY_TENANTS):
            await bus.nc.subscribe(subject, queue=subjects.ARCHIVER_QUEUE, cb=self._on_history)
        return [
            BatchConsumerLoop(
                bus,
                stream=subjects.AGENT_EVENTS_STREAM,
                durable=subjects.ARCHIVER_CONSUMER,
                batch_handler=self.handle_batch,
                batch_size=self.cfg.batch_size,
                fetch_timeout_s=self.cfg.fetch_timeout_s,
                linger_s=self.cfg.linger_s,
            )
        ]

    async def teardown(self) -> None:
        await self.store.close()

    async def handle_batch(self, msgs: list[Msg]) -> None:
        bus = self.bus
        assert bus is not None
        rows: list[tuple[AgentEvent, str, int]] = []
        contexts: list[Mapping[str, str] | None] = []
        good: list[Msg] = []
        for msg in msgs:
            try:
                _env, events = decode_events(
                    msg.data, max_bytes=self.settings.limits.max_message_bytes
                )
            except MessageDecodeError as e:
                # no event about it: a rejected event would feed the stream it came from
                metrics.MESSAGES_REJECTED.labels(bus.service, subjects.AGENT_EVENTS_STREAM).inc()
                await bus.dead_letter(
                    msg, reason=f"undecodable event: {e}", stream=subjects.AGENT_EVENTS_STREAM
                )
                continue
            seq = int(msg.metadata.sequence.stream) if msg.metadata else 0
            for ev in events:
                rows.append((ev, msg.subject, seq))
                # an event of a batch carries its step's trace context itself
                contexts.append(_trace_headers(ev) if len(events) > 1 else msg.headers)
            good.append(msg)
        if not rows:
            return
        # each archived event is a span of its job's trace (child of the emitter's span);
        # the batch commit is one span linked to all of them
        event_spans = (
            [
                telemetry.start_span(
                    "archive event",
                    headers=hdrs,
                    attributes={"agentbus.event": e.kind.value, "agentbus.job_id": e.job_id or ""},
                )
                for hdrs, (e, _subject, _seq) in zip(contexts, rows, strict=True)
            ]
            if telemetry.tracing_enabled()
            else []
        )
        try:
            with telemetry.span(
                "archive commit", links=event_spans, attributes={"agentbus.events": len(rows)}
            ):
                started = time.perf_counter()
                await self.store.insert(rows)
                elapsed = time.perf_counter() - started
        finally:
            telemetry.end_spans(event_spans)
        metrics.ARCHIVE_COMMIT_SECONDS.labels(bus.service).observe(elapsed)
        metrics.EVENTS_ARCHIVED.labels(bus.service, "stored").inc(len(rows))
        now = datetime.now(UTC)
        lag = metrics.ARCHIVE_LAG_SECONDS.labels(bus.service)
        for event, _subject, _seq in rows:
            ts = event.ts if event.ts.tzinfo is not None else event.ts.replace(tzinfo=UTC)
            lag.observe(max((now - ts).total_seconds(), 0.0))
        await asyncio.gather(*(m.ack() for m in good))

    async def _on_history(self, msg: Msg) -> None:
        assert self.bus is not None
        if not msg.reply:
            return
        sender = self.bus.agent_id
        try:
            q = decode(msg.data, HistoryQuery, max_bytes=_MAX_QUERY_BYTES).payload
        except MessageDecodeError as e:
            data = encode(HistoryReply(job_id="invalid", error=str(e)), sender=sender)
        else:
            refusal = subjects.tenant_request_refusal(
                msg.subject, q.job_id, base=subjects.RPC_HISTORY
            )
            try:
                if refusal is not None:
                    raise ValueError(refusal)
                data = await self._history_reply(q)
            except (ArchiveError, CursorError, ValueError) as e:
                data = encode(HistoryReply(job_id=q.job_id, error=str(e)), sender=sender)
        try:
            await msg.respond(data)
        except Exception as e:  # the requester is gone, or the connection dropped
            log.warning("reply on %s not sent: %s", subjects.RPC_HISTORY, e)

    async def _history_reply(self, q: HistoryQuery) -> bytes:
        """One page of `q.job_id`'s history, encoded within the server's max_payload (see
        `event_archiver.paging`)."""
        assert self.bus is not None
        page = PageBuilder(
            q.job_id,
            sender=self.bus.agent_id,
            budget_bytes=reply_budget_bytes(self.bus.nc.max_payload),
        )

        async def fetch(
            after: HistoryKey | None, limit: int
        ) -> list[tuple[HistoryKey, AgentEvent]]:
            return await self.store.history_page(q.job_id, after=after, limit=limit)

        return await fill_page(
            fetch,
            page,
            after=decode_cursor(q.after) if q.after is not None else None,
            limit=min(q.limit, MAX_HISTORY_PAGE_EVENTS),
        )
