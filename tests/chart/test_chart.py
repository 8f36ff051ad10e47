"""charts/agentbus rendered with the real Helm engine for every ci/*-values.yaml scenario and
checked offline: lint, values schema, Kubernetes object schemas (two versions), selectors,
env vars against the services' real settings, ports and probe paths against what the
services serve, autoscaling, security contexts, hooks, the NATS wiring, dashboards."""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from agentbus.contract import subjects
from agentbus.contract.priority import PRIORITIES, task_consumer
from agentbus.contract.settings import env_var_names, load_settings
from agentbus.observability.health import HEALTH_PATHS
from tests.chart.render import (
    CHART_DIR,
    KUBE_VERSIONS,
    NAMESPACE,
    RELEASE,
    SCENARIOS,
    Rendered,
    env_of,
    job_secret_names,
    labels_match,
    load_values,
    render,
)

pytestmark = pytest.mark.chart

RenderFn = Callable[[str], Rendered]

SERVICE_DEPLOYMENTS = {
    "orchestrator": f"{RELEASE}-orchestrator",
    "worker": f"{RELEASE}-summarize-worker",
    "archiver": f"{RELEASE}-event-archiver",
    "gateway": f"{RELEASE}-gateway",
}
# Environment variables outside AGENTBUS_* that our containers may get: OpenTelemetry's.
STANDARD_ENV = re.compile(r"^OTEL_[A-Z0-9_]+$")

# The custom resources we render have no schema in kubernetes-validate: their required
# structure (from the KEDA and Prometheus Operator CRDs) is checked here.
_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_SCRAPE_ENDPOINT = {
    "type": "object",
    "required": ["port"],
    "properties": {
        "port": {"type": "string"},
        "path": {"type": "string"},
        "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
        "honorLabels": {"type": "boolean"},
    },
    "additionalProperties": False,
}
"""One scrape endpoint of a PodMonitor or a ServiceMonitor (same fields in both)."""
_SELECTOR = {
    "type": "object",
    "properties": {"matchLabels": _STR_MAP, "matchExpressions": {"type": "array"}},
    "additionalProperties": False,
}
_CRD_SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("monitoring.coreos.com/v1", "PrometheusRule"): {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "spec": {
                "type": "object",
                "required": ["groups"],
                "additionalProperties": False,
                "properties": {
                    "groups": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["name", "rules"],
                            "additionalProperties": False,
                            "properties": {
                                "name": {"type": "string"},
                                "rules": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "required": ["alert", "expr"],
                                        "additionalProperties": False,
                                        "properties": {
                                            "alert": {"type": "string"},
                                            "expr": {"type": "string"},
                                            "for": {"type": "string"},
                                            "labels": _STR_MAP,
                                            "annotations": _STR_MAP,
                                        },
                                    },
                                },
                            },
                        },
                    }
                },
            }
        },
    },
    ("keda.sh/v1alpha1", "ScaledObject"): {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "spec": {
                "type": "object",
                "required": ["scaleTargetRef", "triggers"],
                "additionalProperties": False,
                "properties": {
                    "scaleTargetRef": {
                        "type": "object",
                        "required": ["name"],
                        "properties": {
                            "name": {"type": "string"},
                            "kind": {"type": "string"},
                            "apiVersion": {"type": "string"},
                        },
                        "additionalProperties": False,
                    },
                    "minReplicaCount": {"type": "integer", "minimum": 0},
                    "maxReplicaCount": {"type": "integer", "minimum": 1},
                    "pollingInterval": {"type": "integer"},
                    "cooldownPeriod": {"type": "integer"},
                    "triggers": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["type", "metadata"],
                            "properties": {"type": {"type": "string"}, "metadata": _STR_MAP},
                        },
                    },
                },
            }
        },
    },
    ("monitoring.coreos.com/v1", "PodMonitor"): {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "spec": {
                "type": "object",
                "required": ["selector", "podMetricsEndpoints"],
                "additionalProperties": False,
                "properties": {
                    "selector": _SELECTOR,
                    "podTargetLabels": {"type": "array", "items": {"type": "string"}},
                    "podMetricsEndpoints": {
                        "type": "array",
                        "minItems": 1,
                        "items": _SCRAPE_ENDPOINT,
                    },
                },
            }
        },
    },
    ("monitoring.coreos.com/v1", "ServiceMonitor"): {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "spec": {
                "type": "object",
                "required": ["selector", "endpoints"],
                "additionalProperties": False,
                "properties": {
                    "selector": _SELECTOR,
                    "podTargetLabels": {"type": "array", "items": {"type": "string"}},
                    "endpoints": {
                        "type": "array",
                        "minItems": 1,
                        "items": _SCRAPE_ENDPOINT,
                    },
                },
            }
        },
    },
}


def _deployment(r: Rendered, service: str) -> dict[str, Any]:
    return r.named("Deployment", SERVICE_DEPLOYMENTS[service])


def _pod_labels(obj: dict[str, Any]) -> dict[str, str]:
    if obj["kind"] == "Pod":
        return dict(obj["metadata"].get("labels") or {})
    return dict(obj["spec"]["template"]["metadata"].get("labels") or {})


# --- lint and schema -------------------------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_lint_is_clean(chart_dir: Path, scenario: str, kube_version: str) -> None:
    import helm_python as helm

    report = helm.lint(
        chart_dir,
        load_values(scenario),
        strict=True,
        with_subcharts=True,
        namespace=NAMESPACE,
        kube_version=f"v{kube_version}",
    )
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert problems == [] and report["errors"] == [], report
    infos = {m["error"] for m in report["messages"]}
    assert infos == set(), infos  # not even "icon is recommended"


def test_every_scenario_is_present() -> None:
    assert set(SCENARIOS) >= {
        "default",
        "autoscaling-hpa",
        "autoscaling-keda",
        "nats-cluster",
        "external-nats",
    }


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ({"wroker": {"replicas": 3}}, "wroker"),
        ({"worker": {"replicas": "three"}}, "replicas"),
        ({"logLevel": "CHATTY"}, "logLevel"),
        ({"http": {"port": 70000}}, "port"),
        ({"worker": {"summarizer": {"backend": "gpt"}}}, "backend"),
        ({"settings": {"Worker": {"concurrency": 2}}}, "Worker"),
        ({"image": {"digest": "latest"}}, "digest"),
    ],
)
def test_schema_rejects_bad_values(chart_dir: Path, values: dict[str, Any], needle: str) -> None:
    import helm_python as helm

    with helm.Chart.load(chart_dir) as chart, pytest.raises(helm.HelmValuesError) as e:
        chart.validate_schema(values)
    assert needle in str(e.value)


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        (
            {"worker": {"autoscaling": {"enabled": True}, "keda": {"enabled": True}}},
            "exclusive",
        ),
        ({"archiver": {"replicas": 2}}, "shared database"),
        ({"nats": {"enabled": False}}, "externalNats.url is required"),
        ({"topology": {"replicas": 3}}, "needs a NATS cluster"),
        (
            {"metrics": {"podMonitor": {"enabled": True}, "serviceMonitor": {"enabled": True}}},
            "pick one",
        ),
        (
            {
                "nats": {"enabled": False},
                "externalNats": {"url": "nats://n:4222"},
                "worker": {"keda": {"enabled": True}},
            },
            "monitoringEndpoint is required",
        ),
    ],
)
def test_contradictory_values_fail_with_a_clear_message(
    chart_dir: Path, values: dict[str, Any], needle: str
) -> None:
    import helm_python as helm

    with pytest.raises(helm.HelmError) as e:
        render(chart_dir, values)
    assert needle in str(e.value)


# --- Kubernetes object schemas -----------------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_every_object_is_valid(rendered: RenderFn, scenario: str, kube_version: str) -> None:
    import jsonschema
    import kubernetes_validate.utils as kv

    r = rendered(scenario)
    assert len(r.objects) >= 10
    checked = 0
    for obj, source in zip(r.objects, r.sources, strict=True):
        crd = _CRD_SCHEMAS.get((obj["apiVersion"], obj["kind"]))
        if crd is not None:
            jsonschema.validate(obj, crd)
            checked += 1
            continue
        try:
            kv.validate(obj, kube_version, strict=True)
        except kv.ValidationError as e:
            where = ".".join(str(p) for p in e.path)
            pytest.fail(
                f"{source}: {obj['kind']}/{obj['metadata']['name']} at {where}: {e.message}"
            )
        except kv.SchemaNotFoundError as e:
            pytest.fail(f"{source}: {e.message}")
        checked += 1
        # metadata the schema leaves loose
        name = obj["metadata"]["name"]
        assert re.fullmatch(
            r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*", name
        )
        assert len(name) <= 63, name
    assert checked == len(r.objects)


# --- selectors ---------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_selectors_match_pod_labels(rendered: RenderFn, scenario: str) -> None:
    r = rendered(scenario)
    deployments = r.of_kind("Deployment")
    ours = [d for d in deployments if d["metadata"]["name"] in SERVICE_DEPLOYMENTS.values()]
    assert len(ours) == 4
    for d in deployments:
        assert labels_match(d["spec"]["selector"], _pod_labels(d)), d["metadata"]["name"]
    # each of our selectors picks exactly one workload's pods, and never NATS pods
    workloads = [o for o in r.objects if o["kind"] in ("Deployment", "Job", "Pod")]
    for d in ours:
        hits = [w for w in workloads if labels_match(d["spec"]["selector"], _pod_labels(w))]
        assert hits == [d], d["metadata"]["name"]
    for svc in r.of_kind("Service"):
        selector = {"matchLabels": svc["spec"]["selector"]}
        hits = [w for w in workloads if labels_match(selector, _pod_labels(w))]
        if svc["metadata"]["name"].startswith(f"{RELEASE}-nats"):
            assert hits == []  # the NATS chart's pods (not rendered by the stand-in)
        else:
            assert len(hits) == 1, svc["metadata"]["name"]
            ports = {p["name"] for c in hits[0]["spec"]["template"]["spec"]["containers"]
                     for p in c.get("ports", [])}  # fmt: skip
            assert {p["targetPort"] for p in svc["spec"]["ports"]} <= ports
    for pdb in r.of_kind("PodDisruptionBudget"):
        hits = [d for d in deployments if labels_match(pdb["spec"]["selector"], _pod_labels(d))]
        assert len(hits) == 1, pdb["metadata"]["name"]
    for pm in r.of_kind("PodMonitor"):
        if pm["metadata"]["name"].endswith("-nats"):
            continue  # the NATS chart's pods (not rendered by the stand-in)
        hits = [w for w in workloads if labels_match(pm["spec"]["selector"], _pod_labels(w))]
        assert sorted(h["metadata"]["name"] for h in hits) == sorted(
            d["metadata"]["name"] for d in ours
        )
    for sm in r.of_kind("ServiceMonitor"):
        hits = [
            s for s in r.of_kind("Service")
            if labels_match(sm["spec"]["selector"], s["metadata"].get("labels") or {})
        ]  # fmt: skip
        assert len(hits) == len(ours)
    for np in r.of_kind("NetworkPolicy"):
        hits = [w for w in workloads if labels_match(np["spec"]["podSelector"], _pod_labels(w))]
        # every workload but the hook Job writing the NATS auth Secret (it talks to the
        # Kubernetes API, whose address the policy cannot know)
        policed = [
            w for w in workloads
            if _pod_labels(w).get("app.kubernetes.io/component") != "nats-auth"
        ]  # fmt: skip
        assert len(hits) == len(policed)
    for scaler in [*r.of_kind("HorizontalPodAutoscaler"), *r.of_kind("ScaledObject")]:
        target = scaler["spec"]["scaleTargetRef"]["name"]
        assert target in (SERVICE_DEPLOYMENTS["worker"], SERVICE_DEPLOYMENTS["gateway"])


# --- env ---------------------------------------------------------------------------------


def _env_problems(r: Rendered, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Env vars of our containers that are not settings, duplicated, or invalid values."""
    from agentbus.contract.errors import ConfigError

    known = env_var_names()
    problems: list[str] = []
    for owner, c in r.our_containers():
        where = f"{owner['kind']}/{owner['metadata']['name']}"
        names = [e["name"] for e in c.get("env", [])]
        if len(names) != len(set(names)):
            problems.append(f"{where}: duplicate env names")
        unknown = [n for n in names if n not in known and not STANDARD_ENV.match(n)]
        if unknown:
            problems.append(f"{where}: not settings: {unknown}")
        # ...and the values are valid: the service would start with them
        for name in list(os.environ):
            if name.startswith("AGENTBUS_"):
                monkeypatch.delenv(name)
        for name, var in env_of(c).items():
            if "value" in var:
                value = var["value"]
            elif "fieldRef" in var.get("valueFrom", {}):
                assert var["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
                value = "agentbus-summarize-worker-7d9f8c6b5-x2x4q"
            else:
                secret = var["valueFrom"]["secretKeyRef"]
                assert secret["name"] and secret["key"]
                value = (
                    "postgresql+asyncpg://u:p@db/agentbus"
                    if name.endswith("DATABASE_URL")
                    else "from-a-secret"
                )
            monkeypatch.setenv(name, value)
        try:
            load_settings()
        except ConfigError as e:
            problems.append(f"{where}: {e}")
    return problems


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_env_var_is_a_real_setting(
    rendered: RenderFn, scenario: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = rendered(scenario)
    assert len(list(r.our_containers())) == 6  # 4 services, the Job, the helm test Pod
    assert _env_problems(r, monkeypatch) == []


@pytest.mark.parametrize(
    ("settings", "needle"),
    [
        ({"worker": {"concurrancy": 2}}, "AGENTBUS_WORKER__CONCURRANCY"),
        ({"worker": {"concurrency": 0}}, "AGENTBUS_WORKER__CONCURRENCY"),
        ({"topology": {"storage": "tape"}}, "AGENTBUS_TOPOLOGY__STORAGE"),
    ],
)
def test_env_check_catches_what_the_schema_lets_through(
    chart_dir: Path, monkeypatch: pytest.MonkeyPatch, settings: dict[str, Any], needle: str
) -> None:
    """The values schema takes any snake_case setting name: this check is the real one."""
    problems = _env_problems(render(chart_dir, {"settings": settings}), monkeypatch)
    assert problems and all(needle in p for p in problems), problems


def test_agent_id_is_the_pod_name(rendered: RenderFn) -> None:
    for owner, c in rendered("default").our_containers():
        var = env_of(c)["AGENTBUS_AGENT_ID"]
        assert var["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name", owner["kind"]


def test_settings_maps_become_env(rendered: RenderFn) -> None:
    r = rendered("external-nats")
    worker = env_of(_deployment(r, "worker")["spec"]["template"]["spec"]["containers"][0])
    assert worker["AGENTBUS_WORKER__BACKOFF_S"]["value"] == "[1,5,30]"
    assert worker["AGENTBUS_LIMITS__MAX_DOCUMENT_BYTES"]["value"] == "16777216"
    assert worker["AGENTBUS_SUMMARIZER__OPENAI_TIMEOUT_S"]["value"] == "120"
    assert worker["AGENTBUS_SUMMARIZER__BACKEND"]["value"] == "openai"
    assert worker["AGENTBUS_SUMMARIZER__OPENAI_API_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "agentbus-openai",
        "key": "api-key",
    }
    orch = env_of(_deployment(r, "orchestrator")["spec"]["template"]["spec"]["containers"][0])
    assert "AGENTBUS_SUMMARIZER__OPENAI_TIMEOUT_S" not in orch  # worker-only setting


def test_nats_credentials_per_service(rendered: RenderFn) -> None:
    r = rendered("external-nats")
    for service, secret in (
        ("orchestrator", "agentbus-nats-orchestrator"),
        ("worker", "agentbus-nats-worker"),
        ("archiver", "agentbus-nats-archiver"),
    ):
        c = _deployment(r, service)["spec"]["template"]["spec"]["containers"][0]
        env = env_of(c)
        for name, key in (("AGENTBUS_NATS__USER", "user"), ("AGENTBUS_NATS__PASSWORD", "password")):
            assert env[name]["valueFrom"]["secretKeyRef"] == {"name": secret, "key": key}
        assert env["AGENTBUS_NATS__INBOX_PREFIX"]["value"] == f"_INBOX_{service}"
        assert env["AGENTBUS_NATS__TLS_CA_FILE"]["value"] == "/etc/agentbus/nats-tls/ca.crt"
    job = r.of_kind("Job")[0]
    c = job["spec"]["template"]["spec"]["containers"][0]
    env = env_of(c)
    assert "AGENTBUS_NATS__USER" not in env
    creds = env["AGENTBUS_NATS__CREDS_FILE"]["value"]
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert creds == f"{mounts['nats-creds']}/admin.creds"
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert volumes["nats-creds"]["secret"]["secretName"] == "agentbus-nats-admin"
    # the helm test Pod is a client: the default secret
    pod = r.of_kind("Pod")[0]
    env = env_of(pod["spec"]["containers"][0])
    assert env["AGENTBUS_NATS__USER"]["valueFrom"]["secretKeyRef"]["name"] == "agentbus-nats-client"


# --- commands, ports, probes ------------------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_commands_are_real_cli_commands(rendered: RenderFn, scenario: str) -> None:
    import typer.main

    from agentbus.cli.main import app

    group: Any = typer.main.get_command(app)
    expected = {
        "Deployment": {"orchestrator", "worker", "archiver", "gateway"},
        "Job": {"provision"},
    }
    seen: dict[str, set[str]] = {}
    for owner, c in rendered(scenario).our_containers():
        assert c["command"] == ["agentbus"], owner["metadata"]["name"]
        sub = c["args"][0]
        assert sub in group.commands, sub
        options = {o for p in group.commands[sub].params for o in p.opts if o.startswith("--")}
        for arg in c["args"][1:]:
            if arg.startswith("--"):
                assert arg in options, f"{sub} has no option {arg}"
        seen.setdefault(owner["kind"], set()).add(sub)
    assert seen["Deployment"] == expected["Deployment"]
    assert seen["Job"] == expected["Job"]
    assert seen["Pod"] == {"submit"}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_ports_and_probes_are_what_the_services_serve(rendered: RenderFn, scenario: str) -> None:
    r = rendered(scenario)
    for service in SERVICE_DEPLOYMENTS:
        d = _deployment(r, service)
        pod = d["spec"]["template"]
        (c,) = pod["spec"]["containers"]
        env = env_of(c)
        port = int(env["AGENTBUS_HTTP__PORT"]["value"])
        ports = [{"name": "http", "containerPort": port, "protocol": "TCP"}]
        if service == "gateway":  # and its API, on the port its settings name
            api = int(env["AGENTBUS_GATEWAY__PORT"]["value"])
            ports.append({"name": "api", "containerPort": api, "protocol": "TCP"})
        assert c["ports"] == ports
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            get = c[probe]["httpGet"]
            assert get["path"] in HEALTH_PATHS
            assert get["port"] in ("http", port)
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        annotations = pod["metadata"].get("annotations") or {}
        if "prometheus.io/port" in annotations:
            assert int(annotations["prometheus.io/port"]) == port
            assert annotations["prometheus.io/path"] in HEALTH_PATHS
        # SIGTERM: in-flight work gets the grace period, the pod a little more
        grace = float(env["AGENTBUS_WORKER__GRACE_PERIOD_S"]["value"])
        assert pod["spec"]["terminationGracePeriodSeconds"] > grace
    for m in [*r.of_kind("PodMonitor"), *r.of_kind("ServiceMonitor")]:
        if m["metadata"]["name"].endswith("-nats"):
            continue
        for ep in m["spec"].get("podMetricsEndpoints", m["spec"].get("endpoints")):
            assert ep["port"] == "http" and ep["path"] == "/metrics"


def test_helm_test_through_the_gateway(rendered: RenderFn) -> None:
    """With tests.gatewayApiKeySecret, a second `helm test` Pod submits the document
    through the gateway's Service with the mounted key: a real hidden CLI command."""
    import typer.main

    from agentbus.cli.main import app

    r = rendered("gateway")
    assert r.named("Pod", f"{RELEASE}-test-submit")  # beside the one through NATS
    pod = r.named("Pod", f"{RELEASE}-test-gateway")
    (c,) = pod["spec"]["containers"]
    assert c["command"] == ["agentbus"] and c["args"][0] == "gateway-test"
    group: Any = typer.main.get_command(app)
    options = {o for p in group.commands["gateway-test"].params for o in p.opts}
    assert {a for a in c["args"] if a.startswith("--")} <= options
    url = urlsplit(next(a for a in c["args"] if a.startswith("http://")))
    svc = r.named("Service", url.hostname or "")
    (api,) = [p for p in svc["spec"]["ports"] if p["name"] == "api"]
    assert (api["port"], api["targetPort"]) == (url.port, "api")
    key_file = c["args"][c["args"].index("--key-file") + 1]
    (mount,) = [m for m in c["volumeMounts"] if key_file.startswith(m["mountPath"] + "/")]
    (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == mount["name"]]
    secret = r.values["tests"]["gatewayApiKeySecret"]
    assert volume["secret"]["secretName"] == secret["name"]
    assert [i["path"] for i in volume["secret"]["items"]] == [key_file.rsplit("/", 1)[1]]
    assert "helm.sh/hook" in pod["metadata"]["annotations"]
    # without a key Secret (the default), only the test through NATS
    pods = [p["metadata"]["name"] for p in rendered("default").of_kind("Pod")]
    assert pods == [f"{RELEASE}-test-submit"]


# --- scaling -------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_replicas_omitted_when_autoscaled(rendered: RenderFn, scenario: str) -> None:
    r = rendered(scenario)
    worker = _deployment(r, "worker")
    scalers = [
        s for s in [*r.of_kind("HorizontalPodAutoscaler"), *r.of_kind("ScaledObject")]
        if s["spec"]["scaleTargetRef"]["name"] == SERVICE_DEPLOYMENTS["worker"]
    ]  # fmt: skip
    gateway_scaled = r.values.get("gateway", {}).get("autoscaling", {}).get("enabled", False)
    assert ("replicas" in _deployment(r, "gateway")["spec"]) is not gateway_scaled
    if scenario.startswith("autoscaling"):
        assert len(scalers) == 1
        assert "replicas" not in worker["spec"]
    else:
        assert scalers == []
        assert worker["spec"]["replicas"] == r.values.get("worker", {}).get("replicas", 2)
    for service in ("orchestrator", "archiver"):
        assert "replicas" in _deployment(r, service)["spec"]


def test_keda_scales_on_the_workers_consumer_via_the_headless_service(
    rendered: RenderFn,
) -> None:
    r = rendered("autoscaling-keda")
    (so,) = r.of_kind("ScaledObject")
    triggers = so["spec"]["triggers"]
    # one trigger per priority's consumer: a backlog of any priority scales the workers
    assert sorted(t["metadata"]["consumer"] for t in triggers) == sorted(
        task_consumer(subjects.SUMMARIZE_SKILL, p) for p in PRIORITIES
    )
    assert triggers[0]["metadata"]["consumer"] == subjects.workers_consumer("summarize")
    for trigger in triggers:
        assert trigger["type"] == "nats-jetstream"
        assert trigger["metadata"]["stream"] == subjects.TASKS_STREAM
        assert trigger["metadata"]["lagThreshold"] == "16"
    meta = triggers[0]["metadata"]
    host, port = meta["natsServerMonitoringEndpoint"].rsplit(":", 1)
    svc_name, ns = host.split(".")[:2]
    assert ns == NAMESPACE and host.endswith(".svc.cluster.local")
    svc = r.named("Service", svc_name)
    assert svc["spec"]["clusterIP"] == "None"  # headless: KEDA reaches every NATS node
    assert {"name": "monitor", "port": int(port), "targetPort": "monitor"} in svc["spec"]["ports"]


def test_nats_cluster_of_three_with_r3_streams(rendered: RenderFn) -> None:
    r = rendered("nats-cluster")
    assert r.values["nats"]["config"]["cluster"] == {"enabled": True, "replicas": 3}
    for _owner, c in r.our_containers():
        assert env_of(c)["AGENTBUS_TOPOLOGY__REPLICAS"]["value"] == "3"
    assert _deployment(r, "orchestrator")["spec"]["replicas"] == 2


# --- NATS wiring -------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_nats_url_names_the_nats_service(rendered: RenderFn, scenario: str) -> None:
    r = rendered(scenario)
    urls = {env_of(c)["AGENTBUS_NATS__URL"]["value"] for _o, c in r.our_containers()}
    assert len(urls) == 1
    url = urlsplit(urls.pop())
    if r.values.get("nats", {}).get("enabled", True):
        svc = r.named("Service", url.hostname or "")
        assert {"name": "nats", "port": url.port, "targetPort": "nats"} in svc["spec"]["ports"]
    else:
        assert f"{url.scheme}://{url.netloc}" == r.values["externalNats"]["url"]
        assert not [s for s in r.of_kind("Service") if s["metadata"]["name"].endswith("-nats")]


# --- security --------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_pods_are_locked_down(rendered: RenderFn, scenario: str) -> None:
    r = rendered(scenario)
    specs = list(r.pod_specs())
    auth_job = f"{RELEASE}-nats-auth"
    gateway_test = bool(r.values.get("tests", {}).get("gatewayApiKeySecret", {}).get("name"))
    assert len(specs) == 6 + (auth_job in job_secret_names(r)) + gateway_test
    for owner, spec in specs:
        name = owner["metadata"]["name"]
        psc = spec["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["runAsUser"] != 0, name
        assert psc["seccompProfile"] == {"type": "RuntimeDefault"}, name
        # only the Job writing the NATS auth Secret talks to the Kubernetes API, as its own
        # service account (a hook, with a Role limited to that Secret)
        assert spec["automountServiceAccountToken"] is (name == auth_job), name
        if name == auth_job:
            assert spec["serviceAccountName"] == auth_job
        assert not spec.get("hostNetwork") and not spec.get("hostPID"), name
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        assert "emptyDir" in volumes["tmp"], name
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["capabilities"] == {"drop": ["ALL"]}, name
            assert sc.get("privileged", False) is False, name
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            assert mounts["/tmp"] == "tmp", name
            for m in c["volumeMounts"]:
                if volumes[m["name"]].get("secret"):
                    assert m.get("readOnly") is True, name
            assert c["resources"]["limits"]["memory"], name


def test_archiver_keeps_sqlite_on_its_volume(rendered: RenderFn) -> None:
    r = rendered("default")
    d = _deployment(r, "archiver")
    spec = d["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    url = env_of(c)["AGENTBUS_ARCHIVER__DATABASE_URL"]["value"]
    path = url.split(":///", 1)[1]
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert Path(path).parent == Path(mounts["data"])
    volumes = {v["name"]: v for v in spec["volumes"]}
    claim = volumes["data"]["persistentVolumeClaim"]["claimName"]
    pvc = r.named("PersistentVolumeClaim", claim)
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert d["spec"]["strategy"] == {"type": "Recreate"}
    assert d["spec"]["replicas"] == 1
    # with PostgreSQL from a Secret: no volume, no Recreate, more replicas allowed
    ext = rendered("external-nats")
    d = _deployment(ext, "archiver")
    assert d["spec"]["replicas"] == 2 and d["spec"]["strategy"]["type"] == "RollingUpdate"
    assert not ext.of_kind("PersistentVolumeClaim")


def test_network_policy_allows_only_dns_nats_and_listed_egress(rendered: RenderFn) -> None:
    (np,) = rendered("external-nats").of_kind("NetworkPolicy")
    assert np["spec"]["policyTypes"] == ["Ingress", "Egress"]
    ports = [p["port"] for rule in np["spec"]["egress"] for p in rule.get("ports", [])]
    assert ports == [53, 53, 4222, 8000, 5432]
    ingress, api = np["spec"]["ingress"]
    assert ingress["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert ingress["from"]  # only the monitoring namespace may scrape
    assert api["ports"] == [{"port": "api", "protocol": "TCP"}]  # the gateway's API
    assert "from" not in api  # gatewayFrom empty: from anywhere


# --- hooks, tests, dashboards, notes -----------------------------------------------------------


def _hooks(o: dict[str, Any]) -> set[str]:
    ann = o["metadata"].get("annotations") or {}
    return set(filter(None, str(ann.get("helm.sh/hook", "")).split(",")))


def _provision_job(r: Rendered) -> dict[str, Any]:
    (job,) = [
        j for j in r.of_kind("Job") if j["metadata"]["name"].startswith(f"{RELEASE}-provision-")
    ]
    return job


def test_provisioning_job_is_no_hook_and_retries(rendered: RenderFn) -> None:
    """`helm install --wait` / `upgrade --install --atomic`: Helm creates the Job with the
    Deployments and waits for both (a post-install hook would run only after the wait,
    which waits for services that wait for the hook)."""
    job = _provision_job(rendered("default"))
    assert _hooks(job) == set()
    assert job["spec"]["backoffLimit"] >= 3
    (c,) = job["spec"]["template"]["spec"]["containers"]
    assert c["args"] == ["provision"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "OnFailure"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_nothing_the_pods_need_comes_from_a_later_hook(rendered: RenderFn, scenario: str) -> None:
    """What a pod of the release mounts or reads (ConfigMaps, Secrets, claims, service
    accounts) is a resource of the release or made by a pre-install hook, never by a
    post-install/post-upgrade hook, which Helm runs only after its --wait; and no hook but
    the tests runs after install or upgrade at all."""
    r = rendered(scenario)
    for o in r.objects:
        assert not _hooks(o) & {"post-install", "post-upgrade"}, o["metadata"]["name"]
    available: set[tuple[str, str]] = {
        (o["kind"], o["metadata"]["name"])
        for o in r.objects
        if not _hooks(o) or "pre-install" in _hooks(o)
    }
    available |= {("Secret", n) for n in job_secret_names(r)}  # its Job: pre-install
    for owner, spec in r.pod_specs():
        if _hooks(owner):
            continue
        need: set[tuple[str, str]] = set()
        for v in spec.get("volumes", []):
            if "configMap" in v:
                need.add(("ConfigMap", v["configMap"]["name"]))
            if "secret" in v:
                need.add(("Secret", v["secret"]["secretName"]))
            if "persistentVolumeClaim" in v:
                need.add(("PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"]))
        if spec.get("serviceAccountName", "default") != "default":
            need.add(("ServiceAccount", spec["serviceAccountName"]))
        for c in spec["containers"]:
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    need.add(("Secret", ref["name"]))
        external = {("Secret", n) for n in _operator_secrets(r.values)}
        missing = need - available - external
        assert not missing, (owner["metadata"]["name"], missing)


def _operator_secrets(values: Any) -> set[str]:
    """Secrets the operator creates: every existingSecret / apiKeySecret.name in values."""
    found: set[str] = set()
    if isinstance(values, dict):
        for key, val in values.items():
            if key == "existingSecret" and val:
                found.add(str(val))
            elif key == "apiKeySecret" and isinstance(val, dict) and val.get("name"):
                found.add(str(val["name"]))
            else:
                found |= _operator_secrets(val)
    elif isinstance(values, list):
        for val in values:
            found |= _operator_secrets(val)
    return found


def test_provisioning_job_name_follows_its_spec(chart_dir: Path, rendered: RenderFn) -> None:
    """A Job's pod template is immutable: an upgrade that changes it gets a new Job (Helm
    deletes the old one); the same values keep the same name (GitOps: no drift)."""
    name = _provision_job(rendered("default"))["metadata"]["name"]
    assert _provision_job(render(chart_dir, {}))["metadata"]["name"] == name
    changed = _provision_job(render(chart_dir, {"topology": {"maxDeliver": 7}}))
    assert changed["metadata"]["name"] != name
    assert len(changed["metadata"]["name"]) <= 63
    long = render(chart_dir, {}, release="a" * 53)
    assert all(len(j["metadata"]["name"]) <= 63 for j in long.of_kind("Job"))


def test_helm_test_submits_the_mounted_document(rendered: RenderFn) -> None:
    r = rendered("default")
    (pod,) = r.of_kind("Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    (c,) = pod["spec"]["containers"]
    document = Path(c["args"][-1])
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert document.parent == Path(mounts["document"])
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    cm = r.named("ConfigMap", volumes["document"]["configMap"]["name"])
    assert cm["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert int(cm["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(
        pod["metadata"]["annotations"].get("helm.sh/hook-weight", "0")
    )
    assert len(cm["data"][document.name]) > 200


def test_dashboard_configmap_holds_every_dashboard(rendered: RenderFn) -> None:
    files = sorted((CHART_DIR / "dashboards").glob("*.json"))
    configmaps = [
        c for c in rendered("default").of_kind("ConfigMap")
        if c["metadata"]["name"] == f"{RELEASE}-dashboards"
    ]  # fmt: skip
    if not files:
        assert configmaps == []
        return
    (cm,) = configmaps
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert sorted(cm["data"]) == [f.name for f in files]
    for f in files:
        assert cm["data"][f.name] == f.read_text()
        assert json.loads(cm["data"][f.name])["panels"]
    assert len(json.dumps(cm["data"])) < 1024 * 1024  # the ConfigMap size limit


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_notes_render(rendered: RenderFn, scenario: str) -> None:
    notes = rendered(scenario).notes
    assert SERVICE_DEPLOYMENTS["worker"] in notes
    assert "helm test" in notes


def test_release_name_containing_the_chart_name(chart_dir: Path) -> None:
    r = render(chart_dir, {}, release="agentbus-prod")
    names = {d["metadata"]["name"] for d in r.of_kind("Deployment")}
    assert names == {
        "agentbus-prod-orchestrator",
        "agentbus-prod-summarize-worker",
        "agentbus-prod-event-archiver",
        "agentbus-prod-gateway",
    }
    url = env_of(next(c for _o, c in r.our_containers()))["AGENTBUS_NATS__URL"]["value"]
    r.named("Service", urlsplit(url).hostname or "")


def test_image_tag_and_digest(chart_dir: Path) -> None:
    digest = "sha256:" + "a" * 64
    r = render(chart_dir, {"image": {"repository": "agentbus", "tag": "e2e"}})
    assert {c["image"] for _o, c in r.our_containers()} == {"agentbus:e2e"}
    values = copy.deepcopy({"image": {"repository": "agentbus", "digest": digest}})
    r = render(chart_dir, values)
    assert {c["image"] for _o, c in r.our_containers()} == {f"agentbus@{digest}"}


def test_image_env_is_real_settings() -> None:
    from tests.chart.render import image_env

    env = image_env()
    ours = {k for k in env if k.startswith("AGENTBUS_")}
    assert ours and ours <= env_var_names()
    assert env["PATH"].startswith("/opt/agentbus/bin:")


def test_image_registry_and_pull_secrets_reach_every_pod_of_ours(chart_dir: Path) -> None:
    r = render(
        chart_dir,
        {
            "image": {"registry": "registry.example.com/", "tag": "1.2.3"},
            "imagePullSecrets": [{"name": "regcred"}, "other"],
            "global": {
                "image": {"registry": "mirror.example.com", "pullSecretNames": ["other", "g"]}
            },
        },
    )
    owners = {(o["kind"], o["metadata"]["name"]) for o, _c in r.our_containers(with_auth_job=True)}
    assert len(owners) == 7  # 4 Deployments, provisioning and auth Jobs, the test Pod
    for _o, c in r.our_containers(with_auth_job=True):
        assert c["image"] == "registry.example.com/agentbus:1.2.3"
    for owner, spec in r.pod_specs():
        names = [s["name"] for s in spec["imagePullSecrets"]]
        assert names == ["regcred", "other", "g"], owner["metadata"]["name"]
    # the global registry (the NATS chart's setting) when ours is not set
    r = render(chart_dir, {"global": {"image": {"registry": "mirror.example.com"}}})
    assert {c["image"] for _o, c in r.our_containers(with_auth_job=True)} == {
        "mirror.example.com/agentbus:0.1.0"
    }
    assert all("imagePullSecrets" not in spec for _o, spec in render(chart_dir, {}).pod_specs())


def test_network_policy_follows_the_nats_port(chart_dir: Path) -> None:
    def nats_ports(values: dict[str, Any]) -> list[int]:
        (np,) = render(chart_dir, {"networkPolicy": {"enabled": True}, **values}).of_kind(
            "NetworkPolicy"
        )
        (rule,) = [
            e
            for e in np["spec"]["egress"]
            if e.get("to") or 53 not in [p["port"] for p in e["ports"]]
        ][:1]
        return [p["port"] for p in rule["ports"]]

    assert nats_ports({}) == [4222]
    assert nats_ports({"nats": {"config": {"nats": {"port": 4333}}}}) == [4333]
    external = {"nats": {"enabled": False}, "natsAuth": {"enabled": False}}
    url = "nats://a.example:4444, tls://b.example:4445,nats://c.example"
    assert nats_ports({**external, "externalNats": {"url": url}}) == [4444, 4445, 4222]


def test_spread_constraints_select_the_services_own_pods(rendered: RenderFn) -> None:
    r = rendered("nats-cluster")
    spec = _deployment(r, "orchestrator")["spec"]["template"]["spec"]
    (c,) = spec["topologySpreadConstraints"]
    assert c["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == "orchestrator"
    assert labels_match(c["labelSelector"], _pod_labels(_deployment(r, "orchestrator")))


def test_network_policy_leaves_the_auth_job_its_api_server(chart_dir: Path) -> None:
    """The NetworkPolicy exists during an upgrade, when the NATS auth hook Job runs again:
    it must not select that pod (egress to the Kubernetes API), and selects all others."""
    r = render(chart_dir, {"networkPolicy": {"enabled": True}})
    (np,) = r.of_kind("NetworkPolicy")
    selected = {
        o["metadata"]["name"]
        for o, _spec in r.pod_specs()
        if labels_match(np["spec"]["podSelector"], _pod_labels(o))
    }
    names = {o["metadata"]["name"] for o, _spec in r.pod_specs()}
    assert names - selected == {f"{RELEASE}-nats-auth"}
