"""Collect the key figures of the last `make bench` run into `bench/results/reference.json`
(kept in git, quoted by the README) and keep its plot as `reference-scaling.png`.

    python -m bench.reference
"""

from __future__ import annotations

import json
import shutil
import sys
from typing import Any

from bench.common import RESULTS_DIR, round_floats

__all__ = ["main"]


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS_DIR / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _when(r: dict[str, Any]) -> dict[str, Any]:
    return {
        "started_at": r["started_at"],
        "load_average_before": r["load_average_before"],
        "load_average_after": r.get("load_average_after"),
        **({"quiet_wait": r["quiet_wait"]} if "quiet_wait" in r else {}),
    }


def _pipeline(r: dict[str, Any]) -> dict[str, Any]:
    def side(x: dict[str, Any]) -> dict[str, Any]:
        return {
            "jobs_per_s": x["jobs_per_s_median"],
            "jobs_per_s_rounds": x["jobs_per_s_rounds"],
            "latency_p50_ms": x["latency"]["p50_ms"],
            "latency_p99_ms": x["latency"]["p99_ms"],
            "cpu_ms_per_job": x["cpu_ms_per_job_median"],
            "cpu_ms_per_job_by_role": x["cpu_ms_per_job_by_role"],
        }

    return {
        **_when(r),
        "params": r["params"],
        "agentbus": side(r["agentbus"]),
        "floor": side(r["floor"]),
        "ratios": r["ratios"],
        "targets": r["targets"],
    }


def _rpc(r: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {**_when(r), "params": r["params"]}
    for c in ("concurrency_1", "concurrency_64"):
        x = r[c]
        out[c] = {
            name: {
                "p50_ms": x[name]["latency"]["p50_ms"],
                "p99_ms": x[name]["latency"]["p99_ms"],
                "requests_per_s": x[name]["requests_per_s_median"],
                "cpu_us_per_request": x[name]["cpu_us_per_request"],
            }
            for name in ("agentbus", "raw")
        }
        out[c] |= {k: x[k] for k in ("p50_delta_ms", "throughput_ratio", "cpu_ratio")}
    out["targets"] = r["targets"]
    return out


def _scaling(r: dict[str, Any]) -> dict[str, Any]:
    return {
        **_when(r),
        "params": r["params"],
        "series": {
            name: [
                {k: s[k] for k in ("replicas", "ideal_jobs_per_s", "jobs_per_s", "efficiency")}
                | {"latency_p50_ms": s["latency"]["p50_ms"], "load_average": s["load_average"]}
                for s in steps
            ]
            for name, steps in r["series"].items()
        },
        "targets": r["targets"],
    }


def _archiver(r: dict[str, Any]) -> dict[str, Any]:
    keys = ("events_per_s", "cpu_us_per_event")
    return {
        **_when(r),
        "params": r["params"],
        "agentbus": {k: r["agentbus"][k] for k in keys},
        "floor_pull_ack": {k: r["floor_pull_ack"][k] for k in keys},
        "floor_pull_sqlite_ack": {k: r["floor_pull_sqlite_ack"][k] for k in keys},
        "ratios": r["ratios"],
    }


def _memory(r: dict[str, Any]) -> dict[str, Any]:
    return {
        **_when(r),
        "params": r["params"],
        "services": {
            name: {k: v[k] for k in ("idle_rss_mib", "loaded_rss_mib", "after_rss_mib")}
            for name, v in r["services"].items()
        },
        "load": r["load"],
    }


def main() -> int:
    parts = {
        "pipeline": _pipeline,
        "rpc": _rpc,
        "scaling": _scaling,
        "archiver": _archiver,
        "memory": _memory,
    }
    ref: dict[str, Any] = {}
    for name, fn in parts.items():
        r = _load(name)
        if r is None:
            print(f"bench.reference: no {name}.json; run `make bench` first", file=sys.stderr)
            return 1
        ref.setdefault("machine", r["machine"])
        ref[name] = fn(r)
    out = RESULTS_DIR / "reference.json"
    out.write_text(json.dumps(round_floats(ref, 3), indent=2) + "\n")
    png = RESULTS_DIR / "scaling.png"
    if png.exists():
        shutil.copyfile(png, RESULTS_DIR / "reference-scaling.png")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
