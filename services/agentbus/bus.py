"""The bus: one NATS connection with JetStream, used by every service and the client.

- connects with reconnect forever and logged callbacks (`connect_nats`);
- publishes to JetStream with `Nats-Msg-Id`, so a retried publish is deduplicated;
- emits agent events, files dead letters (original payload and headers plus the reason);
- runs pull-consumer loops that fetch only as many messages as they have free slots
  (`ConsumerLoop`), and rebind after the consumer or server went away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import PubAck
from nats.js.kv import KeyValue

from agentbus import metrics, subjects, telemetry
from agentbus.errors import AgentBusError
from agentbus.messages import AgentEvent, EventKind, Payload, encode, new_id
from agentbus.settings import NatsSettings

__all__ = [
    "DLQ_HEADER_DELIVERIES",
    "DLQ_HEADER_REASON",
    "DLQ_HEADER_SEQ",
    "DLQ_HEADER_STREAM",
    "DLQ_HEADER_SUBJECT",
    "MSG_ID_HEADER",
    "BatchConsumerLoop",
    "Bus",
    "BusError",
    "ConsumerLoop",
    "connect_nats",
    "delivery_count",
]

log = logging.getLogger("agentbus.bus")

MSG_ID_HEADER: Final = "Nats-Msg-Id"
DLQ_HEADER_REASON: Final = "Agentbus-Dlq-Reason"
DLQ_HEADER_STREAM: Final = "Agentbus-Dlq-Stream"
DLQ_HEADER_SUBJECT: Final = "Agentbus-Dlq-Subject"
DLQ_HEADER_SEQ: Final = "Agentbus-Dlq-Seq"
DLQ_HEADER_DELIVERIES: Final = "Agentbus-Dlq-Deliveries"
_HEADER_VALUE_MAX: Final = 1024
_REBIND_BACKOFF_S: Final = (0.2, 0.5, 1.0, 2.0, 5.0)


class BusError(AgentBusError):
    """A NATS operation failed; the message names the subject or stream."""


def _tls_context(cfg: NatsSettings) -> ssl.SSLContext | None:
    if not (cfg.tls_ca_file or cfg.tls_cert_file):
        return None
    ctx = ssl.create_default_context(cafile=str(cfg.tls_ca_file) if cfg.tls_ca_file else None)
    if cfg.tls_cert_file:
        ctx.load_cert_chain(
            str(cfg.tls_cert_file), str(cfg.tls_key_file) if cfg.tls_key_file else None
        )
    return ctx


def _password(cfg: NatsSettings) -> str | None:
    if cfg.password_file is not None:
        try:
            return cfg.password_file.read_text().strip()
        except OSError as e:
            raise BusError(
                f"cannot read AGENTBUS_NATS__PASSWORD_FILE {cfg.password_file}: {e}"
            ) from e
    return cfg.password.get_secret_value() if cfg.password else None


async def connect_nats(
    cfg: NatsSettings,
    *,
    name: str,
    service: str = "client",
    retry_forever: bool = False,
) -> NatsClient:
    """Connect with reconnect forever. `retry_forever` also retries the first connect
    (services); otherwise a first failure raises `BusError` naming the URL (CLI, client)."""
    connected = metrics.NATS_CONNECTED.labels(service)

    async def on_error(e: Exception) -> None:
        log.warning("nats error: %s", e)

    async def on_disconnected() -> None:
        connected.set(0)
        if nc.is_closed or nc.is_draining:
            return
        log.warning("disconnected from NATS; reconnecting")

    async def on_reconnected() -> None:
        connected.set(1)
        metrics.NATS_RECONNECTS.labels(service).inc()
        log.info("reconnected to NATS at %s", nc.connected_url.netloc if nc.connected_url else "?")

    async def on_closed() -> None:
        connected.set(0)

    options: dict[str, Any] = {
        "servers": cfg.servers,
        "name": name,
        "allow_reconnect": True,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": cfg.reconnect_wait_s,
        "connect_timeout": cfg.connect_timeout_s,
        "error_cb": on_error,
        "disconnected_cb": on_disconnected,
        "reconnected_cb": on_reconnected,
        "closed_cb": on_closed,
        "inbox_prefix": cfg.inbox_prefix,
        "tls": _tls_context(cfg),
    }
    if cfg.user:
        options["user"] = cfg.user
        options["password"] = _password(cfg)
    if cfg.token:
        options["token"] = cfg.token.get_secret_value()
    if cfg.creds_file:
        options["user_credentials"] = str(cfg.creds_file)
    if cfg.nkey_seed_file:
        options["nkeys_seed"] = str(cfg.nkey_seed_file)
    attempt = 0
    while True:
        nc = NatsClient()
        try:
            await nc.connect(**options)
        except (nats.errors.NoServersError, OSError, TimeoutError, nats.errors.Error) as e:
            with contextlib.suppress(Exception):
                await nc.close()
            if not retry_forever:
                raise BusError(
                    f"cannot connect to NATS at {cfg.url}: {e or type(e).__name__}"
                ) from e
            attempt += 1
            if attempt == 1 or attempt % 30 == 0:
                log.warning("cannot connect to NATS at %s (%s); retrying", cfg.url, e)
            await asyncio.sleep(cfg.reconnect_wait_s)
            continue
        connected.set(1)
        return nc


def delivery_count(msg: Msg) -> int:
    try:
        return int(msg.metadata.num_delivered)
    except Exception:
        return 1


def _header_safe(value: str) -> str:
    """Header values may not hold CR/LF (they would end the header block)."""
    return " ".join(value.split())[:_HEADER_VALUE_MAX]


class Bus:
    """A service's view of NATS: connection, JetStream, KV handles, events, dead letters."""

    def __init__(self, nc: NatsClient, *, agent_id: str, service: str) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.agent_id = agent_id
        self.service = service
        self._kv: dict[str, KeyValue] = {}
        self._events_subject = subjects.agent_events(agent_id)
        self._results_subject = subjects.agent_results(agent_id)

    @classmethod
    async def connect(
        cls, cfg: NatsSettings, *, agent_id: str, service: str, retry_forever: bool = False
    ) -> Bus:
        nc = await connect_nats(
            cfg, name=f"{service}:{agent_id}", service=service, retry_forever=retry_forever
        )
        return cls(nc, agent_id=agent_id, service=service)

    @property
    def connected(self) -> bool:
        return bool(self.nc.is_connected)

    async def kv(self, bucket: str) -> KeyValue:
        kv = self._kv.get(bucket)
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
    ) -> PubAck:
        hdrs = {**(headers or {}), MSG_ID_HEADER: msg_id}
        telemetry.inject(hdrs)
        try:
            ack = await self.js.publish(subject, data, timeout=timeout_s, headers=hdrs)
        except (nats.errors.Error, TimeoutError) as e:
            raise BusError(f"publish to {subject} failed: {e or type(e).__name__}") from e
        metrics.MESSAGES_PUBLISHED.labels(self.service, stream).inc()
        return ack

    async def emit(
        self,
        kind: EventKind,
        *,
        job_id: str | None = None,
        task_id: str | None = None,
        data: Mapping[str, Any] | None = None,
        result: bool = False,
        event_id: str | None = None,
    ) -> AgentEvent:
        """Publish one agent event (exactly-once archived: its id is the `Nats-Msg-Id`).

        A deterministic `event_id` makes a step that is retried record its event once."""
        event = AgentEvent(
            event_id=event_id or new_id(),
            agent_id=self.agent_id,
            service=self.service,
            kind=kind,
            job_id=job_id,
            task_id=task_id,
            data=dict(data or {}),
        )
        await self.publish(
            self._results_subject if result else self._events_subject,
            event,
            msg_id=event.event_id,
            stream=subjects.AGENT_EVENTS_STREAM,
        )
        metrics.EVENTS_EMITTED.labels(self.service).inc()
        return event

    async def dead_letter(self, msg: Msg, *, reason: str, stream: str) -> None:
        """File `msg` on `dlq.{stream}` with its payload, headers and the reason, then `term` it."""
        seq = 0
        with contextlib.suppress(Exception):
            seq = int(msg.metadata.sequence.stream)
        headers = {k: _header_safe(v) for k, v in (msg.headers or {}).items()}
        headers.update(
            {
                DLQ_HEADER_REASON: _header_safe(reason) or "unknown",
                DLQ_HEADER_STREAM: stream,
                DLQ_HEADER_SUBJECT: _header_safe(msg.subject),
                DLQ_HEADER_SEQ: str(seq),
                DLQ_HEADER_DELIVERIES: str(delivery_count(msg)),
            }
        )
        headers.pop(MSG_ID_HEADER, None)
        await self.publish_raw(
            subjects.dlq_subject(stream),
            msg.data,
            msg_id=f"dlq-{stream}-{seq}" if seq else f"dlq-{stream}-{new_id()}",
            stream=subjects.DLQ_STREAM,
            headers=headers,
        )
        short = reason.split(":", 1)[0][:40] or "unknown"
        metrics.DEAD_LETTERS.labels(self.service, stream, short).inc()
        with contextlib.suppress(Exception):
            await msg.term()
        log.warning("dead-lettered %s seq %d from %s: %s", msg.subject, seq, stream, reason)

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
        try:
            await asyncio.wait_for(self.nc.drain(), timeout_s)
        except Exception:
            with contextlib.suppress(Exception):
                await self.nc.close()


Handler = Callable[[Msg], Awaitable[None]]


class ConsumerLoop:
    """Pull from a durable consumer with at most `concurrency` messages in flight.

    Each fetch asks for exactly the number of free slots, so a replica never holds
    messages it cannot start (they stay available to other replicas). The handler owns
    ack/nak/term; an exception escaping it naks the message with `retry_delay_s`.
    """

    def __init__(
        self,
        bus: Bus,
        *,
        stream: str,
        durable: str,
        handler: Handler,
        concurrency: int,
        fetch_timeout_s: float = 1.0,
        retry_delay_s: float = 1.0,
        ensure: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.bus = bus
        self.stream = stream
        self.durable = durable
        self.handler = handler
        self.concurrency = concurrency
        self.fetch_timeout_s = fetch_timeout_s
        self.retry_delay_s = retry_delay_s
        self.ensure = ensure
        self.bound = False
        self._stopping = asyncio.Event()
        self._resumed = asyncio.Event()
        self._resumed.set()
        self._inflight: set[asyncio.Task[None]] = set()
        self._sub: JetStreamContext.PullSubscription | None = None
        self._failures = 0
        labels = (bus.service, durable)
        self._g_inflight = metrics.WORKER_IN_FLIGHT.labels(*labels)
        self._g_free = metrics.WORKER_FREE_SLOTS.labels(*labels)
        self._redeliveries = metrics.REDELIVERIES.labels(bus.service, stream)
        self._g_free.set(concurrency)

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    @property
    def paused(self) -> bool:
        return not self._resumed.is_set()

    def pause(self) -> None:
        self._resumed.clear()

    def resume(self) -> None:
        self._resumed.set()

    def stop(self) -> None:
        self._stopping.set()
        self._resumed.set()

    async def _bind(self) -> JetStreamContext.PullSubscription:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None
        if self.ensure is not None:
            await self.ensure()
        sub = await self.bus.js.pull_subscribe_bind(
            durable=self.durable, stream=self.stream, pending_msgs_limit=-1
        )
        self._sub = sub
        self.bound = True
        return sub

    def _spawn(self, msg: Msg) -> None:
        if delivery_count(msg) > 1:
            self._redeliveries.inc()
        task = asyncio.create_task(self._handle(msg))
        self._inflight.add(task)
        task.add_done_callback(self._done)
        self._update_gauges()

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._update_gauges()

    def _update_gauges(self) -> None:
        self._g_inflight.set(len(self._inflight))
        self._g_free.set(self.concurrency - len(self._inflight))

    async def _handle(self, msg: Msg) -> None:
        try:
            await self.handler(msg)
        except Exception:
            log.exception("handler for %s failed; message will be retried", self.durable)
            with contextlib.suppress(Exception):
                await msg.nak(delay=self.retry_delay_s)

    async def _fetch(self, batch: int) -> list[Msg]:
        """Fetch up to `batch` messages; [] on timeout; binds and rebinds as needed."""
        try:
            if self._sub is None or not self.bound:
                await self._bind()
                self._failures = 0
            if not self.bus.nc.is_connected:
                await asyncio.sleep(0.1)
                return []
            assert self._sub is not None
            return list(await self._sub.fetch(batch, timeout=self.fetch_timeout_s))
        except TimeoutError:
            return []
        except (nats.errors.Error, OSError) as e:
            if self._stopping.is_set() or self.bus.nc.is_closed:
                return []
            self.bound = False
            delay = _REBIND_BACKOFF_S[min(self._failures, len(_REBIND_BACKOFF_S) - 1)]
            self._failures += 1
            log.warning(
                "consumer %s on %s unavailable (%s); rebinding in %.1fs",
                self.durable, self.stream, e or type(e).__name__, delay,
            )  # fmt: skip
            await asyncio.sleep(delay)
            return []

    async def run(self) -> None:
        """Fetch and dispatch until `stop()`; in-flight handlers are left to `wait_idle`."""
        while not self._stopping.is_set():
            await self._resumed.wait()
            if self._stopping.is_set():
                break
            free = self.concurrency - len(self._inflight)
            if free <= 0:
                await asyncio.wait(self._inflight, return_when=asyncio.FIRST_COMPLETED)
                continue
            for msg in await self._fetch(free):
                self._spawn(msg)
        self.bound = False

    async def wait_idle(self, *, timeout_s: float) -> bool:
        """Wait for in-flight handlers; True when all finished within `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while self._inflight:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            await asyncio.wait(set(self._inflight), timeout=left)
        return True

    async def close(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None


BatchHandler = Callable[[list[Msg]], Awaitable[None]]


class BatchConsumerLoop(ConsumerLoop):
    """Like `ConsumerLoop`, but hands whole fetched batches (up to `batch_size`) to one
    handler at a time: for consumers that commit many messages together (the archiver)."""

    def __init__(
        self,
        bus: Bus,
        *,
        stream: str,
        durable: str,
        batch_handler: BatchHandler,
        batch_size: int,
        fetch_timeout_s: float = 0.5,
        ensure: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        async def unused(_msg: Msg) -> None:  # per-message path is not used here
            raise NotImplementedError

        super().__init__(
            bus,
            stream=stream,
            durable=durable,
            handler=unused,
            concurrency=batch_size,
            fetch_timeout_s=fetch_timeout_s,
            ensure=ensure,
        )
        self.batch_handler = batch_handler

    async def run(self) -> None:
        while not self._stopping.is_set():
            await self._resumed.wait()
            if self._stopping.is_set():
                break
            msgs = await self._fetch(self.concurrency)
            if not msgs:
                continue
            for msg in msgs:
                if delivery_count(msg) > 1:
                    self._redeliveries.inc()
            task = asyncio.create_task(self.batch_handler(msgs))
            self._inflight.add(task)
            task.add_done_callback(self._done)
            self._g_inflight.set(len(msgs))
            try:
                await asyncio.shield(task)
            except Exception:
                log.exception(
                    "batch handler for %s failed; %d messages will be retried",
                    self.durable,
                    len(msgs),
                )
                await asyncio.gather(
                    *(m.nak(delay=self.retry_delay_s) for m in msgs), return_exceptions=True
                )
            self._g_inflight.set(0)
        self.bound = False
