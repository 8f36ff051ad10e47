"""charts/agentbus/examples/openai-values.yaml (the workers behind an in-cluster
OpenAI-compatible server) renders, and every setting it gives a container is one the
service reads and accepts."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from agentbus.contract.settings import env_var_names, load_settings
from tests.chart.render import CHART_DIR, env_of, render

pytestmark = pytest.mark.chart

EXAMPLE = CHART_DIR / "examples" / "openai-values.yaml"


def test_the_openai_example_wires_the_workers_to_the_server(
    chart_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = render(chart_dir, yaml.safe_load(EXAMPLE.read_text()))
    known = env_var_names()
    workers = 0
    for owner, container in r.our_containers():
        env = {k: e["value"] for k, e in env_of(container).items() if "value" in e}
        settings = {k: v for k, v in env.items() if k.startswith("AGENTBUS_") and k in known}
        for name, value in settings.items():
            monkeypatch.setenv(name, value)
        load_settings()  # each container's settings are valid
        for name in settings:
            monkeypatch.delenv(name)
        if owner["metadata"]["name"].endswith("-worker"):
            workers += 1
            assert env["AGENTBUS_SUMMARIZER__BACKEND"] == "openai"
            assert env["AGENTBUS_SUMMARIZER__OPENAI_BASE_URL"].startswith("http://vllm.")
            assert env["AGENTBUS_SUMMARIZER__OPENAI_MODEL"]
            assert env["AGENTBUS_SUMMARIZER__OPENAI_TIMEOUT_S"] == "300"
        if owner["metadata"]["name"].endswith("-orchestrator"):
            assert env["AGENTBUS_ORCHESTRATOR__MAX_REDUCE_LEVELS"] == "4"
    assert workers == 1
