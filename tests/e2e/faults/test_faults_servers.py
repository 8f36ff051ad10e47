"""nats-server faults: a restart under load, a killed node of a 3-node cluster."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path

import nats
import nats.errors
import nats.js.errors
import pytest

from agentbus.contract import subjects
from agentbus.dev.embedded import EmbeddedNatsServer
from tests.e2e.faults.harness import Probe, measure, report, until
from tests.e2e.faults.processes import NatsCluster, archive_url, metric, running_stack
from tests.e2e.faults.workload import JOBS, small_doc

pytestmark = [pytest.mark.e2e, pytest.mark.faults]


@pytest.mark.timeout(150)
async def test_nats_server_restart_under_load_loses_nothing(
    nats_single: EmbeddedNatsServer,
    tmp_path: Path,
    fault_env: Callable[..., dict[str, str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    fault_env(AGENTBUS_SUMMARIZER__SIMULATED_LATENCY_MS="150")
    docs = {f"restart-{i:03}": small_doc(i) for i in range(JOBS)}
    async with (
        running_stack(tmp_path, nats_single.url, workers=2) as stack,
        Probe(nats_single.url) as probe,
    ):
        job_ids = await probe.submit(docs)
        done = await probe.wait_terminal(job_ids, timeout_s=60, until=lambda n: n >= JOBS // 4)
        port, store = nats_single.client_port, nats_single.store_dir
        await asyncio.to_thread(nats_single.restart)  # SIGTERM, then start on the same port/store
        assert (nats_single.client_port, nats_single.store_dir) == (port, store)
        await probe.wait_terminal(job_ids, timeout_s=90)

        async def all_ready() -> bool:
            return all(await asyncio.gather(*(asyncio.to_thread(p.ready) for p in stack.processes)))

        await until(all_ready, timeout_s=30, what="every service ready again")
        reconnects = {
            p.agent_id: await asyncio.to_thread(metric, p.url, "agentbus_nats_reconnects_total")
            for p in stack.processes
        }
        outcome, _events, _ = await measure(
            "server-restart", probe, job_ids, database_url=archive_url(stack),
            submitted=len(job_ids),
            extra={"done-before-restart": len(done)},
        )  # fmt: skip
    report(capsys, outcome)
    outcome.check()
    assert outcome.completed == JOBS
    assert all(n is not None and n >= 1 for n in reconnects.values()), reconnects


@pytest.mark.timeout(180)
async def test_cluster_node_killed_under_load_pipeline_continues(
    tmp_path: Path,
    fault_env: Callable[..., dict[str, str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    fault_env(AGENTBUS_TOPOLOGY__REPLICAS="3", AGENTBUS_SUMMARIZER__SIMULATED_LATENCY_MS="100")
    cluster = NatsCluster(tmp_path / "cluster")
    await asyncio.to_thread(cluster.start)
    try:
        await cluster.wait_jetstream()
        url = cluster.url
        docs = {f"cluster-{i:03}": small_doc(i) for i in range(JOBS)}
        async with running_stack(tmp_path, url, workers=2) as stack, Probe(url) as probe:
            for name in subjects.ALL_STREAMS:
                info = await probe.b.js.stream_info(name)
                assert info.config.num_replicas == 3, name
            job_ids = await probe.submit(docs)
            await probe.wait_terminal(job_ids, timeout_s=60, until=lambda n: n >= JOBS // 4)
            # kill the node that leads the busiest stream
            info = await probe.b.js.stream_info(subjects.TASKS_STREAM)
            leader = info.cluster.leader if info.cluster else "n1"
            victim = cluster.node(leader or "n1")
            await asyncio.to_thread(victim.kill)
            await probe.wait_terminal(job_ids, timeout_s=120)
            outcome, _events, _ = await measure(
                "cluster-node-kill", probe, job_ids, database_url=archive_url(stack),
                submitted=len(job_ids), extra={"killed": f"{leader}(TASKS leader)"},
            )  # fmt: skip
            new_leader: list[str] = []

            async def leader_known() -> bool:
                with contextlib.suppress(nats.errors.Error, TimeoutError):
                    after = await asyncio.wait_for(probe.b.js.stream_info(subjects.TASKS_STREAM), 3)
                    if after.cluster and after.cluster.leader:
                        new_leader.append(after.cluster.leader)
                return bool(new_leader)

            await until(leader_known, timeout_s=30, what="TASKS has a leader")
            outcome.extra["new-leader"] = new_leader[0]
        report(capsys, outcome)
        outcome.check()
        assert outcome.completed == JOBS
        assert outcome.extra["new-leader"] != leader
    finally:
        await asyncio.to_thread(cluster.stop)
