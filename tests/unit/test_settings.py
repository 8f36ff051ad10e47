"""Settings: env prefix and nesting, defaults, and one-line errors naming the variable."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final

import pytest

from agentbus.contract import permissions
from agentbus.contract.errors import ConfigError
from agentbus.contract.settings import (
    EXTERNAL_ENV_VARS,
    env_var_names,
    load_settings,
    unknown_env_vars,
)

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


@pytest.mark.parametrize(
    ("var", "suggested"),
    [
        ("AGENTBUS_WORKR__CONCURRENCY", "AGENTBUS_WORKER__CONCURRENCY"),
        ("AGENTBUS_NATS_URL", "AGENTBUS_NATS__URL"),
        ("AGENTBUS_LOGLEVEL", "AGENTBUS_LOG_LEVEL"),
        ("AGENTBUS_SUMARIZER__BACKEND", "AGENTBUS_SUMMARIZER__BACKEND"),
        ("agentbus_workr__concurrency", "AGENTBUS_WORKER__CONCURRENCY"),  # read any case
    ],
)
def test_a_variable_naming_no_setting_is_refused_with_the_closest_name(
    monkeypatch: pytest.MonkeyPatch, var: str, suggested: str
) -> None:
    monkeypatch.setenv(var, "2")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert str(info.value) == (
        f"invalid settings: {var}: no such setting (did you mean {suggested}?)"
    )


def test_every_unknown_variable_is_named_on_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTBUS_WORKR__CONCURRENCY", "2")
    monkeypatch.setenv("AGENTBUS_XYZZY", "1")
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert "\n" not in message
    assert "AGENTBUS_WORKR__CONCURRENCY: no such setting (did you mean" in message
    assert "AGENTBUS_XYZZY: no such setting;" in message or message.endswith(
        "AGENTBUS_XYZZY: no such setting"
    )


def test_variables_of_other_programs_and_whole_sections_are_accepted() -> None:
    environ = dict.fromkeys(EXTERNAL_ENV_VARS, "x")
    environ[permissions.password_env_var("worker")] = "secret"
    environ["AGENTBUS_WORKER"] = '{"concurrency": 2}'  # a section as JSON
    environ["AGENTBUS_NATS__URL"] = "nats://a:1"
    environ["PATH"] = "/bin"
    assert unknown_env_vars(environ) == []


REPO: Final = Path(__file__).resolve().parents[2]
DELIBERATE_TYPOS: Final = frozenset(
    {
        "AGENTBUS_WORKER__CONCURENCY",
        "AGENTBUS_WORKER__CONCURRANCY",
        "AGENTBUS_WORKR__CONCURRENCY",
        "AGENTBUS_NATS_URL",
        "AGENTBUS_LOGLEVEL",
        "AGENTBUS_SUMARIZER__BACKEND",
        "AGENTBUS_XYZZY",
    }
)


def test_every_agentbus_variable_the_repository_names_is_accepted() -> None:
    """A variable that code, chart, image, CI or tests read is a setting or on the
    allow-list of other programs' variables (`EXTERNAL_ENV_VARS`): the check never
    refuses what the project itself sets."""
    places = ["services", "tests", "charts", "bench", ".ci", ".github"]
    files = [p for place in places for p in (REPO / place).rglob("*") if p.is_file()]
    files += [REPO / "Dockerfile", REPO / "skaffold.yaml", REPO / "Makefile"]
    named: set[str] = set()
    for path in files:
        if path.suffix in {".pyc", ".png", ".tgz"}:
            continue
        text = path.read_text(errors="replace")
        named |= set(re.findall(r"AGENTBUS_[A-Za-z0-9_]*", text))
    # (a name ending in `_` is a prefix in prose or code: `AGENTBUS_NATS_PASSWORD_<USER>`)
    named = {n for n in named if not n.endswith("_")} - DELIBERATE_TYPOS
    assert "AGENTBUS_NATS__URL" in named and "AGENTBUS_KIND_CLUSTER" in named
    assert unknown_env_vars(dict.fromkeys(named, "x")) == []
