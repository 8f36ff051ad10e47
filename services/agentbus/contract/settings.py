"""Settings of every agentbus service, read from the environment.

Prefix `AGENTBUS_`, nested delimiter `__`: `AGENTBUS_NATS__URL`, `AGENTBUS_WORKER__CONCURRENCY`.
Invalid settings raise `ConfigError` with one line naming the variable; so does an
`AGENTBUS_*` variable that names no setting (a misspelt section or key would otherwise be
ignored), except the few that other programs read (`EXTERNAL_ENV_VARS`).
"""

from __future__ import annotations

import difflib
import os
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from agentbus.contract.errors import ConfigError

__all__ = [
    "ENV_PREFIX",
    "EXTERNAL_ENV_PREFIXES",
    "EXTERNAL_ENV_VARS",
    "NATS_PASSWORD_ENV_PREFIX",
    "NATS_SERVER_BIN_ENV",
    "ArchiverSettings",
    "GatewaySettings",
    "HttpSettings",
    "LimitsSettings",
    "NatsSettings",
    "OrchestratorSettings",
    "Settings",
    "SummarizerSettings",
    "TenantLimits",
    "TenantsSettings",
    "TopologySettings",
    "WorkerSettings",
    "default_agent_id",
    "env_var_names",
    "load_settings",
    "unknown_env_vars",
]

ENV_PREFIX: Final = "AGENTBUS_"
ENV_NESTED_DELIMITER: Final = "__"

# Variables with the `AGENTBUS_` prefix that are not settings of a service: they are read
# by other programs, so `load_settings` lets them pass. The one list of them; a new one
# goes here (and is read through these constants where the code is ours).
NATS_SERVER_BIN_ENV: Final = "AGENTBUS_NATS_SERVER_BIN"
"""The nats-server binary of `agentbus up` and the tests (`agentbus.embedded`)."""
NATS_PASSWORD_ENV_PREFIX: Final = "AGENTBUS_NATS_PASSWORD_"
"""`AGENTBUS_NATS_PASSWORD_<USER>`: a password in nats-server's environment, referenced by
the server configuration that `agentbus permissions --format conf` prints."""
EXTERNAL_ENV_VARS: Final = frozenset(
    {
        NATS_SERVER_BIN_ENV,
        # the kind tier of the tests (tests/e2e/kind) and CI
        "AGENTBUS_KIND_CLUSTER",
        "AGENTBUS_KIND_KEEP",
        # the container tier, skaffold and the .ci scripts that build the base image
        "AGENTBUS_BASE_IMAGE",
        "AGENTBUS_CACHE_DIR",
        "AGENTBUS_DEBIAN_MIRROR",
    }
)
EXTERNAL_ENV_PREFIXES: Final = (NATS_PASSWORD_ENV_PREFIX,)

PositiveFloat = Annotated[float, Field(gt=0)]


class _Section(BaseModel):
    """A nested group of settings; an unknown (misspelt) variable in it is an error."""

    model_config = ConfigDict(extra="forbid")


class NatsSettings(_Section):
    url: str = "nats://127.0.0.1:4222"
    """Comma-separated server URLs."""
    user: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    token: SecretStr | None = None
    creds_file: Path | None = None
    nkey_seed_file: Path | None = None
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    connect_timeout_s: PositiveFloat = 2.0
    reconnect_wait_s: PositiveFloat = 1.0
    ping_interval_s: PositiveFloat = 120.0
    """How often the client pings the server. A connection that stops answering (a
    network partition that closes no socket) is given up, and reconnected, after
    `max_outstanding_pings` unanswered pings: lower both to notice one sooner."""
    max_outstanding_pings: int = Field(default=2, ge=1, le=100)
    inbox_prefix: str = "_INBOX"

    @property
    def servers(self) -> list[str]:
        return [u.strip() for u in self.url.split(",") if u.strip()]

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        for url in value.split(","):
            url = url.strip()
            if not url or "://" not in url:
                shown = url.rsplit("@", 1)[-1]  # never echo user info (a password)
                raise ValueError(f"not a NATS URL: {shown!r} (expected nats://host:port)")
        return value

    @field_validator("inbox_prefix")
    @classmethod
    def _check_inbox_prefix(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*", value):
            raise ValueError(
                f"inbox prefix {value!r} must be dot-separated tokens of [A-Za-z0-9_-], "
                "without wildcards (e.g. _INBOX_worker)"
            )
        return value

    @model_validator(mode="after")
    def _check_credentials(self) -> NatsSettings:
        if self.password is not None and self.password_file is not None:
            raise ValueError(
                "set AGENTBUS_NATS__PASSWORD or AGENTBUS_NATS__PASSWORD_FILE, not both"
            )
        if (self.password is not None or self.password_file is not None) and not self.user:
            raise ValueError("a NATS password needs AGENTBUS_NATS__USER")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError(
                "AGENTBUS_NATS__TLS_CERT_FILE and AGENTBUS_NATS__TLS_KEY_FILE go together"
            )
        return self


class HttpSettings(_Section):
    host: str = "0.0.0.0"
    port: int = Field(default=9090, ge=0, le=65535)


class LimitsSettings(_Section):
    max_document_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    """Hard cap on one document; larger ones are refused at intake."""
    inline_limit_bytes: int = Field(default=256 * 1024, gt=0)
    """Documents above this travel through the object store."""
    max_message_bytes: int = Field(default=1024 * 1024, gt=0)
    """Largest message any service decodes; bigger ones go to the DLQ."""
    max_events_per_message: int = Field(default=256, ge=1, le=10_000)
    """Events emitted side by side share one message, up to this many (1: one message
    per event)."""


class TopologySettings(_Section):
    replicas: int = Field(default=1, ge=1, le=5)
    """Stream replicas (3 on a NATS cluster)."""
    storage: Literal["file", "memory"] = "file"
    results_max_age_s: PositiveFloat = 3600.0
    events_max_age_s: PositiveFloat = 7 * 24 * 3600.0
    events_max_msgs: int = Field(default=1_000_000, gt=0)
    dlq_max_age_s: PositiveFloat = 30 * 24 * 3600.0
    duplicate_window_s: PositiveFloat = 120.0
    ack_wait_s: PositiveFloat = 30.0
    max_deliver: int = Field(default=5, ge=1)
    jobs_ttl_s: PositiveFloat = 7 * 24 * 3600.0
    progress_max_age_s: PositiveFloat = 24 * 3600.0
    """How long a job's live partial results (PROGRESS stream) can be replayed."""


class WorkerSettings(_Section):
    skill: str = "summarize"
    concurrency: int = Field(default=4, ge=1, le=1024)
    fetch_timeout_s: PositiveFloat = 1.0
    in_progress_interval_s: PositiveFloat = 10.0
    backoff_s: list[float] = Field(default_factory=lambda: [1.0, 2.0, 5.0, 10.0])
    grace_period_s: PositiveFloat = 25.0
    rpc: bool = True
    """Also serve `rpc.{skill}` (core request/reply) and register for `$SRV` discovery."""


class SummarizerSettings(_Section):
    backend: Literal["extractive", "simulated", "openai"] = "extractive"
    simulated_latency_ms: float = Field(default=50.0, ge=0)
    simulated_fail_rate: float = Field(default=0.0, ge=0, le=1)
    openai_base_url: str = "http://127.0.0.1:8000/v1"
    openai_model: str = "default"
    openai_api_key: SecretStr | None = None
    openai_api_key_file: Path | None = None
    openai_timeout_s: PositiveFloat = 60.0
    """Timeout of one HTTP request (connect + response)."""
    openai_max_retries: int = Field(default=4, ge=0, le=20)
    """Retries of one request after a 429, a 5xx, a timeout or a connection error."""
    openai_backoff_s: PositiveFloat = 0.5
    """First retry delay; doubled per retry up to `openai_backoff_max_s` (Retry-After wins)."""
    openai_backoff_max_s: PositiveFloat = 30.0
    openai_temperature: float = Field(default=0.2, ge=0, le=2)
    openai_max_tokens: int = Field(default=2048, ge=16)
    """Cap of `max_tokens` per request (otherwise derived from the summary budget)."""
    openai_stream: bool = True
    """Stream each answer (SSE) and publish its tokens as live partial results. Usage in
    a stream needs a server that sends it (`stream_options.include_usage`: vLLM, Ollama,
    OpenAI); llama.cpp's Python server does not: turn streaming off to count its tokens."""
    map_prompt: str | None = None
    """The user message asking a model for the summary of one chunk of a document: a
    template with `{text}` and optionally `{max_words}`, `{max_chars}` (None: the
    built-in prompt, `agentbus_summarize_worker.backends.openai.MAP_PROMPT`)."""
    reduce_prompt: str | None = None
    """The same for a reduce step (the text is the summaries of consecutive parts)."""

    @field_validator("map_prompt", "reduce_prompt")
    @classmethod
    def _check_prompt(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if "{text}" not in value:
            raise ValueError("a prompt template must contain {text}")
        try:
            value.format(text="", max_words=1, max_chars=1)
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(
                f"not a valid template ({type(e).__name__}: {e}); placeholders are "
                "{text}, {max_words}, {max_chars}; write {{ and }} for braces"
            ) from e
        return value


class OrchestratorSettings(_Section):
    chunk_chars: int = Field(default=6000, ge=200)
    """Budget of one task's text."""
    chunk_summary_chars: int = Field(default=800, ge=50)
    """Budget of the summary of one chunk (at most half of chunk_chars)."""
    summary_chars: int = Field(default=1200, ge=50)
    """Default budget of a job's final summary."""
    max_reduce_levels: int = Field(default=8, ge=0, le=32)
    """Reduce levels (summaries of summaries) a job may run after its map level. A job
    whose summaries still do not fit after the last one (a model that answers too long)
    completes with them cut to its budget at sentence boundaries; so does one whose next
    level would not shrink. 0: the chunk summaries, cut, are final."""
    concurrency: int = Field(default=32, ge=1, le=4096)
    job_timeout_s: float = Field(default=3600.0, ge=0)
    """A job not finished this long after its acceptance fails with the reason (0 = no
    deadline); a job may ask for its own (`submit(..., timeout_s=...)`)."""
    no_progress_timeout_s: float = Field(default=900.0, ge=0)
    """A running job whose state has not moved (no result recorded, no level started) for
    this long fails with the reason (0 = never). Raise it when jobs queue behind deep
    backlogs or when one task can take longer (a slow model)."""


class ArchiverSettings(_Section):
    database_url: str = "sqlite+aiosqlite:///agentbus-archive.db"
    batch_size: int = Field(default=256, ge=1, le=10_000)
    fetch_timeout_s: PositiveFloat = 0.5
    linger_s: float = Field(default=0.05, ge=0, le=5)
    """After a small batch, wait this long for the next one to fill (0 = never)."""


class GatewaySettings(_Section):
    """The HTTP front door (`agentbus gateway`): REST/SSE, A2A and the web console."""

    host: str = "0.0.0.0"
    port: int = Field(default=8080, ge=0, le=65535)
    api_keys_file: Path | None = None
    """JSON: `{"keys": [{"key": "...", "tenant": "acme", "role": "submit"}]}`; roles
    `read` < `submit` < `operate`. None: every request is refused (401)."""
    cors_origins: list[str] = Field(default_factory=list)
    """Origins allowed cross-origin requests (`["*"]`: any); empty: CORS off."""
    stream_keepalive_s: PositiveFloat = 15.0
    """An SSE comment line this often on a quiet stream (proxies close idle ones)."""
    request_timeout_s: PositiveFloat = 10.0
    """Each call to the bus on behalf of one request (state, cancel, history, workers)."""
    public_url: str = ""
    """How clients reach the gateway (the A2A agent card's url); empty: from the request."""


class TenantLimits(_Section):
    """What one tenant may use (`AGENTBUS_TENANTS__DEFAULT__*`, or a tenant's entry of
    `AGENTBUS_TENANTS__CONFIGURED` as JSON). Enforced at the queue: `agentbus.contract.tenants`."""

    weight: int = Field(default=1, ge=1, le=1000)
    """Share of the workers' slots against other tenants with work (fair share by weight)."""
    max_in_flight: int | None = Field(default=None, ge=1, le=10_000)
    """Tasks of a configured tenant running at once, over all its priorities and every
    worker replica (None: no cap). Held by the server: the tenant has this many run
    permits (`agentbus.bus.tenant_slots`), and a worker starts a task only with one."""
    jobs_per_minute: int | None = Field(default=None, ge=1)
    """Jobs taken in per minute, across every orchestrator replica (None: no limit)."""
    over_rate: Literal["refuse", "queue"] = "refuse"
    """Over the rate: refuse the job ("retry after N s"), or queue it until the minute turns."""
    token_budget: int | None = Field(default=None, ge=1)
    """LLM tokens (prompt + completion) per window, counted across every replica (None: no
    budget)."""
    budget_window_s: PositiveFloat = 3600.0
    over_budget: Literal["wait", "fail"] = "wait"
    """Budget spent: the tenant's new jobs wait until the window turns, or fail with the reason."""
    users: list[str] = Field(default_factory=list)
    """NATS users of the tenant's clients (`agentbus permissions`: they may submit only as
    this tenant)."""


class TenantsSettings(_Section):
    """Tenants: a configured, bounded set (metric labels stay bounded). A job of a tenant
    not configured here (or without one) belongs to the `default` tenant and its limits."""

    default: TenantLimits = Field(default_factory=TenantLimits)
    configured: dict[str, TenantLimits] = Field(default_factory=dict)
    """Tenant name -> limits; each has its own task queues (JSON in
    `AGENTBUS_TENANTS__CONFIGURED`, e.g. `{"acme": {"weight": 3, "max_in_flight": 20}}`)."""

    @field_validator("configured")
    @classmethod
    def _names(cls, value: dict[str, TenantLimits]) -> dict[str, TenantLimits]:
        for name in value:
            if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,31}", name) or name == "default":
                raise ValueError(f"tenant name {name!r} must be 1-32 of [a-z0-9_-], not 'default'")
        return value


def default_agent_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
        extra="forbid",
        case_sensitive=False,
    )

    agent_id: str = Field(default_factory=default_agent_id, pattern=r"^[A-Za-z0-9_-]{1,64}$")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["auto", "json", "text"] = "auto"
    nats: NatsSettings = Field(default_factory=NatsSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    topology: TopologySettings = Field(default_factory=TopologySettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    summarizer: SummarizerSettings = Field(default_factory=SummarizerSettings)
    orchestrator: OrchestratorSettings = Field(default_factory=OrchestratorSettings)
    archiver: ArchiverSettings = Field(default_factory=ArchiverSettings)
    tenants: TenantsSettings = Field(default_factory=TenantsSettings)
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


def _env_name(loc: tuple[int | str, ...]) -> str:
    return ENV_PREFIX + ENV_NESTED_DELIMITER.join(str(p).upper() for p in loc)


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment (plus keyword overrides).

    Raises `ConfigError` whose message names the offending variable, in one line.
    """
    unknown = unknown_env_vars(os.environ)
    if unknown:
        raise ConfigError("invalid settings: " + "; ".join(unknown))
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]  # sections given as dicts, validated by pydantic
    except ValidationError as e:
        problems = "; ".join(
            f"{_env_name(err['loc'])}: {err['msg']}" for err in e.errors(include_url=False)
        )
        raise ConfigError(f"invalid settings: {problems}") from e
    except ValueError as e:  # pydantic-settings' JSON parse errors of complex fields
        raise ConfigError(f"invalid settings: {e}") from e
    orch = settings.orchestrator
    if orch.chunk_summary_chars * 2 > orch.chunk_chars:
        raise ConfigError(
            "invalid settings: AGENTBUS_ORCHESTRATOR__CHUNK_SUMMARY_CHARS must be at most half of "
            f"AGENTBUS_ORCHESTRATOR__CHUNK_CHARS "
            f"({orch.chunk_summary_chars} > {orch.chunk_chars}/2)"
        )
    return settings


def env_var_names() -> set[str]:
    """Every environment variable that names a leaf setting (for chart conformance tests)."""
    names: set[str] = set()

    def walk(model: type[BaseModel], prefix: tuple[str, ...]) -> None:
        for name, field in model.model_fields.items():
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, (*prefix, name))
            else:
                names.add(_env_name((*prefix, name)))

    walk(Settings, ())
    return names


def _accepted_env_names() -> set[str]:
    """Every name pydantic-settings reads: leaf settings and whole sections (as JSON)."""
    return env_var_names() | {_env_name((name,)) for name in Settings.model_fields}


def unknown_env_vars(environ: Mapping[str, str]) -> list[str]:
    """One description per `AGENTBUS_*` variable of `environ` that names no setting and is
    not read elsewhere (`EXTERNAL_ENV_VARS`), with the closest valid name when one is near:
    pydantic-settings would silently ignore it (`AGENTBUS_WORKR__CONCURRENCY`)."""
    accepted = _accepted_env_names()
    problems: list[str] = []
    for name in sorted(environ):
        upper = name.upper()  # the settings are read case-insensitively
        if (
            not upper.startswith(ENV_PREFIX)
            or upper in accepted
            or upper in EXTERNAL_ENV_VARS
            or upper.startswith(EXTERNAL_ENV_PREFIXES)
        ):
            continue
        # compared without the prefix they all share, which would make any two look alike
        close = difflib.get_close_matches(
            upper.removeprefix(ENV_PREFIX), [a.removeprefix(ENV_PREFIX) for a in accepted],
            n=1, cutoff=0.6,
        )  # fmt: skip
        hint = f" (did you mean {ENV_PREFIX}{close[0]}?)" if close else ""
        problems.append(f"{name}: no such setting{hint}")
    return problems
