"""What every benchmark shares: the machine and its load, CPU and RSS of processes by pid,
percentiles, raw JetStream set-up for the floors, and writing one JSON result.

Speed claims are ratios between agentbus and a raw nats-py floor measured in the same
run on the same machine; every result carries the load average before and after it,
because the machine may be shared.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import psutil

__all__ = [
    "RESULTS_DIR",
    "CpuMeter",
    "Proc",
    "load_average",
    "machine",
    "percentile",
    "round_floats",
    "spawn_python",
    "stop_proc",
    "summary_ms",
    "wait_for_quiet",
    "write_result",
]

ROOT: Final = Path(__file__).resolve().parent.parent
RESULTS_DIR: Final = ROOT / "bench" / "results"


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _nats_server_version() -> str:
    try:
        from agentbus.dev.embedded import find_nats_server

        out = subprocess.run(
            [find_nats_server(), "--version"], capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip() or out.stderr.strip()
    except Exception as e:
        return f"unknown ({type(e).__name__})"


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except OSError:
        return None
    commit = out.stdout.strip()
    return f"{commit}+dirty" if commit and dirty.stdout.strip() else commit or None


def machine() -> dict[str, Any]:
    """The machine a result came from (it may be shared: see the load average)."""
    import nats.aio.client

    mem = psutil.virtual_memory()
    return {
        "cpu_model": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "memory_gib": round(mem.total / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "nats_py": getattr(nats.aio.client, "__version__", "?"),
        "nats_server": _nats_server_version(),
        "git_commit": _git_commit(),
    }


def percentile(values: Sequence[float], q: float) -> float:
    """The `q`-th percentile (0..100) by linear interpolation; nan for no values."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summary_ms(latencies_s: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/max/mean of latencies given in seconds, in milliseconds."""
    if not latencies_s:
        return {}
    ms = [x * 1000 for x in latencies_s]
    return {
        "p50_ms": round(percentile(ms, 50), 3),
        "p90_ms": round(percentile(ms, 90), 3),
        "p99_ms": round(percentile(ms, 99), 3),
        "max_ms": round(max(ms), 3),
        "mean_ms": round(sum(ms) / len(ms), 3),
    }


def round_floats(obj: Any, digits: int = 4) -> Any:
    if isinstance(obj, float):
        return round(obj, digits)
    if isinstance(obj, dict):
        return {k: round_floats(v, digits) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [round_floats(v, digits) for v in obj]
    return obj


@dataclass
class Proc:
    """One measured process: its role (`orchestrator`, `worker`, `nats-server`, ...)."""

    role: str
    pid: int
    name: str = ""

    def __post_init__(self) -> None:
        self.name = self.name or f"{self.role}-{self.pid}"


@dataclass
class CpuMeter:
    """CPU seconds (user + system, all threads) of a set of processes between two marks."""

    procs: list[Proc]
    _start: dict[int, tuple[float, float]] = field(default_factory=dict)

    @staticmethod
    def _cpu(pid: int) -> tuple[float, float]:
        try:
            t = psutil.Process(pid).cpu_times()
        except psutil.Error:
            return 0.0, 0.0
        return float(t.user), float(t.system)

    def start(self) -> None:
        self._start = {p.pid: self._cpu(p.pid) for p in self.procs}

    def read(self) -> dict[str, Any]:
        """CPU seconds since `start`, per process and per role, plus the total and the
        share spent in the kernel (system time: mostly socket reads and writes here)."""
        per_proc: dict[str, float] = {}
        system = 0.0
        for p in self.procs:
            user0, sys0 = self._start.get(p.pid, (0.0, 0.0))
            user1, sys1 = self._cpu(p.pid)
            per_proc[p.name] = (user1 - user0) + (sys1 - sys0)
            system += sys1 - sys0
        per_role: dict[str, float] = {}
        for p in self.procs:
            per_role[p.role] = per_role.get(p.role, 0.0) + per_proc[p.name]
        total = sum(per_proc.values())
        return {
            "per_role": per_role,
            "per_process": per_proc,
            "total": total,
            "system_share": system / total if total else 0.0,
        }


def rss_mib(pid: int) -> dict[str, float]:
    """Current and peak (VmHWM) resident memory of a process, in MiB."""
    out = {"rss_mib": 0.0, "peak_rss_mib": 0.0}
    try:
        out["rss_mib"] = psutil.Process(pid).memory_info().rss / 2**20
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                out["peak_rss_mib"] = int(line.split()[1]) / 1024
    except (psutil.Error, OSError, ValueError):
        pass
    return out


def spawn_python(module: str, *args: str, log_path: Path) -> subprocess.Popen[bytes]:
    """Run `python -m module args...` (a floor program) as its own process."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop_proc(proc: subprocess.Popen[bytes], *, timeout_s: float = 10.0) -> int | None:
    """SIGTERM the process we started, then SIGKILL it if it does not go."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


def wait_for_quiet(*, max_load: float, max_wait_s: float) -> dict[str, Any]:
    """Poll the 1-minute load average until it is below `max_load` or `max_wait_s` passed."""
    started = time.monotonic()
    while True:
        load = os.getloadavg()[0]
        waited = time.monotonic() - started
        if load < max_load or waited >= max_wait_s:
            return {
                "max_load": max_load,
                "waited_s": round(waited, 1),
                "load_1m": round(load, 2),
                "quiet": load < max_load,
            }
        print(
            f"bench: load {load:.2f} >= {max_load} (waited {waited:.0f}s of {max_wait_s:.0f}s)",
            file=sys.stderr,
            flush=True,
        )
        time.sleep(min(15.0, max(1.0, max_wait_s - waited)))


def write_result(name: str, result: Mapping[str, Any], *, out_dir: Path = RESULTS_DIR) -> Path:
    """Print the result as one JSON line and write it to `bench/results/{name}.json`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = round_floats(dict(result))
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc), flush=True)
    return path


def header(name: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """The common head of a result: benchmark, time, machine, load average, parameters."""
    return {
        "benchmark": name,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "load_average_before": load_average(),
        "params": dict(params),
    }


async def wait_until(
    predicate: Any, *, timeout_s: float, interval_s: float = 0.05, what: str = "condition"
) -> None:
    """Await `predicate()` (a coroutine function returning bool) until true or time out."""
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout_s}s")
        await asyncio.sleep(interval_s)


def ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def words_document(index: int, *, sentences: int = 12) -> str:
    """A small deterministic document (one chunk): `sentences` sentences of plain words."""
    words = (
        "river delta harbor tide current sediment estuary marsh channel levee flood "
        "drought farmer village market bridge ferry boat salt fresh water season storm"
    ).split()
    out = []
    for s in range(sentences):
        n = 8 + (index * 7 + s * 3) % 9
        sentence = " ".join(words[(index + s * 5 + k * 3) % len(words)] for k in range(n))
        out.append(sentence.capitalize() + ".")
    return f"Document {index}. " + " ".join(out)


def procs_of(pairs: Iterable[tuple[str, int | None]]) -> list[Proc]:
    return [Proc(role, pid) for role, pid in pairs if pid is not None]
