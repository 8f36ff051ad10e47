"""skaffold.yaml agrees with the Dockerfile and the chart: the image it builds is the one the
chart deploys, the values it sets exist and render, the kind profile targets a kind context."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.render import CHART_DIR, REPO_ROOT, render

pytestmark = pytest.mark.chart


def _skaffold() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((REPO_ROOT / "skaffold.yaml").read_text())
    return loaded


def _nested(dotted: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in dotted.items():
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def test_builds_the_image_the_chart_deploys() -> None:
    cfg = _skaffold()
    assert cfg["apiVersion"] == "skaffold/v4beta14"
    (artifact,) = cfg["build"]["artifacts"]
    chart_values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    assert artifact["image"] == chart_values["image"]["repository"]
    assert artifact["docker"]["dockerfile"] == "Dockerfile"
    declared = set(re.findall(r"^ARG (\w+)", (REPO_ROOT / "Dockerfile").read_text(), re.M))
    assert set(artifact["docker"].get("buildArgs", {})) <= declared
    assert cfg["build"]["local"]["push"] is False
    (release,) = cfg["manifests"]["helm"]["releases"]
    assert (REPO_ROOT / release["chartPath"]).resolve() == CHART_DIR
    templates = release["setValueTemplates"]
    assert templates["image.repository"] == "{{.IMAGE_REPO_agentbus}}"
    assert templates["image.tag"] == "{{.IMAGE_TAG_agentbus}}"


def test_kind_profile_values_render(chart_dir: Path) -> None:
    cfg = _skaffold()
    (profile,) = [p for p in cfg["profiles"] if p["name"] == "kind"]
    contexts = [a["kubeContext"] for a in profile["activation"]]
    assert contexts and all(c.startswith("kind-") for c in contexts)
    assert profile["deploy"]["kubeContext"] in contexts
    (patch,) = profile["patches"]
    assert patch["path"] == "/manifests/helm/releases/0/setValues"
    (release,) = cfg["manifests"]["helm"]["releases"]
    # what skaffold passes: the built image's repository and tag, then the profile's values
    templates = release["setValueTemplates"]
    image = {"image.repository": "agentbus", "image.tag": "a1b2c3d4e5f6"}
    values = _nested({**templates, **image, **patch["value"]})
    r = render(chart_dir, values)
    worker = r.named("Deployment", "agentbus-summarize-worker")
    assert worker["spec"]["replicas"] == patch["value"]["worker.replicas"]
    assert {c["image"] for _o, c in r.our_containers()} == {"agentbus:a1b2c3d4e5f6"}
    pvc = r.named("PersistentVolumeClaim", "agentbus-event-archiver")
    assert pvc["spec"]["resources"]["requests"]["storage"] == "256Mi"
