"""Supervision of the local stack's children (`agentbus up`).

Two halves. `decide` is the policy, pure: given how a child exited, when it had started
and its crash history, it says what to do (leave it stopped, restart it after a delay,
or give up on it). `StackSupervisor` is the I/O around it: it polls the stack's
processes, asks `decide`, restarts children when their delay is over, reports each step
and keeps the stack file (`stack.json`) accurate.

The policy:
- exit code 0 (a `drain` command, or a clean stop from outside): the child stays stopped;
- any other exit (a non-zero code, or killed by a signal; the stack itself only signals
  its children when it stops, and then nothing is supervised any more): restart after
  `initial_backoff_s`, doubling with each quick crash in a row, capped at `max_backoff_s`;
  a run of at least `stable_after_s` resets the doubling;
- `max_crashes` crashes within `crash_window_s` (counted from exit to exit): give up on
  that child, keep the others running.
"""

from __future__ import annotations

import enum
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from agentbus.dev.stack import ProcessState, ServiceProcess, Stack

__all__ = [
    "Action",
    "CrashHistory",
    "Decision",
    "RestartPolicy",
    "StackSupervisor",
    "decide",
    "describe_exit",
]

INITIAL_BACKOFF_S: Final = 1.0
MAX_BACKOFF_S: Final = 30.0
STABLE_AFTER_S: Final = 60.0
MAX_CRASHES: Final = 5
CRASH_WINDOW_S: Final = 60.0
POLL_INTERVAL_S: Final = 0.2


@dataclass(frozen=True, kw_only=True)
class RestartPolicy:
    initial_backoff_s: float = INITIAL_BACKOFF_S
    max_backoff_s: float = MAX_BACKOFF_S
    stable_after_s: float = STABLE_AFTER_S
    max_crashes: int = MAX_CRASHES
    crash_window_s: float = CRASH_WINDOW_S

    def __post_init__(self) -> None:
        if not 0 < self.initial_backoff_s <= self.max_backoff_s:
            raise ValueError(
                "RestartPolicy: need 0 < initial_backoff_s <= max_backoff_s, got "
                f"initial_backoff_s={self.initial_backoff_s}, max_backoff_s={self.max_backoff_s}"
            )
        if self.max_crashes < 1:
            raise ValueError(f"RestartPolicy: max_crashes must be >= 1, got {self.max_crashes}")
        if self.stable_after_s <= 0 or self.crash_window_s <= 0:
            raise ValueError(
                "RestartPolicy: stable_after_s and crash_window_s must be > 0, got "
                f"stable_after_s={self.stable_after_s}, crash_window_s={self.crash_window_s}"
            )


class Action(enum.Enum):
    STAY_STOPPED = "stay stopped"
    RESTART = "restart"
    GIVE_UP = "give up"


@dataclass(frozen=True, kw_only=True)
class CrashHistory:
    """One child's recent crashes: the quick ones in a row (the backoff exponent) and the
    exit times (monotonic seconds) of those inside the crash window."""

    quick_crashes: int = 0
    crash_times_s: tuple[float, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Decision:
    action: Action
    delay_s: float = 0.0
    crashes_in_window: int = 0
    history: CrashHistory = field(default_factory=CrashHistory)


def decide(
    history: CrashHistory,
    *,
    exit_code: int,
    started_at_s: float,
    exited_at_s: float,
    policy: RestartPolicy,
) -> Decision:
    """What to do with a child that exited with `exit_code` (negative: killed by that
    signal) at `exited_at_s`, having started at `started_at_s`, given its `history`."""
    if exit_code == 0:
        return Decision(action=Action.STAY_STOPPED, history=history)
    stable = exited_at_s - started_at_s >= policy.stable_after_s
    quick = 1 if stable else history.quick_crashes + 1
    earlier = [t for t in history.crash_times_s if exited_at_s - t < policy.crash_window_s]
    recent = (*earlier, exited_at_s)
    new_history = CrashHistory(quick_crashes=quick, crash_times_s=recent)
    if len(recent) >= policy.max_crashes:
        return Decision(action=Action.GIVE_UP, crashes_in_window=len(recent), history=new_history)
    delay_s = min(policy.initial_backoff_s * 2 ** (quick - 1), policy.max_backoff_s)
    return Decision(
        action=Action.RESTART, delay_s=delay_s, crashes_in_window=len(recent), history=new_history
    )


def describe_exit(exit_code: int) -> str:
    if exit_code < 0:
        try:
            return f"killed by {signal.Signals(-exit_code).name}"
        except ValueError:
            return f"killed by signal {-exit_code}"
    return f"exit code {exit_code}"


class StackSupervisor:
    """Keeps a started `Stack` serving: call `tick` now and then (or `run`)."""

    def __init__(
        self,
        stack: Stack,
        *,
        report: Callable[[str], None],
        policy: RestartPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stack = stack
        self.policy = policy or RestartPolicy()
        self._report = report
        self._clock = clock
        self._history: dict[str, CrashHistory] = {}
        self._restart_at_s: dict[str, float] = {}

    def run(self, *, should_stop: Callable[[], bool]) -> None:
        while not should_stop():
            self.tick()
            time.sleep(POLL_INTERVAL_S)

    def tick(self) -> None:
        changed = False
        for p in self.stack.processes:
            if p.state in (ProcessState.STARTING, ProcessState.RUNNING) and not p.alive():
                self._exited(p)
                changed = True
            elif p.state is ProcessState.STARTING and p.ready():
                p.state = ProcessState.RUNNING
                self._report(f"{p.agent_id} ready again (pid {p.pid})")
                changed = True
            elif (
                p.state is ProcessState.RESTARTING
                and self._clock() >= self._restart_at_s[p.agent_id]
            ):
                p.start()
                p.restarts += 1
                self._report(f"{p.agent_id} restarted (pid {p.pid}, restart {p.restarts})")
                changed = True
        if changed:
            self.stack.write_state()

    def _exited(self, p: ServiceProcess) -> None:
        code = p.returncode()
        if code is None:
            return
        now = self._clock()
        p.exit_code = code
        decision = decide(
            self._history.get(p.agent_id, CrashHistory()),
            exit_code=code,
            started_at_s=p.started_at_s,
            exited_at_s=now,
            policy=self.policy,
        )
        self._history[p.agent_id] = decision.history
        if decision.action is Action.STAY_STOPPED:
            p.state = ProcessState.STOPPED
            self._report(f"{p.agent_id} exited 0 (drained); the rest keep running")
            if p.role == "worker" and not any(
                w.state is not ProcessState.STOPPED and w.state is not ProcessState.FAILED
                for w in self.stack.by_role("worker")
            ):
                self._report("no worker left running: new tasks wait until one runs")
        elif decision.action is Action.RESTART:
            p.state = ProcessState.RESTARTING
            if self.stack.move_taken_port(p, p.last_output()):
                self._report(f"{p.agent_id}: a port of its was taken; it restarts on another")
            self._restart_at_s[p.agent_id] = now + decision.delay_s
            self._report(
                f"{p.agent_id} crashed ({describe_exit(code)}); restarting in "
                f"{decision.delay_s:g}s ({decision.crashes_in_window} crash(es) within "
                f"{self.policy.crash_window_s:g}s; see {p.log_path})"
            )
        else:
            p.state = ProcessState.FAILED
            self._report(
                f"{p.agent_id} crashed {decision.crashes_in_window} times within "
                f"{self.policy.crash_window_s:g}s (last: {describe_exit(code)}); giving up on "
                f"it, the rest keep running; see {p.log_path}"
            )
