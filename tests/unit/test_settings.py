"""Settings: env prefix and nesting, defaults, and one-line errors naming the variable."""

from __future__ import annotations

import pytest

from agentbus.errors import ConfigError
from agentbus.settings import env_var_names, load_settings

pytestmark = pytest.mark.unit


def test_defaults_are_usable(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in env_var_names():
        monkeypatch.delenv(name, raising=False)
    s = load_settings()
    assert s.nats.servers == ["nats://127.0.0.1:4222"]
    assert s.http.port == 9090
    assert s.summarizer.backend == "extractive"
    assert s.archiver.database_url.startswith("sqlite+aiosqlite:///")
    assert s.orchestrator.chunk_summary_chars * 2 <= s.orchestrator.chunk_chars


def test_nested_env_with_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTBUS_NATS__URL", "nats://a:1, nats://b:2")
    monkeypatch.setenv("AGENTBUS_WORKER__CONCURRENCY", "7")
    monkeypatch.setenv("AGENTBUS_WORKER__BACKOFF_S", "[0.5, 1.5]")
    monkeypatch.setenv("AGENTBUS_SUMMARIZER__BACKEND", "simulated")
    monkeypatch.setenv("AGENTBUS_LOG_LEVEL", "debug")
    s = load_settings()
    assert s.nats.servers == ["nats://a:1", "nats://b:2"]
    assert s.worker.concurrency == 7
    assert s.worker.backoff_s == [0.5, 1.5]
    assert s.summarizer.backend == "simulated"
    assert s.log_level == "DEBUG"


@pytest.mark.parametrize(
    ("var", "value", "named"),
    [
        ("AGENTBUS_WORKER__CONCURRENCY", "zero", "AGENTBUS_WORKER__CONCURRENCY"),
        ("AGENTBUS_WORKER__CONCURRENCY", "0", "AGENTBUS_WORKER__CONCURRENCY"),
        ("AGENTBUS_HTTP__PORT", "70000", "AGENTBUS_HTTP__PORT"),
        ("AGENTBUS_SUMMARIZER__BACKEND", "gpt", "AGENTBUS_SUMMARIZER__BACKEND"),
        ("AGENTBUS_NATS__URL", "localhost", "AGENTBUS_NATS__URL"),
        ("AGENTBUS_AGENT_ID", "has.dot", "AGENTBUS_AGENT_ID"),
        ("AGENTBUS_ORCHESTRATOR__CHUNK_SUMMARY_CHARS", "5000", "CHUNK_SUMMARY_CHARS"),
    ],
)
def test_bad_settings_fail_with_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str, named: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert named in message
    assert "\n" not in message


def test_unknown_nested_field_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTBUS_WORKER__CONCURENCY", "3")  # typo
    with pytest.raises(ConfigError, match="CONCURENCY"):
        load_settings()


def test_env_var_names_lists_leaf_settings() -> None:
    names = env_var_names()
    assert "AGENTBUS_NATS__URL" in names
    assert "AGENTBUS_WORKER__CONCURRENCY" in names
    assert "AGENTBUS_NATS" not in names
