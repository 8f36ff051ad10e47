"""`agentbus up` supervises its children: a drained worker stays stopped while the rest keep
serving, a killed worker is restarted (new pid in stack.json, ready again), a worker that
crashes at every start is given up on after 5 crashes, and Ctrl-C or SIGTERM still stops
everything (exit 0, no process left, nats-server included)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import psutil
import pytest

from agentbus.client.api import AgentBusClient
from agentbus.contract.messages import EventKind, JobStatus
from tests.documents import make_document
from tests.e2e.upstack import AGENTBUS, agentbus_up, pid_alive, wait_until_up

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

WAIT_S = 120.0  # generous: the machine may be loaded


def services(data_dir: Path) -> dict[str, dict[str, Any]]:
    state = json.loads((data_dir / "stack.json").read_text())
    return {s["agent_id"]: s for s in state["services"]}


def wait_for(check: Callable[[], bool], *, what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout_s}s: {what}"
        time.sleep(0.2)


def ready(http: str) -> bool:
    try:
        with urllib.request.urlopen(f"{http}/readyz", timeout=2) as reply:
            return bool(reply.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def descendants(pid: int) -> list[int]:
    """Every process `agentbus up` started, nats-server included."""
    return [p.pid for p in psutil.Process(pid).children(recursive=True)]


def run_job(url: str) -> set[str]:
    """Submit a document of several chunks, wait for its summary; the agent ids that
    completed its tasks (from the archive)."""

    async def go() -> set[str]:
        text = make_document(random.Random(14), 300)
        async with AgentBusClient(url) as client:
            job_id = await client.submit(text, title="after")
            state = await client.wait(job_id, timeout_s=WAIT_S)
            assert state.status is JobStatus.COMPLETED, state.error
            for _ in range(150):
                events = await client.history(job_id)
                done = [e for e in events if e.kind is EventKind.TASK_COMPLETED]
                if len(done) >= state.chunks:
                    return {e.agent_id for e in done}
                await asyncio.sleep(0.2)
            raise AssertionError(f"task.completed events not archived: {events}")

    return asyncio.run(go())


def assert_serving(data_dir: Path, names: list[str], pids: dict[str, int]) -> None:
    now = services(data_dir)
    for name in names:
        assert now[name]["state"] == "running", now[name]
        assert now[name]["pid"] == pids[name], f"{name} was restarted"
        assert pid_alive(pids[name]) and ready(now[name]["http"]), name


def test_a_drained_worker_stays_stopped_and_the_rest_keep_serving(tmp_path: Path) -> None:
    with agentbus_up(tmp_path, "--workers", "2") as stack:
        before = services(stack.data_dir)
        pids = {name: s["pid"] for name, s in before.items()}
        everything = descendants(stack.process.pid)
        assert len(everything) == 6  # nats-server, archiver, orchestrator, 2 workers, gateway
        env = {**os.environ, "AGENTBUS_NATS__URL": stack.url}
        ctl = subprocess.run(
            [*AGENTBUS, "ctl", "worker-2", "drain", "--timeout", "30"],
            env=env, capture_output=True, text=True, timeout=90,
        )  # fmt: skip
        assert ctl.returncode == 0, ctl.stderr
        assert "drain: ok" in ctl.stdout
        wait_for(
            lambda: services(stack.data_dir)["worker-2"]["state"] == "stopped",
            what="worker-2 marked stopped in stack.json",
        )
        assert not pid_alive(pids["worker-2"])
        assert services(stack.data_dir)["worker-2"]["exit_code"] == 0

        assert run_job(stack.url) == {"worker-1"}
        # still stopped, well past any restart delay; the others never restarted
        w2 = services(stack.data_dir)["worker-2"]
        assert (w2["state"], w2["restarts"], w2["pid"]) == ("stopped", 0, pids["worker-2"])
        assert_serving(stack.data_dir, ["archiver-1", "orchestrator-1", "worker-1"], pids)
    assert "worker-2 exited 0 (drained); the rest keep running" in stack.output
    assert "stopped" in stack.output
    assert "non-zero" not in stack.output
    assert [pid for pid in everything if pid_alive(pid)] == []


def test_a_killed_worker_is_restarted_and_serves_again(tmp_path: Path) -> None:
    with agentbus_up(tmp_path, "--workers", "2") as stack:
        before = services(stack.data_dir)
        pids = {name: s["pid"] for name, s in before.items()}
        os.kill(pids["worker-1"], signal.SIGKILL)

        def restarted() -> bool:
            w1 = services(stack.data_dir)["worker-1"]
            return bool(w1["pid"] != pids["worker-1"] and w1["state"] == "running")

        wait_for(restarted, what="worker-1 restarted and ready")
        w1 = services(stack.data_dir)["worker-1"]
        assert (w1["restarts"], w1["exit_code"]) == (1, -signal.SIGKILL)
        assert pid_alive(w1["pid"]) and ready(w1["http"])
        assert not pid_alive(pids["worker-1"])

        assert run_job(stack.url) <= {"worker-1", "worker-2"}
        assert_serving(stack.data_dir, ["archiver-1", "orchestrator-1", "worker-2"], pids)
        everything = descendants(stack.process.pid)
        assert w1["pid"] in everything and len(everything) == 6
    assert "worker-1 crashed (killed by SIGKILL); restarting in 1s" in stack.output
    assert f"worker-1 restarted (pid {w1['pid']}, restart 1)" in stack.output
    assert f"worker-1 ready again (pid {w1['pid']})" in stack.output
    assert [pid for pid in everything if pid_alive(pid)] == []


def test_a_worker_that_crashes_at_every_start_is_given_up_on(tmp_path: Path) -> None:
    with agentbus_up(tmp_path, "--workers", "2") as stack:
        pids = {name: s["pid"] for name, s in services(stack.data_dir).items()}
        everything = descendants(stack.process.pid)
        killed: list[int] = []

        def kill_each_start() -> bool:
            """worker-2 SIGKILLed as soon as each start of it shows: a crash loop."""
            w2 = services(stack.data_dir)["worker-2"]
            if w2["state"] == "failed":
                return True
            if w2["pid"] not in killed and w2["state"] in ("starting", "running"):
                killed.append(w2["pid"])
                everything.append(w2["pid"])
                os.kill(w2["pid"], signal.SIGKILL)
            return False

        wait_for(kill_each_start, what="worker-2 given up on")
        w2 = services(stack.data_dir)["worker-2"]
        assert (w2["restarts"], w2["exit_code"], len(killed)) == (4, -signal.SIGKILL, 5)
        assert not pid_alive(w2["pid"])
        time.sleep(2)  # given up means no more starts
        assert services(stack.data_dir)["worker-2"]["restarts"] == 4
        assert run_job(stack.url) == {"worker-1"}
        assert_serving(stack.data_dir, ["archiver-1", "orchestrator-1", "worker-1"], pids)
    for delay_s in (1, 2, 4, 8):
        assert f"restarting in {delay_s}s" in stack.output
    assert (
        "worker-2 crashed 5 times within 60s (last: killed by SIGKILL); giving up on it, "
        "the rest keep running" in stack.output
    )
    assert [pid for pid in everything if pid_alive(pid)] == []


def test_a_worker_whose_port_was_taken_while_it_was_down_restarts_on_another(
    tmp_path: Path,
) -> None:
    with agentbus_up(tmp_path, "--workers", "2") as stack:
        pids = {name: s["pid"] for name, s in services(stack.data_dir).items()}
        port = urlparse(services(stack.data_dir)["worker-2"]["http"]).port
        assert port is not None
        with socket.socket() as squatter:
            os.kill(pids["worker-2"], signal.SIGKILL)
            wait_for(lambda: not pid_alive(pids["worker-2"]), what="worker-2 killed")
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            squatter.bind(("127.0.0.1", port))
            squatter.listen()

            def serving_elsewhere() -> bool:
                w2 = services(stack.data_dir)["worker-2"]
                return bool(w2["state"] == "running" and urlparse(w2["http"]).port != port)

            wait_for(serving_elsewhere, what="worker-2 serving on another port")
        w2 = services(stack.data_dir)["worker-2"]
        assert pid_alive(w2["pid"]) and ready(w2["http"])
        assert_serving(stack.data_dir, ["archiver-1", "orchestrator-1", "worker-1"], pids)
    assert "worker-2: a port of its was taken; it restarts on another" in stack.output


@contextlib.contextmanager
def _up_process(
    tmp_path: Path, *args: str, pre_exec: Callable[[], None]
) -> Iterator[subprocess.Popen[str]]:
    """`agentbus up ARGS` (its output piped, `pre_exec` run in the child) once it is up;
    killed at the end if still running, its pipe closed either way."""
    data_dir = tmp_path / "stack"
    up = subprocess.Popen(
        [*AGENTBUS, "up", *args, "--data-dir", str(data_dir)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        preexec_fn=pre_exec,
    )  # fmt: skip
    try:
        wait_until_up(up, data_dir / "stack.json", timeout_s=WAIT_S)
        yield up
    finally:
        if up.poll() is None:
            up.kill()
            up.communicate()
        if up.stdout is not None:
            up.stdout.close()  # also when it exited by itself (a failed start)


def _signals_as_in_a_terminal() -> None:
    """Child pre-exec: SIGHUP and SIGINT as a terminal's shell leaves them. A run under
    `nohup` or from a background job would pass them on ignored, and `up` leaves an
    ignored SIGHUP ignored on purpose."""
    for sig in (signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_signal_stops_everything_even_while_a_child_waits_to_restart(
    tmp_path: Path, stop_signal: signal.Signals
) -> None:
    data_dir = tmp_path / "stack"
    with _up_process(tmp_path, "--workers", "1", pre_exec=_signals_as_in_a_terminal) as up:
        everything = descendants(up.pid)
        assert len(everything) == 5  # nats-server, archiver, orchestrator, worker, gateway
        os.kill(services(data_dir)["worker-1"]["pid"], signal.SIGKILL)
        wait_for(
            lambda: services(data_dir)["worker-1"]["state"] == "restarting",
            what="worker-1 waiting to restart",
        )
        up.send_signal(stop_signal)
        out, _ = up.communicate(timeout=90)
    assert up.returncode == 0, out
    assert "stopped" in out
    assert not (data_dir / "stack.json").exists()
    # a restart may have won the race with the signal: that child was stopped too
    everything += [int(pid) for pid in re.findall(r"restarted \(pid (\d+)", out)]
    assert [pid for pid in everything if pid_alive(pid)] == []


def test_nothing_outlives_a_killed_up(tmp_path: Path) -> None:
    """SIGKILL leaves `agentbus up` no say: what it started, nats-server included, is
    told by the kernel (PR_SET_PDEATHSIG) and stops."""
    with _up_process(tmp_path, "--workers", "1", pre_exec=_signals_as_in_a_terminal) as up:
        everything = descendants(up.pid)
        assert len(everything) == 5  # nats-server, archiver, orchestrator, worker, gateway
        up.kill()
        up.communicate()
    wait_for(lambda: not any(pid_alive(pid) for pid in everything), what="all stopped")


def test_a_closed_output_pipe_still_stops_everything(tmp_path: Path) -> None:
    """Its reader gone (`agentbus up | head`, a closed terminal), `up` ends at its next
    line of output, exit 1 as rich has it, and stops what it started on the way (it
    used to exit before that, leaving nats-server running)."""
    with _up_process(tmp_path, "--workers", "1", pre_exec=_signals_as_in_a_terminal) as up:
        everything = descendants(up.pid)
        assert len(everything) == 5  # nats-server, archiver, orchestrator, worker, gateway
        assert up.stdout is not None
        up.stdout.close()
        up.send_signal(signal.SIGTERM)  # its "stopping ..." line then meets the closed pipe
        assert up.wait(timeout=90) == 1
    wait_for(lambda: not any(pid_alive(pid) for pid in everything), what="all stopped")


def test_an_up_started_under_nohup_keeps_running_when_its_terminal_closes(
    tmp_path: Path,
) -> None:
    def as_under_nohup() -> None:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    with _up_process(tmp_path, "--workers", "0", "--no-gateway", pre_exec=as_under_nohup) as up:
        everything = descendants(up.pid)
        up.send_signal(signal.SIGHUP)
        time.sleep(2)
        assert up.poll() is None and all(pid_alive(pid) for pid in everything)
        up.send_signal(signal.SIGTERM)
        out, _ = up.communicate(timeout=90)
    assert up.returncode == 0, out
    wait_for(lambda: not any(pid_alive(pid) for pid in everything), what="all stopped")
