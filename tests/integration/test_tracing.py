"""One job is one trace across processes: the client's submit span is the root; the
orchestrator, worker and archiver processes (started by `Stack`, exporting over real
OTLP/HTTP to a receiver in this test) add their spans to it with the right parents; and
their JSON log lines carry the same trace id next to the job and task ids."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agentbus.client.api import AgentBusClient
from agentbus.contract.messages import EventKind, JobState, JobStatus
from agentbus.dev.embedded import EmbeddedNatsServer
from agentbus.dev.stack import Stack
from tests.conftest import archived_history
from tests.local_http import LocalHttpServer

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class RecordedSpan:
    service: str
    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, str]
    links: tuple[tuple[str, str], ...]


_KIND_NAMES = {0: "unspecified", 1: "internal", 2: "server", 3: "client", 4: "producer"}
_KIND_NAMES[5] = "consumer"


class OtlpReceiver(LocalHttpServer):
    """A minimal OTLP/HTTP (protobuf) trace receiver on 127.0.0.1."""

    def __init__(self) -> None:
        super().__init__()
        self.spans: list[RecordedSpan] = []
        self.requests = 0

    async def _traces(self, request: web.Request) -> web.Response:
        body = await request.read()
        assert request.content_type == "application/x-protobuf"
        req = ExportTraceServiceRequest()
        req.ParseFromString(body)
        self.requests += 1
        for rs in req.resource_spans:
            res = {a.key: a.value.string_value for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    self.spans.append(
                        RecordedSpan(
                            service=res.get("service.name", "?"),
                            name=s.name,
                            kind=_KIND_NAMES.get(s.kind, str(s.kind)),
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent_id=s.parent_span_id.hex(),
                            attributes={
                                a.key: a.value.string_value or str(a.value.int_value)
                                for a in s.attributes
                            },
                            links=tuple((ln.trace_id.hex(), ln.span_id.hex()) for ln in s.links),
                        )
                    )
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/traces", self._traces)


@pytest.fixture
async def receiver() -> AsyncIterator[OtlpReceiver]:
    r = OtlpReceiver()
    await r.start()
    try:
        yield r
    finally:
        await r.stop()


def _hex(span: ReadableSpan) -> tuple[str, str]:
    assert span.context is not None
    return format(span.context.trace_id, "032x"), format(span.context.span_id, "016x")


def _log_lines(path: Path) -> list[dict[str, object]]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


@pytest.mark.timeout(120)
async def test_one_job_is_one_trace_across_three_processes(
    nats_server: EmbeddedNatsServer,
    receiver: OtlpReceiver,
    memory_spans: InMemorySpanExporter,
    tmp_path: Path,
) -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "AGENTBUS_LOG_LEVEL": "DEBUG",
        "AGENTBUS_LOG_FORMAT": "json",
        "AGENTBUS_ORCHESTRATOR__CHUNK_CHARS": "300",
        "AGENTBUS_ORCHESTRATOR__CHUNK_SUMMARY_CHARS": "100",
        "AGENTBUS_ORCHESTRATOR__SUMMARY_CHARS": "150",
    }
    stack = Stack(data_dir=tmp_path / "stack", workers=1, nats_url=nats_server.url, env=env)
    await asyncio.to_thread(stack.start)
    try:
        text = " ".join(
            f"Paragraph {i} describes how the tide moves sediment along the coast."
            for i in range(24)
        )
        async with AgentBusClient(nats_server.url) as client:
            job_id = await client.submit(text)
            state: JobState = await client.wait(job_id, timeout_s=60)
            assert state.status is JobStatus.COMPLETED, state.error
            assert state.level >= 1  # mapped, then reduced
            events = await archived_history(client, job_id)
            assert any(e.kind is EventKind.JOB_COMPLETED for e in events), [e.kind for e in events]

        (root,) = [s for s in memory_spans.get_finished_spans() if s.name == "submit job"]
        trace_id, root_id = _hex(root)
        assert state.trace_id == trace_id  # the job state names its trace

        tasks = state.tasks_done_total
        want = {"orchestrator job": 1, "task summarize": tasks, "orchestrator result": tasks}
        want["orchestrator reduce"] = state.level
        want["archive event"] = len(events)

        def mine() -> list[RecordedSpan]:
            return [s for s in receiver.spans if s.trace_id == trace_id]

        deadline = time.monotonic() + 20
        while True:
            names = [s.name for s in mine()]
            if all(names.count(n) >= k for n, k in want.items()):
                break
            if time.monotonic() > deadline:
                pytest.fail(f"spans missing: want {want}, got {sorted(names)}")
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.3)  # anything late (a duplicate) would show up now
        spans = mine()
    finally:
        await asyncio.to_thread(stack.stop)

    by_id = {s.span_id: s for s in spans}
    by_name: dict[str, list[RecordedSpan]] = {}
    for s in spans:
        by_name.setdefault(s.name, []).append(s)
    assert {n: len(v) for n, v in by_name.items()} == want
    assert len(by_id) == len(spans)  # no span recorded twice
    # three processes (plus this client) contributed
    assert {s.service for s in spans} == {"orchestrator", "worker", "archiver"}

    # every span's parent is in the trace; the only root is the client's submit span
    for s in spans:
        assert s.parent_id == root_id or s.parent_id in by_id, s

    (job,) = by_name["orchestrator job"]
    assert (job.service, job.kind, job.parent_id) == ("orchestrator", "consumer", root_id)
    assert job.attributes["agentbus.job_id"] == job_id
    reduce_ids = {s.span_id for s in by_name["orchestrator reduce"]}
    task_ids = set()
    for t in by_name["task summarize"]:
        assert (t.service, t.kind) == ("worker", "consumer")
        # a map task hangs off the intake, a reduce task off the reduce step that made it
        if t.attributes["agentbus.level"] == "0":
            assert t.parent_id == job.span_id
        else:
            assert t.parent_id in reduce_ids
        task_ids.add(t.span_id)
    assert len({t.attributes["agentbus.task_id"] for t in by_name["task summarize"]}) == tasks
    result_ids = set()
    for r in by_name["orchestrator result"]:
        assert (r.service, r.kind) == ("orchestrator", "consumer")
        assert r.parent_id in task_ids  # the worker span that published the result
        assert by_id[r.parent_id].attributes["agentbus.task_id"] == r.attributes["agentbus.task_id"]
        result_ids.add(r.span_id)
    for red in by_name["orchestrator reduce"]:
        assert red.service == "orchestrator" and red.parent_id in result_ids
    emitters = {job.span_id} | task_ids | result_ids
    for a in by_name["archive event"]:
        assert (a.service, a.kind) == ("archiver", "consumer")
        assert a.parent_id in emitters  # the span that emitted the event
    kinds = sorted(a.attributes["agentbus.event"] for a in by_name["archive event"])
    assert kinds == sorted(e.kind.value for e in events)

    # the archiver's batch commits are their own traces, linked to the archived events
    archived = {(trace_id, a.span_id) for a in by_name["archive event"]}
    linked = {ln for s in receiver.spans if s.name == "archive commit" for ln in s.links}
    assert archived <= linked

    # log lines carry service, agent id, job id, task id and trace id
    logs = {p.agent_id: _log_lines(p.log_path) for p in stack.processes}
    task_lines = [
        line
        for line in logs["worker-1"]
        if line.get("job_id") == job_id and str(line.get("msg", "")).startswith("task done")
    ]
    assert len(task_lines) == tasks
    for line in task_lines:
        assert line["service"] == "worker" and line["agent_id"] == "worker-1"
        assert line["trace_id"] == trace_id and line["task_id"]
        assert by_id[str(line["span_id"])].name == "task summarize"
    accepted = [
        line
        for line in logs["orchestrator-1"]
        if line.get("job_id") == job_id and "job accepted" in str(line.get("msg"))
    ]
    assert len(accepted) == 1 and accepted[0]["trace_id"] == trace_id
    assert accepted[0]["service"] == "orchestrator"
    assert accepted[0]["agent_id"] == "orchestrator-1"
    assert accepted[0]["span_id"] == job.span_id
