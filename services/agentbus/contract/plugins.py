"""Installed plugins by name: the `agentbus.skills` and `agentbus.services` entry points.

Reading names only touches package metadata, so every layer may ask which skills are
installed (the permissions file, `agentbus provision`, the worker); loading one is the
runtime's job (`agentbus.skills.load_skill`).
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points
from typing import Final

from agentbus.contract.errors import ConfigError

__all__ = ["SERVICES_GROUP", "SKILLS_GROUP", "entry_point", "installed_skills"]

SKILLS_GROUP: Final = "agentbus.skills"
SERVICES_GROUP: Final = "agentbus.services"


def installed_skills() -> list[str]:
    """Names of every installed skill, sorted (a skill is declared by its entry point)."""
    return sorted({ep.name for ep in entry_points(group=SKILLS_GROUP)})


def entry_point(group: str, name: str) -> EntryPoint:
    """The entry point `name` of `group`; `ConfigError` naming what is installed."""
    found = entry_points(group=group, name=name)
    if not found:
        installed = sorted({ep.name for ep in entry_points(group=group)})
        raise ConfigError(
            f"no {group} entry point named {name!r} (installed: {', '.join(installed) or 'none'})"
        )
    return next(iter(found))
