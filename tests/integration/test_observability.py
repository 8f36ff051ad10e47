"""Observability of services against a real nats-server: `/readyz` follows the NATS
connection and the consumer bindings, metrics count a pipeline run exactly (with bounded
labels only), log lines carry the ids, and tracing is off by default."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import ClassVar

import aiohttp
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from agentbus.bus.core import Bus
from agentbus.bus.topology import provision
from agentbus.client.api import AgentBusClient
from agentbus.contract import subjects
from agentbus.contract.errors import SkillError
from agentbus.contract.messages import JobStatus, TaskAssign
from agentbus.contract.settings import Settings
from agentbus.dev.embedded import EmbeddedNatsServer
from agentbus.observability import metrics, telemetry
from agentbus.observability.health import HealthServer
from agentbus.observability.logs import configure_logging, log_context
from agentbus.runtime.worker import SkillOutput, TaskWorker
from agentbus_event_archiver import EventArchiver
from agentbus_orchestrator import Orchestrator
from agentbus_summarize_worker import SummarizeSkill
from tests.conftest import Running

pytestmark = pytest.mark.integration

Sample = tuple[str, tuple[tuple[str, str], ...]]

# label names a metric of ours may carry (plus `le` on histogram buckets)
ALLOWED_LABELS = {"service", "skill", "stream", "consumer", "outcome", "reason", "backend", "kind"}
ALLOWED_LABELS |= {"version", "le"}
ALLOWED_LABELS |= {"priority"}  # high, normal, low (agentbus_tasks_pulled_total)
ALLOWED_LABELS |= {"tenant"}  # configured tenants or default: a bounded set (contract/tenants)
# the gateway's: a route pattern (never a path with an id in it), method, status code, and
# the API of a stream (rest, a2a)
ALLOWED_LABELS |= {"route", "method", "code", "api"}


async def _until(check: Callable[[], Awaitable[bool]], *, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.05)


async def _get(http: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with http.get(url) as r:
        return r.status, await r.text()


async def _wait_status(
    http: aiohttp.ClientSession, url: str, status: int, *, timeout_s: float = 15.0
) -> str:
    last: list[tuple[int, str]] = []

    async def check() -> bool:
        last[:] = [await _get(http, url)]
        return last[0][0] == status

    await _until(check, timeout_s=timeout_s, what=f"{url} -> {status} (last: {last})")
    return last[0][1]


def _samples(text: str) -> dict[Sample, float]:
    out: dict[Sample, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _snapshot() -> dict[Sample, float]:
    return _samples(generate_latest(REGISTRY).decode())


def _value(snap: dict[Sample, float], name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, lab), v in snap.items() if n == name and want <= set(lab))


# --- /readyz ---------------------------------------------------------------------------


@pytest.mark.timeout(90)
async def test_readyz_follows_nats_connection_and_consumer_binding(
    nats_server: EmbeddedNatsServer, bus: Bus, settings: Settings, running: Running
) -> None:
    worker = await running.start(
        lambda s: TaskWorker(s, SummarizeSkill(s)), settings, "worker-readyz"
    )
    health = HealthServer(host="127.0.0.1", port=0, readiness=worker.readiness)
    await health.start()
    base = f"http://127.0.0.1:{health.bound_port}"
    reconnects = 'agentbus_nats_reconnects_total{service="worker"}'
    try:
        async with aiohttp.ClientSession() as http:
            assert (await _wait_status(http, base + "/readyz", 200)).strip() == "ready"
            assert await _get(http, base + "/healthz") == (200, "ok\n")
            status, text = await _get(http, base + "/metrics")
            assert status == 200
            before = _samples(text)
            assert _value(before, "agentbus_nats_connected", service="worker") >= 1

            # the server goes away: not ready, with the reason; still alive
            port = nats_server.client_port
            await asyncio.to_thread(nats_server.stop)
            body = await _wait_status(http, base + "/readyz", 503)
            assert body.strip() == "NATS not connected"
            assert (await _get(http, base + "/healthz"))[0] == 200
            down = _samples((await _get(http, base + "/metrics"))[1])
            assert _value(down, "agentbus_nats_connected", service="worker") == 0

            # it comes back on the same port (same store): ready again, reconnect counted
            nats_server.port = port or -1
            await asyncio.to_thread(nats_server.start)
            assert (await _wait_status(http, base + "/readyz", 200, timeout_s=30)) == "ready\n"
            up = _samples((await _get(http, base + "/metrics"))[1])
            assert _value(up, "agentbus_nats_connected", service="worker") >= 1
            assert _value(up, "agentbus_nats_reconnects_total", service="worker") > _value(
                before, "agentbus_nats_reconnects_total", service="worker"
            ), reconnects

            # the durable consumer is deleted: not ready, naming it, until it is provisioned
            await bus.js.delete_consumer(subjects.TASKS_STREAM, "summarize-workers")
            body = await _wait_status(http, base + "/readyz", 503, timeout_s=30)
            assert body.strip() == "consumers not bound: summarize-workers"
            await provision(bus.js, settings)
            assert (await _wait_status(http, base + "/readyz", 200, timeout_s=30)) == "ready\n"
    finally:
        await health.stop()


# --- metrics ---------------------------------------------------------------------------


class ScriptedSkill:
    """`summarize` with scripted failures: a text containing FLAKY fails once (retryable),
    one containing POISON fails for good; everything else returns its first sentence."""

    name: ClassVar[str] = "summarize"
    backend: ClassVar[str] = "scripted"

    def __init__(self) -> None:
        self.failed_once: set[str] = set()

    async def run(self, task: TaskAssign) -> SkillOutput:
        key = f"{task.job_id}/{task.task_id}"
        if "POISON" in task.text:
            raise SkillError("poisoned input", retryable=False)
        if "FLAKY" in task.text and key not in self.failed_once:
            self.failed_once.add(key)
            raise SkillError("flaky backend")
        return SkillOutput(text=task.text.split(".")[0][: task.max_chars])

    async def aclose(self) -> None:
        return None


@pytest.mark.timeout(90)
async def test_metrics_count_a_pipeline_run_exactly_with_bounded_labels(
    bus: Bus, settings: Settings, running: Running
) -> None:
    s = settings.model_copy(
        update={
            "orchestrator": settings.orchestrator.model_copy(
                update={"chunk_chars": 300, "chunk_summary_chars": 60, "summary_chars": 120}
            )
        }
    )
    await running.start(Orchestrator, s, "orch-m")
    await running.start(lambda st: TaskWorker(st, ScriptedSkill()), s, "worker-m")
    await running.start(EventArchiver, s, "archiver-m")
    before = _snapshot()
    long_doc = " ".join(f"Sentence number {i} talks about the river delta." for i in range(40))
    docs = [
        "A short document. It has two sentences.",
        "Another short one. FLAKY it is, once.",
        long_doc,  # several chunks and at least one reduce step
        "This one is POISON. It fails for good.",
    ]
    await bus.publish_raw(
        subjects.JOBS_SUBJECT, b"not json", msg_id="garbage-job", stream=subjects.JOBS_STREAM
    )
    await bus.publish_raw(
        subjects.task_assign("summarize"),
        b"{}",
        msg_id="garbage-task",
        stream=subjects.TASKS_STREAM,
    )
    async with AgentBusClient(s.nats) as client:
        ids = [await client.submit(d) for d in docs]
        states = await asyncio.gather(*(client.wait(j, timeout_s=30) for j in ids))
    assert [st.status for st in states] == [JobStatus.COMPLETED] * 3 + [JobStatus.FAILED]
    tasks_ok = sum(st.tasks_done_total for st in states)
    assert states[2].level >= 1  # the long document went through a reduce step

    def delta(name: str, **labels: str) -> float:
        return _value(_snapshot(), name, **labels) - _value(before, name, **labels)

    async def archived_all() -> bool:
        return delta("agentbus_events_archived_total") == delta("agentbus_events_emitted_total")

    await _until(archived_all, timeout_s=15, what="the archiver to catch up")

    orch, wk, arch = {"service": "orchestrator"}, {"service": "worker"}, {"service": "archiver"}
    assert delta("agentbus_jobs_submitted_total", **orch) == 4
    # the long document's tasks ran side by side: their events shared messages
    emitted, messages = (
        delta("agentbus_events_emitted_total", **wk),
        delta("agentbus_event_messages_total", **wk),
    )
    assert 0 < messages < emitted, (messages, emitted)
    assert delta("agentbus_jobs_completed_total", **orch) == 3
    assert delta("agentbus_jobs_failed_total", **orch, reason="task") == 1
    assert delta("agentbus_job_duration_seconds_count", **orch) == 3
    tasks = {"service": "worker", "skill": "summarize"}
    assert delta("agentbus_tasks_processed_total", **tasks, outcome="ok") == tasks_ok
    assert delta("agentbus_tasks_processed_total", **tasks, outcome="retried") == 1
    assert delta("agentbus_tasks_processed_total", **tasks, outcome="dead_lettered") == 1
    assert delta("agentbus_tasks_processed_total", **tasks, outcome="rejected") == 1
    assert delta("agentbus_task_duration_seconds_count", **tasks) == tasks_ok
    assert delta("agentbus_redeliveries_total", **wk, stream="TASKS") == 1
    # every task of these normal jobs came from the normal consumer
    assert delta("agentbus_tasks_pulled_total", **wk, priority="normal") >= tasks_ok
    assert delta("agentbus_tasks_pulled_total", **wk, priority="high") == 0
    assert delta("agentbus_messages_rejected_total", **orch, stream="JOBS") == 1
    assert delta("agentbus_messages_rejected_total", **wk, stream="TASKS") == 1
    assert delta("agentbus_dead_letters_total", **orch, stream="JOBS", reason="undecodable") == 1
    assert delta("agentbus_dead_letters_total", **wk, stream="TASKS", reason="undecodable") == 1
    assert delta("agentbus_dead_letters_total", **wk, stream="TASKS", reason="failed") == 1
    assert delta("agentbus_messages_published_total", service="client", stream="JOBS") == 4
    # every task published once: the map tasks, the reduce tasks, the poisoned one
    published_tasks = delta("agentbus_messages_published_total", **orch, stream="TASKS")
    assert published_tasks == tasks_ok + 1
    assert delta("agentbus_messages_published_total", **wk, stream="DLQ") == 2
    assert delta("agentbus_handler_errors_total") == 0
    archived = delta("agentbus_events_archived_total", **arch, outcome="stored")
    assert archived > 0
    assert delta("agentbus_archive_lag_seconds_count", **arch) == archived
    assert delta("agentbus_archive_commit_seconds_count", **arch) >= 1
    assert _value(_snapshot(), "agentbus_worker_free_slots", **wk) >= 1

    # labels are bounded: known names only, and no id anywhere in a label value
    ids_re = re.compile("|".join([*ids, "orch-m", "worker-m", "archiver-m", "garbage"]))
    for (name, labels), _v in _snapshot().items():
        if not name.startswith("agentbus_"):
            continue
        assert {k for k, _ in labels} <= ALLOWED_LABELS, (name, labels)
        assert not any(ids_re.search(v) for _, v in labels), (name, labels)
        # no dotted value (an id or a host) but a version, a bucket bound or a route pattern
        # (`/openapi.json`): a route is a path of the gateway's table, never one with an id
        assert all(v.count(".") == 0 or k in ("version", "le", "route") for k, v in labels), (
            name,
            labels,
        )
        routes = [v for k, v in labels if k == "route"]
        assert all(r.startswith("/") or r == "unmatched" for r in routes), (name, labels)
    for name in metrics.__all__:
        metric = getattr(metrics, name)
        if isinstance(metric, MetricWrapperBase):
            assert metric._name.startswith("agentbus_"), name


# --- tracing off by default, on when asked -----------------------------------------


async def _job_headers(bus: Bus, seq: int) -> dict[str, str]:
    msg = await bus.js.get_msg(subjects.JOBS_STREAM, seq)
    return dict(msg.headers or {})


async def test_tracing_is_off_by_default_and_adds_no_headers(bus: Bus, settings: Settings) -> None:
    assert not telemetry.tracing_enabled()
    assert not telemetry.setup_tracing(service="test", agent_id="t")  # no OTEL_* set
    async with AgentBusClient(settings.nats) as client:
        await client.submit("An untraced document. Nothing to see.")
    headers = await _job_headers(bus, 1)
    assert set(headers) == {"Nats-Msg-Id"}
    with telemetry.span("nothing") as nothing:
        assert nothing is None
        assert telemetry.current_trace_id() is None


async def test_submit_starts_the_trace_and_carries_it_in_headers(
    bus: Bus, settings: Settings, memory_spans: InMemorySpanExporter
) -> None:
    async with AgentBusClient(settings.nats) as client:
        job_id = await client.submit("A traced document. Its context travels.")
    (root,) = memory_spans.get_finished_spans()
    assert root.name == "submit job" and root.parent is None
    assert root.attributes is not None and root.attributes["agentbus.job_id"] == job_id
    headers = await _job_headers(bus, 1)
    trace_id = format(root.context.trace_id, "032x")
    span_id = format(root.context.span_id, "016x")
    assert headers["traceparent"].startswith(f"00-{trace_id}-{span_id}-")
    assert telemetry.trace_id_of(headers) == trace_id


# --- logs ------------------------------------------------------------------------------


@contextlib.contextmanager
def _captured_logs(fmt: str) -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    nats_level = logging.getLogger("nats").level
    buf = io.StringIO()
    try:
        configure_logging(service="worker", agent_id="worker-7", level="DEBUG", fmt=fmt)
        (handler,) = root.handlers
        assert isinstance(handler, logging.StreamHandler)
        handler.setStream(buf)
        yield buf
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in saved_handlers:
            root.addHandler(h)
        root.setLevel(saved_level)
        logging.getLogger("nats").setLevel(nats_level)


def test_json_log_lines_carry_service_agent_job_task_and_trace_ids(
    memory_spans: InMemorySpanExporter,
) -> None:
    log = logging.getLogger("agentbus.test")
    with _captured_logs("json") as buf:
        log.info("outside any job")
        with log_context(job_id="job-1", task_id="0-3"), telemetry.span("task summarize"):
            trace_id = telemetry.current_trace_id()
            log.warning("inside a task: %d", 42)
        with log_context(job_id="job-2", trace_id="ab" * 16):  # from a received header
            log.info("tracing off here")
    lines = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert len(lines) == 3
    outside, inside, carried = lines
    assert outside["service"] == "worker" and outside["agent_id"] == "worker-7"
    assert "job_id" not in outside and "trace_id" not in outside
    assert inside["msg"] == "inside a task: 42" and inside["level"] == "warning"
    assert (inside["job_id"], inside["task_id"]) == ("job-1", "0-3")
    assert inside["trace_id"] == trace_id and trace_id is not None and len(trace_id) == 32
    assert len(inside["span_id"]) == 16
    assert (carried["job_id"], carried["trace_id"]) == ("job-2", "ab" * 16)
    assert {"ts", "logger"} <= set(inside)


def test_text_log_lines_are_readable_and_carry_the_ids() -> None:
    log = logging.getLogger("agentbus.test")
    with (
        _captured_logs("text") as buf,
        log_context(job_id="job-9", task_id="1-0", trace_id="cd" * 16),
    ):
        log.info("task done in %.3fs", 0.25)
    (line,) = buf.getvalue().splitlines()
    assert re.fullmatch(
        rf"\d\d:\d\d:\d\d\.\d{{3}} INFO worker\[worker-7\]: task done in 0\.250s  "
        rf"\[job_id=job-9 task_id=1-0 trace_id={'cd' * 16}\]",
        line,
    ), line
