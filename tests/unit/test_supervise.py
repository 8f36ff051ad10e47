"""The supervision policy of `agentbus up` (pure), and the supervisor loop around it driven
with fake processes and a fake clock: restart or not, after how long, when to give up."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentbus.dev.stack import STATE_FILE, ProcessState, ServiceProcess, Stack
from agentbus.dev.supervise import (
    Action,
    CrashHistory,
    Decision,
    RestartPolicy,
    StackSupervisor,
    decide,
    describe_exit,
)

pytestmark = pytest.mark.unit

POLICY = RestartPolicy()


def crash_loop(
    run_s: list[float], *, code: int = 1, policy: RestartPolicy = POLICY
) -> list[Decision]:
    """Decisions for a child that runs `run_s[i]` seconds, crashes, and is restarted after
    each decision's delay (until a decision is not a restart)."""
    history, now, out = CrashHistory(), 1000.0, []
    for run in run_s:
        started = now
        now += run
        d = decide(history, exit_code=code, started_at_s=started, exited_at_s=now, policy=policy)
        out.append(d)
        if d.action is not Action.RESTART:
            break
        history = d.history
        now += d.delay_s
    return out


def test_a_clean_exit_stays_stopped_and_leaves_the_history_alone() -> None:
    history = CrashHistory(quick_crashes=2, crash_times_s=(5.0, 6.0))
    d = decide(history, exit_code=0, started_at_s=0.0, exited_at_s=1.0, policy=POLICY)
    assert d.action is Action.STAY_STOPPED
    assert d.history == history


@pytest.mark.parametrize("code", [1, 2, 137, -signal.SIGKILL, -signal.SIGSEGV, -signal.SIGTERM])
def test_a_non_zero_exit_or_a_signal_is_a_crash_restarted_after_the_initial_backoff(
    code: int,
) -> None:
    d = decide(CrashHistory(), exit_code=code, started_at_s=0.0, exited_at_s=0.5, policy=POLICY)
    assert d.action is Action.RESTART
    assert d.delay_s == POLICY.initial_backoff_s == 1.0
    assert d.crashes_in_window == 1


def test_quick_crashes_double_the_delay_then_give_up_at_five_within_the_window() -> None:
    decisions = crash_loop([0.5] * 10)
    assert [d.action for d in decisions] == [Action.RESTART] * 4 + [Action.GIVE_UP]
    assert [d.delay_s for d in decisions[:4]] == [1.0, 2.0, 4.0, 8.0]
    assert decisions[-1].crashes_in_window == 5


def test_the_delay_is_capped() -> None:
    policy = RestartPolicy(max_crashes=100)
    delays = [d.delay_s for d in crash_loop([0.1] * 12, policy=policy)]
    assert delays[:6] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0]
    assert set(delays[5:]) == {30.0}


def test_a_run_longer_than_stable_after_resets_the_backoff() -> None:
    decisions = crash_loop([1.0, 1.0, 1.0, POLICY.stable_after_s + 1, 1.0])
    assert [d.delay_s for d in decisions] == [1.0, 2.0, 4.0, 1.0, 2.0]
    assert all(d.action is Action.RESTART for d in decisions)


def test_crashes_spread_wider_than_the_window_never_give_up_and_never_spin() -> None:
    # a child that crashes after 20 s every time: backoff grows to the cap, it keeps
    # being restarted, at most every 20 + 30 s
    decisions = crash_loop([20.0] * 30)
    assert all(d.action is Action.RESTART for d in decisions)
    assert max(d.crashes_in_window for d in decisions) < POLICY.max_crashes
    assert decisions[-1].delay_s == POLICY.max_backoff_s


def test_old_crashes_leave_the_window() -> None:
    history = CrashHistory(quick_crashes=4, crash_times_s=(0.0, 1.0, 2.0, 3.0))
    late = 3.0 + POLICY.crash_window_s + 1
    d = decide(history, exit_code=1, started_at_s=late - 1, exited_at_s=late, policy=POLICY)
    assert d.action is Action.RESTART
    assert d.history.crash_times_s == (late,)


@given(
    runs=st.lists(st.floats(min_value=0.0, max_value=200.0), min_size=1, max_size=40),
    code=st.integers(min_value=-15, max_value=255).filter(lambda c: c != 0),
)
def test_any_crash_sequence_waits_at_least_the_initial_backoff_and_stays_in_bounds(
    runs: list[float], code: int
) -> None:
    decisions = crash_loop(runs, code=code)
    for d in decisions:
        if d.action is Action.RESTART:
            assert POLICY.initial_backoff_s <= d.delay_s <= POLICY.max_backoff_s
            assert d.crashes_in_window < POLICY.max_crashes
        else:
            assert d.action is Action.GIVE_UP
            assert d.crashes_in_window == POLICY.max_crashes
            assert d is decisions[-1]


def test_describe_exit() -> None:
    assert describe_exit(1) == "exit code 1"
    assert describe_exit(-signal.SIGKILL) == "killed by SIGKILL"


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"initial_backoff_s": 0.0}, "initial_backoff_s"),
        ({"initial_backoff_s": 40.0}, "max_backoff_s"),
        ({"max_crashes": 0}, "max_crashes"),
        ({"crash_window_s": 0.0}, "crash_window_s"),
        ({"stable_after_s": -1.0}, "stable_after_s"),
    ],
)
def test_a_bad_policy_is_refused_naming_the_setting(kwargs: dict[str, float], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        RestartPolicy(**kwargs)  # type: ignore[arg-type]  # deliberately invalid values


# --- the loop, with fake processes and a fake clock -----------------------------------


class FakeProcess(ServiceProcess):
    """A child without a process: the test sets `exit_with` to make it exit."""

    next_pid = 100

    def start(self) -> None:
        FakeProcess.next_pid += 1
        self.fake_pid: int | None = FakeProcess.next_pid
        self.exit_with: int | None = None
        self.is_ready = False
        self.started_at_s = 0.0
        self.state = ProcessState.STARTING

    @property
    def pid(self) -> int | None:
        return self.fake_pid

    def alive(self) -> bool:
        return self.exit_with is None

    def ready(self) -> bool:
        return self.is_ready

    def returncode(self) -> int | None:
        return self.exit_with


class Clock:
    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


def fake_stack(tmp_path: Path, workers: int) -> Stack:
    stack = Stack(data_dir=tmp_path, workers=workers, nats_url="nats://127.0.0.1:1")
    for i in range(1, workers + 1):
        p = FakeProcess(
            role="worker", agent_id=f"worker-{i}", http_port=1, log_path=tmp_path / "w.log", env={}
        )
        p.start()
        p.state = ProcessState.RUNNING
        stack.processes.append(p)
    return stack


def state(p: ServiceProcess) -> ProcessState:
    return p.state  # read afresh: each tick changes it


def state_file(tmp_path: Path) -> dict[str, dict[str, object]]:
    services = json.loads((tmp_path / STATE_FILE).read_text())["services"]
    return {s["agent_id"]: s for s in services}


def test_the_loop_leaves_a_drained_child_stopped_and_restarts_a_crashed_one_on_time(
    tmp_path: Path,
) -> None:
    clock, lines = Clock(), list[str]()
    stack = fake_stack(tmp_path, 2)
    w1, w2 = stack.processes
    assert isinstance(w1, FakeProcess) and isinstance(w2, FakeProcess)
    sup = StackSupervisor(stack, report=lines.append, clock=clock)

    w2.exit_with = 0
    sup.tick()
    assert state(w2) is ProcessState.STOPPED
    assert lines[-1] == "worker-2 exited 0 (drained); the rest keep running"
    assert state_file(tmp_path)["worker-2"]["state"] == "stopped"

    old_pid = w1.pid
    w1.exit_with = -signal.SIGKILL
    clock.now_s = 10.0
    sup.tick()
    assert state(w1) is ProcessState.RESTARTING
    assert "worker-1 crashed (killed by SIGKILL); restarting in 1s" in lines[-1]
    assert state_file(tmp_path)["worker-1"]["state"] == "restarting"
    clock.now_s = 10.9
    sup.tick()  # not before its delay
    assert state(w1) is ProcessState.RESTARTING and w1.pid == old_pid
    clock.now_s = 11.0
    sup.tick()
    assert state(w1) is ProcessState.STARTING and w1.pid != old_pid
    assert w1.restarts == 1
    assert state_file(tmp_path)["worker-1"]["pid"] == w1.pid
    w1.is_ready = True
    sup.tick()
    assert state(w1) is ProcessState.RUNNING
    assert state_file(tmp_path)["worker-1"] | {"pid": 0} == {
        "agent_id": "worker-1",
        "role": "worker",
        "pid": 0,
        "http": "http://127.0.0.1:1",
        "state": "running",
        "restarts": 1,
        "exit_code": -signal.SIGKILL,
    }
    assert state(w2) is ProcessState.STOPPED  # still


def test_the_loop_gives_up_on_a_crash_loop_and_says_so(tmp_path: Path) -> None:
    clock, lines = Clock(), list[str]()
    stack = fake_stack(tmp_path, 2)
    w1, w2 = stack.processes
    assert isinstance(w1, FakeProcess)
    sup = StackSupervisor(stack, report=lines.append, clock=clock)
    for _ in range(200):  # a child that exits 1 at once, ticked every 0.2 s for 40 s
        if w1.state in (ProcessState.STARTING, ProcessState.RUNNING):
            w1.exit_with = 1
        sup.tick()
        clock.now_s += 0.2
    assert state(w1) is ProcessState.FAILED
    assert w1.restarts == 4  # restarts after 1, 2, 4, 8 s; the fifth crash gives up
    assert lines[-1].startswith("worker-1 crashed 5 times within 60s (last: exit code 1)")
    assert "the rest keep running" in lines[-1]
    assert state_file(tmp_path)["worker-1"]["state"] == "failed"
    assert state(w2) is ProcessState.RUNNING


def test_a_child_that_crashed_because_its_port_was_taken_restarts_on_another(
    tmp_path: Path,
) -> None:
    """Its port freed by the crash, another process took it: the restart gets a new one
    (else every restart would crash the same way until the child is given up on)."""
    clock, lines = Clock(), list[str]()
    stack = fake_stack(tmp_path, 1)
    (w1,) = stack.processes
    assert isinstance(w1, FakeProcess)
    w1.http_port = 40001
    w1.env["AGENTBUS_HTTP__PORT"] = "40001"
    w1.log_path.write_text(
        "error while attempting to bind on address ('127.0.0.1', 40001): address already in use\n"
    )
    sup = StackSupervisor(stack, report=lines.append, clock=clock)
    w1.exit_with = 1
    sup.tick()
    assert state(w1) is ProcessState.RESTARTING
    assert w1.http_port != 40001 and w1.env["AGENTBUS_HTTP__PORT"] == str(w1.http_port)
    assert lines[-2:][0] == "worker-1: a port of its was taken; it restarts on another"
    assert state_file(tmp_path)["worker-1"]["http"] == f"http://127.0.0.1:{w1.http_port}"
    # a crash for another reason keeps the port
    clock.now_s = 5.0
    sup.tick()
    w1.log_path.write_text("Traceback: something else\n")
    port = w1.http_port
    w1.exit_with = 1
    sup.tick()
    assert state(w1) is ProcessState.RESTARTING and w1.http_port == port
