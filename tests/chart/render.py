"""Render charts/agentbus with the real Helm engine (helm-python-sdk, Helm v4 as a library).

The official NATS chart (dependency `nats`) cannot be downloaded here, so the chart is
copied to a temporary directory and a small stand-in for it is written to its `charts/`:
two Services named by the real chart's naming rule (`<release>-nats` with the client
port, `<release>-nats-headless` with the client and monitoring ports). That is enough for
`helm lint` (dependencies present) and for checking that the URLs our containers use name
Services that the NATS chart really creates.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml

REPO_ROOT: Final = Path(__file__).resolve().parents[2]
CHART_DIR: Final = REPO_ROOT / "charts" / "agentbus"
CI_VALUES: Final = sorted(CHART_DIR.glob("ci/*-values.yaml"))
SCENARIOS: Final = [p.name.removesuffix("-values.yaml") for p in CI_VALUES]
RELEASE: Final = "agentbus"
NAMESPACE: Final = "agentbus-test"
# Two recent Kubernetes versions shipped by kubernetes-validate.
KUBE_VERSIONS: Final = ("1.36.0", "1.37.0")
# Our own containers are recognized by their image repository.
IMAGE_REPOSITORY: Final = "agentbus"

NATS_STUB_VERSION: Final = "2.14.2"
_NATS_STUB_CHART: Final = f"""apiVersion: v2
name: nats
description: Test stand-in for the official NATS chart (Services only).
version: {NATS_STUB_VERSION}
appVersion: {NATS_STUB_VERSION}
icon: https://nats.io/img/nats-icon-color.png
"""
_NATS_STUB_VALUES: Final = """config:
  nats:
    port: 4222
  monitor:
    enabled: true
    port: 8222
  cluster:
    enabled: false
    replicas: 3
service:
  name:
headlessService:
  name:
nameOverride:
fullnameOverride:
"""
# The real chart's naming rule (nats.fullname in its _helpers.tpl), re-stated.
_NATS_STUB_TEMPLATE: Final = """{{- $name := default .Chart.Name .Values.nameOverride }}
{{- $full := "" }}
{{- if .Values.fullnameOverride }}
{{- $full = .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains $name .Release.Name }}
{{- $full = .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $full = printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
apiVersion: v1
kind: Service
metadata:
  name: {{ .Values.service.name | default $full }}
  labels:
    app.kubernetes.io/name: {{ $name }}
    app.kubernetes.io/instance: {{ .Release.Name }}
    app.kubernetes.io/component: nats
spec:
  selector:
    app.kubernetes.io/name: {{ $name }}
    app.kubernetes.io/instance: {{ .Release.Name }}
    app.kubernetes.io/component: nats
  ports:
    - name: nats
      port: {{ .Values.config.nats.port }}
      targetPort: nats
---
apiVersion: v1
kind: Service
metadata:
  name: {{ .Values.headlessService.name | default (printf "%s-headless" $full) }}
  labels:
    app.kubernetes.io/name: {{ $name }}
    app.kubernetes.io/instance: {{ .Release.Name }}
    app.kubernetes.io/component: nats
spec:
  clusterIP: None
  publishNotReadyAddresses: true
  selector:
    app.kubernetes.io/name: {{ $name }}
    app.kubernetes.io/instance: {{ .Release.Name }}
    app.kubernetes.io/component: nats
  ports:
    - name: nats
      port: {{ .Values.config.nats.port }}
      targetPort: nats
    - name: monitor
      port: {{ .Values.config.monitor.port }}
      targetPort: monitor
"""


def prepare_chart(dest: Path) -> Path:
    """A copy of the chart with the NATS stand-in in its charts/ directory."""
    chart = dest / "agentbus"
    shutil.copytree(CHART_DIR, chart, ignore=shutil.ignore_patterns("charts", "*.tgz"))
    stub = chart / "charts" / "nats"
    (stub / "templates").mkdir(parents=True)
    (stub / "Chart.yaml").write_text(_NATS_STUB_CHART)
    (stub / "values.yaml").write_text(_NATS_STUB_VALUES)
    (stub / "templates" / "services.yaml").write_text(_NATS_STUB_TEMPLATE)
    return chart


def load_values(scenario: str) -> dict[str, Any]:
    path = CHART_DIR / "ci" / f"{scenario}-values.yaml"
    loaded = yaml.safe_load(path.read_text())
    return dict(loaded or {})


@dataclass
class Rendered:
    """The objects of one rendered release, with the template each came from."""

    objects: list[dict[str, Any]]
    sources: list[str]
    notes: str
    values: dict[str, Any] = field(default_factory=dict)

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def named(self, kind: str, name: str) -> dict[str, Any]:
        for o in self.of_kind(kind):
            if o["metadata"]["name"] == name:
                return o
        raise AssertionError(f"no {kind} named {name} in {[o['kind'] for o in self.objects]}")

    def pod_specs(self) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        """(owner object, pod spec) of every Deployment, Job and Pod."""
        for o in self.objects:
            if o["kind"] in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
                yield o, o["spec"]["template"]["spec"]
            elif o["kind"] == "Pod":
                yield o, o["spec"]

    def our_containers(self) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        """(owner object, container) of every agentbus container (by image)."""
        for owner, spec in self.pod_specs():
            for c in [*spec.get("initContainers", []), *spec["containers"]]:
                if c["image"].split("@")[0].rsplit(":", 1)[0] == IMAGE_REPOSITORY:
                    yield owner, c


def render(
    chart_dir: Path,
    values: dict[str, Any],
    *,
    release: str = RELEASE,
    namespace: str = NAMESPACE,
) -> Rendered:
    """Render like `helm install` (schema-validated) and parse every manifest."""
    import helm_python as helm

    with helm.Chart.load(chart_dir) as chart:
        chart.validate_schema(values)
        manifests = chart.render(values, name=release, namespace=namespace, is_install=True)
    objects: list[dict[str, Any]] = []
    sources: list[str] = []
    notes = ""
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                objects.append(doc)
                sources.append(path)
    return Rendered(objects=objects, sources=sources, notes=notes, values=values)


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """name -> EnvVar of a container."""
    return {e["name"]: e for e in container.get("env", [])}


def labels_match(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A LabelSelector (matchLabels + matchExpressions) against a label set."""
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, vals = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in vals:
            return False
        if op == "NotIn" and labels.get(key) in vals:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def image_env(dockerfile: Path = REPO_ROOT / "Dockerfile") -> dict[str, str]:
    """The ENV of the Dockerfile's final stage (what every container starts with)."""
    import shlex

    lines: list[str] = []
    pending = ""
    for raw in dockerfile.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    final = max(i for i, line in enumerate(lines) if line.upper().startswith("FROM "))
    env: dict[str, str] = {}
    for line in lines[final:]:
        if line.upper().startswith("ENV "):
            for token in shlex.split(line[4:]):
                key, _, value = token.partition("=")
                env[key] = value
    return env
