"""The wheel installs nothing generic: every top-level package is agentbus-prefixed, and
the service and skill entry points name them."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]


def test_the_wheel_has_only_agentbus_prefixed_top_level_packages(tmp_path: Path) -> None:
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path),
         str(ROOT)],
        capture_output=True, text=True, timeout=280,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = tmp_path.glob("agentbus-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        declared = zf.read(entry_points).decode()
    top = {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith(".dist-info")}
    assert top == {
        "agentbus",
        "agentbus_orchestrator",
        "agentbus_summarize_worker",
        "agentbus_event_archiver",
        "agentbus_gateway",
    }, top
    assert "orchestrator = agentbus_orchestrator:Orchestrator" in declared
    assert "summarize = agentbus_summarize_worker:SummarizeSkill" in declared
    assert "archiver = agentbus_event_archiver:EventArchiver" in declared
    assert "gateway = agentbus_gateway:Gateway" in declared
    # the web console ships in the gateway's package
    for name in ("index.html", "app.js", "api.js", "style.css"):
        assert f"agentbus_gateway/console/{name}" in names, name
    # the layers are packages of the core, and the dev tools ship (`agentbus up`)
    for layer in ("contract", "observability", "bus", "runtime", "client", "cli", "dev"):
        assert f"agentbus/{layer}/__init__.py" in names, layer
