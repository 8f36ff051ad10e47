"""Loading a skill: its entry point names a factory `(Settings) -> Skill`, checked here
against the `Skill` protocol (name and `run`) so a broken plugin fails at start-up with
one line, not at its first task."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeAlias

from agentbus.contract import plugins
from agentbus.contract.errors import ConfigError
from agentbus.contract.settings import Settings
from agentbus.runtime.worker import Skill

__all__ = ["SkillFactory", "load_skill", "make_skill"]

SkillFactory: TypeAlias = Callable[[Settings], Skill]


def load_skill(name: str) -> SkillFactory:
    """The factory of the installed skill `name`."""
    ep = plugins.entry_point(plugins.SKILLS_GROUP, name)
    try:
        factory = ep.load()
    except Exception as e:  # a plugin's import can fail in any way: one line, its name
        raise ConfigError(f"skill {name!r} ({ep.value}) cannot be loaded: {e}") from e
    if not callable(factory):
        raise ConfigError(f"skill {name!r} ({ep.value}) is not a factory of skills")
    checked: SkillFactory = factory
    return checked


def make_skill(name: str, settings: Settings) -> Skill:
    """An instance of the installed skill `name`, checked against the protocol."""
    skill = load_skill(name)(settings)
    if getattr(skill, "name", None) != name:
        raise ConfigError(
            f"skill {name!r} reports the name {getattr(skill, 'name', None)!r}: the entry "
            "point's name and the skill's `name` must match"
        )
    if not callable(getattr(skill, "run", None)):
        raise ConfigError(f"skill {name!r} has no `run(task)` coroutine")
    return skill
