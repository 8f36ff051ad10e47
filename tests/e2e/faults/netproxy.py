"""A loopback TCP proxy that can cut one service off from nats-server without killing it.

    async with PartitionProxy(nats_port) as proxy:   # 127.0.0.1, a random port
        ... start the service with AGENTBUS_NATS__URL=proxy.url ...
        proxy.sever()        # a black hole: nothing forwarded either way, no socket closed
        proxy.heal()         # forward again; connections opened while severed are closed

`sever` stops reading from both sides of every connection, so what each side writes
stays in socket buffers and in the proxy, as it would behind a real partition, and no
side sees a close: the client notices only when its pings go unanswered. A connection
accepted while severed is held open without an upstream (the client's connect times out,
as a SYN into a partition would). `heal` delivers everything held, in order, on the
connections it was written to (a client's late publishes and acks reach the server),
passes on the closes that happened meanwhile, and closes the connections that never got
through, so the client reconnects through the proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Self

__all__ = ["PartitionProxy", "ProxyStats"]

_CHUNK = 64 * 1024


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


class _Pipe:
    """One proxied connection: a pump per direction, each waiting on the open gate."""

    def __init__(self, proxy: PartitionProxy) -> None:
        self.proxy = proxy
        self.writers: list[asyncio.StreamWriter] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.cut = False
        """Open when a partition began: all it forwards later is late."""

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
        self._open.clear()
        for pipe in self._pipes:
            pipe.cut = True
        self._severed_at = asyncio.get_running_loop().time()

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
