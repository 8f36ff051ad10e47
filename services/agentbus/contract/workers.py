"""What workers report about themselves through nats.micro discovery (`$SRV`), as
`agentbus workers` shows it."""

from __future__ import annotations

import re
from typing import Final

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["WorkerInfo", "WorkerStats", "micro_version"]

_SEMVER: Final = re.compile(r"^\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$")


def micro_version(version: str) -> str:
    """nats.micro insists on a semantic version; map anything else onto one."""
    if _SEMVER.fullmatch(version):
        return version
    parts = [*re.findall(r"\d+", version), "0", "0", "0"][:3]
    return ".".join(str(int(p)) for p in parts)


class WorkerStats(BaseModel):
    """What a worker reports in its nats.micro endpoint stats (`data`)."""

    model_config = ConfigDict(extra="ignore")
    agent_id: str
    skill: str
    backend: str = ""
    state: str = "running"
    """running, paused or draining."""
    concurrency: int = Field(default=0, ge=0)
    in_flight: int = Field(default=0, ge=0)
    """Tasks and RPC requests being handled now."""
    tasks_in_flight: int = Field(default=0, ge=0)
    rpc_in_flight: int = Field(default=0, ge=0)
    tasks_ok: int = Field(default=0, ge=0)
    tasks_retried: int = Field(default=0, ge=0)
    tasks_dead_lettered: int = Field(default=0, ge=0)
    tasks_rejected: int = Field(default=0, ge=0)
    rpc_ok: int = Field(default=0, ge=0)
    rpc_failed: int = Field(default=0, ge=0)
    rpc_mean_ms: float = Field(default=0.0, ge=0)


class WorkerInfo(BaseModel):
    """One running worker as `agentbus workers` shows it."""

    model_config = ConfigDict(extra="forbid")
    id: str
    """The worker's agent id (what `agentbus ctl` takes)."""
    service_id: str
    """The nats.micro instance id (`$SRV.*.agentbus-worker.{service_id}`)."""
    version: str
    skill: str
    backend: str
    state: str
    concurrency: int
    in_flight: int
    started: str
    endpoint: str
    """The request/reply subject it serves (`rpc.summarize`)."""
    queue_group: str
    stats: WorkerStats
