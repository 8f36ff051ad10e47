"""`--summarizer`, `--openai-base-url`, `--openai-model` of `agentbus up` and `agentbus
demo`: the summarizer backend of the stack's workers, passed to them as their settings
(`AGENTBUS_SUMMARIZER__*`), checked here first so that a typo is one line, not a crash
loop of every worker."""

from __future__ import annotations

from typing import Annotated, Final, Literal

import typer

from agentbus.contract.errors import ConfigError
from agentbus.contract.settings import load_settings

__all__ = ["BaseUrlOpt", "ModelOpt", "SummarizerOpt", "summarizer_env"]

Backend = Literal["extractive", "openai", "simulated"]

SummarizerOpt = Annotated[
    Backend | None,
    typer.Option(
        "--summarizer",
        help="The workers' summarizer backend (default: AGENTBUS_SUMMARIZER__BACKEND, else "
        "extractive; openai when --openai-base-url is given)",
    ),
]
BaseUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--openai-base-url",
        metavar="URL",
        help="An OpenAI-compatible server: vLLM http://HOST:8000/v1, Ollama "
        "http://HOST:11434/v1, llama.cpp http://HOST:8080/v1",
    ),
]
ModelOpt = Annotated[
    str | None,
    typer.Option("--openai-model", metavar="NAME", help="The model the server serves"),
]

_PREFIX: Final = "AGENTBUS_SUMMARIZER__"


def summarizer_env(
    backend: Backend | None, *, base_url: str | None, model: str | None
) -> dict[str, str]:
    """The settings of the stack's workers for these options (empty: none given).

    Raises `ConfigError` (one line) for a base URL that is not http(s) or options that
    contradict each other."""
    if backend is None and (base_url or model):
        backend = "openai"
    if backend is None:
        return {}
    if backend != "openai" and (base_url or model):
        raise ConfigError(
            f"--openai-base-url and --openai-model go with --summarizer openai, not {backend}"
        )
    env: dict[str, str] = {f"{_PREFIX}BACKEND": backend}
    if base_url:
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"--openai-base-url {base_url!r} is not an http(s) URL")
        env[f"{_PREFIX}OPENAI_BASE_URL"] = base_url
    if model:
        env[f"{_PREFIX}OPENAI_MODEL"] = model
    # the workers would refuse what the settings refuse: say it here, once
    load_settings(summarizer={k.removeprefix(_PREFIX).lower(): v for k, v in env.items()})
    return env
