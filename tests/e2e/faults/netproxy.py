"""A loopback TCP proxy that can cut one service off from nats-server without killing it.

    async with PartitionProxy(nats_port) as proxy:   # 127.0.0.1, a random port
        ... start the service with AGENTBUS_NATS__URL=proxy.url ...
        proxy.sever()        # a black hole: nothing forwarded either way, no socket closed
        proxy.heal()         # forward again; connections opened while severed are closed

        proxy.sever_after("tasks.>")   # or: cut right after a JetStream delivery on a subject
        await until(holds(lambda: proxy.severed), ...)
        proxy.stats.cut_after          # the delivery the client got last: it holds it

`sever` stops reading from both sides of every connection, so what each side writes
stays in socket buffers and in the proxy, as it would behind a real partition, and no
side sees a close: the client notices only when its pings go unanswered. A connection
accepted while severed is held open without an upstream (the client's connect times out,
as a SYN into a partition would). `heal` delivers everything held, in order, on the
connections it was written to (a client's late publishes and acks reach the server),
passes on the closes that happened meanwhile, and closes the connections that never got
through, so the client reconnects through the proxy.

`sever_after` makes the moment of the cut deterministic instead of a guess after a sleep:
the proxy reads the server's side of each connection as NATS protocol (`ServerStream`)
and severs as soon as it has forwarded one whole JetStream delivery (a MSG or HMSG whose
reply is a `$JS.ACK.` subject) on a matching subject, before it forwards anything more
either way. The client therefore holds that message across the partition and its ack
cannot cross: the server redelivers it elsewhere after ack_wait, whatever the CPU load.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Final, Self

from nats.aio.msg import Msg

__all__ = ["Delivery", "PartitionProxy", "ProxyStats", "ServerStream", "subject_matches"]

_CHUNK = 64 * 1024
_JS_ACK: Final = "$JS.ACK."


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: `*` is one token, a last `>` one or more."""
    want, got = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">" and i == len(want) - 1:
            return len(got) > i
        if i >= len(got) or (token != "*" and token != got[i]):
            return False
    return len(got) == len(want)


@dataclass(frozen=True)
class Delivery:
    """A message the server sent a client (MSG or HMSG)."""

    subject: str
    reply: str | None
    body: bytes
    """The payload without the headers."""
    end: int
    """Offset just past the message (its trailing CRLF) in the chunk that completed it."""

    @property
    def jetstream(self) -> bool:
        """A JetStream consumer's delivery (acked on its reply subject)."""
        return self.reply is not None and self.reply.startswith(_JS_ACK)

    @property
    def metadata(self) -> Msg.Metadata:
        """Stream, consumer, delivery count... of a JetStream delivery (from its reply)."""
        assert self.reply is not None and self.jetstream, self
        return Msg.Metadata._from_reply(self.reply)


class ServerStream:
    """An incremental parser of what nats-server writes to a client: the control lines
    (INFO, PING, +OK, ...) are skipped, MSG and HMSG come out as `Delivery`s once their
    payload is complete, wherever the chunks were split."""

    def __init__(self) -> None:
        self._line = bytearray()
        self._payload = bytearray()
        self._need = 0
        """Payload bytes (with the trailing CRLF) still to come of the current message."""
        self._head: tuple[str, str | None, int] | None = None
        """The current message's subject, reply and header length."""

    def feed(self, data: bytes) -> list[Delivery]:
        out: list[Delivery] = []
        i = 0
        while i < len(data):
            if self._need:
                take = min(self._need, len(data) - i)
                self._payload += data[i : i + take]
                self._need -= take
                i += take
                if not self._need:
                    assert self._head is not None
                    subject, reply, header_len = self._head
                    body = bytes(self._payload[header_len:-2])
                    out.append(Delivery(subject, reply, body, end=i))
                    self._head, self._payload = None, bytearray()
                continue
            nl = data.find(b"\n", i)
            if nl < 0:
                self._line += data[i:]
                break
            self._line += data[i : nl + 1]
            i = nl + 1
            self._control(bytes(self._line).decode("utf-8", "replace").split())
            self._line.clear()
        return out

    def _control(self, args: list[str]) -> None:
        op = args[0].upper() if args else ""
        # MSG <subject> <sid> [reply] <#bytes>; HMSG <subject> <sid> [reply] <#hdr> <#total>
        if op == "MSG" and len(args) in (4, 5):
            reply, header_len, size = (args[3] if len(args) == 5 else None), 0, int(args[-1])
        elif op == "HMSG" and len(args) in (5, 6):
            reply, header_len, size = (
                (args[3] if len(args) == 6 else None),
                int(args[-2]),
                int(args[-1]),
            )
        else:
            return
        self._head = (args[1], reply, header_len)
        self._need = size + 2


@dataclass
class ProxyStats:
    connections: int = 0
    """Connections accepted (forwarded or held)."""
    held_connections: int = 0
    """Connections accepted while severed (closed at heal, never forwarded)."""
    forwarded_up: int = 0
    """Bytes client -> server."""
    forwarded_down: int = 0
    """Bytes server -> client."""
    late_up: int = 0
    """Bytes client -> server on the connections a partition cut, forwarded after it
    healed (what the client wrote into the partition: late publishes, acks, pings)."""
    severed_s: list[float] = field(default_factory=list)
    """Length of each partition."""
    cut_after: Delivery | None = None
    """The delivery after which `sever_after` cut the link (the client holds it)."""


class _Pipe:
    """One proxied connection: a pump per direction, each waiting on the open gate."""

    def __init__(self, proxy: PartitionProxy) -> None:
        self.proxy = proxy
        self.writers: list[asyncio.StreamWriter] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.cut = False
        """Open when a partition began: all it forwards later is late."""
        self.server_stream = ServerStream()
        """What the server wrote to the client, parsed (for `sever_after`)."""

    async def pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, up: bool
    ) -> None:
        proxy = self.proxy
        try:
            while True:
                await proxy._open.wait()
                data = await reader.read(_CHUNK)
                # what was read as the partition began is held until it heals; a close too
                await proxy._open.wait()
                if not data:
                    break
                if up:
                    proxy.stats.forwarded_up += len(data)
                    if self.cut:
                        proxy.stats.late_up += len(data)
                else:
                    proxy.stats.forwarded_down += len(data)
                    cut_at = proxy._cut_at(self.server_stream.feed(data))
                    if cut_at is not None:
                        # the delivery reaches the client, then nothing more either way
                        # (no await between the write and the cut); the rest is held
                        writer.write(data[:cut_at])
                        proxy.sever()
                        data = data[cut_at:]
                        await proxy._open.wait()
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self.close()

    def close(self) -> None:
        for w in self.writers:
            with contextlib.suppress(Exception):
                w.close()


class PartitionProxy:
    """Between clients on 127.0.0.1:`port` and nats-server on 127.0.0.1:`upstream_port`."""

    def __init__(self, upstream_port: int, *, host: str = "127.0.0.1") -> None:
        self.host = host
        self.upstream_port = upstream_port
        self.port = 0
        self.stats = ProxyStats()
        self._open = asyncio.Event()
        self._open.set()
        self._severed_at = 0.0
        self._server: asyncio.Server | None = None
        self._pipes: list[_Pipe] = []
        self._held: list[asyncio.StreamWriter] = []
        self._sever_on: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def severed(self) -> bool:
        return not self._open.is_set()

    async def start(self) -> Self:
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.connections += 1
        if self.severed:
            self.stats.held_connections += 1
            self._held.append(writer)  # no upstream: the client's connect times out
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.upstream_port)
        except OSError:
            writer.close()  # the server is down: refuse, as the server itself would
            return
        pipe = _Pipe(self)
        pipe.writers = [writer, up_writer]
        pipe.cut = self.severed
        pipe.tasks = [
            asyncio.create_task(pipe.pump(reader, up_writer, up=True)),
            asyncio.create_task(pipe.pump(up_reader, writer, up=False)),
        ]
        self._pipes.append(pipe)

    def sever(self) -> None:
        """Stop forwarding in both directions; close nothing."""
        assert not self.severed, "already severed"
        self._sever_on = ()
        self._open.clear()
        for pipe in self._pipes:
            pipe.cut = True
        self._severed_at = asyncio.get_running_loop().time()

    def sever_after(self, *patterns: str) -> None:
        """Sever right after the next JetStream delivery on a subject matching one of
        `patterns` (NATS wildcards) has been forwarded to a client, whole; nothing more
        crosses in either direction. `stats.cut_after` is that delivery."""
        assert patterns and not self.severed, "nothing to wait for, or already severed"
        self._sever_on = patterns

    def _cut_at(self, deliveries: list[Delivery]) -> int | None:
        """Where in the chunk to cut (just past the first awaited delivery), if at all."""
        if not self._sever_on or self.severed:
            return None
        for d in deliveries:
            if d.jetstream and any(subject_matches(p, d.subject) for p in self._sever_on):
                self._sever_on = ()
                self.stats.cut_after = d
                return d.end
        return None

    def heal(self) -> None:
        """Forward again: first what was held, then the closes that happened meanwhile;
        close the connections accepted during the partition."""
        assert self.severed, "not severed"
        self.stats.severed_s.append(asyncio.get_running_loop().time() - self._severed_at)
        held, self._held = self._held, []
        for w in held:
            with contextlib.suppress(Exception):
                w.close()
        self._open.set()

    async def close(self) -> None:
        self._open.set()
        if self._server is not None:
            self._server.close()
        for w in self._held:
            with contextlib.suppress(Exception):
                w.close()
        for pipe in self._pipes:
            pipe.close()
            for t in pipe.tasks:
                t.cancel()
        for pipe in self._pipes:
            await asyncio.gather(*pipe.tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
