"""OpenTelemetry tracing: W3C trace context (`traceparent`/`tracestate`) in NATS headers.

One job is one trace: the client's `submit` span is the root; the orchestrator's intake,
every worker task, every result the orchestrator collects, each reduce step and each
archived event are spans of it, linked through the headers of the messages between them
(`inject` in `Bus.publish_raw`, `span(headers=msg.headers)` in the consumers).

Tracing is off unless the standard variables ask for it: `OTEL_TRACES_EXPORTER`
(`otlp`, `console`, `none`) or `OTEL_EXPORTER_OTLP_ENDPOINT` /
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`; `OTEL_SDK_DISABLED=true` turns it off. The OTLP
exporter speaks http/protobuf (`pip install 'agentbus[otlp]'`); sampler, batch processor
and resource read their usual `OTEL_*` variables. When off, `span()` and `inject()` return
after one global check: no tracer, no context, no header.

A program that configured OpenTelemetry itself (a global SDK tracer provider) gets the
client's spans in its traces: `AgentBusClient` adopts that provider on connect.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from typing import Final, Literal

from opentelemetry import trace
from opentelemetry.propagate import extract as _extract
from opentelemetry.propagate import inject as _inject
from opentelemetry.trace import Link, Span, SpanKind, Tracer, TracerProvider

from agentbus.contract.headers import TRACEPARENT_HEADER, TRACESTATE_HEADER

__all__ = [
    "TRACEPARENT_HEADER",
    "TRACESTATE_HEADER",
    "SpanKindName",
    "adopt_global_tracing",
    "current_span_id",
    "current_trace_id",
    "disable_tracing",
    "enable_tracing",
    "end_spans",
    "inject",
    "setup_tracing",
    "shutdown_tracing",
    "span",
    "start_span",
    "trace_id_of",
    "tracing_enabled",
]

log = logging.getLogger("agentbus.telemetry")

_TRACER_NAME: Final = "agentbus"
_SERVICE_NAMESPACE: Final = "agentbus"

SpanKindName = Literal["internal", "producer", "consumer", "client", "server"]
_KINDS: Final[dict[str, SpanKind]] = {
    "internal": SpanKind.INTERNAL,
    "producer": SpanKind.PRODUCER,
    "consumer": SpanKind.CONSUMER,
    "client": SpanKind.CLIENT,
    "server": SpanKind.SERVER,
}
Attributes = Mapping[str, str | int | float | bool]

_tracer: Tracer | None = None
_owned_provider: object | None = None  # an SDK provider we built (flushed at shutdown)


def tracing_enabled() -> bool:
    return _tracer is not None


def enable_tracing(provider: TracerProvider) -> None:
    """Trace with `provider` (a program's own SDK provider; tests)."""
    global _tracer
    _tracer = provider.get_tracer(_TRACER_NAME)


def disable_tracing() -> None:
    """Back to no-op tracing (spans already started end normally)."""
    global _tracer
    _tracer = None


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _wanted_exporters() -> list[str]:
    """Exporter names the environment asks for; [] when tracing should stay off."""
    if _env_flag("OTEL_SDK_DISABLED"):
        return []
    names = [n.strip().lower() for n in os.environ.get("OTEL_TRACES_EXPORTER", "").split(",")]
    names = [n for n in names if n]
    if not names:
        endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        return ["otlp"] if endpoint else []
    return [n for n in names if n != "none"]


def _otlp_exporter() -> object | None:
    protocol = (
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).lower()
    if protocol != "http/protobuf":
        log.warning(
            "OTEL_EXPORTER_OTLP_PROTOCOL=%s is not supported (http/protobuf only); OTLP export off",
            protocol,
        )
        return None
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[import-not-found,unused-ignore]  # optional extra
            OTLPSpanExporter,
        )
    except ImportError:
        log.warning("OTLP exporter not installed (pip install 'agentbus[otlp]'); tracing off")
        return None
    exporter: object = OTLPSpanExporter()
    return exporter


def setup_tracing(*, service: str, agent_id: str) -> bool:
    """Install an SDK tracer provider when the `OTEL_*` environment asks for one.

    Returns True when tracing is on. Called once per service process at start-up."""
    global _owned_provider
    if _tracer is not None:
        return True
    names = _wanted_exporters()
    if not names:
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SimpleSpanProcessor,
        SpanExporter,
    )

    processors: list[BatchSpanProcessor | SimpleSpanProcessor] = []
    for name in dict.fromkeys(names):
        if name == "console":
            processors.append(SimpleSpanProcessor(ConsoleSpanExporter()))
        elif name == "otlp":
            exporter = _otlp_exporter()
            if isinstance(exporter, SpanExporter):
                processors.append(BatchSpanProcessor(exporter))
        else:
            log.warning("OTEL_TRACES_EXPORTER=%s is not supported (otlp, console, none)", name)
    if not processors:
        return False
    resource = Resource.create(
        {
            "service.name": os.environ.get("OTEL_SERVICE_NAME") or service,
            "service.namespace": _SERVICE_NAMESPACE,
            "service.instance.id": agent_id,
        }
    )
    provider = SdkTracerProvider(resource=resource)
    for processor in processors:
        provider.add_span_processor(processor)
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        trace.set_tracer_provider(provider)  # for other instrumentation in the process
    _owned_provider = provider
    enable_tracing(provider)
    log.info("tracing on (%s)", ", ".join(dict.fromkeys(names)))
    return True


def adopt_global_tracing(*, service: str, agent_id: str) -> bool:
    """For library use (the client): trace with the program's global SDK provider when
    it has one, else set tracing up from the environment. True when tracing is on."""
    if _tracer is not None:
        return True
    provider = trace.get_tracer_provider()
    if not isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        enable_tracing(provider)
        return True
    return setup_tracing(service=service, agent_id=agent_id)


def shutdown_tracing() -> None:
    """Flush and stop the provider `setup_tracing` built (idempotent)."""
    global _owned_provider
    provider, _owned_provider = _owned_provider, None
    if provider is None:
        return
    disable_tracing()
    shutdown = getattr(provider, "shutdown", None)
    if callable(shutdown):
        with contextlib.suppress(Exception):
            shutdown()


def inject(headers: MutableMapping[str, str]) -> None:
    """Add the current trace context to outgoing message headers (no-op when off)."""
    if _tracer is not None:
        _inject(headers)


def _links(spans: Sequence[Span | None]) -> list[Link]:
    return [Link(s.get_span_context()) for s in spans if s is not None]


@contextlib.contextmanager
def span(
    name: str,
    *,
    headers: Mapping[str, str] | None = None,
    attributes: Attributes | None = None,
    kind: SpanKindName = "internal",
    links: Sequence[Span | None] = (),
) -> Iterator[Span | None]:
    """A current span; with `headers` (a received message's), its parent is the context
    they carry (a new trace when they carry none). Yields None when tracing is off."""
    tracer = _tracer
    if tracer is None:
        yield None
        return
    parent = _extract(headers) if headers is not None else None
    with tracer.start_as_current_span(
        name,
        context=parent,
        kind=_KINDS[kind],
        attributes=dict(attributes or {}),
        links=_links(links),
    ) as current:
        yield current


def start_span(
    name: str,
    *,
    headers: Mapping[str, str] | None,
    attributes: Attributes | None = None,
    kind: SpanKindName = "consumer",
) -> Span | None:
    """A span (not made current) child of the context in `headers`; None when tracing is
    off or the headers carry no trace context. End it with `end_spans`."""
    tracer = _tracer
    if tracer is None or not headers or TRACEPARENT_HEADER not in headers:
        return None
    return tracer.start_span(
        name, context=_extract(headers), kind=_KINDS[kind], attributes=dict(attributes or {})
    )


def end_spans(spans: Sequence[Span | None]) -> None:
    for s in spans:
        if s is not None:
            s.end()


def current_trace_id() -> str | None:
    """The current trace id (32 hex digits), or None when tracing is off / no span."""
    if _tracer is None:
        return None
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


def current_span_id() -> str | None:
    if _tracer is None:
        return None
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.span_id, "016x") if ctx.is_valid else None


def trace_id_of(headers: Mapping[str, str] | None) -> str | None:
    """The trace id a message's `traceparent` header carries (whether tracing is on or not)."""
    value = (headers or {}).get(TRACEPARENT_HEADER)
    if not value:
        return None
    parts = value.split("-")
    if len(parts) < 4 or len(parts[1]) != 32 or parts[1] == "0" * 32:
        return None
    return parts[1].lower()
