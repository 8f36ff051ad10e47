"""Operator commands of the `agentbus` CLI: `ctl`, `workers`, `asyncapi`, and the
request/reply path of `submit --sync`.

`register(app)` adds the commands to the main Typer app (`agentbus.cli`). Shared helpers
of the CLI (settings lookup, error handling, consoles) are imported from `agentbus.cli`
when a command runs, so this module can be imported first.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Final

import nats.errors
import typer
from rich.markup import escape
from rich.table import Table

from agentbus.cli.options import TABLE_WIDTH, ServerOpt
from agentbus.contract import subjects
from agentbus.contract.errors import AgentBusError, DocumentRejected
from agentbus.contract.messages import Command, CommandReply, decode, encode
from agentbus.contract.settings import Settings

__all__ = ["ControlCommand", "register", "send_command", "submit_sync"]

EXIT_ERROR: Final = 1
EXIT_USAGE: Final = 2


class ControlCommand(StrEnum):
    PING = "ping"
    PAUSE = "pause"
    RESUME = "resume"
    DRAIN = "drain"


async def send_command(
    settings: Settings, agent_id: str, command: str, *, timeout_s: float = 5.0
) -> CommandReply:
    """Send one control command to `agent.{agent_id}.commands` and return the reply."""
    from agentbus.bus.connect import connect_nats

    subject = subjects.agent_commands(agent_id)
    nc = await connect_nats(settings.nats, name="agentbus-ctl", service="ctl")
    try:
        payload = encode(Command(command=command), sender="agentbus-ctl")
        try:
            msg = await nc.request(subject, payload, timeout=timeout_s)
        except nats.errors.NoRespondersError as e:
            raise AgentBusError(f"no agent {agent_id!r} answers on {subject}") from e
        except (TimeoutError, nats.errors.TimeoutError) as e:
            raise AgentBusError(f"no reply on {subject} within {timeout_s:g}s") from e
        try:
            return decode(msg.data, CommandReply).payload
        except AgentBusError as e:
            raise AgentBusError(f"bad reply on {subject}: {e}") from e
    finally:
        await nc.close()


async def submit_sync(
    settings: Settings, files: list[Path], *, timeout_s: float, summary_chars: int | None
) -> list[dict[str, Any]]:
    """Summarize files through `rpc.summarize` (at-most-once); one record per file."""
    from agentbus.bus.documents import read_document
    from agentbus.client.api import AgentBusClient

    max_chars = summary_chars or settings.orchestrator.summary_chars
    records: dict[int, dict[str, Any]] = {}
    texts: list[tuple[int, str]] = []
    for i, path in enumerate(files):
        record: dict[str, Any] = {
            "file": str(path),
            "status": "rejected",
            "summary": None,
            "error": None,
            "worker": None,
            "chars": 0,
            "ms": None,
        }
        records[i] = record
        try:
            text = read_document(path, max_bytes=settings.limits.max_document_bytes)
        except DocumentRejected as e:
            record["error"] = str(e)
            continue
        record["chars"] = len(text)
        texts.append((i, text))
    async with AgentBusClient(settings.nats, limits=settings.limits) as client:
        results = await client.fan_out(
            [t for _, t in texts], max_chars=max_chars, timeout_s=timeout_s
        )
    for (i, _), result in zip(texts, results, strict=True):
        records[i].update(
            status="completed" if result.ok else "failed",
            summary=result.summary,
            error=result.error,
            worker=result.worker_id,
            ms=result.duration_ms,
        )
    return [records[i] for i in sorted(records)]


def print_sync_records(records: list[dict[str, Any]], *, as_json: bool) -> int:
    """Print `submit --sync` results; returns the number of failures."""
    from agentbus.cli.main import err, out

    failures = sum(1 for r in records if r["status"] != "completed")
    if as_json:
        out.print_json(json.dumps(records))
        return failures
    for r in records:
        if r["status"] == "completed":
            out.print(
                f"[bold]── {escape(r['file'])}  summarized by {r['worker']} in {r['ms']:.0f} ms · "
                f"{r['chars']} chars[/]",
                highlight=False,
            )
            out.print(r["summary"] or "", highlight=False, markup=False)
            out.print()
        else:
            error = str(r["error"])
            where = "" if error.startswith(r["file"]) else f"{r['file']}: "
            err.print(
                f"[bold red]{r['status']}:[/] {escape(where + error)}",
                highlight=False,
                soft_wrap=True,
            )
    return failures


def _ctl(
    agent_id: Annotated[str, typer.Argument(help="The agent id of a running service")],
    command: Annotated[ControlCommand, typer.Argument(help="ping, pause, resume or drain")],
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds to wait for the reply")] = 5.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the reply as JSON")] = False,
    server: ServerOpt = None,
) -> None:
    """Control one service replica: ping, pause (stop taking new work), resume, drain
    (finish in-flight work and exit)."""
    from agentbus.cli.main import _fail, _run, _settings, out

    try:
        subjects.check_token(agent_id, field="agent_id")
    except ValueError as e:
        raise _fail(str(e), EXIT_USAGE) from None
    settings = _settings(server)
    reply = _run(send_command(settings, agent_id, command.value, timeout_s=timeout))
    if as_json:
        out.print_json(reply.model_dump_json())
    else:
        status = "ok" if reply.ok else "refused"
        detail = f" ({reply.detail})" if reply.detail else ""
        out.print(
            f"{reply.agent_id} [{reply.service}] {command.value}: {status}, "
            f"state {reply.state}{detail}",
            highlight=False,
            markup=False,
        )
    if not reply.ok:
        raise typer.Exit(EXIT_ERROR)


def _workers(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON array of workers")] = False,
    timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds to wait for answers (at most)")
    ] = 2.0,
    server: ServerOpt = None,
) -> None:
    """List every running worker (nats.micro discovery): id, version, skill, state,
    in-flight count and stats."""
    from agentbus.bus.connect import connect_nats
    from agentbus.bus.discovery import list_workers
    from agentbus.cli.main import _fail, _run, _settings, out
    from agentbus.contract.subjects import WORKER_SERVICE, srv_subject
    from agentbus.contract.workers import WorkerInfo

    settings = _settings(server)

    async def go() -> list[WorkerInfo]:
        nc = await connect_nats(settings.nats, name="agentbus-workers", service="workers")
        try:
            return await list_workers(nc, timeout_s=timeout)
        finally:
            await nc.close()

    found = _run(go())
    if as_json:
        out.print_json(json.dumps([w.model_dump(mode="json") for w in found]))
        return
    if not found:
        raise _fail(f"no worker answered on {srv_subject('STATS', WORKER_SERVICE)}")
    table = Table("worker", "skill", "version", "state", "busy", "tasks ok/retry/dead",
                  "rpc ok/err", "rpc ms")  # fmt: skip
    table.columns[0].no_wrap = True
    for w in found:
        s = w.stats
        table.add_row(
            w.id, f"{w.skill} ({w.backend})", w.version, w.state,
            f"{w.in_flight}/{w.concurrency}",
            f"{s.tasks_ok}/{s.tasks_retried}/{s.tasks_dead_lettered}",
            f"{s.rpc_ok}/{s.rpc_failed}", f"{s.rpc_mean_ms:.1f}",
        )  # fmt: skip
    out.print(table, width=min(out.width, TABLE_WIDTH))
    out.print(f"{len(found)} worker(s)", highlight=False)


def _asyncapi(
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to this file (default: stdout)")
    ] = None,
) -> None:
    """Write the AsyncAPI 3.0 document of every subject and message schema."""
    from agentbus.cli.main import _fail, err
    from agentbus.contract.asyncapi import build_asyncapi, render_asyncapi

    text = render_asyncapi(build_asyncapi())
    if output is None:
        typer.echo(text, nl=False)
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as e:
        raise _fail(f"{output}: cannot write: {e.strerror or e}") from None
    err.print(f"wrote {output} ({len(text)} bytes)", highlight=False)


def register(app: typer.Typer) -> None:
    """Add `ctl`, `workers` and `asyncapi` to the CLI."""
    app.command(name="ctl")(_ctl)
    app.command(name="workers")(_workers)
    app.command(name="asyncapi")(_asyncapi)
