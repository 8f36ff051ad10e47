"""The max-deliveries safety net: a task that JetStream stopped delivering while no worker
dead-lettered it is filed on the DLQ (by the bus's one dead-letter writer), taken off
TASKS, and its job failed with the reason."""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Final

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg

from agentbus.bus.core import Bus
from agentbus.contract import subjects
from agentbus.contract.errors import AgentBusError
from agentbus.contract.messages import EventKind, TaskAssign, TaskResult, decode
from agentbus_orchestrator.collect import Collector

__all__ = ["MAX_DELIVERIES_ADVISORY", "on_max_deliveries"]

log = logging.getLogger("orchestrator")

MAX_DELIVERIES_ADVISORY: Final = (
    f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{subjects.TASKS_STREAM}.*"
)


async def on_max_deliveries(bus: Bus | None, collector: Collector, msg: Msg) -> None:
    """Safety net for a task that JetStream stopped delivering while no worker
    dead-lettered it (the worker of its last delivery died before it could, or workers
    run with a larger max_deliver than the consumer was provisioned with): file it on
    the DLQ, take it off TASKS and fail its job with the reason."""
    assert bus is not None
    try:
        advisory = json.loads(msg.data)
        stream, seq = str(advisory["stream"]), int(advisory["stream_seq"])
        deliveries = int(advisory.get("deliveries", 0))
    except (ValueError, KeyError, TypeError) as e:
        log.warning("unreadable advisory on %s: %s", msg.subject, e)
        return
    try:
        raw = await bus.js.get_msg(stream, seq)
    except nats.js.errors.NotFoundError:
        return  # acked or dead-lettered meanwhile
    except (nats.errors.Error, TimeoutError) as e:
        log.warning("max deliveries of %s seq %d: cannot read it: %s", stream, seq, e)
        return
    reason = (
        f"delivered {deliveries} time(s) without an outcome "
        f"(max deliveries of consumer {advisory.get('consumer', '?')} reached)"
    )
    try:
        # the same writer and id as a worker's dead letter of this message: filed once
        await bus.file_dead_letter(
            stream=stream, subject=raw.subject or "", seq=seq, deliveries=deliveries,
            data=raw.data or b"", headers=raw.headers, reason=reason,
        )  # fmt: skip
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await bus.js.delete_msg(stream, seq)
        task = decode(raw.data or b"", TaskAssign).payload
        log.warning("dead-lettered %s seq %d (advisory): %s", stream, seq, reason)
        await bus.emit(
            EventKind.TASK_DEAD_LETTERED,
            job_id=task.job_id,
            task_id=task.task_id,
            data={"reason": reason, "via": "max-deliveries advisory"},
        )
        await collector.record(
            [
                TaskResult(
                    job_id=task.job_id, task_id=task.task_id, level=task.level,
                    index=task.index, ok=False, error=reason, worker_id=bus.agent_id,
                    duration_ms=0,
                )
            ]
        )  # fmt: skip
    except (AgentBusError, nats.errors.Error, TimeoutError) as e:
        log.warning("max deliveries of %s seq %d not handled: %s", stream, seq, e)
