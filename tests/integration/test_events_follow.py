"""`agentbus events --last N --follow`: the stored events, then the live ones, with none
lost or shown twice between the two (the CLI as a process, events emitted throughout)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
from pathlib import Path

import pytest

from agentbus.bus.core import Bus
from agentbus.contract import subjects
from agentbus.contract.messages import EventKind
from agentbus.contract.settings import Settings
from tests.integration.rpc_helpers import cli

pytestmark = pytest.mark.integration

STORED = 300
"""Emitted before the CLI starts."""
SHOWN = 1500
"""Lines the CLI prints before it exits (`--limit`): the last 20 stored, then live ones."""
LAST = 20
_COUNTER = re.compile(r'\{"i":(\d+)\}\s*$', re.MULTILINE)


async def _emit_from(bus: Bus, start: int, stop: asyncio.Event, *, pause_s: float) -> int:
    """Until `stop`: one event after another, counted from `start`."""
    i = start
    while not stop.is_set():
        await bus.emit(EventKind.TASK_STARTED, data={"i": i})
        i += 1
        await asyncio.sleep(pause_s)
    return i


@pytest.mark.timeout(240)
async def test_follow_shows_every_event_from_the_stored_ones_on(
    bus: Bus, settings: Settings, tmp_path: Path
) -> None:
    for i in range(STORED):
        bus.emit_soon(EventKind.TASK_STARTED, data={"i": i})
    await bus.emit(EventKind.TASK_STARTED, data={"i": STORED})
    stop = asyncio.Event()
    emitting = asyncio.create_task(_emit_from(bus, STORED + 1, stop, pause_s=0.002))
    try:
        code, out, err = await cli(
            settings, tmp_path, "events", "--last", str(LAST), "--follow",
            "--limit", str(SHOWN),
        )  # fmt: skip
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await emitting
    assert code == 0, err
    counters = [int(m.group(1)) for m in map(_COUNTER.search, out.splitlines()) if m]
    assert len(counters) == SHOWN, out[-2000:]
    gaps = [(a, b) for a, b in itertools.pairwise(counters) if b != a + 1]
    assert gaps == [], f"events lost or repeated between stored and live: {gaps[:5]}"
    assert counters[0] > STORED - LAST, "the stored ones start at most --last back"


@pytest.mark.timeout(120)
async def test_events_of_a_purged_stream_are_none_not_an_error(
    bus: Bus, settings: Settings, tmp_path: Path
) -> None:
    """Purged (or expired by its max age), the stream is empty but its last sequence is
    not 0: `events` shows nothing and exits 0, at once (it used to wait 5 s for a stored
    event that was gone, then fail with a timeout)."""
    for i in range(5):
        await bus.emit(EventKind.TASK_STARTED, data={"i": i})
    await bus.js.purge_stream(subjects.AGENT_EVENTS_STREAM)
    code, out, err = await cli(settings, tmp_path, "events", "--last", "5")
    assert (code, _COUNTER.findall(out), err) == (0, [], "")
    # and following from there shows only what comes next
    stop = asyncio.Event()
    emitting = asyncio.create_task(_emit_from(bus, 100, stop, pause_s=0.01))
    try:
        code, out, err = await cli(
            settings, tmp_path, "events", "--last", "5", "--follow", "--limit", "20"
        )
    finally:
        stop.set()
        await emitting
    counters = [int(c) for c in _COUNTER.findall(out)]
    assert code == 0, err
    assert len(counters) == 20 and min(counters) >= 100
    assert counters == list(range(counters[0], counters[0] + 20))
