"""Options shared by the client commands (one definition, imported by every command
module), and the help rendering of boolean flags."""

from __future__ import annotations

from typing import Annotated, Any, Final

import typer
import typer.core

__all__ = ["TABLE_WIDTH", "ServerOpt"]

TABLE_WIDTH: Final = 80
"""Tables fit a classic terminal: long cells fold or end in an ellipsis."""

ServerOpt = Annotated[
    str | None,
    typer.Option(
        "--server",
        "-s",
        envvar="AGENTBUS_NATS__URL",
        show_envvar=True,
        metavar="URL",
        help="NATS URL(s), comma-separated (default: the `agentbus up` stack in this "
        "directory, else nats://127.0.0.1:4222)",
    ),
]
"""`-s/--server`: the NATS server of a client command."""


_display_type_rich = typer.core.TyperOption.display_type_rich


def _flag_without_type(self: typer.core.TyperOption, ctx: Any) -> Any:
    # typer's rich help prints a type for every option, `--json <bool>` for a flag, which
    # reads as if it took a value; a flag shows no type (as click's plain help does)
    if self.is_flag:
        return None
    return _display_type_rich(self, ctx)


typer.core.TyperOption.display_type_rich = _flag_without_type  # type: ignore[method-assign]
