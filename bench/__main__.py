"""`python -m bench [pipeline|rpc|scaling|archiver|memory|cancel|priority|fairness|docsize|
llm] [options]` (see `--help`)."""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from typing import Any, Final

from bench.common import wait_for_quiet, write_result

BENCHMARKS: Final = (
    "pipeline",
    "rpc",
    "scaling",
    "archiver",
    "memory",
    "cancel",
    "priority",
    "fairness",
)
ON_REQUEST: Final = ("docsize", "llm")
"""Run only when named (each takes many minutes; llm needs .ci/install-llm.sh)."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="agentbus benchmarks against a raw nats-py floor; no name runs them all",
    )
    p.add_argument(
        "--wait-load",
        type=float,
        default=0.0,
        metavar="LOAD",
        help="before each benchmark, wait until the 1-minute load average is below LOAD",
    )
    p.add_argument(
        "--wait-max-s",
        type=float,
        default=1200.0,
        help="give up waiting for a quiet machine after this long (then run anyway)",
    )
    sub = p.add_subparsers(dest="name")
    for name in (*BENCHMARKS, *ON_REQUEST):
        module = importlib.import_module(f"bench.{name}")
        sp = sub.add_parser(name, help=(module.__doc__ or name).split("\n")[0])
        module.add_arguments(sp)
    return p


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    names = [args.name] if args.name else list(BENCHMARKS)
    started = time.monotonic()
    for name in names:
        module = importlib.import_module(f"bench.{name}")
        bench_args: Any = args
        if not args.name:  # all: each benchmark with its defaults
            bench_args = p.parse_args([name])
        quiet = None
        if args.wait_load > 0:
            quiet = wait_for_quiet(max_load=args.wait_load, max_wait_s=args.wait_max_s)
        result = module.run(bench_args)
        if quiet is not None:
            result["quiet_wait"] = quiet
        write_result(name, result)
    print(f"bench: done in {time.monotonic() - started:.0f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
