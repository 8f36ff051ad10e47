"""The job timer's ack (the job message kept pending until the job ends) is confirmed and
retried: one lost while a consumer leader is elected must not keep an ended job pending
until its next deadline check."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, cast

import nats.errors
import pytest

from agentbus.bus.core import Bus
from agentbus.contract.messages import JobState, JobStatus, utcnow
from agentbus_orchestrator import collect
from agentbus_orchestrator.collect import Collector
from agentbus_orchestrator.state import JobStore
from tests.conftest import make_settings


class _FlakyNc:
    """Answers the n-th request; raises no-responders / timeout before."""

    def __init__(self, *, fail: int) -> None:
        self.fail = fail
        self.requests: list[tuple[str, bytes]] = []

    async def request(self, subject: str, payload: bytes, *, timeout: float) -> object:  # noqa: ASYNC109 (nats-py's signature)
        self.requests.append((subject, payload))
        if len(self.requests) <= self.fail:
            if len(self.requests) % 2:
                raise nats.errors.NoRespondersError
            raise nats.errors.TimeoutError
        return object()


class _FakeBus:
    service = "orchestrator"

    def __init__(self, nc: _FlakyNc) -> None:
        self.nc = nc


def _collector(nc: _FlakyNc, tmp_path: Path) -> Collector:
    bus = cast(Bus, _FakeBus(nc))
    return Collector(
        bus, JobStore(bus), make_settings("nats://x", tmp_path), service="orchestrator"
    )


def _ended(timer: str | None) -> JobState:
    now = utcnow()
    return JobState(
        job_id="j1", status=JobStatus.COMPLETED, chunks=1, created_at=now, updated_at=now,
        timer=timer,
    )  # fmt: skip


@pytest.mark.timeout(10)
async def test_timer_ack_is_retried_until_confirmed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(collect, "_TIMER_ACK_MAX_BACKOFF_S", 0.01)
    nc = _FlakyNc(fail=3)
    c = _collector(nc, tmp_path)
    await c.end_timer(_ended("$JS.ACK.JOBS.orchestrator.1.7.1.0.0"))
    await c.close()
    assert nc.requests == [("$JS.ACK.JOBS.orchestrator.1.7.1.0.0", b"+ACK")] * 4


@pytest.mark.timeout(10)
async def test_timer_ack_gives_up_after_bounded_tries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(collect, "_TIMER_ACK_MAX_BACKOFF_S", 0.01)
    nc = _FlakyNc(fail=1000)
    c = _collector(nc, tmp_path)
    await c.end_timer(_ended("$JS.ACK.x"))
    acks: Any = list(c._ackers)
    await asyncio.wait(acks, timeout=5)
    await c.close()
    assert len(nc.requests) == collect._TIMER_ACK_TRIES
    assert "not confirmed" in caplog.text


@pytest.mark.timeout(10)
async def test_no_timer_no_ack(tmp_path: Path) -> None:
    nc = _FlakyNc(fail=0)
    c = _collector(nc, tmp_path)
    await c.end_timer(_ended(None))
    await c.close()
    assert nc.requests == []
