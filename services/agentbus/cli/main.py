"""The `agentbus` command line.

Client commands find NATS through `AGENTBUS_NATS__URL`, else the stack started by
`agentbus up` in this directory (`.agentbus/stack.json`), else the default URL.
Every error is one line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any, Final, TypeVar

import typer
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from agentbus.cli import gateway_test as cli_gateway_test
from agentbus.cli import ops as cli_ops
from agentbus.cli import tenants as cli_tenants
from agentbus.cli.dlq import dlq_app
from agentbus.cli.options import TABLE_WIDTH, ServerOpt
from agentbus.cli.summarizer import BaseUrlOpt, ModelOpt, SummarizerOpt, summarizer_env
from agentbus.contract import plugins, subjects
from agentbus.contract.errors import AgentBusError, ConfigError, DocumentRejected
from agentbus.contract.messages import AgentEvent, CancelReply, JobState
from agentbus.contract.priority import Priority
from agentbus.contract.settings import Settings, load_settings
from agentbus.dev.stack import STATE_FILE, Stack
from agentbus.dev.supervise import StackSupervisor
from agentbus.runtime.service import AgentService, run_service

__all__ = ["app", "main"]

DEFAULT_DATA_DIR: Final = Path(".agentbus")
HISTORY_DATA_CHARS: Final = 60
"""An event's data in the `history` table (`--json` has all of it)."""
_STOP_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""What stops `agentbus up` and everything it started (SIGHUP: its terminal closed)."""
_FOLLOW_POLL_S: Final = 0.5
"""How often `events --follow` looks whether it should stop (Ctrl-C, --limit)."""
_REPLAY_WAIT_S: Final = 5.0
"""How long `events` waits for the next stored event before taking it as gone."""
EXIT_ERROR: Final = 1
EXIT_USAGE: Final = 2

app = typer.Typer(
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="agentbus: a multi-agent summarization pipeline on NATS JetStream.",
)
app.add_typer(dlq_app, name="dlq")
out = Console(soft_wrap=True)  # long lines stay whole when piped
err = Console(stderr=True)

T = TypeVar("T")


def _version(value: bool) -> None:
    if value:
        from agentbus.contract.version import agentbus_version

        out.print(f"agentbus {agentbus_version()}", highlight=False)
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit"
        ),
    ] = False,
) -> None:
    """agentbus: a multi-agent summarization pipeline on NATS JetStream."""


def _fail(message: str, code: int = EXIT_ERROR) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _settings(server: str | None = None) -> Settings:
    """Settings for client commands: NATS at `server` (-s/--server, AGENTBUS_NATS__URL),
    else that of a running `agentbus up` in this directory, else the default."""
    # a client command reports failures as one line itself; the bus's reconnect chatter
    # is for long-running services
    logging.getLogger("agentbus.bus").setLevel(logging.ERROR)
    overrides: dict[str, Any] = {}
    state = DEFAULT_DATA_DIR / STATE_FILE
    if server:
        overrides["nats"] = {"url": server}
    elif "AGENTBUS_NATS__URL" not in os.environ and state.exists():
        try:
            url = json.loads(state.read_text())["nats_url"]
            overrides["nats"] = {"url": url}
        except (OSError, ValueError, KeyError):
            pass
    try:
        settings = load_settings(**overrides)
    except ConfigError as e:
        raise _fail(str(e), EXIT_USAGE) from None
    return settings


def _run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coro)
    except AgentBusError as e:
        raise _fail(str(e)) from None
    except TimeoutError as e:
        raise _fail(str(e) or "timed out") from None


# --- services ------------------------------------------------------------------------


def _load_service(name: str) -> Callable[[Settings], AgentService]:
    try:
        loaded: Callable[[Settings], AgentService] = plugins.entry_point(
            plugins.SERVICES_GROUP, name
        ).load()
    except ConfigError as e:
        raise _fail(str(e), EXIT_USAGE) from None
    return loaded


def _serve(factory: Callable[[Settings], AgentService]) -> None:
    try:
        settings = load_settings()
    except ConfigError as e:
        raise _fail(str(e), EXIT_USAGE) from None
    try:
        code = asyncio.run(run_service(factory, settings))
    except AgentBusError as e:
        raise _fail(str(e)) from None
    raise typer.Exit(code)


@app.command()
def orchestrator() -> None:
    """Run the orchestrator service (job intake, fan-out, reduce)."""
    _serve(_load_service("orchestrator"))


@app.command()
def gateway() -> None:
    """Run the gateway (REST/SSE API and web console on AGENTBUS_GATEWAY__PORT)."""
    _serve(_load_service("gateway"))


@app.command()
def archiver() -> None:
    """Run the event-archiver service (events -> SQL, history queries)."""
    _serve(_load_service("archiver"))


@app.command()
def worker(
    skill: Annotated[
        str | None, typer.Option(help="Skill to serve (AGENTBUS_WORKER__SKILL)")
    ] = None,
) -> None:
    """Run a worker of one skill (default: summarize; any installed `agentbus.skills`)."""
    from agentbus.runtime.skills import make_skill
    from agentbus.runtime.worker import TaskWorker

    if skill:
        os.environ["AGENTBUS_WORKER__SKILL"] = skill

    def factory(settings: Settings) -> AgentService:
        try:
            return TaskWorker(settings, make_skill(settings.worker.skill, settings))
        except AgentBusError as e:
            raise _fail(str(e), EXIT_USAGE) from None

    _serve(factory)


@app.command(
    name="permissions",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def permissions_cmd(ctx: typer.Context) -> None:
    """Print, write (--write) or check (--check) the chart's NATS users and permissions
    (every installed skill unless --skill); --help for the options."""
    from agentbus.contract import permissions

    raise typer.Exit(permissions.main(ctx.args))


@app.command(name="nats-auth-secret", hidden=True)
def nats_auth_secret_cmd(
    name: Annotated[str, typer.Option(help="The Secret to create or update")],
    files_dir: Annotated[
        Path,
        typer.Option(help="nats-permissions.json and nats-auth.conf (none: auth is off)"),
    ],
    namespace: Annotated[str, typer.Option(help="Default: the pod's namespace")] = "",
    passwords_secret: Annotated[
        str, typer.Option(help="A Secret with one password per user (natsAuth.passwordsSecret)")
    ] = "",
    label: Annotated[
        list[str] | None, typer.Option(help="key=value label of the Secret (repeatable)")
    ] = None,
) -> None:
    """In the cluster (the chart's hook Job): create or update the NATS auth Secret,
    keeping every password it already holds."""
    from agentbus.cli import nats_auth_secret as nas

    perms_file, auth_file = files_dir / "nats-permissions.json", files_dir / "nats-auth.conf"
    try:
        ns = namespace or (nas.SERVICE_ACCOUNT_DIR / "namespace").read_text().strip()
        done = nas.ensure_auth_secret(
            nas.in_cluster_api(),
            namespace=ns,
            name=name,
            labels=dict(item.partition("=")[::2] for item in label or []),
            permissions_json=perms_file.read_text() if perms_file.exists() else None,
            auth_file=auth_file.read_text() if auth_file.exists() else None,
            passwords_secret=passwords_secret,
        )
    except (AgentBusError, OSError) as e:
        raise _fail(str(e)) from None
    out.print(f"Secret {ns}/{name} {done}")


@app.command(name="provision")
def provision_cmd(
    skills: Annotated[
        list[str] | None,
        typer.Option("--skill", help="Skill whose consumer to create (default: every installed)"),
    ] = None,
    server: ServerOpt = None,
) -> None:
    """Create or update streams, consumers, KV buckets and the object store (idempotent)."""
    from agentbus.bus.connect import connect_nats
    from agentbus.bus.topology import provision

    settings = _settings(server)
    chosen = skills or plugins.installed_skills()

    async def go() -> None:
        nc = await connect_nats(settings.nats, name="agentbus-provision", service="provision")
        try:
            report = await provision(nc.jetstream(), settings, skills=chosen)
        finally:
            await nc.close()
        for what, items in (("created", report.created), ("updated", report.updated)):
            for item in items:
                out.print(f"{what:9} {item}")
        out.print(f"topology ready ({len(report.unchanged)} unchanged)")

    _run(go())


# --- the local stack -----------------------------------------------------------------


def _start_stack(
    workers: int,
    nats_url: str | None,
    data_dir: Path,
    *,
    orchestrators: int = 1,
    gateway: bool = False,
    gateway_port: int | None = None,
    env: dict[str, str] | None = None,
) -> Stack:
    try:
        return Stack(
            data_dir=data_dir, workers=workers, orchestrators=orchestrators, nats_url=nats_url,
            gateway=gateway, gateway_port=gateway_port, env=env,
        ).start()  # fmt: skip
    except AgentBusError as e:
        raise _fail(str(e)) from None


@app.command()
def up(
    workers: Annotated[int, typer.Option(min=0, max=64, help="Worker processes")] = 2,
    orchestrators: Annotated[
        int, typer.Option(min=1, max=16, help="Orchestrator processes (replicas)")
    ] = 1,
    nats_url: Annotated[
        str | None, typer.Option("--nats-url", help="Use this NATS instead of an embedded one")
    ] = None,
    data_dir: Annotated[Path, typer.Option(help="Store, archive and logs")] = DEFAULT_DATA_DIR,
    no_gateway: Annotated[
        bool, typer.Option("--no-gateway", help="Do not start the HTTP gateway and console")
    ] = False,
    gateway_port: Annotated[
        int | None,
        typer.Option(min=1, max=65535, help="The gateway's port (default 8080, else a free one)"),
    ] = None,
    summarizer: SummarizerOpt = None,
    openai_base_url: BaseUrlOpt = None,
    openai_model: ModelOpt = None,
) -> None:
    """Start the whole stack locally until Ctrl-C: nats-server, orchestrator, workers,
    archiver and the gateway (REST/SSE API and web console; --no-gateway: without it).

    A child that exits 0 (drained) stays stopped; one that crashes is restarted with backoff.
    `--summarizer openai --openai-base-url URL` puts a model behind the workers.
    """
    try:
        env = summarizer_env(summarizer, base_url=openai_base_url, model=openai_model)
    except ConfigError as e:
        raise _fail(str(e)) from None
    stop = {"now": False}

    def on_signal(_sig: int, _frame: object) -> None:
        stop["now"] = True

    for sig in _STOP_SIGNALS:
        if sig is signal.SIGHUP and signal.getsignal(sig) is signal.SIG_IGN:
            continue  # started under nohup: a closed terminal is meant to stop nothing
        signal.signal(sig, on_signal)
    stack = _start_stack(
        workers, nats_url, data_dir, orchestrators=orchestrators, gateway=not no_gateway,
        gateway_port=gateway_port, env=env,
    )  # fmt: skip

    def report(message: str) -> None:
        err.print(
            f"{time.strftime('%H:%M:%S')} {message}", highlight=False, markup=False, soft_wrap=True
        )

    # From here on whatever happens stops the stack. Output to a closed pipe or terminal
    # included: rich then ends the command (SystemExit(1), its output sent to /dev/null).
    try:
        _print_stack(stack, env)
        # a drained child stays stopped, a crashed one is restarted with backoff
        StackSupervisor(stack, report=report).run(should_stop=lambda: stop["now"])
    finally:
        running = {p.agent_id for p in stack.processes if p.alive()}
        try:
            out.print("stopping ...")
        finally:
            codes = stack.stop()
            bad = {k: v for k, v in codes.items() if k in running and v not in (0, None)}
            out.print("stopped" + (f" (non-zero exits: {bad})" if bad else ""))


def _print_stack(stack: Stack, env: dict[str, str]) -> None:
    def say(message: str) -> None:
        out.print(message, highlight=False)

    say(f"NATS      {stack.nats_url}")
    if env:
        backend = env["AGENTBUS_SUMMARIZER__BACKEND"]
        where = env.get("AGENTBUS_SUMMARIZER__OPENAI_BASE_URL", "")
        say(f"summarizer {backend} {where}".rstrip())
    for p in stack.processes:
        say(f"{p.agent_id:16} pid {p.pid}  {p.url}/metrics")
    if stack.gateway_url is not None:
        say(f"gateway   {stack.gateway_url}/  (web console, REST /v1, /openapi.json)")
        if stack.gateway_key is not None:
            keys = stack.data_dir / "gateway-keys.json"
            say(f"API key   {stack.gateway_key}  (operate; in {keys})")
    say(f"logs in {stack.data_dir / 'logs'}; submit with `agentbus submit FILE`; Ctrl-C stops")
    sys.stdout.flush()


# --- client commands -----------------------------------------------------------------


def _result_record(
    path: str, job_id: str | None, state: JobState | None, error: str | None
) -> dict[str, Any]:
    return {
        "file": path,
        "job_id": job_id,
        "status": state.status.value if state else "rejected",
        "summary": state.summary if state else None,
        "error": error or (state.error if state else None),
        "chunks": state.chunks if state else 0,
        "chars": state.document_chars if state else 0,
        "seconds": round((state.updated_at - state.created_at).total_seconds(), 3)
        if state
        else None,
    }


async def _submit_files(
    settings: Settings,
    files: list[Path],
    *,
    timeout_s: float,
    summary_chars: int | None,
    progress: bool,
    priority: Priority = Priority.NORMAL,
    tenant: str | None = None,
) -> list[dict[str, Any]]:
    from agentbus.bus.documents import read_document
    from agentbus.client.api import AgentBusClient

    records: dict[int, dict[str, Any]] = {}
    texts: dict[int, str] = {}
    for i, path in enumerate(files):  # refuse bad files before touching the bus
        try:
            texts[i] = read_document(path, max_bytes=settings.limits.max_document_bytes)
        except DocumentRejected as e:
            err.print(f"[bold red]rejected:[/] {e}", highlight=False, soft_wrap=True)
            records[i] = _result_record(str(path), None, None, str(e))
    if not texts:
        return [records[i] for i in sorted(records)]
    async with AgentBusClient(settings.nats, limits=settings.limits) as client:
        jobs: list[tuple[int, str]] = []
        for i, text in texts.items():
            job_id = await client.submit(
                text, title=files[i].name, summary_chars=summary_chars, name=str(files[i]),
                priority=priority, tenant=tenant,
            )  # fmt: skip
            jobs.append((i, job_id))

        bar = Progress(
            TextColumn("summarizing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=err, disable=not progress, transient=True,
        )  # fmt: skip

        with bar:
            task = bar.add_task("jobs", total=len(jobs))

            async def wait_one(i: int, job_id: str) -> None:
                try:
                    state: JobState | None = await client.wait(job_id, timeout_s=timeout_s)
                    error = None
                except TimeoutError as e:
                    state, error = await client.status(job_id), str(e)
                records[i] = _result_record(str(files[i]), job_id, state, error)
                bar.advance(task)

            await asyncio.gather(*(wait_one(i, j) for i, j in jobs))
    return [records[i] for i in sorted(records)]


def _print_records(records: list[dict[str, Any]], *, as_json: bool) -> int:
    failures = 0
    for r in records:
        if r["status"] != "completed":
            failures += 1
    if as_json:
        out.print_json(json.dumps(records))
        return failures
    for r in records:
        if r["status"] == "rejected":
            continue
        head = f"── {r['file']}  job {r['job_id']}  {r['status']}"
        if r["status"] == "completed":
            head += f" in {r['seconds']}s · {r['chars']} chars · {r['chunks']} chunk(s)"
        out.print(f"[bold]{head}[/]", highlight=False)
        if r["summary"]:
            out.print(r["summary"], highlight=False, markup=False)
        if r["error"]:
            out.print(f"[red]{r['error']}[/]", highlight=False)
        out.print()
    return failures


@app.command()
def submit(
    files: Annotated[list[Path], typer.Argument(help="Text files to summarize")],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON array of results")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for all summaries")] = 600.0,
    summary_chars: Annotated[int | None, typer.Option(help="Budget of each summary")] = None,
    sync: Annotated[
        bool, typer.Option("--sync", help="Request/reply on rpc.summarize: fast, at-most-once")
    ] = False,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow", "-f", help="Print partial results as they arrive (one FILE; --json: lines)"
        ),
    ] = False,
    priority: Annotated[
        Priority,
        typer.Option(help="Workers take high before normal before low (low is never starved)"),
    ] = Priority.NORMAL,
    tenant: Annotated[
        str | None,
        typer.Option(
            help="Submit as this tenant (a trusted client; a tenant's own NATS user may "
            "submit only as its tenant): fair share, caps, rates, budgets"
        ),
    ] = None,
    server: ServerOpt = None,
) -> None:
    """Submit documents, wait, and print each summary."""
    settings = _settings(server)
    if tenant is not None:
        try:
            subjects.check_token(tenant, field="--tenant")
        except ValueError as e:
            raise _fail(str(e), EXIT_USAGE) from None
    if follow:
        from agentbus.cli.follow import follow_file

        if len(files) != 1 or sync:
            raise _fail("--follow takes exactly one FILE (and no --sync)", EXIT_USAGE)
        followed = follow_file(
            settings, files[0], summary_chars=summary_chars, as_json=as_json, out=out,
            priority=priority,
        )  # fmt: skip
        if not _run(followed):
            raise typer.Exit(EXIT_ERROR)
        return
    if sync:
        coro = cli_ops.submit_sync(settings, files, timeout_s=timeout, summary_chars=summary_chars)
        if cli_ops.print_sync_records(_run(coro), as_json=as_json):
            raise typer.Exit(EXIT_ERROR)
        return
    progress = len(files) > 1 and err.is_terminal and not as_json
    records = _run(
        _submit_files(
            settings,
            files,
            timeout_s=timeout,
            summary_chars=summary_chars,
            progress=progress,
            priority=priority,
            tenant=tenant,
        )
    )
    failures = _print_records(records, as_json=as_json)
    if failures:
        raise typer.Exit(EXIT_ERROR)


@app.command()
def demo(
    files: Annotated[
        list[Path] | None, typer.Argument(help="Documents (default: samples/*.txt)")
    ] = None,
    workers: Annotated[int, typer.Option(min=1, max=64)] = 3,
    data_dir: Annotated[Path, typer.Option()] = DEFAULT_DATA_DIR / "demo",
    summarizer: SummarizerOpt = None,
    openai_base_url: BaseUrlOpt = None,
    openai_model: ModelOpt = None,
    timeout_s: Annotated[
        float, typer.Option(min=1, help="Wait this long for each summary (a model on a CPU: more)")
    ] = 300.0,
) -> None:
    """Start the stack, summarize documents, print the summaries, stop the stack."""
    paths = files or sorted(Path("samples").glob("*.txt"))
    if not paths:
        raise _fail("no documents: pass files or run from the repository root (samples/)")
    try:
        env = summarizer_env(summarizer, base_url=openai_base_url, model=openai_model)
    except ConfigError as e:
        raise _fail(str(e)) from None
    out.print(f"starting nats-server, orchestrator, {workers} workers and the archiver ...")
    stack = _start_stack(workers, None, data_dir, env=env)
    try:
        settings = load_settings(nats={"url": stack.nats_url})
        started = time.monotonic()
        records = _run(
            _submit_files(settings, paths, timeout_s=timeout_s, summary_chars=None, progress=False)
        )
        failures = _print_records(records, as_json=False)
        out.print(
            f"{len(records) - failures}/{len(records)} documents summarized in "
            f"{time.monotonic() - started:.2f}s by {workers} workers"
        )
    finally:
        stack.stop()
    if failures:
        raise typer.Exit(EXIT_ERROR)


def _status_rows(state: JobState) -> list[tuple[str, str]]:
    """(field, value) of a job's state as the `status` table shows it."""
    progress = f"{state.level_done}/{state.level_tasks}"
    step = "map" if state.level == 0 else f"reduce {state.level}"
    rows = [
        ("job", state.job_id),
        ("status", state.status.value),
        ("title", state.title),
        ("priority", state.priority.value),
        ("document", f"{state.document_chars} chars, {state.chunks} chunk(s)"),
        ("step", f"{step}: {progress} task(s) done ({state.tasks_done_total} in all)"),
        ("created", state.created_at.isoformat(timespec="seconds")),
        ("updated", state.updated_at.isoformat(timespec="seconds")),
    ]
    if state.timeout_s is not None:
        rows.append(("deadline", f"{state.timeout_s:g} s after creation"))
    if state.error:
        rows.append(("error", f"{state.error} ({state.failed_by or 'unknown'})"))
    if state.summary is not None:
        rows.append(("summary", state.summary))
    elif state.summary_ref is not None:
        rows.append(("summary", "in the object store (agentbus history, or the Python client)"))
    return [(k, v) for k, v in rows if v]


@app.command()
def status(
    job_id: str,
    as_json: Annotated[bool, typer.Option("--json", help="The job state as JSON")] = False,
    server: ServerOpt = None,
) -> None:
    """Show a job's state (from the jobs KV bucket)."""
    from agentbus.client.api import AgentBusClient

    try:
        subjects.check_job_id(job_id)
    except ValueError as e:
        raise _fail(str(e), EXIT_USAGE) from None
    settings = _settings(server)

    async def go() -> JobState | None:
        async with AgentBusClient(settings.nats) as client:
            return await client.status(job_id)

    state = _run(go())
    if state is None:
        raise _fail(f"no job {job_id} in KV bucket {subjects.JOBS_BUCKET}")
    if as_json:
        out.print_json(state.model_dump_json())
        return
    table = Table(show_header=False, box=None, padding=(0, 1))
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for field, value in _status_rows(state):
        table.add_row(field, value)
    out.print(table, width=min(out.width, TABLE_WIDTH))


@app.command()
def cancel(
    job_id: str,
    reason: Annotated[str, typer.Option("--reason", help="why (kept in the job state)")] = "",
    as_json: Annotated[bool, typer.Option("--json", help="the reply as JSON")] = False,
    server: ServerOpt = None,
) -> None:
    """Cancel a job: queued tasks dropped, running ones interrupted, no reduce after.
    Idempotent: a finished job is left as it is (one line says so, exit 0)."""
    from agentbus.client.api import AgentBusClient

    try:
        subjects.check_job_id(job_id)
    except ValueError as e:
        raise _fail(str(e), EXIT_USAGE) from None
    settings = _settings(server)

    async def go() -> CancelReply:
        async with AgentBusClient(settings.nats) as client:
            return await client.cancel(job_id, reason=reason)

    reply = _run(go())
    if as_json:
        out.print_json(reply.model_dump_json())
    else:
        out.print(reply.detail, highlight=False, soft_wrap=True)


def _event_line(ev: AgentEvent) -> str:
    ids = " ".join(
        x for x in (ev.job_id and f"job={ev.job_id}", ev.task_id and f"task={ev.task_id}") if x
    )
    data = json.dumps(ev.data, separators=(",", ":"), default=str)
    ts = ev.ts.isoformat(timespec="milliseconds")
    return f"{ts} {ev.agent_id:16} {ev.kind.value:20} {ids} {data}"


@app.command()
def history(
    job_id: str,
    as_json: Annotated[
        bool, typer.Option("--json", help="A JSON array, one event per line, as pages arrive")
    ] = False,
    server: ServerOpt = None,
) -> None:
    """Show every archived event of a job (asks the event-archiver, page by page)."""
    from agentbus.client.api import AgentBusClient

    settings = _settings(server)

    async def as_table() -> list[AgentEvent]:
        async with AgentBusClient(settings.nats) as client:
            return await client.history(job_id)

    async def as_lines() -> None:
        # streamed: a job's history can be larger than what is worth holding twice
        write = sys.stdout.write
        first = True
        async with AgentBusClient(settings.nats) as client:
            async for page in client.history_pages(job_id):
                for ev in page:
                    write(("[\n" if first else ",\n") + ev.model_dump_json())
                    first = False
                sys.stdout.flush()
        write("[]\n" if first else "\n]\n")

    try:
        subjects.check_job_id(job_id)
    except ValueError as e:
        raise _fail(str(e), EXIT_USAGE) from None
    if as_json:
        _run(as_lines())
        return
    events = _run(as_table())
    if not events:  # the error alone, no empty table above it
        raise _fail(f"no archived events for job {job_id}")
    table = Table("time", "agent", "event", "task", "data", box=box.SIMPLE_HEAD)
    for column, overflow in zip(
        table.columns, ("crop", "fold", "crop", "fold", "fold"), strict=True
    ):
        column.overflow = overflow  # type: ignore[assignment]  # rich's literal
    table.columns[0].no_wrap = table.columns[2].no_wrap = True
    for ev in events:
        data = json.dumps(ev.data, separators=(",", ":"), default=str)
        table.add_row(
            ev.ts.strftime("%H:%M:%S.%f")[:-3], ev.agent_id, ev.kind.value, ev.task_id or "",
            data if len(data) <= HISTORY_DATA_CHARS else data[: HISTORY_DATA_CHARS - 1] + "…",
        )  # fmt: skip
    out.print(table, width=min(out.width, TABLE_WIDTH))


@app.command()
def events(
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep tailing live events")
    ] = False,
    last: Annotated[int, typer.Option(min=0, help="Replay this many stored events first")] = 20,
    limit: Annotated[int | None, typer.Option(help="Exit after this many events")] = None,
    server: ServerOpt = None,
) -> None:
    """Print agent events (the `agent.>` wildcard); `--follow` tails them live."""
    import nats.errors
    from nats.aio.msg import Msg
    from nats.js.api import ConsumerConfig, DeliverPolicy

    from agentbus.bus.connect import connect_nats
    from agentbus.contract.messages import decode_events

    settings = _settings(server)

    async def go() -> None:
        nc = await connect_nats(settings.nats, name="agentbus-events", service="client")
        js = nc.jetstream()
        seen = 0
        done = asyncio.Event()

        def unpack(data: bytes) -> list[AgentEvent | str]:
            try:
                return list(decode_events(data)[1])
            except AgentBusError as e:
                return [f"(undecodable event: {e})"]

        def show(item: AgentEvent | str) -> None:
            nonlocal seen
            if done.is_set():
                return
            if isinstance(item, str):
                out.print(item, highlight=False)
                return
            out.print(_event_line(item), highlight=False, markup=False)
            seen += 1
            if limit is not None and seen >= limit:
                done.set()

        try:
            info = await js.stream_info(subjects.AGENT_EVENTS_STREAM)
            last_seq = info.state.last_seq
            # a message may hold several events: the last `last` messages hold at least
            # `last` events, of which the newest `last` are shown (none if the stream has
            # been purged or has expired: then its last_seq is past its messages)
            replay = bool(last and info.state.messages)
            start = max(info.state.first_seq, last_seq - last + 1) if replay else last_seq + 1
            if not (replay or follow):
                return
            # One ordered consumer reads the stored events and then follows the live ones
            # from the next sequence on: nothing is lost or shown twice in between (a core
            # subscription made after the replay missed what came meanwhile).
            sub = await js.subscribe(
                subjects.AGENT_WILDCARD,
                ordered_consumer=True,
                config=ConsumerConfig(
                    deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start
                ),
            )
            # nats-py recreates an ordered consumer that missed its heartbeats (a server
            # restart) from the last sequence it delivered: from the stream's start if it
            # delivered none yet. What comes again is skipped, by stream sequence.
            next_seq = start

            def fresh(msg: Msg) -> bool:
                nonlocal next_seq
                seq = msg.metadata.sequence.stream
                if seq < next_seq:
                    return False
                next_seq = seq + 1
                return True

            stored: list[AgentEvent | str] = []
            while replay and next_seq <= last_seq:
                try:
                    msg = await sub.next_msg(timeout=_REPLAY_WAIT_S)
                except nats.errors.TimeoutError:
                    break  # what was stored is gone (limits, a purge meanwhile)
                if fresh(msg):
                    stored.extend(unpack(msg.data))
            for item in stored[-last:]:
                show(item)
            if follow and not done.is_set():
                loop = asyncio.get_running_loop()
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.add_signal_handler(sig, done.set)
                while not done.is_set():
                    try:
                        msg = await sub.next_msg(timeout=_FOLLOW_POLL_S)
                    except nats.errors.TimeoutError:
                        continue
                    if fresh(msg):
                        for item in unpack(msg.data):
                            show(item)
        finally:
            await nc.close()

    _run(go())


cli_ops.register(app)
cli_tenants.register(app)
cli_gateway_test.register(app)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        raise SystemExit(130) from None
