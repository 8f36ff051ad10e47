"""Network partitions, not kills: one service (a worker; separately an orchestrator) cut
off from nats-server by a black-hole proxy (`netproxy.PartitionProxy`) for longer than
ack_wait while its process keeps running. It notices only by its pings; what it held is
redelivered and done by the others; when the partition heals, what it wrote into the
partition (late results, acks, state writes, events) reaches the server and changes
nothing: the counts stay exact and no job's state moves again."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import nats
import nats.errors
import pytest
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, StreamConfig

from agentbus.bus.connect import flush_barrier
from agentbus.contract import subjects
from agentbus.contract.messages import AgentEvent, EventKind, JobSubmit, TaskAssign, decode
from agentbus.dev.embedded import EmbeddedNatsServer
from agentbus.dev.stack import ServiceProcess
from tests.e2e.faults.harness import Probe, holds, measure, report, until
from tests.e2e.faults.netproxy import PartitionProxy
from tests.e2e.faults.processes import (
    add_service,
    archive_url,
    metric,
    running_stack,
)
from tests.e2e.faults.workload import BASE_ENV, JOBS, long_doc, small_doc

pytestmark = [pytest.mark.e2e, pytest.mark.faults]

ACK_WAIT_S = float(BASE_ENV["AGENTBUS_TOPOLOGY__ACK_WAIT_S"])
REJOIN = 40
"""Jobs submitted after the partition healed: the returning replica takes its share."""
TASKS = (subjects.TASKS_SUBJECTS, subjects.TASKS_PRIORITY_SUBJECTS, subjects.TASKS_TENANT_SUBJECTS)
"""Where a worker's tasks are delivered from."""
PINGS = {
    # the cut-off service gives its connection up after ~1.5 s of silence (3 pings)
    "AGENTBUS_NATS__PING_INTERVAL_S": "0.5",
    "AGENTBUS_NATS__MAX_OUTSTANDING_PINGS": "2",
    "AGENTBUS_NATS__CONNECT_TIMEOUT_S": "1",
}


async def gauge(service: ServiceProcess, name: str, **labels: str) -> float | None:
    return await asyncio.to_thread(metric, service.url, name, **labels)


async def noticed(victim: ServiceProcess) -> None:
    """Until the victim, still running, reports its NATS connection down."""

    async def down() -> bool:
        return await gauge(victim, "agentbus_nats_connected") == 0.0

    await until(down, timeout_s=20, what=f"{victim.agent_id} noticed the partition")
    assert victim.alive()


async def back(victim: ServiceProcess) -> None:
    """Until the victim reconnected (through the healed proxy) and is ready again."""

    async def ready() -> bool:
        return await asyncio.to_thread(victim.ready)

    await until(ready, timeout_s=30, what=f"{victim.agent_id} ready again")
    assert (await gauge(victim, "agentbus_nats_reconnects_total") or 0) >= 1


async def finished_late_work(victim: ServiceProcess) -> None:
    """Until the worker has nothing in flight: what it held through the partition is
    published (a publish retries for up to 30 s) and acked."""

    async def idle() -> bool:
        busy = await gauge(victim, "agentbus_worker_in_flight", consumer="summarize-workers")
        return busy == 0.0

    await until(idle, timeout_s=60, what=f"{victim.agent_id} finished its late work")


def facts(events: list[AgentEvent], job_ids: list[str]) -> set[str]:
    """The ids of the once-only events (accepted, completed, failed, task completed) of
    `job_ids`."""
    once = {
        EventKind.JOB_ACCEPTED,
        EventKind.JOB_COMPLETED,
        EventKind.JOB_FAILED,
        EventKind.TASK_COMPLETED,
    }
    jobs = set(job_ids)
    return {e.event_id for e in events if e.kind in once and e.job_id in jobs}


async def revisions(probe: Probe, job_ids: list[str]) -> dict[str, int]:
    kv = await probe.b.kv(subjects.JOBS_BUCKET)
    out: dict[str, int] = {}
    for job_id in job_ids:
        out[job_id] = int((await kv.get(job_id)).revision or 0)
    return out


@pytest.mark.timeout(60)
# nats-py leaves the socket of a connect attempt that timed out waiting for INFO unclosed
# (its StreamWriter warns when collected): every attempt into the partition is one
@pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <function StreamWriter.__del__"
    ":pytest.PytestUnraisableExceptionWarning"
)
async def test_proxy_partition_is_a_black_hole_noticed_by_pings(
    nats_single: EmbeddedNatsServer,
) -> None:
    """The proxy itself: while severed nothing crosses and no socket closes, so a client
    notices only by its pings; after heal it reconnects, and what it wrote into the
    partition arrives late, once."""
    assert nats_single.client_port is not None
    events: list[str] = []

    async def on_disconnected() -> None:
        events.append("disconnected")

    async def on_reconnected() -> None:
        events.append("reconnected")

    async def on_error(e: Exception) -> None:
        pass

    got: list[tuple[float, bytes]] = []

    async def on_msg(msg: Msg) -> None:
        got.append((time.monotonic(), msg.data))

    async with PartitionProxy(nats_single.client_port) as proxy:
        watcher = await nats.connect(nats_single.url)
        cut = await nats.connect(
            # stale after 3 unanswered pings, 4-6 s after the last PONG: long after the
            # 1 s flush below, however late a loaded CPU runs this task
            proxy.url, ping_interval=2, max_outstanding_pings=2, connect_timeout=1,
            reconnect_time_wait=0.2, max_reconnect_attempts=-1, error_cb=on_error,
            disconnected_cb=on_disconnected, reconnected_cb=on_reconnected,
        )  # fmt: skip
        try:
            await watcher.subscribe("partition.>", cb=on_msg)
            await flush_barrier(watcher)
            await cut.publish("partition.before", b"before")
            await flush_barrier(cut)
            try:
                await until(holds(lambda: len(got) == 1), timeout_s=5, what="the first message")
            except AssertionError as e:
                raise AssertionError(
                    f"{e}: got={got} events={events} connected={cut.is_connected} "
                    f"reconnecting={cut.is_reconnecting} proxy={proxy.stats}"
                ) from e
            proxy.sever()
            await cut.publish("partition.during", b"during")
            with pytest.raises(nats.errors.TimeoutError):
                await cut.flush(timeout=1)  # the PONG never comes, the socket stays open
            assert events == [] and cut.is_connected
            await until(
                holds(lambda: "disconnected" in events), timeout_s=20, what="pings noticed it"
            )
            # reconnect attempts meet the partition too
            await until(
                holds(lambda: proxy.stats.held_connections >= 1),
                timeout_s=10,
                what="a reconnect attempt is held",
            )
            assert [d for _, d in got] == [b"before"], "a byte crossed the partition"
            healed_at = time.monotonic()
            proxy.heal()
            await until(holds(lambda: "reconnected" in events), timeout_s=10, what="reconnect")
            await cut.publish("partition.after", b"after")
            await cut.flush()
            await until(holds(lambda: len(got) >= 3), timeout_s=10, what="late and new messages")
            await asyncio.sleep(0.5)
        finally:
            await cut.close()
            await watcher.close()
    assert sorted(d for _, d in got) == [b"after", b"before", b"during"]
    assert all(t >= healed_at for t, d in got if d == b"during")
    assert proxy.stats.late_up > 0 and proxy.stats.severed_s[0] > 1.0


@pytest.mark.timeout(60)
async def test_proxy_severs_right_after_a_jetstream_delivery(
    nats_single: EmbeddedNatsServer,
) -> None:
    """`sever_after`: the client behind the proxy gets the first delivery on the subject,
    whole, and nothing after it (the rest of its pull is held in the partition); its ack
    stays in the partition too, so the server delivers all of them again after ack_wait;
    the ack arrives after heal."""
    assert nats_single.client_port is not None
    async with PartitionProxy(nats_single.client_port) as proxy:
        direct = await nats.connect(nats_single.url)
        cut = await nats.connect(proxy.url)
        try:
            js = direct.jetstream()
            await js.add_stream(StreamConfig(name="CUT", subjects=["cut.>"]))
            await js.add_consumer(
                "CUT", ConsumerConfig(durable_name="d", ack_wait=1.0, max_deliver=5)
            )
            for i in range(3):
                await js.publish(f"cut.{i}", f"m{i}".encode())
            victim = await cut.jetstream().pull_subscribe_bind(durable="d", stream="CUT")
            proxy.sever_after("cut.>")
            got = await victim.fetch(3, timeout=2)
            assert proxy.severed and proxy.stats.cut_after is not None
            assert [m.data for m in got] == [b"m0"] == [proxy.stats.cut_after.body]
            await got[0].ack()  # into the partition
            other = await js.pull_subscribe_bind(durable="d", stream="CUT")
            again = await other.fetch(3, timeout=10)  # after ack_wait
            assert sorted(m.data for m in again) == [b"m0", b"m1", b"m2"]
            assert all(m.metadata.num_delivered == 2 for m in again)
            for m in again:
                await m.ack()
            proxy.heal()
            await until(holds(lambda: proxy.stats.late_up > 0), timeout_s=10, what="late ack")
        finally:
            await cut.close()
            await direct.close()


@pytest.mark.timeout(150)
async def test_worker_partitioned_past_ack_wait_changes_nothing_when_it_returns(
    nats_single: EmbeddedNatsServer,
    tmp_path: Path,
    fault_env: Callable[..., dict[str, str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    fault_env(AGENTBUS_SUMMARIZER__SIMULATED_LATENCY_MS="400", AGENTBUS_WORKER__CONCURRENCY="4")
    docs = {f"cut-w-{i:03}": small_doc(i) for i in range(JOBS - REJOIN)}
    rejoin = {f"cut-w-after-{i:03}": small_doc(i) for i in range(REJOIN)}
    assert nats_single.client_port is not None
    async with (
        PartitionProxy(nats_single.client_port) as proxy,
        running_stack(tmp_path, nats_single.url, workers=2) as stack,
        Probe(nats_single.url) as probe,
    ):
        victim = await add_service(
            stack, "worker", "worker-cut", env={"AGENTBUS_NATS__URL": proxy.url, **PINGS}
        )
        job_ids = await probe.submit(docs)
        await probe.wait_terminal(job_ids, timeout_s=60, until=lambda n: n >= JOBS // 5)
        ok = "agentbus_tasks_processed_total"
        done_before = await gauge(victim, ok, outcome="ok") or 0.0
        # cut right after a task reached it: it holds that one whatever the CPU load
        proxy.sever_after(*TASKS)
        await until(holds(lambda: proxy.severed), timeout_s=30, what="a task reached the victim")
        severed_at = time.monotonic()
        await noticed(victim)
        # the others finish every job while it is away, for at least 3 x ack_wait
        await probe.wait_terminal(job_ids, timeout_s=90)
        await asyncio.sleep(max(0.0, severed_at + 3 * ACK_WAIT_S - time.monotonic()))
        assert victim.alive(), "the partitioned worker exited"
        before = await revisions(probe, job_ids)
        events_before = await probe.events()
        proxy.heal()
        await back(victim)
        await finished_late_work(victim)
        late_done = (await gauge(victim, ok, outcome="ok") or 0.0) - done_before
        # back in the pool: it takes its share of new work
        after_ids = await probe.submit(rejoin)
        await probe.wait_terminal(after_ids, timeout_s=60)
        outcome, events, states = await measure(
            "worker-partition", probe, job_ids + after_ids, database_url=archive_url(stack),
            submitted=len(job_ids) + len(after_ids),
        )  # fmt: skip
        copies = await probe.events()  # every copy, the victim's late ones too
        after = await revisions(probe, job_ids)
    # the tasks it held: started by it, then delivered again to another replica
    mine = {
        (e.job_id, e.task_id): int(e.data["attempt"])
        for e in events
        if e.kind is EventKind.TASK_STARTED and e.agent_id == victim.agent_id
    }
    held = {
        (e.job_id, e.task_id)
        for e in events
        if e.kind is EventKind.TASK_STARTED
        and e.agent_id != victim.agent_id
        and int(e.data["attempt"]) > mine.get((e.job_id, e.task_id), 99)
    }
    done_by: dict[tuple[str | None, str | None], set[str]] = {}
    for e in copies:
        if e.kind is EventKind.TASK_COMPLETED:
            done_by.setdefault((e.job_id, e.task_id), set()).add(e.agent_id)
    rejoined = {t for t in mine if t[0] in rejoin}
    # the task delivered to it just before the cut: it held that one through the partition
    cut = proxy.stats.cut_after
    assert cut is not None and cut.metadata.stream == subjects.TASKS_STREAM, cut
    cut_task = decode(cut.body, TaskAssign).payload
    cut_key = (cut_task.job_id, cut_task.task_id)
    started_elsewhere = [
        int(e.data["attempt"])
        for e in events
        if e.kind is EventKind.TASK_STARTED
        and (e.job_id, e.task_id) == cut_key
        and e.agent_id != victim.agent_id
    ]
    outcome.extra.update(
        {
            "partition-s": round(proxy.stats.severed_s[0], 1),
            "cut-after": f"{cut_task.job_id}/{cut_task.task_id}#{cut.metadata.num_delivered}",
            "held-by-victim": len(held),
            "victim-late-results": int(late_done),
            "late-bytes": proxy.stats.late_up,
            "victim-tasks-after": len(rejoined),
        }
    )
    report(capsys, outcome)
    outcome.check()
    assert outcome.completed == JOBS and outcome.dead_lettered == 0
    assert proxy.stats.severed_s[0] > 3 * ACK_WAIT_S
    # the task it held was delivered again, to another replica, which did it
    assert started_elsewhere, f"the held task {cut_key} was not redelivered to another replica"
    assert max(started_elsewhere) > cut.metadata.num_delivered, started_elsewhere
    assert done_by[cut_key] - {victim.agent_id}, done_by[cut_key]
    assert cut_key in held
    for task in held:  # done by another replica (the victim's copy, if any, came late)
        assert done_by[task] - {victim.agent_id}, task
    # what it wrote into the partition reached the server after it healed: its results
    # of the tasks it held, finished in the partition, published and acked late ...
    assert proxy.stats.late_up > 0
    assert late_done >= 1, "the victim published no result after the partition"
    # ... and changed nothing: no job's state moved, no new fact was recorded
    assert after == before, "a late result or ack changed a job's state"
    assert facts(events, job_ids) == facts(events_before, job_ids)
    assert all(s is not None and s.summary and s.error is None for s in states.values())
    assert rejoined, "the worker took no task after the partition"


@pytest.mark.timeout(150)
async def test_orchestrator_partitioned_past_ack_wait_changes_nothing_when_it_returns(
    nats_single: EmbeddedNatsServer,
    tmp_path: Path,
    fault_env: Callable[..., dict[str, str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    fault_env(
        AGENTBUS_SUMMARIZER__SIMULATED_LATENCY_MS="100",
        AGENTBUS_WORKER__CONCURRENCY="6",
        AGENTBUS_ORCHESTRATOR__CHUNK_CHARS="400",
        AGENTBUS_ORCHESTRATOR__CHUNK_SUMMARY_CHARS="100",
        AGENTBUS_ORCHESTRATOR__SUMMARY_CHARS="150",
    )
    first = {f"cut-o-multi-{i:02}": long_doc(i, paragraphs=4) for i in range(30)}
    first |= {f"cut-o-{i:03}": small_doc(i) for i in range(JOBS // 2 - len(first))}
    # submitted as the partition begins: the cut-off replica's waiting pulls take some
    during = {f"cut-o-during-{i:03}": small_doc(i) for i in range(JOBS // 2 - REJOIN)}
    rejoin = {f"cut-o-after-{i:03}": small_doc(i) for i in range(REJOIN)}
    assert nats_single.client_port is not None
    async with (
        PartitionProxy(nats_single.client_port) as proxy,
        running_stack(tmp_path, nats_single.url, workers=3) as stack,
        Probe(nats_single.url) as probe,
    ):
        [survivor] = stack.by_role("orchestrator")
        victim = await add_service(
            stack, "orchestrator", "orchestrator-cut",
            env={"AGENTBUS_NATS__URL": proxy.url, **PINGS},
        )  # fmt: skip
        job_ids = await probe.submit(first)
        await probe.wait_terminal(job_ids, timeout_s=60, until=lambda n: n >= JOBS // 5)
        # cut right after a job reached it (one of `first` still queued, or of `during`):
        # it holds that one whatever the CPU load
        proxy.sever_after(subjects.JOBS_SUBJECT, subjects.JOBS_TENANT_SUBJECTS)
        job_ids += await probe.submit(during)
        await until(holds(lambda: proxy.severed), timeout_s=30, what="a job reached the victim")
        severed_at = time.monotonic()
        await noticed(victim)
        await probe.wait_terminal(job_ids, timeout_s=90)
        await asyncio.sleep(max(0.0, severed_at + 3 * ACK_WAIT_S - time.monotonic()))
        assert victim.alive(), "the partitioned orchestrator exited"
        before = await revisions(probe, job_ids)
        events_before = await probe.events()
        proxy.heal()
        await back(victim)
        await probe.settle()
        taken_over = {
            stream: await gauge(survivor, "agentbus_redeliveries_total", stream=stream) or 0.0
            for stream in (subjects.JOBS_STREAM, subjects.RESULTS_STREAM)
        }
        after_ids = await probe.submit(rejoin)
        await probe.wait_terminal(after_ids, timeout_s=60)
        outcome, events, states = await measure(
            "orch-partition", probe, job_ids + after_ids, database_url=archive_url(stack),
            submitted=len(job_ids) + len(after_ids),
        )  # fmt: skip
        after = await revisions(probe, job_ids)
    by_victim = Counter(e.job_id in rejoin for e in events if e.agent_id == victim.agent_id)
    # the job delivered to it just before the cut: it held that one through the partition
    cut = proxy.stats.cut_after
    assert cut is not None and cut.metadata.stream == subjects.JOBS_STREAM, cut
    cut_job = decode(cut.body, JobSubmit).payload.job_id
    outcome.extra.update(
        {
            "partition-s": round(proxy.stats.severed_s[0], 1),
            "cut-after": f"{cut_job}#{cut.metadata.num_delivered}",
            "taken-over": "/".join(f"{s}:{int(v)}" for s, v in taken_over.items()),
            "late-bytes": proxy.stats.late_up,
            "victim-events-before/after": f"{by_victim[False]}/{by_victim[True]}",
        }
    )
    report(capsys, outcome)
    outcome.check()
    assert outcome.completed == JOBS and outcome.dead_lettered == 0
    assert proxy.stats.severed_s[0] > 3 * ACK_WAIT_S
    assert by_victim[False] > 0, "the victim did no work before the partition"
    # what the victim's pulls took as it was cut off was redelivered to the survivor, which
    # finished it
    assert taken_over[subjects.JOBS_STREAM] > 0, taken_over
    assert cut_job in job_ids
    cut_state = states[cut_job]
    assert cut_state is not None and cut_state.summary, cut_state
    assert proxy.stats.late_up > 0
    assert after == before, "a late write of the partitioned orchestrator changed a job"
    assert facts(events, job_ids) == facts(events_before, job_ids)
    multi = [states[j] for j in job_ids if j.startswith("cut-o-multi-")]
    assert all(s is not None and s.chunks == 4 and s.summary for s in multi)
    assert by_victim[True] > 0, "the orchestrator did no work after the partition"
