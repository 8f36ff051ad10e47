"""The tenants' dashboard names only metrics agentbus exports, with the
labels it gives them (a typo would be an empty panel or an alert that never fires)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Final

import pytest

from agentbus.observability import metrics

pytestmark = pytest.mark.unit

CHART: Final = Path(__file__).parents[2] / "charts/agentbus"
DASHBOARD: Final = CHART / "dashboards/agentbus-tenants.json"
TENANT_METRICS: Final = {
    "agentbus_tenant_tasks_pulled_total": metrics.TENANT_TASKS_PULLED,
    "agentbus_tenant_jobs_total": metrics.TENANT_JOBS,
    "agentbus_tenant_tokens_total": metrics.TENANT_TOKENS,
    "agentbus_tenant_tokens_window": metrics.TENANT_TOKENS_WINDOW,
    "agentbus_tenant_token_budget": metrics.TENANT_TOKEN_BUDGET,
}


def _exprs() -> list[str]:
    dash: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def test_every_agentbus_metric_named_is_exported_with_a_tenant_label() -> None:
    named = {m for e in _exprs() for m in re.findall(r"agentbus_[a-z_]+", e)}
    assert named == set(TENANT_METRICS)
    for metric in TENANT_METRICS.values():
        assert "tenant" in metric._labelnames
