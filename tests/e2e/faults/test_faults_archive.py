"""Archive faults: the event-archiver's database (PostgreSQL) down for 15 s under load,
and the archiver itself stopped (SIGSTOP) for 60 s while 200 jobs run. The pipeline does
not wait for the archive; the events wait in AGENT_EVENTS (the lag shows as the
consumer's pending count, then in `agentbus_archive_lag_seconds`), and once the archive
is back every event is archived exactly once."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import nats.errors
import pytest

from agentbus.contract import subjects
from agentbus.dev.embedded import EmbeddedNatsServer
from agentbus.dev.stack import ServiceProcess
from tests.e2e.faults.harness import Probe, measure, report, until
from tests.e2e.faults.processes import archive_url, metric, running_stack
from tests.e2e.faults.workload import JOBS, small_doc
from tests.integration.pgserver import PostgresServer, postgres_unavailable

pytestmark = [pytest.mark.e2e, pytest.mark.faults]

PG_OUTAGE_S = 15.0
ARCHIVER_STOP_S = 60.0


@pytest.fixture
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server of this test's own (it is stopped and started again)."""
    reason = postgres_unavailable()
    if reason is not None:
        pytest.skip(reason)
    with PostgresServer.running() as server:
        yield server


async def archive_backlog(probe: Probe) -> int:
    """Event messages the archiver has not acked yet (JetStream's view of its lag)."""
    try:
        info = await probe.b.js.consumer_info(
            subjects.AGENT_EVENTS_STREAM, subjects.ARCHIVER_CONSUMER
        )
    except (nats.errors.Error, TimeoutError):
        return -1
    return int(info.num_pending or 0) + int(info.num_ack_pending or 0)


async def caught_up(probe: Probe, *, timeout_s: float) -> None:
    async def done() -> bool:
        return await archive_backlog(probe) == 0

    await until(done, timeout_s=timeout_s, what="the archiver caught up")


async def scrape(service: ServiceProcess, name: str, **labels: str) -> float:
    return await asyncio.to_thread(metric, service.url, name, **labels) or 0.0


@pytest.mark.timeout(150)
async def test_postgres_archive_outage_under_load_archives_every_event_once(
    nats_single: EmbeddedNatsServer,
    postgres: PostgresServer,
    tmp_path: Path,
    fault_env: Callable[..., dict[str, str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    # ~12 s of work on 8 slots: jobs run, and emit events, through most of the outage
    fault_env(AGENTBUS_SUMMARIZER__SIMULATED_LATENCY_MS="500", AGENTBUS_WORKER__CONCURRENCY="4")
    database_url = postgres.create_database("faults")
    docs = {f"pg-{i:03}": small_doc(i) for i in range(JOBS)}
    env = {"AGENTBUS_ARCHIVER__DATABASE_URL": database_url}
    async with (
        running_stack(tmp_path, nats_single.url, workers=2, env=env) as stack,
        Probe(nats_single.url) as probe,
    ):
        [archiver] = stack.by_role("archiver")
        stored = "agentbus_events_archived_total"
        job_ids = await probe.submit(docs)
        await probe.wait_terminal(job_ids, timeout_s=60, until=lambda n: n >= JOBS // 5)
        await asyncio.to_thread(postgres.stop)
        down_at = time.monotonic()
        seq_at_stop = (await probe.b.js.stream_info(subjects.AGENT_EVENTS_STREAM)).state.last_seq
        await asyncio.sleep(1.0)  # a commit under way when it stopped has ended by now
        archived_early = await scrape(archiver, stored, outcome="stored")
        await asyncio.sleep(max(0.0, down_at + PG_OUTAGE_S - time.monotonic()))
        archived_late = await scrape(archiver, stored, outcome="stored")
        backlog = await archive_backlog(probe)
        seq_at_start = (await probe.b.js.stream_info(subjects.AGENT_EVENTS_STREAM)).state.last_seq
        await asyncio.to_thread(postgres.restart)
        outage_s = time.monotonic() - down_at
        await probe.wait_terminal(job_ids, timeout_s=60)
        await probe.settle()
        await caught_up(probe, timeout_s=60)
        errors = await scrape(archiver, "agentbus_handler_errors_total")
        outcome, _events, _ = await measure(
            "pg-outage", probe, job_ids, database_url=database_url, submitted=len(job_ids),
            extra={
                "outage-s": round(outage_s, 1),
                "emitted-during": seq_at_start - seq_at_stop,
                "backlog-at-restart": backlog,
                "failed-commits": int(errors),
            },
        )  # fmt: skip
    report(capsys, outcome)
    outcome.check()
    assert outcome.completed == JOBS
    assert outage_s >= PG_OUTAGE_S
    # the outage was real and under load: events kept coming, nothing was committed,
    # the archiver's commits failed and the events waited in the stream
    assert seq_at_start > seq_at_stop, "no event was emitted during the outage"
    assert archived_late == archived_early, "events were archived while PostgreSQL was down"
    assert errors > 0 and backlog > 0


@pytest.mark.timeout(180)
async def test_archiver_stopped_60s_lags_visibly_and_catches_up(
    nats_single: EmbeddedNatsServer,
    tmp_path: Path,
    fault_env: Callable[..., dict[str, str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    fault_env()
    docs = {f"slow-arch-{i:03}": small_doc(i) for i in range(JOBS)}
    async with (
        running_stack(tmp_path, nats_single.url, workers=2) as stack,
        Probe(nats_single.url) as probe,
    ):
        [archiver] = stack.by_role("archiver")
        await caught_up(probe, timeout_s=30)  # the services' start-up events
        archiver.signal(signal.SIGSTOP)
        stopped_at = time.monotonic()
        seq_at_stop = (await probe.b.js.stream_info(subjects.AGENT_EVENTS_STREAM)).state.last_seq
        try:
            job_ids = await probe.submit(docs)
            # the pipeline does not wait for its archive
            await probe.wait_terminal(job_ids, timeout_s=45)
            done_s = time.monotonic() - stopped_at
            await probe.settle()
            backlog = await archive_backlog(probe)
            info = await probe.b.js.stream_info(subjects.AGENT_EVENTS_STREAM)
            since_stop = info.state.last_seq - seq_at_stop
            await asyncio.sleep(max(0.0, stopped_at + ARCHIVER_STOP_S - time.monotonic()))
            assert archiver.alive()
        finally:
            archiver.signal(signal.SIGCONT)
        stopped_s = time.monotonic() - stopped_at
        resumed_at = time.monotonic()
        await caught_up(probe, timeout_s=60)
        catch_up_s = time.monotonic() - resumed_at
        lag = "agentbus_archive_lag_seconds"
        observed = await scrape(archiver, lag + "_count")
        within_10s = await scrape(archiver, lag + "_bucket", le="10.0")
        outcome, events, _ = await measure(
            "archiver-stopped", probe, job_ids, database_url=archive_url(stack),
            submitted=len(job_ids),
            extra={
                "stopped-s": round(stopped_s, 1),
                "jobs-done-after-s": round(done_s, 1),
                "backlog-msgs": backlog,
                "archived-10s+-late": int(observed - within_10s),
                "catch-up-s": round(catch_up_s, 1),
            },
        )  # fmt: skip
    report(capsys, outcome)
    outcome.check()
    assert outcome.completed == JOBS
    assert stopped_s >= ARCHIVER_STOP_S
    # the lag was visible: in JetStream while it was stopped (every event message since
    # the stop waited) ...
    assert backlog == since_stop > 0, (backlog, since_stop)
    # ... and in the archiver's metric after: every event of a job was emitted within
    # `done_s` (< 45 s) of the stop and archived after it ended (60 s), so > 10 s late
    assert observed >= outcome.emitted
    of_jobs = sum(1 for e in events if e.job_id)
    assert observed - within_10s >= of_jobs, (observed, within_10s, of_jobs)
