"""The installed agentbus version (what services report in metrics and discovery)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["agentbus_version"]


def agentbus_version() -> str:
    try:
        return version("agentbus")
    except PackageNotFoundError:
        return "0+unknown"
