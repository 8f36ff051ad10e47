"""`agentbus up|demo --summarizer/--openai-base-url/--openai-model`: the workers' settings
they become, and one clear line for what the workers would refuse."""

from __future__ import annotations

import pytest

from agentbus.cli.summarizer import summarizer_env
from agentbus.contract.errors import ConfigError

pytestmark = pytest.mark.unit


def test_options_become_the_workers_settings() -> None:
    assert summarizer_env(None, base_url=None, model=None) == {}
    assert summarizer_env("simulated", base_url=None, model=None) == {
        "AGENTBUS_SUMMARIZER__BACKEND": "simulated"
    }
    assert summarizer_env(None, base_url="http://gpu:8000/v1", model="qwen") == {
        "AGENTBUS_SUMMARIZER__BACKEND": "openai",
        "AGENTBUS_SUMMARIZER__OPENAI_BASE_URL": "http://gpu:8000/v1",
        "AGENTBUS_SUMMARIZER__OPENAI_MODEL": "qwen",
    }


@pytest.mark.parametrize(
    ("backend", "url", "message"),
    [
        ("openai", "gpu:8000", r"not an http\(s\) URL"),
        ("extractive", "http://gpu:8000/v1", "go with --summarizer openai"),
    ],
)
def test_bad_options_are_one_line(backend: str, url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        summarizer_env(backend, base_url=url, model=None)  # type: ignore[arg-type]  # as typed on the command line
    assert "\n" not in str(info.value)
