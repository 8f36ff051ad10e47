"""The Grafana dashboard, proven against a real Prometheus.

A real Prometheus (Debian's `prometheus` package, installed by .ci/install-prometheus.sh)
runs on a random port and scrapes the running stack (orchestrator, two workers, archiver)
and a stand-in for the NATS exporter that serves `nats_consumer_*`/`nats_stream_*` gauges
computed from the real JetStream state, with the exporter's own metric names and labels
(`prometheus-nats-exporter -jsz=all -prefix=nats`; the exporter itself is not available
here). After a workload, every query of every panel must return data, and every
`agentbus_` metric the dashboard names must really be exported.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import shutil
import signal
import subprocess
import time
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Final

import aiohttp
import pytest
from aiohttp import web
from nats.js.api import ConsumerInfo, StreamInfo
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

from agentbus.bus.core import Bus
from agentbus.client.api import AgentBusClient
from agentbus.contract import subjects
from agentbus.contract.messages import JobStatus
from agentbus.contract.settings import NatsSettings
from agentbus.dev.embedded import EmbeddedNatsServer
from agentbus.dev.stack import Stack, free_port
from tests.local_http import LocalHttpServer

DASHBOARD: Final = Path(__file__).parents[2] / "charts/agentbus/dashboards/agentbus.json"
RATE_INTERVAL: Final = "15s"
SCRAPE_INTERVAL_S: Final = 1
FOLLOWER_VALUE: Final = 1_000_000.0
"""What a (stale) follower replica reports: a leader-only query never shows it."""


# --- the dashboard ---------------------------------------------------------------------


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def _panels(dash: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for p in dash["panels"]:
        yield p
        yield from p.get("panels", [])


def _targets(dash: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expr) of every query."""
    return [(p["title"], t["expr"]) for p in _panels(dash) for t in p.get("targets", [])]


def _grafana_expr(expr: str) -> str:
    """The query as Grafana would send it (its interval variables filled in, the
    namespace and release variables at their default, All: `.*`, which also matches
    series without those labels, as this test's static scrape makes)."""
    for var in ("$__rate_interval", "${__rate_interval}", "$__interval", "${__interval}"):
        expr = expr.replace(var, RATE_INTERVAL)
    for var in ("$namespace", "$release"):
        expr = expr.replace(var, ".*")
    assert "$" not in expr, f"unhandled variable in {expr!r}"
    return expr


@pytest.mark.unit
def test_dashboard_is_a_grafana_dashboard_on_a_datasource_variable() -> None:
    dash = _dashboard()
    assert 36 <= dash["schemaVersion"] <= 41
    assert dash["uid"] and dash["title"] and dash["id"] is None
    (var,) = [v for v in dash["templating"]["list"] if v["name"] == "datasource"]
    assert (var["type"], var["query"]) == ("datasource", "prometheus")
    ids = [p["id"] for p in _panels(dash)]
    assert len(ids) == len(set(ids))
    titles = set()
    for p in _panels(dash):
        if p["type"] == "row":
            continue
        titles.add(p["title"].lower())
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], p["title"]
        grid = p["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}", p["title"]
            assert t["refId"] and t["expr"].strip()
    for expr in (e for _t, e in _targets(dash)):
        # lag, redeliveries and DLQ depth count the leader replica only
        if "nats_consumer_" in expr:
            assert 'is_consumer_leader="true"' in expr, expr
        if "nats_stream_" in expr:
            assert 'is_stream_leader="true"' in expr, expr
        assert not re.search(r"(job|task|agent)_id", expr), expr
    # one release of one namespace: every series selected by the two variables (All: .*)
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    for name, label in (("namespace", "namespace"), ("release", "app_kubernetes_io_instance")):
        assert variables[name]["includeAll"] is True and variables[name]["allValue"] == ".*"
        assert label in variables[name]["definition"]
    scoped = 'namespace=~"$namespace", app_kubernetes_io_instance=~"$release"'
    for title, expr in _targets(dash):
        for selector in re.findall(r"\b(?:agentbus|nats)_[a-z_]+(?:\{[^}]*\})?", expr):
            assert scoped in selector, (title, selector)
    # each panel says where its data comes from
    for p in _panels(dash):
        if p["type"] == "row":
            continue
        exprs = " ".join(t["expr"] for t in p["targets"])
        source = p["description"].rsplit("Source: ", 1)[1]
        assert ("NATS exporter" in source) == bool(re.search(r"\bnats_", exprs)), p["title"]
        assert ("agentbus services" in source) == ("agentbus_" in exprs), p["title"]
    workers = [e for t, e in _targets(dash) if t in ("Workers", "Worker count")]
    assert workers and all(e.startswith("count(agentbus_nats_connected{") for e in workers)
    needed: tuple[str, ...] = ("jobs", "job duration", "task duration", "in flight", "worker count")
    needed += ("consumer lag", "redeliveries", "dlq depth", "archive lag", "errors")
    missing = [n for n in needed if not any(n in title for title in titles)]
    assert not missing, missing
    exprs = " ".join(e for _t, e in _targets(dash))
    assert "histogram_quantile(0.95" in exprs and "histogram_quantile(0.99" in exprs


# --- a stand-in for prometheus-nats-exporter (-jsz=all -prefix=nats) ----------------

_SERVER_LABELS: Final = ("server_id", "server_name", "cluster", "domain", "meta_leader")
_STREAM_LABELS: Final = (
    *_SERVER_LABELS, "is_meta_leader", "account", "account_id", "stream_name",
    "stream_leader", "is_stream_leader",
)  # fmt: skip
_CONSUMER_LABELS: Final = (
    *_STREAM_LABELS, "consumer_name", "consumer_leader", "is_consumer_leader",
    "consumer_desc", "consumer_created",
)  # fmt: skip


class _Families:
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


class FakeNatsExporter(LocalHttpServer):
    """Serves the exporter's JetStream gauges from the live server's stream and consumer
    info, as the leader replica, plus a stale follower replica of every series."""

    def __init__(self, bus: Bus) -> None:
        super().__init__()
        self.bus = bus
        self.scrapes = 0

    async def _families(self) -> list[Metric]:
        info: dict[str, Any] = dict(self.bus.nc._server_info)
        server_id, server_name = str(info.get("server_id", "")), str(info.get("server_name", ""))
        streams: list[StreamInfo] = await self.bus.js.streams_info()
        stream_gauges = {
            "total_messages": "Total number of messages from a stream",
            "total_bytes": "Total stored bytes from a stream",
            "consumer_count": "Total number of consumers from a stream",
        }
        consumer_gauges = {
            "num_pending": "Number of pending messages from a consumer",
            "num_ack_pending": "Number of pending acks from a consumer",
            "num_redelivered": "Number of redelivered messages from a consumer",
            "num_waiting": "Number of inflight fetch requests from a pull consumer",
            "delivered_stream_seq": "Latest sequence number of a stream",
        }
        sf = {
            k: GaugeMetricFamily(f"nats_stream_{k}", h, labels=_STREAM_LABELS)
            for k, h in stream_gauges.items()
        }
        cf = {
            k: GaugeMetricFamily(f"nats_consumer_{k}", h, labels=_CONSUMER_LABELS)
            for k, h in consumer_gauges.items()
        }
        replicas = ((server_id, server_name, "true"), ("NFOLLOWER", "nats-follower", "false"))
        for s in streams:
            name = s.config.name or "?"
            consumers: list[ConsumerInfo] = await self.bus.js.consumers_info(name)
            for sid, sname, leader in replicas:
                stale = leader == "false"
                base = [sid, sname, "", "", "", "true", "$G", "$G", name, server_name, leader]
                sf["total_messages"].add_metric(base, FOLLOWER_VALUE if stale else s.state.messages)
                sf["total_bytes"].add_metric(base, s.state.bytes)
                sf["consumer_count"].add_metric(base, s.state.consumer_count)
                for c in consumers:
                    created = c.created.isoformat() if c.created else ""
                    labels = [*base, c.name or "?", server_name, leader, "", created]
                    values = {
                        "num_pending": c.num_pending or 0,
                        "num_ack_pending": c.num_ack_pending or 0,
                        "num_redelivered": c.num_redelivered or 0,
                        "num_waiting": c.num_waiting or 0,
                        "delivered_stream_seq": c.delivered.stream_seq if c.delivered else 0,
                    }
                    for k, v in values.items():
                        cf[k].add_metric(labels, FOLLOWER_VALUE if stale else float(v or 0))
        return [*sf.values(), *cf.values()]

    async def _metrics(self, _request: web.Request) -> web.Response:
        self.scrapes += 1
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Families(await self._families()))
        return web.Response(
            body=generate_latest(registry),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/metrics", self._metrics)


# --- Prometheus ------------------------------------------------------------------------


class Prometheus:
    def __init__(self, binary: str, data_dir: Path, targets: dict[str, list[str]]) -> None:
        self.binary = binary
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.targets = targets
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir / "prometheus.log"

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = {
            "global": {
                "scrape_interval": f"{SCRAPE_INTERVAL_S}s",
                "scrape_timeout": f"{SCRAPE_INTERVAL_S}s",
                "evaluation_interval": f"{SCRAPE_INTERVAL_S}s",
            },
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": targets}]}
                for job, targets in self.targets.items()
            ],
        }
        cfg = self.data_dir / "prometheus.yml"
        cfg.write_text(json.dumps(config, indent=2))  # JSON is YAML
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    self.binary,
                    f"--config.file={cfg}",
                    f"--storage.tsdb.path={self.data_dir / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def failure(self) -> str:
        return self.log_path.read_text(errors="replace")[-2000:]


async def _api(http: aiohttp.ClientSession, prom: Prometheus, path: str, **params: str) -> Any:
    url = f"{prom.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    async with http.get(url) as r:
        body = await r.json()
    assert body.get("status") == "success", (path, params, body)
    return body["data"]


async def _query(
    http: aiohttp.ClientSession, prom: Prometheus, expr: str, at: float
) -> list[dict[str, Any]]:
    data = await _api(http, prom, "query", query=expr, time=f"{at:.3f}")
    assert data["resultType"] == "vector", (expr, data)
    result: list[dict[str, Any]] = data["result"]
    return result


def _numbers(result: list[dict[str, Any]]) -> list[float]:
    return [float(r["value"][1]) for r in result]


@pytest.fixture
def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        # in CI (CI=true) a skip fails the run: .ci/install-prometheus.sh provides it
        pytest.skip("Debian's `prometheus` is not installed (run .ci/install-prometheus.sh)")
    return found


@pytest.fixture
async def exporter(nats_server: EmbeddedNatsServer) -> AsyncIterator[FakeNatsExporter]:
    bus = await Bus.connect(
        NatsSettings(url=nats_server.url, reconnect_wait_s=0.2),
        agent_id="nats-exporter",
        service="exporter",
    )
    fake = FakeNatsExporter(bus)
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()
        await bus.close()


def _document(i: int) -> str:
    sentences = 3 + (i * 7) % 40  # from a few sentences to several chunks
    return " ".join(
        f"Report {i} line {k} notes that the harbor tide rose {k % 5} feet at dawn."
        for k in range(sentences)
    )


@pytest.mark.e2e
@pytest.mark.timeout(150)
async def test_every_dashboard_query_returns_data_from_a_real_prometheus(
    nats_server: EmbeddedNatsServer,
    exporter: FakeNatsExporter,
    prometheus_binary: str,
    tmp_path: Path,
) -> None:
    env = {
        "AGENTBUS_SUMMARIZER__BACKEND": "simulated",
        "AGENTBUS_SUMMARIZER__SIMULATED_LATENCY_MS": "40",
        "AGENTBUS_SUMMARIZER__SIMULATED_FAIL_RATE": "0.1",
        "AGENTBUS_WORKER__CONCURRENCY": "3",
        "AGENTBUS_WORKER__BACKOFF_S": "[0.1, 0.2]",
        "AGENTBUS_TOPOLOGY__MAX_DELIVER": "2",
        "AGENTBUS_ORCHESTRATOR__CHUNK_CHARS": "600",
        "AGENTBUS_ORCHESTRATOR__CHUNK_SUMMARY_CHARS": "150",
        "AGENTBUS_ORCHESTRATOR__SUMMARY_CHARS": "300",
    }
    stack = Stack(
        data_dir=tmp_path / "stack", workers=2, nats_url=nats_server.url, env=env,
        gateway=True, gateway_port=free_port(),
    )  # fmt: skip
    await asyncio.to_thread(stack.start)
    targets = {
        "agentbus": [f"127.0.0.1:{p.http_port}" for p in stack.processes],
        "nats": [f"127.0.0.1:{exporter.port}"],
    }
    prom = Prometheus(prometheus_binary, tmp_path / "prometheus", targets)
    prom.start()
    dash = _dashboard()
    try:
        async with aiohttp.ClientSession() as http:
            await _wait_until_scraping(http, prom, n_targets=len(stack.processes) + 1)
            # the workload: waves of documents, some garbage, some failing attempts; the
            # gateway's panels: a reader polling it through the REST API all along
            assert stack.gateway_url is not None and stack.gateway_key is not None
            ids: list[str] = []
            polling = asyncio.create_task(
                _poll_gateway(http, stack.gateway_url, stack.gateway_key, ids)
            )
            async with AgentBusClient(nats_server.url) as client:
                await client.bus.publish_raw(
                    subjects.JOBS_SUBJECT, b"garbage", msg_id="garbage-1",
                    stream=subjects.JOBS_STREAM,
                )  # fmt: skip
                for wave in range(6):
                    ids += [await client.submit(_document(wave * 6 + i)) for i in range(6)]
                    await asyncio.sleep(1.0)
                states = await asyncio.gather(*(client.wait(j, timeout_s=60) for j in ids))
            polling.cancel()
            (polled,) = await asyncio.gather(polling, return_exceptions=True)
            assert isinstance(polled, asyncio.CancelledError), polled  # it never failed
            done = time.time()
            completed = sum(st.status is JobStatus.COMPLETED for st in states)
            assert completed + sum(st.status is JobStatus.FAILED for st in states) == len(ids)
            # let Prometheus scrape the final state
            await _wait_for_value(
                http, prom, "sum(agentbus_jobs_completed_total)", completed, after=done
            )
            at = time.time()

            # every query of every panel returns data, with a number in it
            empty = []
            for title, expr in _targets(dash):
                result = await _query(http, prom, _grafana_expr(expr), at - 1)
                values = _numbers(result)
                if not result or not any(math.isfinite(v) for v in values):
                    empty.append((title, expr, result))
            assert not empty, "panels without data:\n" + "\n".join(map(str, empty))

            # every agentbus_ metric the dashboard names is really exported
            exported = set(await _api(http, prom, "label/__name__/values"))
            named = set(re.findall(r"\bagentbus_[a-z0-9_]+", json.dumps(dash)))
            assert named and named <= exported, named - exported

            # the numbers are the real ones
            def one(result: list[dict[str, Any]]) -> float:
                (value,) = _numbers(result)
                return value

            workers = await _query(http, prom, "count(agentbus_task_duration_seconds_count)", at)
            assert one(workers) == 2
            submitted = await _query(http, prom, "sum(agentbus_jobs_submitted_total)", at)
            assert one(submitted) == len(ids)
            dlq = 'sum(nats_stream_total_messages{stream_name="DLQ", is_stream_leader="true"})'
            dlq_info = await exporter.bus.js.stream_info(subjects.DLQ_STREAM)
            assert one(await _query(http, prom, dlq, at)) == dlq_info.state.messages >= 1
            # leader only: the stale follower replica never leaks into a panel...
            for _title, expr in _targets(dash):
                if "nats_" in expr:
                    values = _numbers(await _query(http, prom, _grafana_expr(expr), at))
                    assert all(v < FOLLOWER_VALUE for v in values), expr
            # ...though it is there to be filtered out
            everything = await _query(http, prom, "max(nats_consumer_num_pending)", at)
            assert one(everything) == FOLLOWER_VALUE
    except BaseException:
        print("prometheus log:\n" + prom.failure())
        raise
    finally:
        prom.stop()
        await asyncio.to_thread(stack.stop)


async def _poll_gateway(
    http: aiohttp.ClientSession, base_url: str, key: str, ids: list[str]
) -> None:
    """Until cancelled: the newest job's state and, once it is finished, its SSE stream
    (which replays and ends) through the gateway's REST API, a few times a second."""
    headers = {"Authorization": f"Bearer {key}"}
    recorded: set[str] = set()
    while True:
        if ids:
            async with http.get(f"{base_url}/v1/jobs/{ids[-1]}", headers=headers) as r:
                if r.status == 404 and ids[-1] not in recorded:
                    # submitted through NATS, not this gateway: 404 until an orchestrator
                    # has taken it in (a job once seen must never be missing again)
                    await asyncio.sleep(0.05)
                    continue
                assert r.status == 200, await r.text()
                recorded.add(ids[-1])
                finished = (await r.json())["status"] in ("completed", "failed")
            if finished:
                stream = f"{base_url}/v1/jobs/{ids[-1]}/stream"
                async with http.get(stream, headers=headers) as r:
                    assert r.status == 200, await r.text()
                    await r.read()
        await asyncio.sleep(0.2)


async def _wait_until_scraping(
    http: aiohttp.ClientSession, prom: Prometheus, *, n_targets: int
) -> None:
    deadline = time.monotonic() + 30
    while True:
        assert prom.proc is not None and prom.proc.poll() is None, prom.failure()
        try:
            data = await _api(http, prom, "query", query="sum(up)", time=f"{time.time():.3f}")
            if data["result"] and float(data["result"][0]["value"][1]) == n_targets:
                return
        except (aiohttp.ClientError, AssertionError):
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"Prometheus not scraping {n_targets} targets:\n{prom.failure()}")
        await asyncio.sleep(0.2)


async def _wait_for_value(
    http: aiohttp.ClientSession, prom: Prometheus, expr: str, value: float, *, after: float
) -> None:
    deadline = time.monotonic() + 20
    while True:
        now = time.time()
        result = await _query(http, prom, expr, now)
        if now > after + SCRAPE_INTERVAL_S and result and _numbers(result)[0] == value:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"{expr} never reached {value}: {result}")
        await asyncio.sleep(0.2)
