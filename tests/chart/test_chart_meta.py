"""The chart as a package: Chart.yaml metadata, Chart.lock in sync with the dependencies
(Helm refuses `helm dependency build` otherwise), and the README's values table
generated from values.yaml (stale: the test fails and names the command)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from agentbus.dev import chart_values_doc
from tests.chart.render import CHART_DIR, chart_lock_digest

pytestmark = pytest.mark.chart


def test_chart_yaml_names_home_sources_and_icon() -> None:
    meta = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    assert meta["home"].startswith("https://")
    assert meta["sources"] and all(s.startswith("https://") for s in meta["sources"])
    assert meta["icon"].startswith("https://") and meta["icon"].endswith("/icon.svg")
    assert (CHART_DIR / "icon.svg").read_text().startswith("<svg")


def test_chart_lock_is_in_sync_with_the_dependencies() -> None:
    requested = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())["dependencies"]
    lock = yaml.safe_load((CHART_DIR / "Chart.lock").read_text())
    assert [d["name"] for d in lock["dependencies"]] == [d["name"] for d in requested]
    for want, got in zip(requested, lock["dependencies"], strict=True):
        assert got["repository"] == want["repository"]
        # an exact version inside the requested range (2.14.x)
        assert re.fullmatch(r"\d+\.\d+\.\d+", got["version"]), got
        assert re.fullmatch(
            want["version"].replace(".", r"\.").replace("x", r"\d+"), got["version"]
        )
    assert lock["digest"] == chart_lock_digest(requested, lock["dependencies"]), (
        "Chart.lock is out of sync with Chart.yaml: run `helm dependency update charts/agentbus`"
    )


def test_lock_digest_is_helms() -> None:
    """chart_lock_digest against a Chart.yaml/Chart.lock pair written by Helm itself (its
    testdata import-values-from-enabled-subchart/parent-chart): tags, conditions and
    import-values included."""
    requested = [
        {"name": n, "repository": f"file://envs/{n}", "version": ">= 0.0.1",
         "condition": f"{n}.enabled,global.{n}.enabled", "tags": [n], "import-values": ["data"]}
        for n in ("dev", "prod")
    ]  # fmt: skip
    locked = [
        {"name": n, "repository": f"file://envs/{n}", "version": "v0.1.0"} for n in ("dev", "prod")
    ]
    assert chart_lock_digest(requested, locked) == (
        "sha256:9403fc24f6cf9d6055820126cf7633b4bd1fed3c77e4880c674059f536346182"
    )


def test_readme_values_table_is_fresh() -> None:
    assert chart_values_doc.main(["--check", "--chart", str(CHART_DIR)]) == 0, (
        "run `python -m agentbus.dev.chart_values_doc --write`"
    )


def test_values_table_covers_every_value_and_fails_when_stale(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    values = (CHART_DIR / "values.yaml").read_text()
    table = chart_values_doc.render_table(values)
    for row in chart_values_doc.rows(values):
        assert f"| `{row.key}` |" in table
    rows = {r.key: r for r in chart_values_doc.rows(values)}
    assert rows["worker.concurrency"].description.startswith("Tasks run at once per replica")
    assert rows["worker.concurrency"].default == "4"
    assert rows["prometheusRule.enabled"].default == "false"
    # a new value with its comment: the check fails until --write
    chart = tmp_path / "chart"
    chart.mkdir()
    (chart / "README.md").write_text((CHART_DIR / "README.md").read_text())
    (chart / "values.yaml").write_text(values + "\n# A brand-new knob.\nnewKnob: 3\n")
    assert chart_values_doc.main(["--check", "--chart", str(chart)]) == 1
    assert "chart_values_doc --write" in capsys.readouterr().err
    assert chart_values_doc.main(["--write", "--chart", str(chart)]) == 0
    assert "| `newKnob` | `3` | A brand-new knob. |" in (chart / "README.md").read_text()
    assert chart_values_doc.main(["--check", "--chart", str(chart)]) == 0
