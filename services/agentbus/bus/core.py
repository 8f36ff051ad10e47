"""The bus: one NATS connection with JetStream, used by every service and the client.

- publishes to JetStream with `Nats-Msg-Id`, so a retried publish is deduplicated;
- compare-and-set KV writes through the same lean publisher;
- emits agent events (group commit) and files dead letters (the one writer)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from typing import Any, Final, TypedDict, Unpack

import nats
import nats.errors
import nats.js.api
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import PubAck
from nats.js.client import KV_PRE_TEMPLATE, KV_STREAM_TEMPLATE
from nats.js.kv import KeyValue

from agentbus.bus.connect import connect_nats
from agentbus.bus.emitter import DEFAULT_MAX_EVENTS_PER_MESSAGE, EventEmitter
from agentbus.bus.headers import delivery_count, header_safe, headers_size, kept_headers
from agentbus.bus.progress import ProgressPublisher
from agentbus.bus.publisher import JetStreamPublisher
from agentbus.contract import subjects
from agentbus.contract.errors import BusError, NoStreamError
from agentbus.contract.headers import (
    DLQ_HEADER_DELIVERIES,
    DLQ_HEADER_MSG_ID,
    DLQ_HEADER_REASON,
    DLQ_HEADER_SEQ,
    DLQ_HEADER_STREAM,
    DLQ_HEADER_SUBJECT,
    DLQ_HEADER_TRUNCATED,
    MSG_ID_HEADER,
)
from agentbus.contract.messages import (
    AgentEvent,
    EventKind,
    Payload,
    StreamItem,
    encode,
    new_id,
)
from agentbus.contract.settings import NatsSettings
from agentbus.observability import metrics, telemetry

log = logging.getLogger("agentbus.bus")

REBIND_BACKOFF_S: Final = (0.2, 0.5, 1.0, 2.0, 5.0)
PUBLISH_RETRY_FOR_S: Final = 30.0
"""How long a JetStream publish is retried through transient failures (see `publish_raw`)."""
_MAX_PAYLOAD_FALLBACK: Final = 1024 * 1024
"""The server's default max_payload, for a client that has not read the server's yet."""
_HEADERS_ALLOWANCE_BYTES: Final = 4096
_KV_WRONG_LAST_SEQUENCE: Final = 10071
"""JetStream's error code for a compare-and-set write that lost the race."""
_TRANSIENT_PUBLISH_ERRORS: Final = (
    nats.js.errors.NoStreamResponseError,  # no stream leader answered (election, restart)
    nats.js.errors.ServiceUnavailableError,
    nats.errors.NoRespondersError,
    nats.errors.OutboundBufferLimitError,  # reconnecting with a full buffer
    TimeoutError,  # includes nats.errors.TimeoutError
)
_NO_RESPONDERS: Final = (nats.errors.NoRespondersError, nats.js.errors.NoStreamResponseError)
_STORAGE_FULL_CODES: Final = frozenset({10023, 10047})
"""JetStream's "insufficient resources" and "insufficient storage resources available"."""
_DLQ_HEADER_ROOM: Final = 4 * 1024
"""Bytes kept free for the headers added when publishing (trace context, message id)."""


def storage_full(error: BaseException) -> bool:
    """Did JetStream refuse a write because its store (max_file_store, max_bytes) is full?
    Looks through the `raise ... from` chain, as a `BusError` wraps nats-py's error."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, nats.js.errors.APIError) and (
            seen.err_code in _STORAGE_FULL_CODES
            or "insufficient" in (seen.description or "").lower()
        ):
            return True
        seen = seen.__cause__
    return False


class EventFields(TypedDict, total=False):
    """What an event says besides its kind (`Bus.emit`)."""

    job_id: str | None
    task_id: str | None
    data: Mapping[str, Any] | None
    result: bool
    """On `agent.{id}.results` (a produced result) rather than `agent.{id}.events`."""
    event_id: str | None
    """Deterministic for a step that may be retried; a fresh one otherwise."""


class Bus:
    """A service's view of NATS: connection, JetStream, KV handles, events, dead letters."""

    def __init__(
        self,
        nc: NatsClient,
        *,
        agent_id: str,
        service: str,
        max_events_per_message: int = DEFAULT_MAX_EVENTS_PER_MESSAGE,
        max_message_bytes: int | None = None,
    ) -> None:
        """`max_message_bytes`: what the readers of this service's messages accept
        (`limits.max_message_bytes`); an event batch stays below it and the server's
        max_payload."""
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.agent_id = agent_id
        self.service = service
        self._kv: dict[str, KeyValue] = {}
        self._publisher = JetStreamPublisher(nc)
        self._events_subject = subjects.agent_events(agent_id)
        self._results_subject = subjects.agent_results(agent_id)
        self._emitter = EventEmitter(
            self.publish_raw,
            sender=agent_id,
            service=service,
            stream=subjects.AGENT_EVENTS_STREAM,
            max_events_per_message=max_events_per_message,
            max_message_bytes=min(
                nc.max_payload or _MAX_PAYLOAD_FALLBACK,
                max_message_bytes or _MAX_PAYLOAD_FALLBACK,
            )
            - _HEADERS_ALLOWANCE_BYTES,
        )
        self._progress = ProgressPublisher(self.publish_raw, sender=agent_id)

    @classmethod
    async def connect(
        cls,
        cfg: NatsSettings,
        *,
        agent_id: str,
        service: str,
        retry_forever: bool = False,
        max_events_per_message: int = DEFAULT_MAX_EVENTS_PER_MESSAGE,
        max_message_bytes: int | None = None,
    ) -> Bus:
        nc = await connect_nats(
            cfg, name=f"{service}:{agent_id}", service=service, retry_forever=retry_forever
        )
        return cls(
            nc,
            agent_id=agent_id,
            service=service,
            max_events_per_message=max_events_per_message,
            max_message_bytes=max_message_bytes,
        )

    @property
    def connected(self) -> bool:
        return bool(self.nc.is_connected)

    async def kv(self, bucket: str, *, direct: bool = False) -> KeyValue:
        """The KV bucket, bound by asking its stream's info; `direct`: bound without (its
        reads are direct gets, which the bucket must allow): a tenant's user may not ask
        the info, which can list every key."""
        kv = self._kv.get(bucket)
        if kv is None and direct:
            return KeyValue(  # as nats-py's `key_value` binds it, from what it knows
                name=bucket,
                stream=KV_STREAM_TEMPLATE.format(bucket=bucket),
                pre=KV_PRE_TEMPLATE.format(bucket=bucket),
                js=self.js,
                direct=True,
            )
        if kv is None:
            try:
                kv = await self.js.key_value(bucket)
            except nats.js.errors.NotFoundError as e:
                raise BusError(f"KV bucket {bucket!r} not found: run `agentbus provision`") from e
            self._kv[bucket] = kv
        return kv

    async def publish(
        self,
        subject: str,
        payload: Payload,
        *,
        msg_id: str,
        stream: str,
        headers: Mapping[str, str] | None = None,
        timeout_s: float = 10.0,
    ) -> PubAck:
        """JetStream publish of an envelope; `msg_id` becomes `Nats-Msg-Id` (dedup)."""
        return await self.publish_raw(
            subject,
            encode(payload, sender=self.agent_id, msg_id=msg_id.replace(":", "-")),
            msg_id=msg_id,
            stream=stream,
            headers=headers,
            timeout_s=timeout_s,
        )

    async def publish_raw(
        self,
        subject: str,
        data: bytes,
        *,
        msg_id: str,
        stream: str,
        headers: Mapping[str, str] | None = None,
        timeout_s: float = 10.0,
        retry_for_s: float = PUBLISH_RETRY_FOR_S,
    ) -> PubAck:
        """JetStream publish of raw bytes with `Nats-Msg-Id`. A transient failure (no
        stream leader during an election or a server restart, a timeout) is retried with
        the same id, which the stream deduplicates, for up to `retry_for_s`."""
        hdrs = {**(headers or {}), MSG_ID_HEADER: msg_id}
        telemetry.inject(hdrs)
        deadline = time.monotonic() + retry_for_s
        attempt = 0
        while True:
            try:
                ack = await self._publisher.publish(
                    subject, data, headers=hdrs, timeout_s=timeout_s
                )
                break
            except _TRANSIENT_PUBLISH_ERRORS as e:
                left = deadline - time.monotonic()
                if left <= 0 or self.nc.is_closed:
                    raise BusError(f"publish to {subject} failed: {e or type(e).__name__}") from e
                if isinstance(e, _NO_RESPONDERS) and await self._no_stream_takes(subject):
                    raise NoStreamError(
                        f"publish to {subject} failed: no stream takes this subject "
                        "(run `agentbus provision`)"
                    ) from e
                delay = REBIND_BACKOFF_S[min(attempt, len(REBIND_BACKOFF_S) - 1)]
                attempt += 1
                if attempt == 1:
                    log.info("publish to %s failed (%s); retrying", subject, e or type(e).__name__)
                await asyncio.sleep(min(delay, left))
            except (nats.errors.Error, TimeoutError) as e:
                raise BusError(f"publish to {subject} failed: {e or type(e).__name__}") from e
        metrics.MESSAGES_PUBLISHED.labels(self.service, stream).inc()
        return ack

    async def kv_update(
        self, bucket: str, key: str, value: bytes, *, last: int, timeout_s: float = 10.0
    ) -> int:
        """Compare-and-set write of `key` (the bucket's `update`): stored only if the key's
        revision is still `last`; returns the new revision. Raises nats-py's
        `KeyWrongLastSequenceError` when another writer came first. Not retried: a write
        that may have landed must be re-read, not re-sent."""
        try:
            ack = await self._publisher.publish(
                f"$KV.{bucket}.{key}",
                value,
                headers={nats.js.api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE: str(last)},
                timeout_s=timeout_s,
            )
        except nats.js.errors.APIError as e:
            if e.err_code == _KV_WRONG_LAST_SEQUENCE:
                raise nats.js.errors.KeyWrongLastSequenceError(description=e.description) from e
            raise
        return int(ack.seq)

    async def kv_create(self, bucket: str, key: str, value: bytes) -> int:
        """Write `key` only if it does not exist (or was deleted); returns its revision."""
        try:
            return await self.kv_update(bucket, key, value, last=0)
        except nats.js.errors.KeyWrongLastSequenceError:
            # it exists, or only its delete marker does: nats-py's create tells the two
            # apart (and raises KeyWrongLastSequenceError for the first)
            return int(await (await self.kv(bucket)).create(key, value))

    async def _no_stream_takes(self, subject: str) -> bool:
        """True when JetStream answers that no stream takes `subject` (a missing topology,
        not a passing outage)."""
        try:
            await self.js.find_stream_name_by_subject(subject)
        except nats.js.errors.NotFoundError:
            return True
        except (nats.errors.Error, TimeoutError):
            return False  # JetStream itself is not answering: transient
        return False

    async def emit(self, kind: EventKind, **fields: Unpack[EventFields]) -> None:
        """Publish one agent event and wait until the stream has stored it. Events that
        steps running side by side emit share one message (`agentbus.emitter`).

        A deterministic `event_id` makes a step that is retried record its event once
        (the archive's key; alone in its message, it is also the `Nats-Msg-Id`)."""
        await self.emit_soon(kind, **fields)

    def emit_soon(self, kind: EventKind, **fields: Unpack[EventFields]) -> asyncio.Future[None]:
        """`emit` without waiting: the future completes once the event is stored. Await it
        before anything that must follow the event (an ack, the step's outcome)."""
        event = AgentEvent(
            event_id=fields.get("event_id") or new_id(),
            agent_id=self.agent_id,
            service=self.service,
            kind=kind,
            job_id=fields.get("job_id"),
            task_id=fields.get("task_id"),
            data=dict(fields.get("data") or {}),
        )
        subject = self._results_subject if fields.get("result") else self._events_subject
        stored = self._emitter.enqueue(subject, event)
        stored.add_done_callback(self._count_emitted)
        return stored

    async def progress(self, item: StreamItem) -> None:
        """Publish a live partial result on `progress.{job_id}` and wait until it is
        stored (`agentbus.bus.progress`)."""
        await self._progress.publish(item)

    def progress_soon(self, item: StreamItem) -> asyncio.Future[None]:
        """Queue a live partial result (token deltas) without waiting: the future
        completes once the stream has stored it."""
        return self._progress.send(item)

    def _count_emitted(self, stored: asyncio.Future[None]) -> None:
        if not stored.cancelled() and stored.exception() is None:
            metrics.EVENTS_EMITTED.labels(self.service).inc()

    async def dead_letter(self, msg: Msg, *, reason: str, stream: str) -> None:
        """File `msg` on `dlq.{stream}` with its payload, headers and the reason, then `term` it."""
        seq = 0
        with contextlib.suppress(Exception):
            seq = int(msg.metadata.sequence.stream)
        await self.file_dead_letter(
            stream=stream, subject=msg.subject, seq=seq, deliveries=delivery_count(msg),
            data=msg.data, headers=msg.headers, reason=reason,
        )  # fmt: skip
        with contextlib.suppress(Exception):
            await msg.term()

    async def file_dead_letter(
        self,
        *,
        stream: str,
        subject: str,
        seq: int,
        deliveries: int,
        data: bytes,
        headers: Mapping[str, str] | None,
        reason: str,
    ) -> None:
        """The one dead-letter writer and its policy: the original headers cleaned and
        capped (`kept_headers`), the reason and origin added, the original `Nats-Msg-Id`
        kept aside, the payload cut to fit the server's max_payload; one id per original
        message (`dlq-{stream}-{seq}`), so whoever files it twice files it once."""
        kept = kept_headers(headers)
        kept.update(
            {
                DLQ_HEADER_REASON: header_safe(reason) or "unknown",
                DLQ_HEADER_STREAM: stream,
                DLQ_HEADER_SUBJECT: header_safe(subject),
                DLQ_HEADER_SEQ: str(seq),
                DLQ_HEADER_DELIVERIES: str(deliveries),
            }
        )
        original_id = kept.pop(MSG_ID_HEADER, None)
        if original_id:
            kept[DLQ_HEADER_MSG_ID] = original_id
        # headers count against the server's max_payload too: a message that filled it
        # is filed with its head only (going over would cost the connection)
        room = self.nc.max_payload - _DLQ_HEADER_ROOM - headers_size(kept)
        if len(data) > room:
            kept[DLQ_HEADER_TRUNCATED] = str(len(data))
            data = data[: max(room, 0)]
        await self.publish_raw(
            subjects.dlq_subject(stream),
            data,
            msg_id=f"dlq-{stream}-{seq}" if seq else f"dlq-{stream}-{new_id()}",
            stream=subjects.DLQ_STREAM,
            headers=kept,
        )
        metrics.DEAD_LETTERS.labels(self.service, stream, metrics.dead_letter_reason(reason)).inc()
        log.warning("dead-lettered %s seq %d from %s: %s", subject, seq, stream, reason)

    async def reject(self, msg: Msg, *, reason: str, stream: str) -> None:
        """A message that cannot be decoded: dead-letter it, count it, record an event."""
        metrics.MESSAGES_REJECTED.labels(self.service, stream).inc()
        await self.dead_letter(msg, reason=reason, stream=stream)
        with contextlib.suppress(BusError):
            await self.emit(
                EventKind.MESSAGE_REJECTED,
                data={"stream": stream, "subject": msg.subject[:256], "reason": reason[:512]},
            )

    async def close(self, *, timeout_s: float = 10.0) -> None:
        if self.nc.is_closed:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._emitter.close(), timeout_s)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._progress.close(), timeout_s)
        await self._publisher.close()
        try:
            await asyncio.wait_for(self.nc.drain(), timeout_s)
        except Exception:
            with contextlib.suppress(Exception):
                await self.nc.close()
