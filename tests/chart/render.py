"""Render charts/agentbus with the real Helm engine (helm-python-sdk, Helm v4 as a library).

The official NATS chart (dependency `nats`) cannot be downloaded here, so the chart is
copied to a temporary directory and a small stand-in for it is written to its `charts/`:
two Services named by the real chart's naming rule (`<release>-nats` with the client
port, `<release>-nats-headless` with the client and monitoring ports). That is enough for
`helm lint` (dependencies present) and for checking that the URLs our containers use name
Services that the NATS chart really creates.
"""

from __future__ import annotations

import base64
import copy
import re
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
    first_run_secrets: dict[str, dict[str, str]] = field(default_factory=dict)
    """Secrets written by the hook Job's first run (see secret_data), made once."""

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

    def our_containers(
        self, *, with_auth_job: bool = False, with_gateway_test: bool = False
    ) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        """(owner object, container) of every agentbus container (by image), without the
        hook Job that writes the NATS auth Secret and the `helm test` Pod that goes through
        the gateway's REST API (no NATS client either) unless asked."""
        for owner, spec in self.pod_specs():
            for c in [*spec.get("initContainers", []), *spec["containers"]]:
                command = c.get("args", [""])[0]
                if command == "nats-auth-secret" and not with_auth_job:
                    continue
                if command == "gateway-test" and not with_gateway_test:
                    continue
                repository = c["image"].split("@")[0].rsplit(":", 1)[0]
                if repository.rsplit("/", 1)[-1] == IMAGE_REPOSITORY:
                    yield owner, c


# The custom resources the chart can make, as a cluster with the Prometheus Operator and
# KEDA lists them (.Capabilities.APIVersions, `helm template --api-versions`).
CRD_API_VERSIONS: Final = (
    "monitoring.coreos.com/v1/PodMonitor",
    "monitoring.coreos.com/v1/ServiceMonitor",
    "monitoring.coreos.com/v1/PrometheusRule",
    "keda.sh/v1alpha1/ScaledObject",
)


def render(
    chart_dir: Path,
    values: dict[str, Any],
    *,
    release: str = RELEASE,
    namespace: str = NAMESPACE,
    api_versions: tuple[str, ...] = CRD_API_VERSIONS,
) -> Rendered:
    """Render like `helm install` (schema-validated) into a cluster that serves
    `api_versions` besides the built-in ones, and parse every manifest."""
    import json

    import helm_python as helm
    from helm_python import _native

    opts = {"name": release, "namespace": namespace, "is_install": True}
    with helm.Chart.load(chart_dir) as chart:
        chart.validate_schema(values)
        # Chart.render does not pass the engine's api_versions option (the C SDK's, what
        # `helm template --api-versions` sets): call the same native function with it
        raw = _native.call_string(
            "helm_render",
            chart._raw(),
            json.dumps(values),
            json.dumps({**opts, "api_versions": list(api_versions)}),
        )
        manifests: dict[str, str] = json.loads(raw)
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


def chart_values(values: dict[str, Any]) -> dict[str, Any]:
    """The chart's values.yaml with `values` over it, as Helm coalesces them (maps merged
    key by key, anything else replaced, null deletes)."""

    def merge(base: Any, over: Any) -> Any:
        if isinstance(base, dict) and isinstance(over, dict):
            out = dict(base)
            for key, val in over.items():
                if val is None:
                    out.pop(key, None)
                else:
                    out[key] = merge(base.get(key), val)
            return out
        return copy.deepcopy(over)

    defaults = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    return dict(merge(defaults, values))


def secret_data(r: Rendered, name: str) -> dict[str, str]:
    """key -> decoded value of a Secret of the release: rendered, or written by the
    release's hook Job `agentbus nats-auth-secret` (its first run, see job_secret_data)."""
    if name in job_secret_names(r):
        if name not in r.first_run_secrets:  # one set of generated passwords per release
            r.first_run_secrets[name] = job_secret_data(r, name)
        return dict(r.first_run_secrets[name])
    secret = r.named("Secret", name)
    assert not secret.get("stringData"), name
    return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}


def _job_args(job: dict[str, Any]) -> dict[str, str]:
    (c,) = job["spec"]["template"]["spec"]["containers"]
    if c.get("args", [None])[0] != "nats-auth-secret":
        return {}
    return dict(a.removeprefix("--").partition("=")[::2] for a in c["args"][1:])


def job_secret_names(r: Rendered) -> set[str]:
    """The Secrets that a hook Job of the release writes (`agentbus nats-auth-secret`)."""
    return {args["name"] for job in r.of_kind("Job") if (args := _job_args(job))}


def job_secret_data(
    r: Rendered,
    name: str,
    *,
    current: dict[str, str] | None = None,
    source: dict[str, str] | None = None,
) -> dict[str, str]:
    """What the hook Job writes into Secret `name`, from the files of the ConfigMap it
    mounts, when the Secret holds `current` and natsAuth.passwordsSecret `source`
    (passwords generated as the Job does)."""
    from agentbus.cli.nats_auth_secret import new_password
    from agentbus.contract.nats_auth import auth_secret_data

    (job,) = [j for j in r.of_kind("Job") if _job_args(j).get("name") == name]
    args = _job_args(job)
    spec = job["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == args["files-dir"]]
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    files = r.named("ConfigMap", volume["configMap"]["name"]).get("data") or {}
    assert ("passwords-secret" in args) == (source is not None), args
    return auth_secret_data(
        permissions_json=files.get("nats-permissions.json"),
        auth_file=files.get("nats-auth.conf"),
        current=current or {},
        source=source,
        source_name=args.get("passwords-secret", ""),
        new_password=new_password,
    )


NATS_CONFIG_DIR: Final = "/etc/nats-config"
"""Where the NATS chart mounts nats.conf; its includes are relative to it."""
NATS_AUTH_VOLUME: Final = "agentbus-nats-auth"
_NATS_FULLNAME_TPL: Final = re.compile(r'^\{\{ include "nats\.fullname" \. \}\}([-a-z0-9]*)$')


@dataclass(frozen=True)
class NatsAuthWiring:
    """What the NATS chart does with our values: the files nats.conf includes (relative to
    NATS_CONFIG_DIR), and the Secret volume mounted into its container."""

    includes: list[str]
    mount_path: str
    secret_name: str
    items: dict[str, str]
    """Secret key -> file name under mount_path."""


def nats_fullname(r: Rendered) -> str:
    """The NATS chart's full name, from the headless Service the stand-in renders."""
    (headless,) = [
        s for s in r.of_kind("Service")
        if s["spec"].get("clusterIP") == "None"
        and s["metadata"]["labels"].get("app.kubernetes.io/component") == "nats"
    ]  # fmt: skip
    return str(headless["metadata"]["name"]).removesuffix("-headless")


def nats_auth_wiring(r: Rendered) -> NatsAuthWiring:
    """Read the NATS chart's values the way its templates use them: `config.merge` keys
    ending in `$include` become include directives, `container.patch` and
    `podTemplate.patch` are JSON patches of its container and pod, and `$tplYaml` strings
    are templated in its context (only `{{ include "nats.fullname" . }}<suffix>` here)."""
    nats = chart_values(r.values)["nats"]
    includes = [v for k, v in sorted(nats["config"]["merge"].items()) if k.endswith("$include")]
    mounts = [
        p["value"] for p in nats["container"]["patch"]
        if p["op"] == "add" and p["path"] == "/volumeMounts/-"
        and p["value"]["name"] == NATS_AUTH_VOLUME
    ]  # fmt: skip
    volumes = [
        p["value"] for p in nats["podTemplate"]["patch"]
        if p["op"] == "add" and p["path"] == "/spec/volumes/-"
        and p["value"]["name"] == NATS_AUTH_VOLUME
    ]  # fmt: skip
    assert len(mounts) == 1 and len(volumes) == 1, (mounts, volumes)
    (mount,), (volume,) = mounts, volumes
    assert mount.get("readOnly") is True and "subPath" not in mount, mount
    secret_name = volume["secret"]["secretName"]
    if isinstance(secret_name, dict):
        (template,) = secret_name.values()
        assert list(secret_name) == ["$tplYaml"], secret_name
        m = _NATS_FULLNAME_TPL.match(template.strip())
        assert m, f"unsupported $tplYaml in nats.podTemplate.patch: {template!r}"
        secret_name = nats_fullname(r) + m.group(1)
    items = {i["key"]: i["path"] for i in volume["secret"].get("items", [])}
    return NatsAuthWiring(
        includes=includes, mount_path=mount["mountPath"], secret_name=secret_name, items=items
    )


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


# Helm's chart.Dependency fields in its struct order, with their omitempty flag: Chart.lock's
# digest is sha256 of Go's json.Marshal([requested, locked]) (resolver.HashReq).
_DEPENDENCY_FIELDS: Final = (
    ("name", False),
    ("version", True),
    ("repository", False),
    ("condition", True),
    ("tags", True),
    ("enabled", True),
    ("import-values", True),
    ("alias", True),
)


def _go_json_dependency(dep: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, omitempty in _DEPENDENCY_FIELDS:
        value = dep.get(key, "" if key in ("name", "version", "repository") else None)
        if omitempty and not value:
            continue
        out[key] = value
    return out


def chart_lock_digest(requested: list[dict[str, Any]], locked: list[dict[str, Any]]) -> str:
    """The `digest` Helm writes into Chart.lock (and checks on `helm dependency build`)."""
    import hashlib
    import json

    doc = [[_go_json_dependency(d) for d in requested], [_go_json_dependency(d) for d in locked]]
    data = json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
    # Go escapes <, > and & in JSON strings
    data = data.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return "sha256:" + hashlib.sha256(data.encode()).hexdigest()
