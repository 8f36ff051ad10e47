"""`agentbus tenants`: each tenant's limits, use and queue (`register(app)` adds it)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from agentbus.cli.options import TABLE_WIDTH, ServerOpt

__all__ = ["register"]


def _limit(value: object, unit: str = "") -> str:
    return "-" if value is None else f"{value}{unit}"


def _tenants(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON array of tenants")] = False,
    server: ServerOpt = None,
) -> None:
    """Every configured tenant (and `default`): weight, tasks in flight of its cap, tasks
    queued, jobs this minute of its rate, tokens this window of its budget."""
    from agentbus.bus.core import Bus
    from agentbus.bus.tenant_usage import tenant_report
    from agentbus.cli.main import _run, _settings, out
    from agentbus.contract import plugins

    settings = _settings(server)

    async def go() -> list[dict[str, Any]]:
        bus = await Bus.connect(settings.nats, agent_id="agentbus-tenants", service="cli")
        try:
            return await tenant_report(bus, settings.tenants, skills=plugins.installed_skills())
        finally:
            await bus.close()

    rows = _run(go())
    if as_json:
        out.print_json(json.dumps(rows))
        return
    table = Table("tenant", "weight", "in flight / cap", "queued", "jobs this minute",
                  "tokens this window", "window turns in")  # fmt: skip
    for r in rows:
        table.add_row(
            r["tenant"], str(r["weight"]), f"{r['in_flight']} / {_limit(r['max_in_flight'])}",
            str(r["queued"]),
            f"{r['jobs_this_minute']} / {_limit(r['jobs_per_minute'])} ({r['over_rate']})",
            f"{r['tokens_this_window']} / {_limit(r['token_budget'])} ({r['over_budget']})",
            f"{r['window_turns_in_s']:g} s",
        )  # fmt: skip
    out.print(table, width=min(out.width, TABLE_WIDTH))


def register(app: typer.Typer) -> None:
    app.command(name="tenants")(_tenants)
