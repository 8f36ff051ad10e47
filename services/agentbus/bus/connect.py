"""Connecting to NATS: servers, credentials and TLS from the settings, reconnect forever,
logged callbacks, and a first connect that fails with one line (or retries, for services)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import ssl
import time
from pathlib import Path
from typing import Any, Final

import nats
import nats.errors
import nats.js.api
import nats.js.errors
from nats.aio.client import Client as NatsClient

from agentbus.contract.errors import BusError
from agentbus.contract.settings import NatsSettings
from agentbus.observability import metrics

log = logging.getLogger("agentbus.bus")

_TLS_SETTINGS: Final = (
    "AGENTBUS_NATS__TLS_CA_FILE, AGENTBUS_NATS__TLS_CERT_FILE, AGENTBUS_NATS__TLS_KEY_FILE"
)
_USERINFO_RE: Final = re.compile(r"(\w+://)[^@/,\s]*@")


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
        except asyncio.CancelledError:  # a service stopped before NATS was reachable
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), 1.0)
            raise
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


FLUSH_TIMEOUT_S: Final = 10.0
"""How long a `flush_barrier` waits for the server (nats-py's own flush default)."""


async def flush_barrier(nc: NatsClient, *, timeout_s: float = FLUSH_TIMEOUT_S) -> None:
    """Return once the server has processed every command sent on `nc` before the call
    (a SUB, UNSUB or PUB): what `nc.flush()` promises but, in nats-py 2.16, does not keep.

    nats-py's `flush` writes its PING straight to the socket, while the commands queued
    just before it wait in `_pending` for the flusher task. The PONG can then come back
    before the server has seen a new SUB, and the first message another connection
    publishes to it is lost (11 of 200 subscriptions on a quiet machine; see
    tests/integration/test_flush_barrier.py). The queued commands are written first here,
    through nats-py's private `_flush_pending`: there is no public way to wait for them
    (a test pins that it still exists and still takes `force_flush`).

    Raises `nats.errors.FlushTimeoutError` once `timeout_s` is over (the whole call), or
    what `flush` raises. The queued-commands wait runs as its own task: nats-py's
    `_flush_pending` swallows its cancellation, so `asyncio.wait_for` could not time it
    out (nor, on Python 3.12, let the caller be cancelled meanwhile)."""
    deadline = time.monotonic() + timeout_s
    if nc.is_connected:
        written = asyncio.ensure_future(nc._flush_pending(force_flush=True))
        try:
            await asyncio.wait({written}, timeout=timeout_s)
        finally:
            if not written.done():
                written.cancel()
        if not written.done() or written.cancelled():
            raise nats.errors.FlushTimeoutError
        written.result()
    left_s = deadline - time.monotonic()
    if left_s <= 0:
        raise nats.errors.FlushTimeoutError
    await nc.flush(timeout=max(math.ceil(left_s), 1))
