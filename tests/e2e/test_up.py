"""The whole stack through the CLI: `agentbus up --workers 3`, 20 documents of very
different lengths submitted with `agentbus submit`, 20 summaries, and every emitted
event exactly once in the archive; Ctrl-C stops everything."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
from pathlib import Path

import pytest

from agentbus.bus.core import Bus
from agentbus.contract.settings import NatsSettings
from agentbus_event_archiver import EventStore
from tests.conftest import stream_agent_events
from tests.documents import make_document
from tests.e2e.upstack import AGENTBUS, agentbus_up

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def test_up_submit_twenty_documents_and_archive_every_event(tmp_path: Path) -> None:
    with agentbus_up(tmp_path, "--workers", "3") as stack:
        url, data_dir = stack.url, stack.data_dir
        assert len(stack.pids) == 6  # archiver, orchestrator, 3 workers, gateway

        rng = random.Random(7)
        lengths = [
            1,
            2,
            3,
            5,
            8,
            13,
            20,
            30,
            45,
            60,
            80,
            100,
            150,
            200,
            300,
            400,
            600,
            800,
            1200,
            2000,
        ]
        files = []
        for i, n in enumerate(lengths):
            f = tmp_path / f"doc{i:02}.txt"
            f.write_text(make_document(rng, n))
            files.append(f)
        env = {**os.environ, "AGENTBUS_NATS__URL": url}
        done = subprocess.run(
            [*AGENTBUS, "submit", "--json", "--timeout", "200", *map(str, files)],
            env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path,
        )  # fmt: skip
        records = json.loads(done.stdout)
        assert done.returncode == 0, [r for r in records if r["status"] != "completed"]
        assert len(records) == 20
        assert [r["status"] for r in records] == ["completed"] * 20
        assert all(r["summary"] and len(r["summary"]) <= 1200 for r in records)
        assert max(r["chunks"] for r in records) > 10  # long documents really fanned out
        assert len({r["job_id"] for r in records}) == 20

        async def archive_matches_stream() -> tuple[list[str], list[str]]:
            bus = await Bus.connect(NatsSettings(url=url), agent_id="e2e-check", service="test")
            store = EventStore(f"sqlite+aiosqlite:///{data_dir / 'archive.db'}")
            try:
                for _ in range(100):
                    emitted = [e.event_id for e in await stream_agent_events(bus)]
                    archived = await store.event_ids()
                    if len(archived) >= len(emitted):
                        return emitted, archived
                    await asyncio.sleep(0.2)
                return emitted, archived
            finally:
                await store.close()
                await bus.close()

        # the other client commands against the same stack
        first = records[-1]["job_id"]
        st = subprocess.run(
            [*AGENTBUS, "status", first, "--json"], env=env, capture_output=True, text=True
        )
        assert st.returncode == 0, st.stderr
        assert json.loads(st.stdout)["status"] == "completed"
        # as a table, within 80 columns on a wide terminal too
        wide = {**env, "COLUMNS": "200"}
        st = subprocess.run([*AGENTBUS, "status", first], env=wide, capture_output=True, text=True)
        assert st.returncode == 0, st.stderr
        rows = {line.split(maxsplit=1)[0]: line for line in st.stdout.splitlines() if line.strip()}
        assert "completed" in rows["status"] and first in rows["job"]
        assert max(len(line) for line in st.stdout.splitlines()) <= 80
        hist = subprocess.run(
            [*AGENTBUS, "history", first], env=wide, capture_output=True, text=True
        )
        assert hist.returncode == 0, hist.stderr
        assert "job.completed" in hist.stdout
        assert max(len(line) for line in hist.stdout.splitlines()) <= 80
        # -s/--server instead of the environment or the stack file (from another directory)
        elsewhere = {k: v for k, v in env.items() if k != "AGENTBUS_NATS__URL"}
        st = subprocess.run(
            [*AGENTBUS, "status", "-s", url, first, "--json"],
            env=elsewhere, capture_output=True, text=True, cwd=tmp_path.parent,
        )  # fmt: skip
        assert st.returncode == 0, st.stderr
        assert json.loads(st.stdout)["job_id"] == first
        # an unknown job: the error alone, no empty table
        unknown = subprocess.run(
            [*AGENTBUS, "history", "no-such-job"], env=env, capture_output=True, text=True
        )
        assert unknown.returncode == 1
        assert unknown.stdout == ""
        assert unknown.stderr.strip() == "error: no archived events for job no-such-job"
        hist = subprocess.run(
            [*AGENTBUS, "history", first, "--json"], env=env, capture_output=True, text=True
        )
        assert hist.returncode == 0, hist.stderr
        kinds = [e["kind"] for e in json.loads(hist.stdout)]
        assert kinds[0] == "job.accepted" and "job.completed" in kinds
        assert kinds.count("task.completed") >= records[-1]["chunks"]
        ev = subprocess.run(
            [*AGENTBUS, "events", "--last", "5"], env=env, capture_output=True, text=True
        )
        assert ev.returncode == 0, ev.stderr
        assert len(ev.stdout.strip().splitlines()) == 5
        missing = subprocess.run(
            [*AGENTBUS, "status", "no-such-job"], env=env, capture_output=True, text=True
        )
        assert missing.returncode == 1
        assert missing.stderr.strip().startswith("error: no job no-such-job")

        emitted, archived = asyncio.run(archive_matches_stream())
        assert len(emitted) == len(set(emitted)), "an event was emitted twice"
        assert sorted(archived) == sorted(emitted)
        assert len(emitted) > 20 * 4  # accepted, chunked, task events, completed per job
    assert "stopped" in stack.output
