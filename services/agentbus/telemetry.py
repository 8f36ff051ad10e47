"""OpenTelemetry tracing: W3C trace context in NATS headers.

Tracing is off unless `OTEL_TRACES_EXPORTER` (or `OTEL_EXPORTER_OTLP_ENDPOINT`) is set;
then spans go to the OTLP exporter configured by the standard `OTEL_*` variables. When
off, the API's no-op tracer is used and `inject`/`extract` cost one dict lookup.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Final

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagate import extract as _extract
from opentelemetry.propagate import inject as _inject

__all__ = [
    "current_trace_id",
    "extract",
    "inject",
    "setup_tracing",
    "span",
    "tracing_enabled",
]

log = logging.getLogger("agentbus.telemetry")

_TRACER_NAME: Final = "agentbus"
_enabled = False


def tracing_enabled() -> bool:
    return _enabled


def setup_tracing(*, service: str, agent_id: str) -> bool:
    """Install an SDK tracer provider when the environment asks for one."""
    global _enabled
    exporter_name = os.environ.get("OTEL_TRACES_EXPORTER", "").lower()
    if exporter_name in ("", "none") and not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return False
    if exporter_name == "none":
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SpanExporter,
    )

    exporter: SpanExporter
    if exporter_name == "console":
        exporter = ConsoleSpanExporter()
    else:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            log.warning("OTLP exporter not installed (pip install 'agentbus[otlp]'); tracing off")
            return False
        exporter = OTLPSpanExporter()
    resource = Resource.create(
        {
            "service.name": os.environ.get("OTEL_SERVICE_NAME", service),
            "service.instance.id": agent_id,
        }
    )
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _enabled = True
    return True


def inject(headers: MutableMapping[str, str]) -> None:
    if _enabled:
        _inject(headers)


def extract(headers: Mapping[str, str] | None) -> otel_context.Context | None:
    if not _enabled or not headers:
        return None
    return _extract(headers)


@contextlib.contextmanager
def span(
    name: str,
    *,
    headers: Mapping[str, str] | None = None,
    attributes: Mapping[str, str | int | float | bool] | None = None,
) -> Iterator[None]:
    """A span, child of the context carried in `headers` when given (no-op when off)."""
    if not _enabled:
        yield
        return
    tracer = trace.get_tracer(_TRACER_NAME)
    parent = extract(headers) if headers is not None else None
    with tracer.start_as_current_span(name, context=parent, attributes=dict(attributes or {})):
        yield


def current_trace_id() -> str | None:
    if not _enabled:
        return None
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None
