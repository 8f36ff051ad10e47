"""`agentbus dlq`: list dead letters and replay them (see `agentbus.dlq` for what a replay
does to a job). Every error is one line on stderr and exit code 1."""

from __future__ import annotations

import json
from typing import Annotated, Any, Final

import typer
from rich.console import Console
from rich.table import Table

from agentbus.bus.deadletters import DeadLetter, ReplayResult, list_dead_letters, replay_dead_letter
from agentbus.cli.options import TABLE_WIDTH, ServerOpt
from agentbus.contract.settings import Settings
from agentbus.contract.subjects import check_token

__all__ = ["dlq_app"]

dlq_app = typer.Typer(
    no_args_is_help=True,
    help="Dead letters: messages given up on, with the reason. List them, replay them.",
)
out = Console()


def _client_settings(server: str | None) -> Settings:
    # the same NATS discovery as every client command (-s, env, then `agentbus up`'s state)
    from agentbus.cli.main import _settings

    return _settings(server)


def _record(d: DeadLetter) -> dict[str, Any]:
    return {
        "id": d.id,
        "time": d.time.isoformat() if d.time else None,
        "stream": d.stream,
        "subject": d.original_subject,
        "seq": d.original_seq,
        "msg_id": d.original_msg_id,
        "job_id": d.job_id,
        "task_id": d.task_id,
        "deliveries": d.deliveries,
        "reason": d.reason,
        "headers": d.headers,
        "bytes": len(d.data),
    }


@dlq_app.command(name="list")
def list_cmd(
    stream: Annotated[
        str | None, typer.Option(help="Only dead letters from this stream (tasks, jobs, ...)")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many, oldest first")] = 1000,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON array")] = False,
    server: ServerOpt = None,
) -> None:
    """List dead letters, oldest first: ID, origin, job, deliveries, reason."""
    from agentbus.bus.connect import connect_nats
    from agentbus.cli.main import EXIT_USAGE, _fail, _run

    settings = _client_settings(server)

    async def go() -> list[DeadLetter]:
        nc = await connect_nats(settings.nats, name="agentbus-dlq", service="client")
        try:
            return await list_dead_letters(nc.jetstream(), stream=stream, limit=limit)
        finally:
            await nc.close()

    if stream is not None:
        try:
            check_token(stream, field="--stream")
        except ValueError as e:
            raise _fail(str(e), EXIT_USAGE) from None
    letters = _run(go())
    if as_json:
        out.print_json(json.dumps([_record(d) for d in letters]))
        return
    if not letters:
        out.print("no dead letters")
        return
    table = Table("id", "time", "from", "job", "task", "tries", "reason")
    table.columns[6].overflow = "fold"
    for d in letters:
        table.add_row(
            str(d.id),
            d.time.strftime("%Y-%m-%d %H:%M:%S") if d.time else "",
            f"{d.stream} {d.original_subject}",
            d.job_id or "",
            d.task_id or "",
            str(d.deliveries),
            d.reason,
        )
    out.print(table, width=min(out.width, TABLE_WIDTH))
    out.print(f"{len(letters)} dead letter(s); replay with `agentbus dlq replay ID`")


def _replay_line(r: ReplayResult) -> str:
    d = r.dead_letter
    what = f"job {d.job_id}" + (f" task {d.task_id}" if d.task_id else "") if d.job_id else ""
    head = "already replayed" if r.duplicate else "replayed"
    tail = "" if r.removed else " (kept in the DLQ)"
    return (
        f"{head} dead letter {d.id} {what} to {d.original_subject} "
        f"as {r.stream} seq {r.seq} (msg id {r.msg_id}){tail}"
    ).replace("  ", " ")


_REPLAY_HELP: Final = (
    "Republish dead letters to their original subjects (with new message ids).\n\n"
    "A replayed task runs again with a fresh delivery count; when it succeeds, its failed "
    "job goes on (to the next reduce step, or completed). A replayed job that failed at "
    "intake is taken in again. The dead letter leaves the DLQ unless --keep; one that "
    "fails again is dead-lettered again under a new ID."
)


@dlq_app.command(name="replay", help=_REPLAY_HELP)
def replay_cmd(
    ids: Annotated[list[int], typer.Argument(help="Dead letter ID(s) from `agentbus dlq list`")],
    keep: Annotated[bool, typer.Option("--keep", help="Leave the dead letter in the DLQ")] = False,
    force: Annotated[
        bool,
        typer.Option("--force", help="Publish again even if this ID was replayed a moment ago"),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON array")] = False,
    server: ServerOpt = None,
) -> None:
    """Republish dead letters to their original subjects (with new message ids)."""
    from agentbus.bus.connect import connect_nats
    from agentbus.cli.main import _run

    settings = _client_settings(server)

    async def go() -> list[ReplayResult]:
        nc = await connect_nats(settings.nats, name="agentbus-dlq", service="client")
        done: list[ReplayResult] = []
        try:
            js = nc.jetstream()
            for i in ids:  # one by one: an error stops here, after reporting what was done
                done.append(await replay_dead_letter(js, i, keep=keep, force=force))
                if not as_json:
                    out.print(_replay_line(done[-1]), highlight=False, soft_wrap=True)
        finally:
            await nc.close()
        return done

    results = _run(go())
    if as_json:
        out.print_json(
            json.dumps(
                [
                    {
                        "id": r.dead_letter.id,
                        "job_id": r.dead_letter.job_id,
                        "task_id": r.dead_letter.task_id,
                        "subject": r.dead_letter.original_subject,
                        "stream": r.stream,
                        "seq": r.seq,
                        "msg_id": r.msg_id,
                        "duplicate": r.duplicate,
                        "removed": r.removed,
                    }
                    for r in results
                ]
            )
        )
