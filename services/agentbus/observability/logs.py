"""Structured logging: JSON lines in containers, readable lines on a terminal.

Every record carries the service and agent id; `log_context(job_id=..., task_id=...)`
adds ids for the code running inside it (contextvars, so concurrent tasks don't mix), and
the trace and span ids of the current span are added while tracing is on (a consumer may
also put a received message's `trace_id` into its log context).

JSON lines (`{"ts", "level", "logger", "msg", "service", "agent_id", "job_id", "task_id",
"trace_id", "span_id", ...}`) are for containers and log shippers; the text form
(`12:00:01.250 INFO worker[worker-1]: msg  [job_id=... task_id=... trace_id=...]`) is for
a terminal. `fmt="auto"` picks text when stderr is a TTY.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Final

from agentbus.observability import telemetry

__all__ = ["configure_logging", "log_context"]

_CONTEXT: Final[contextvars.ContextVar[dict[str, str] | None]] = contextvars.ContextVar(
    "agentbus_log_context", default=None
)
_STATIC: dict[str, str] = {}


@contextlib.contextmanager
def log_context(**fields: str | None) -> Iterator[None]:
    merged = {**(_CONTEXT.get() or {}), **{k: v for k, v in fields.items() if v}}
    token = _CONTEXT.set(merged)
    try:
        yield
    finally:
        _CONTEXT.reset(token)


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        ctx = {**_STATIC, **(_CONTEXT.get() or {})}
        trace_id = telemetry.current_trace_id()
        if trace_id is not None:
            ctx["trace_id"] = trace_id
            ctx["span_id"] = telemetry.current_span_id() or ""
        record.ctx = ctx
        return True


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **getattr(record, "ctx", {}),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ctx = getattr(record, "ctx", {})
        tags = " ".join(
            f"{k}={v}" for k, v in ctx.items() if k not in ("service", "agent_id", "span_id")
        )
        who = ctx.get("service", record.name)
        if "agent_id" in ctx:
            who += f"[{ctx['agent_id']}]"
        line = (
            f"{datetime.fromtimestamp(record.created).strftime('%H:%M:%S.%f')[:-3]} "
            f"{record.levelname[:4]:4} {who}: {record.getMessage()}"
        )
        if tags:
            line += f"  [{tags}]"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure_logging(
    *, service: str, agent_id: str, level: str = "INFO", fmt: str = "auto"
) -> None:
    """Install one stderr handler; `fmt` is json, text or auto (text on a TTY)."""
    _STATIC.clear()
    _STATIC.update(service=service, agent_id=agent_id)
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if use_json else _TextFormatter())
    handler.addFilter(_ContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # nats-py logs every reconnect attempt at error level; our callbacks report them.
    logging.getLogger("nats").setLevel(logging.CRITICAL)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
