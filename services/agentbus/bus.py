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
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any, Final, TypedDict, Unpack

import nats
import nats.errors
import nats.js.api
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import PubAck
from nats.js.kv import KeyValue

from agentbus import metrics, subjects, telemetry
from agentbus.emitter import DEFAULT_MAX_EVENTS_PER_MESSAGE, EventEmitter
from agentbus.errors import AgentBusError
from agentbus.messages import AgentEvent, EventKind, Payload, encode, new_id
from agentbus.publisher import JetStreamPublisher
from agentbus.settings import NatsSettings

__all__ = [
    "DLQ_HEADER_DELIVERIES",
    "DLQ_HEADER_MSG_ID",
    "DLQ_HEADER_REASON",
    "DLQ_HEADER_SEQ",
    "DLQ_HEADER_STREAM",
    "DLQ_HEADER_SUBJECT",
    "DLQ_HEADER_TRUNCATED",
    "MSG_ID_HEADER",
    "PUBLISH_RETRY_FOR_S",
    "BatchConsumerLoop",
    "Bus",
    "BusError",
    "ConsumerLoop",
    "connect_nats",
    "delivery_count",
    "redact_url",
]

log = logging.getLogger("agentbus.bus")

MSG_ID_HEADER: Final = "Nats-Msg-Id"
DLQ_HEADER_REASON: Final = "Agentbus-Dlq-Reason"
DLQ_HEADER_STREAM: Final = "Agentbus-Dlq-Stream"
DLQ_HEADER_SUBJECT: Final = "Agentbus-Dlq-Subject"
DLQ_HEADER_SEQ: Final = "Agentbus-Dlq-Seq"
DLQ_HEADER_DELIVERIES: Final = "Agentbus-Dlq-Deliveries"
DLQ_HEADER_MSG_ID: Final = "Agentbus-Dlq-Msg-Id"
"""The original `Nats-Msg-Id` (the dead letter itself gets a DLQ-specific one)."""
_HEADER_VALUE_MAX: Final = 1024
_REBIND_BACKOFF_S: Final = (0.2, 0.5, 1.0, 2.0, 5.0)
PUBLISH_RETRY_FOR_S: Final = 30.0
"""How long a JetStream publish is retried through transient failures (see `publish_raw`)."""
_MAX_PAYLOAD_FALLBACK: Final = 1024 * 1024
"""The server's default max_payload, for a client that has not read the server's yet."""
_HEADERS_ALLOWANCE_BYTES: Final = 4096
_ACK_V1_TOKENS: Final = 9
"""`$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<ts>.<pending>`"""
_ACK_V1_DELIVERED: Final = 4
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
_HANDLER_RETRY_MAX_S: Final = 30.0
DLQ_HEADER_TRUNCATED: Final = "Agentbus-Dlq-Truncated"
"""Set (to the original size) when a dead letter's payload had to be cut to fit."""
_HEADER_NAME_RE: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,128}")
_DLQ_KEPT_HEADERS_MAX: Final = 16 * 1024
_DLQ_HEADER_ROOM: Final = 4 * 1024
"""Bytes kept free for the headers added when publishing (trace context, message id)."""
_TLS_SETTINGS: Final = (
    "AGENTBUS_NATS__TLS_CA_FILE, AGENTBUS_NATS__TLS_CERT_FILE, AGENTBUS_NATS__TLS_KEY_FILE"
)
_USERINFO_RE: Final = re.compile(r"(\w+://)[^@/,\s]*@")


class BusError(AgentBusError):
    """A NATS operation failed; the message names the subject or stream."""


def _readable(path: Path | None, setting: str) -> str | None:
    """`path` as a string once it is known to be readable; the error names the setting."""
    if path is None:
        return None
    try:
        with path.open("rb"):
            pass
    except OSError as e:
        raise BusError(f"cannot read {setting} {path}: {e.strerror or type(e).__name__}") from e
    return str(path)


def _tls_context(cfg: NatsSettings) -> ssl.SSLContext | None:
    if not (cfg.tls_ca_file or cfg.tls_cert_file or cfg.tls_key_file):
        return None
    if bool(cfg.tls_cert_file) != bool(cfg.tls_key_file):
        raise BusError(
            "AGENTBUS_NATS__TLS_CERT_FILE and AGENTBUS_NATS__TLS_KEY_FILE must be set together"
        )
    ca = _readable(cfg.tls_ca_file, "AGENTBUS_NATS__TLS_CA_FILE")
    cert = _readable(cfg.tls_cert_file, "AGENTBUS_NATS__TLS_CERT_FILE")
    key = _readable(cfg.tls_key_file, "AGENTBUS_NATS__TLS_KEY_FILE")
    try:
        ctx = ssl.create_default_context(cafile=ca)
    except ssl.SSLError as e:
        raise BusError(f"AGENTBUS_NATS__TLS_CA_FILE {ca} holds no usable CA: {e}") from e
    if cert:
        try:
            ctx.load_cert_chain(cert, key)
        except ssl.SSLError as e:
            raise BusError(
                f"AGENTBUS_NATS__TLS_CERT_FILE {cert} / AGENTBUS_NATS__TLS_KEY_FILE {key}: "
                f"not a matching PEM certificate and key ({e.reason or e})"
            ) from e
    return ctx


def _password(cfg: NatsSettings) -> str | None:
    if cfg.password_file is not None:
        try:
            return cfg.password_file.read_text().strip()
        except OSError as e:
            raise BusError(
                f"cannot read AGENTBUS_NATS__PASSWORD_FILE {cfg.password_file}: "
                f"{e.strerror or type(e).__name__}"
            ) from e
    return cfg.password.get_secret_value() if cfg.password else None


def redact_url(url: str) -> str:
    """`url` (or a comma-separated list of them) without user info: never log a password."""
    return _USERINFO_RE.sub(r"\1***@", url)


def _credential_settings(cfg: NatsSettings) -> str:
    """The names (never the values) of the credential settings in use, for error hints."""
    names = [
        f"AGENTBUS_NATS__{n.upper()}"
        for n in ("user", "password", "password_file", "token", "creds_file", "nkey_seed_file")
        if getattr(cfg, n)
    ]
    return ", ".join(names) or "no credentials configured"


def _refused(e: BaseException) -> bool:
    """The server refused our credentials or TLS identity (retrying the same won't help)."""
    text = str(e).lower()
    return (
        isinstance(e, nats.errors.AuthorizationError | ssl.SSLError)
        or "authorization violation" in text
        or "authentication" in text
    )


class _FirstConnectFailed(Exception):
    """Raised from the error callback to stop nats-py's endless first-connect loop."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


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
    metrics.NATS_RECONNECTS.labels(service)  # exported at 0 from the start

    errors_since_connect = 0
    first_error: list[Exception] = []  # what stopped the first connect (for its message)
    connecting: NatsClient | None = None

    async def on_error(e: Exception) -> None:
        if nc is connecting:
            first_error[:] = [e]
            if _refused(e):
                raise _FirstConnectFailed(e)  # wrong credentials: no point in retrying
            return
        if "permissions violation" in str(e).lower():
            # always visible: a service doing what its NATS user may not is a bug or an attack
            metrics.NATS_PERMISSION_VIOLATIONS.labels(service).inc()
            log.error("NATS %s", e)
            return
        # nats-py reports every failed reconnect attempt here: log the first, then rarely
        nonlocal errors_since_connect
        errors_since_connect += 1
        if errors_since_connect == 1 or errors_since_connect % 100 == 0:
            log.warning("nats error (%d since last connect): %s", errors_since_connect, e)

    async def on_disconnected() -> None:
        connected.set(0)
        if nc.is_closed or nc.is_draining:
            return
        log.warning("disconnected from NATS; reconnecting")

    async def on_reconnected() -> None:
        nonlocal errors_since_connect
        errors_since_connect = 0
        connected.set(1)
        metrics.NATS_RECONNECTS.labels(service).inc()
        where = nc.connected_url
        log.info("reconnected to NATS at %s", f"{where.hostname}:{where.port}" if where else "?")

    async def on_closed() -> None:
        connected.set(0)

    options: dict[str, Any] = {
        "servers": cfg.servers,
        "name": name,
        "allow_reconnect": True,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": cfg.reconnect_wait_s,
        "connect_timeout": cfg.connect_timeout_s,
        "ping_interval": cfg.ping_interval_s,
        "max_outstanding_pings": cfg.max_outstanding_pings,
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
        options["user_credentials"] = _readable(cfg.creds_file, "AGENTBUS_NATS__CREDS_FILE")
    if cfg.nkey_seed_file:
        options["nkeys_seed"] = _readable(cfg.nkey_seed_file, "AGENTBUS_NATS__NKEY_SEED_FILE")
    url = redact_url(cfg.url)
    attempt = 0
    while True:
        nc = connecting = NatsClient()
        first_error.clear()
        # nats-py retries even the first connect forever when reconnects are unlimited;
        # bound it so a client with a wrong URL fails with one line instead of hanging.
        first_try_s = cfg.connect_timeout_s * 2 + cfg.reconnect_wait_s
        try:
            await asyncio.wait_for(nc.connect(**options), first_try_s)
        except (
            _FirstConnectFailed, nats.errors.NoServersError, OSError, TimeoutError,
            nats.errors.Error,
        ) as e:  # fmt: skip
            connecting = None
            with contextlib.suppress(Exception):
                # (bounded: after a failed TLS handshake nats-py's close never returns)
                await asyncio.wait_for(nc.close(), 1.0)
            error = e.error if isinstance(e, _FirstConnectFailed) else e
            cause = first_error[0] if first_error else error
            why = str(error) or str(cause) or f"no server answered within {first_try_s:.0f}s"
            if isinstance(cause, ssl.SSLError):
                why += f" (TLS handshake failed; check {_TLS_SETTINGS})"
            elif _refused(cause):
                why += f" (the server refused the credentials: {_credential_settings(cfg)})"
            if not retry_forever:
                raise BusError(f"cannot connect to NATS at {url}: {why}") from error
            attempt += 1
            if attempt == 1 or attempt % 30 == 0:
                log.warning("cannot connect to NATS at %s (%s); retrying", url, why)
            await asyncio.sleep(cfg.reconnect_wait_s)
            continue
        connecting = None
        connected.set(1)
        return nc


def delivery_count(msg: Msg) -> int:
    """How many times JetStream has delivered `msg` (1 for a message not from a consumer).

    Read from the ack subject's delivery token (both its 9- and 12-token forms) rather
    than `msg.metadata`: that builds three objects and a datetime per message, which
    showed in profiles of every handler."""
    tokens = (msg.reply or "").split(".")
    if len(tokens) < _ACK_V1_TOKENS or tokens[0] != "$JS" or tokens[1] != "ACK":
        return 1
    index = _ACK_V1_DELIVERED if len(tokens) == _ACK_V1_TOKENS else Msg.Ack.NumDelivered
    try:
        return max(int(tokens[index]), 1)
    except (ValueError, IndexError):
        return 1


def _header_safe(value: str) -> str:
    """Header values may not hold CR/LF (they would end the header block)."""
    return " ".join(value.split())[:_HEADER_VALUE_MAX]


def _headers_size(headers: Mapping[str, str]) -> int:
    return sum(len(k.encode()) + len(v.encode()) + 4 for k, v in headers.items())


def _kept_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    """The headers of a hostile message that can be published again: valid names only,
    values without CR/LF and shortened, at most `_DLQ_KEPT_HEADERS_MAX` bytes in all."""
    kept: dict[str, str] = {}
    for key, value in (headers or {}).items():
        if not _HEADER_NAME_RE.fullmatch(key) or key.lower().startswith("agentbus-dlq-"):
            continue
        safe = _header_safe(value)
        if _headers_size(kept) + len(key) + len(safe.encode()) + 4 > _DLQ_KEPT_HEADERS_MAX:
            break
        kept[key] = safe
    return kept


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
                    raise BusError(
                        f"publish to {subject} failed: no stream takes this subject "
                        "(run `agentbus provision`)"
                    ) from e
                delay = _REBIND_BACKOFF_S[min(attempt, len(_REBIND_BACKOFF_S) - 1)]
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

    def _count_emitted(self, stored: asyncio.Future[None]) -> None:
        if not stored.cancelled() and stored.exception() is None:
            metrics.EVENTS_EMITTED.labels(self.service).inc()

    async def dead_letter(self, msg: Msg, *, reason: str, stream: str) -> None:
        """File `msg` on `dlq.{stream}` with its payload, headers and the reason, then `term` it."""
        seq = 0
        with contextlib.suppress(Exception):
            seq = int(msg.metadata.sequence.stream)
        headers = _kept_headers(msg.headers)
        headers.update(
            {
                DLQ_HEADER_REASON: _header_safe(reason) or "unknown",
                DLQ_HEADER_STREAM: stream,
                DLQ_HEADER_SUBJECT: _header_safe(msg.subject),
                DLQ_HEADER_SEQ: str(seq),
                DLQ_HEADER_DELIVERIES: str(delivery_count(msg)),
            }
        )
        original_id = headers.pop(MSG_ID_HEADER, None)
        if original_id:
            headers[DLQ_HEADER_MSG_ID] = original_id
        data = msg.data
        # headers count against the server's max_payload too: a message that filled it
        # is filed with its head only (going over would cost the connection)
        room = self.nc.max_payload - _DLQ_HEADER_ROOM - _headers_size(headers)
        if len(data) > room:
            headers[DLQ_HEADER_TRUNCATED] = str(len(data))
            data = data[: max(room, 0)]
        await self.publish_raw(
            subjects.dlq_subject(stream),
            data,
            msg_id=f"dlq-{stream}-{seq}" if seq else f"dlq-{stream}-{new_id()}",
            stream=subjects.DLQ_STREAM,
            headers=headers,
        )
        metrics.DEAD_LETTERS.labels(self.service, stream, metrics.dead_letter_reason(reason)).inc()
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
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._emitter.close(), timeout_s)
        await self._publisher.close()
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
        self._freed = asyncio.Event()  # a slot freed up (cheaper than asyncio.wait on all)
        self._sub: JetStreamContext.PullSubscription | None = None
        self._failures = 0
        labels = (bus.service, durable)
        self._g_inflight = metrics.WORKER_IN_FLIGHT.labels(*labels)
        self._g_free = metrics.WORKER_FREE_SLOTS.labels(*labels)
        self._redeliveries = metrics.REDELIVERIES.labels(bus.service, stream)
        self._errors = metrics.HANDLER_ERRORS.labels(bus.service, durable)
        metrics.init_consumer(bus.service, stream=stream, consumer=durable)
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
        self._freed.set()

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
        self._sub = sub  # `bound` once the consumer answers a fetch (it may not exist)
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
        self._freed.set()
        self._update_gauges()

    def _update_gauges(self) -> None:
        self._g_inflight.set(len(self._inflight))
        self._g_free.set(self.concurrency - len(self._inflight))

    async def _handle(self, msg: Msg) -> None:
        try:
            await self.handler(msg)
        except Exception:
            self._errors.inc()
            log.exception("handler for %s failed; message will be retried", self.durable)
            # exponential: an outage (a leader election, a restart) must not use up a
            # bounded consumer's deliveries in a few seconds
            delay = self.retry_delay_s * 2 ** min(delivery_count(msg) - 1, 8)
            with contextlib.suppress(Exception):
                await msg.nak(delay=min(delay, _HANDLER_RETRY_MAX_S))

    async def _fetch(self, batch: int) -> list[Msg]:
        """Fetch up to `batch` messages; [] on timeout; binds and rebinds as needed."""
        try:
            if self._sub is None or not self.bound:
                await self._bind()
            if not self.bus.nc.is_connected:
                await asyncio.sleep(0.1)
                return []
            assert self._sub is not None
            msgs = list(await self._sub.fetch(batch, timeout=self.fetch_timeout_s))
        except TimeoutError:
            msgs = []  # the consumer is there, with nothing to deliver
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
        self.bound = True
        self._failures = 0
        return msgs

    async def run(self) -> None:
        """Fetch and dispatch until `stop()`; in-flight handlers are left to `wait_idle`."""
        while not self._stopping.is_set():
            await self._resumed.wait()
            if self._stopping.is_set():
                break
            free = self.concurrency - len(self._inflight)
            if free <= 0:
                self._freed.clear()
                await self._freed.wait()
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


BatchHandler = Callable[[list[Msg]], Coroutine[Any, Any, None]]


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
        linger_s: float = 0.0,
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
        self.linger_s = linger_s

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
                self._errors.inc()
                log.exception(
                    "batch handler for %s failed; %d messages will be retried",
                    self.durable,
                    len(msgs),
                )
                await asyncio.gather(
                    *(m.nak(delay=self.retry_delay_s) for m in msgs), return_exceptions=True
                )
            self._g_inflight.set(0)
            if self.linger_s and len(msgs) < self.concurrency // 4:
                # a trickle: let the next batch fill up rather than paying a commit for a
                # handful of messages (bounded extra latency, far less work per message)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self.linger_s)
        self.bound = False
