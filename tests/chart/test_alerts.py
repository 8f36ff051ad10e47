"""The PrometheusRule's alerts, each unit-tested with `promtool test rules` (Debian's
`prometheus` package, .ci/install-prometheus.sh): the rules as the chart renders them, fed
series of this release (and of another release, which must not fire them), checked for
firing exactly when and with the labels they should. `promtool check rules` checks the
full rules, annotation templates included."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Final

import pytest
import yaml
from prometheus_client import REGISTRY, generate_latest

from agentbus.observability import metrics
from tests.chart.render import NAMESPACE, RELEASE, render

pytestmark = pytest.mark.chart

assert metrics.TENANT_TOKEN_BUDGET  # imported for its metrics, registered on import

OURS: Final = f'namespace="{NAMESPACE}", app_kubernetes_io_instance="{RELEASE}"'
OTHER: Final = f'namespace="{NAMESPACE}", app_kubernetes_io_instance="other"'
RELEASE_LABELS: Final = {"namespace": NAMESPACE, "app_kubernetes_io_instance": RELEASE}
ALERTS: Final = (
    "AgentbusDeadLettersGrowing",
    "AgentbusConsumerLagHigh",
    "AgentbusNoWorkerReady",
    "AgentbusJobsFailing",
    "AgentbusJobsPastDeadline",
    "AgentbusArchiveLagHigh",
    "AgentbusNatsPermissionViolations",
    "AgentbusTenantTokenBudgetNearlySpent",
    "AgentbusTenantTokenBudgetSpent",
)


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if not found:
        pytest.skip("promtool not installed (.ci/install-prometheus.sh)")
    return found


@pytest.fixture(scope="module")
def rule_groups(chart_dir: Path) -> list[dict[str, Any]]:
    r = render(chart_dir, {"prometheusRule": {"enabled": True}})
    (rule,) = r.of_kind("PrometheusRule")
    groups: list[dict[str, Any]] = rule["spec"]["groups"]
    return groups


def _s(metric: str, release: str, **labels: str) -> str:
    """A series selector: `metric` of `release` (OURS, OTHER) with `labels`."""
    return metric + "{" + ", ".join([release, *(f'{k}="{v}"' for k, v in labels.items())]) + "}"


def _alert(name: str, severity: str = "warning", **labels: str) -> dict[str, Any]:
    return {"exp_labels": {"alertname": name, "severity": severity, **RELEASE_LABELS, **labels}}


def _case(
    series: list[tuple[str, str]], checks: list[tuple[str, str, list[dict[str, Any]]]]
) -> dict[str, Any]:
    """A promtool test: input series (selector, values) every minute, and at each
    (eval_time, alertname) exactly the expected alerts."""
    return {
        "interval": "1m",
        "input_series": [{"series": s, "values": v} for s, v in series],
        "alert_rule_test": [
            {"eval_time": t, "alertname": name, "exp_alerts": exp} for t, name, exp in checks
        ],
    }


# tenant acme spends 100 tokens a minute of a 1,000 budget (over 90 % from minute 10);
# tenant free has no budget (no budget series) and another release's acme is far over
_TENANT_SERIES: Final = [
    (_s("agentbus_tenant_tokens_window", OURS, service="orchestrator", tenant="acme"), "0+100x20"),
    (_s("agentbus_tenant_token_budget", OURS, service="orchestrator", tenant="acme"), "1000x20"),
    (_s("agentbus_tenant_tokens_window", OURS, service="orchestrator", tenant="free"), "0+999x20"),
    (_s("agentbus_tenant_tokens_window", OTHER, service="orchestrator", tenant="acme"), "5000x20"),
    (_s("agentbus_tenant_token_budget", OTHER, service="orchestrator", tenant="acme"), "1000x20"),
]

TESTS: Final[dict[str, dict[str, Any]]] = {
    "AgentbusDeadLettersGrowing": _case(
        [
            (
                _s(
                    "agentbus_dead_letters_total",
                    OURS,
                    service="worker",
                    stream="TASKS",
                    reason="max_deliver",
                ),
                "0 0 0 0 0 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1",
            ),
            (
                _s(
                    "agentbus_dead_letters_total",
                    OTHER,
                    service="worker",
                    stream="TASKS",
                    reason="max_deliver",
                ),
                "0+1x30",
            ),
        ],
        [
            ("4m", "AgentbusDeadLettersGrowing", []),
            (
                "8m",
                "AgentbusDeadLettersGrowing",
                [_alert("AgentbusDeadLettersGrowing", stream="TASKS")],
            ),
            ("25m", "AgentbusDeadLettersGrowing", []),  # none for 15 min: resolved
        ],
    ),
    "AgentbusConsumerLagHigh": _case(
        [
            (
                _s(
                    "nats_consumer_num_pending",
                    OURS,
                    stream_name="TASKS",
                    consumer_name="summarize-workers",
                    is_consumer_leader="true",
                ),
                "5000x30",
            ),
            # a follower replica's stale numbers and another stream's consumer do not count
            (
                _s(
                    "nats_consumer_num_pending",
                    OURS,
                    stream_name="TASKS",
                    consumer_name="summarize-workers",
                    is_consumer_leader="false",
                ),
                "99999x30",
            ),
            (
                _s(
                    "nats_consumer_num_pending",
                    OURS,
                    stream_name="KV_jobs",
                    consumer_name="x",
                    is_consumer_leader="true",
                ),
                "99999x30",
            ),
            (
                _s(
                    "nats_consumer_num_pending",
                    OURS,
                    stream_name="JOBS",
                    consumer_name="orchestrator",
                    is_consumer_leader="true",
                ),
                "10x30",
            ),
        ],
        [
            ("5m", "AgentbusConsumerLagHigh", []),  # not yet for 10 minutes
            (
                "12m",
                "AgentbusConsumerLagHigh",
                [
                    _alert(
                        "AgentbusConsumerLagHigh",
                        stream_name="TASKS",
                        consumer_name="summarize-workers",
                    )
                ],
            ),
        ],
    ),
    "AgentbusNoWorkerReady": _case(
        [
            (
                _s("agentbus_nats_connected", OURS, service="worker", pod="w-1"),
                "1 1 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0",
            ),
            (
                _s("agentbus_nats_connected", OURS, service="worker", pod="w-2"),
                "1 1 1 _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _",
            ),
            (_s("agentbus_nats_connected", OURS, service="orchestrator", pod="o-1"), "1x20"),
            (_s("agentbus_nats_connected", OTHER, service="worker", pod="x-1"), "1x20"),
        ],
        [
            ("2m", "AgentbusNoWorkerReady", []),
            # w-1 down at 3 min; w-2 gone at 3 min, seen until 7 (Prometheus's 5 min lookback)
            ("10m", "AgentbusNoWorkerReady", []),  # not yet for 5 minutes
            (
                "13m",
                "AgentbusNoWorkerReady",
                [_alert("AgentbusNoWorkerReady", "critical", service="worker")],
            ),
        ],
    ),
    "AgentbusNoWorkerReady/none-at-all": _case(
        [(_s("agentbus_nats_connected", OURS, service="orchestrator", pod="o-1"), "1x20")],
        [
            (
                "6m",
                "AgentbusNoWorkerReady",
                [_alert("AgentbusNoWorkerReady", "critical", service="worker")],
            )
        ],
    ),
    "AgentbusJobsFailing": _case(
        [
            (
                _s("agentbus_jobs_failed_total", OURS, service="orchestrator", reason="task"),
                "0 0 0 0 0 0 0 0 0 0 0+1x30",
            ),
            (_s("agentbus_jobs_completed_total", OURS, service="orchestrator"), "0+3x40"),
            # another release fails everything: not ours
            (
                _s("agentbus_jobs_failed_total", OTHER, service="orchestrator", reason="task"),
                "0+9x40",
            ),
            (_s("agentbus_jobs_completed_total", OTHER, service="orchestrator"), "0x40"),
        ],
        [
            ("9m", "AgentbusJobsFailing", []),  # 0 % failed
            ("30m", "AgentbusJobsFailing", [_alert("AgentbusJobsFailing")]),  # 25 %
        ],
    ),
    "AgentbusJobsPastDeadline": _case(
        [
            (
                _s("agentbus_jobs_failed_total", OURS, service="orchestrator", reason="timeout"),
                "0 0 0 0 2 2 2 2 2 2 2 2 2 2 2 2 2 2 2 2 2 2 2 2 2",
            ),
            (
                _s("agentbus_jobs_failed_total", OURS, service="orchestrator", reason="task"),
                "0+5x25",
            ),
        ],
        [
            ("3m", "AgentbusJobsPastDeadline", []),
            ("6m", "AgentbusJobsPastDeadline", [_alert("AgentbusJobsPastDeadline")]),
        ],
    ),
    "AgentbusArchiveLagHigh": _case(
        [
            # every event 100-120 s late from minute 5 on (95th percentile ~119 s)
            (
                _s("agentbus_archive_lag_seconds_bucket", OURS, service="archiver", le="1"),
                "0+10x5 50+0x30",
            ),
            (
                _s("agentbus_archive_lag_seconds_bucket", OURS, service="archiver", le="120"),
                "0+10x40",
            ),
            (
                _s("agentbus_archive_lag_seconds_bucket", OURS, service="archiver", le="+Inf"),
                "0+10x40",
            ),
        ],
        [
            ("4m", "AgentbusArchiveLagHigh", []),  # under a second
            ("12m", "AgentbusArchiveLagHigh", []),  # late, not yet for 10 minutes
            ("25m", "AgentbusArchiveLagHigh", [_alert("AgentbusArchiveLagHigh")]),
        ],
    ),
    "AgentbusNatsPermissionViolations": _case(
        [
            (
                _s("agentbus_nats_permission_violations_total", OURS, service="worker"),
                "0 0 0 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1",
            ),
            (_s("agentbus_nats_permission_violations_total", OURS, service="archiver"), "0x20"),
        ],
        [
            ("2m", "AgentbusNatsPermissionViolations", []),
            (
                "5m",
                "AgentbusNatsPermissionViolations",
                [_alert("AgentbusNatsPermissionViolations", service="worker")],
            ),
            ("18m", "AgentbusNatsPermissionViolations", []),
        ],
    ),
    "AgentbusTenantTokenBudgetNearlySpent": _case(
        _TENANT_SERIES,
        [
            ("9m", "AgentbusTenantTokenBudgetNearlySpent", []),  # 90 %: not above
            ("11m", "AgentbusTenantTokenBudgetNearlySpent", []),  # not yet for 2 minutes
            (
                "13m",
                "AgentbusTenantTokenBudgetNearlySpent",
                [_alert("AgentbusTenantTokenBudgetNearlySpent", tenant="acme")],
            ),
        ],
    ),
    "AgentbusTenantTokenBudgetSpent": _case(
        _TENANT_SERIES,
        [
            ("9m", "AgentbusTenantTokenBudgetSpent", []),
            (
                "12m",
                "AgentbusTenantTokenBudgetSpent",
                [_alert("AgentbusTenantTokenBudgetSpent", "critical", tenant="acme")],
            ),
        ],
    ),
}


def _promtool(promtool: str, *args: str, cwd: Path) -> str:
    done = subprocess.run(
        [promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return output


def test_every_listed_alert_exists_and_the_rules_check(
    rule_groups: list[dict[str, Any]], promtool: str, tmp_path: Path
) -> None:
    names = [rule["alert"] for g in rule_groups for rule in g["rules"]]
    assert names == list(ALERTS) == [t for t in TESTS if "/" not in t]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule_groups}))
    assert "SUCCESS: 9 rules found" in _promtool(
        promtool, "check", "rules", "rules.yaml", cwd=tmp_path
    )


@pytest.mark.parametrize("alert", list(TESTS))
def test_alert_fires_when_it_should(
    rule_groups: list[dict[str, Any]], promtool: str, tmp_path: Path, alert: str
) -> None:
    # the annotations are templates of the values (checked by `promtool check rules`
    # above); here the alerts are compared by labels
    groups = [
        {**g, "rules": [{k: v for k, v in r.items() if k != "annotations"} for r in g["rules"]]}
        for g in rule_groups
    ]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    tests = {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": [TESTS[alert]]}
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests))
    _promtool(promtool, "test", "rules", "tests.yaml", cwd=tmp_path)


def test_every_agentbus_metric_an_alert_names_is_exported(
    rule_groups: list[dict[str, Any]],
) -> None:
    exposition = generate_latest(REGISTRY).decode()
    exported = set(re.findall(r"^# TYPE (agentbus_[a-z_]+) ", exposition, flags=re.M))
    named = {
        re.sub(r"_bucket$", "", m)
        for g in rule_groups
        for r in g["rules"]
        for m in re.findall(r"agentbus_[a-z_]+", r["expr"])
    }
    assert len(named) >= 8
    assert named <= exported, named - exported


def test_alerts_can_be_switched_off_and_tuned(chart_dir: Path) -> None:
    values = {
        "prometheusRule": {
            "enabled": True,
            "alerts": {"noWorker": {"enabled": False}, "consumerLag": {"threshold": 50}},
        }
    }
    (rule,) = render(chart_dir, values).of_kind("PrometheusRule")
    rules = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert "AgentbusNoWorkerReady" not in rules
    assert rules["AgentbusConsumerLagHigh"]["expr"].endswith("> 50")
    assert render(chart_dir, {}).of_kind("PrometheusRule") == []  # off by default
