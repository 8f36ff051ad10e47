"""The event-archiver: a durable consumer on AGENT_EVENTS writing batches into SQL,
acking only after the commit; answers history queries on `rpc.history`."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import ClassVar

from nats.aio.msg import Msg

from agentbus import metrics, subjects
from agentbus.bus import BatchConsumerLoop, Bus, ConsumerLoop
from agentbus.errors import MessageDecodeError
from agentbus.messages import AgentEvent, HistoryQuery, HistoryReply, decode, encode
from agentbus.service import AgentService
from agentbus.settings import Settings
from event_archiver.errors import ArchiveError
from event_archiver.store import EventStore, redact_url

__all__ = ["EventArchiver"]

log = logging.getLogger("event_archiver")


def _ensure_sqlite_dir(url: str) -> None:
    prefix = "sqlite+aiosqlite:///"
    if url.startswith(prefix) and url[len(prefix) :] not in ("", ":memory:"):
        Path(url[len(prefix) :]).parent.mkdir(parents=True, exist_ok=True)


class EventArchiver(AgentService):
    name: ClassVar[str] = "archiver"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.cfg = settings.archiver
        _ensure_sqlite_dir(self.cfg.database_url)
        self.store = EventStore(self.cfg.database_url)

    async def setup(self, bus: Bus) -> list[ConsumerLoop]:
        await self.store.create_schema()
        log.info("archive at %s", redact_url(self.cfg.database_url))
        await bus.nc.subscribe(
            subjects.RPC_HISTORY, queue=subjects.ARCHIVER_QUEUE, cb=self._on_history
        )
        return [
            BatchConsumerLoop(
                bus,
                stream=subjects.AGENT_EVENTS_STREAM,
                durable=subjects.ARCHIVER_CONSUMER,
                batch_handler=self.handle_batch,
                batch_size=self.cfg.batch_size,
                fetch_timeout_s=self.cfg.fetch_timeout_s,
            )
        ]

    async def teardown(self) -> None:
        await self.store.close()

    async def handle_batch(self, msgs: list[Msg]) -> None:
        bus = self.bus
        assert bus is not None
        rows: list[tuple[AgentEvent, str, int]] = []
        good: list[Msg] = []
        for msg in msgs:
            try:
                ev = decode(msg.data, AgentEvent, max_bytes=self.settings.limits.max_message_bytes)
            except MessageDecodeError as e:
                # no event about it: a rejected event would feed the stream it came from
                metrics.MESSAGES_REJECTED.labels(bus.service, subjects.AGENT_EVENTS_STREAM).inc()
                await bus.dead_letter(
                    msg, reason=f"undecodable event: {e}", stream=subjects.AGENT_EVENTS_STREAM
                )
                continue
            seq = int(msg.metadata.sequence.stream) if msg.metadata else 0
            rows.append((ev.payload, msg.subject, seq))
            good.append(msg)
        if not rows:
            return
        started = time.perf_counter()
        await self.store.insert(rows)
        metrics.ARCHIVE_COMMIT_SECONDS.labels(bus.service).observe(time.perf_counter() - started)
        metrics.EVENTS_ARCHIVED.labels(bus.service, "stored").inc(len(rows))
        await asyncio.gather(*(m.ack() for m in good))

    async def _on_history(self, msg: Msg) -> None:
        assert self.bus is not None
        if not msg.reply:
            return
        try:
            q = decode(msg.data, HistoryQuery, max_bytes=64 * 1024).payload
        except MessageDecodeError as e:
            reply = HistoryReply(job_id="invalid", error=str(e))
        else:
            try:
                events = await self.store.history(q.job_id, limit=q.limit)
                reply = HistoryReply(job_id=q.job_id, events=events)
            except ArchiveError as e:
                reply = HistoryReply(job_id=q.job_id, error=str(e))
        await msg.respond(encode(reply, sender=self.bus.agent_id))
