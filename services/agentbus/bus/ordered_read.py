"""Reading one subject of a stream in order, through a named pull consumer.

A client follows a job's state (`$KV.jobs.{job_id}`) and its live partial results
(`progress.{job_id}`). nats-py's KV watch and ordered push consumers create their
consumers on `$JS.API.CONSUMER.CREATE.{stream}`, a subject that does not say what the
consumer will read, so NATS permissions cannot let a tenant's user create some and not
others. A consumer created with a name on `$JS.API.CONSUMER.CREATE.{stream}.{name}.{filter}`
says it in the subject, and the server checks that the filter is the one in the request:
a tenant's user is allowed `...CREATE.KV_jobs.*.$KV.jobs.{tenant}.>` and nothing wider.
nats-py's ordered consumer would re-create under the same name with a new start sequence,
which the server refuses, hence this reader (written here, not taken from the library).

`SubjectReader` creates such a consumer (memory storage, no acks, removed by the server
`inactive_threshold_s` after its reader is gone, deleted on `close`), pulls from it
(`agentbus.bus.pull.Puller`), and remembers the last stream sequence it handed out: a
consumer that fails (the server restarted, the connection was down past the threshold)
is replaced by a new one starting right after it, and `restart` does the same on demand
(a reader that sees, by a direct get, that the subject holds more than it was given).
Nothing is handed out twice or out of order.
"""

from __future__ import annotations

import contextlib
import secrets
from typing import Final

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from agentbus.bus.pull import Puller
from agentbus.contract.errors import BusError, PullError

__all__ = ["INACTIVE_THRESHOLD_S", "SubjectReader"]

INACTIVE_THRESHOLD_S: Final = 60.0
"""The server removes a reader's consumer this long after the reader is gone."""


class SubjectReader:
    """The messages of `subject` in `stream` after the stream sequence `after` (from the
    first when None; only the subject's last one first when `last_only`)."""

    def __init__(
        self,
        js: JetStreamContext,
        nc: NatsClient,
        *,
        stream: str,
        subject: str,
        after: int | None = None,
        last_only: bool = False,
        inactive_threshold_s: float = INACTIVE_THRESHOLD_S,
    ) -> None:
        self._js = js
        self._nc = nc
        self.stream = stream
        self.subject = subject
        self.position = after or 0
        """The stream sequence of the last message handed out (0: none yet)."""
        self._last_only = last_only
        self._inactive_threshold_s = inactive_threshold_s
        self._name: str | None = None
        self._puller: Puller | None = None
        self.consumers_created = 0

    def _config(self, name: str) -> ConsumerConfig:
        if self.position > 0:
            policy, start = DeliverPolicy.BY_START_SEQUENCE, self.position + 1
        elif self._last_only:
            policy, start = DeliverPolicy.LAST_PER_SUBJECT, None
        else:
            policy, start = DeliverPolicy.ALL, None
        return ConsumerConfig(
            name=name,
            filter_subject=self.subject,
            deliver_policy=policy,
            opt_start_seq=start,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=self._inactive_threshold_s,
            mem_storage=True,
            num_replicas=1,
        )

    async def _open(self) -> Puller:
        if self._puller is not None:
            return self._puller
        name = "r" + secrets.token_hex(11)  # unguessable: readers' names are not listed
        try:
            await self._js.add_consumer(self.stream, config=self._config(name))
        except (nats.errors.Error, TimeoutError) as e:
            raise BusError(f"cannot read {self.subject}: {e or type(e).__name__}") from e
        self.consumers_created += 1
        self._name = name
        self._puller = Puller(self._nc, stream=self.stream, durable=name)
        return self._puller

    async def read(self, *, batch: int, wait_s: float) -> list[Msg]:
        """The next messages (at most `batch`), waiting up to `wait_s` for the first;
        [] when none came (or the consumer failed: the next read uses a new one).
        Raises `BusError` naming the subject when no consumer can be created."""
        puller = await self._open()
        got: list[Msg] = []
        try:
            await puller.pull(batch, expires_s=wait_s, deliver=got.append)
        except PullError:
            await self.restart()
        out: list[Msg] = []
        for msg in got:
            seq = int(msg.metadata.sequence.stream)
            if seq > self.position:  # a replaced consumer may repeat what was handed out
                self.position = seq
                out.append(msg)
        return out

    async def restart(self) -> None:
        """Drop the consumer: the next read creates one starting after `position`."""
        puller, name = self._puller, self._name
        self._puller = self._name = None
        if puller is not None:
            await puller.close()
        if name is not None:
            with contextlib.suppress(Exception):
                await self._js.delete_consumer(self.stream, name)

    async def close(self) -> None:
        await self.restart()
