"""Chart tier fixtures: one prepared copy of the chart (with the NATS stand-in) per session,
and each ci/*-values.yaml scenario rendered once."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.chart.render import Rendered, load_values, prepare_chart, render


@pytest.fixture(scope="session")
def chart_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_chart(tmp_path_factory.mktemp("chart"))


@pytest.fixture(scope="session")
def rendered(chart_dir: Path) -> Callable[[str], Rendered]:
    """scenario name -> its rendered release (cached)."""
    cache: dict[str, Rendered] = {}

    def get(scenario: str) -> Rendered:
        if scenario not in cache:
            cache[scenario] = render(chart_dir, load_values(scenario))
        return cache[scenario]

    return get
