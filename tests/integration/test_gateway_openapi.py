"""schemathesis against the gateway's own OpenAPI document (`/openapi.json`), with the
stack running as processes (`Stack(gateway=True)`: nats-server, orchestrator, a worker,
the archiver, the gateway): for every operation, generated requests get no 5xx, and
every response (status, content type, body) matches the document."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from agentbus.dev.stack import Stack, free_port
from agentbus_gateway.openapi import openapi_document

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

KEY = "schemathesis-operate-key-0123"
schema = schemathesis.openapi.from_dict(openapi_document())


@pytest.fixture(scope="module")
def gateway_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data = tmp_path_factory.mktemp("gateway-openapi")
    keys = data / "keys.json"
    keys.write_text(json.dumps({"keys": [{"key": KEY, "tenant": "default", "role": "operate"}]}))
    stack = Stack(
        data_dir=data / "stack", workers=1, gateway=True, gateway_port=free_port(),
        env={"AGENTBUS_GATEWAY__API_KEYS_FILE": str(keys), "AGENTBUS_LOG_FORMAT": "text"},
    )  # fmt: skip
    with stack:
        assert stack.gateway_url is not None
        yield stack.gateway_url


def test_the_served_document_is_the_one_tested(gateway_url: str, tmp_path: Path) -> None:
    with urllib.request.urlopen(gateway_url + "/openapi.json", timeout=10) as r:
        assert json.loads(r.read()) == openapi_document()


def test_the_helm_test_command_through_the_gateway(gateway_url: str, tmp_path: Path) -> None:
    """`agentbus gateway-test` (the chart's helm test Pod through the REST API)."""
    key_file = tmp_path / "api-key"
    key_file.write_text(KEY + "\n")
    doc = tmp_path / "document.txt"
    doc.write_text("The river floods the delta every spring. " * 60)
    argv = [sys.executable, "-m", "agentbus", "gateway-test", "--key-file", str(key_file)]
    done = subprocess.run(
        [*argv, "--timeout", "60", gateway_url, str(doc)],
        capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (record,) = json.loads(done.stdout)
    assert record["status"] == "completed" and record["summary"]
    key_file.write_text("not-a-key-0123456789")
    refused = subprocess.run(
        [*argv, "--timeout", "5", gateway_url, str(doc)], capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: POST ") and " 401 " in refused.stderr


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_api_conforms_to_its_openapi_document(
    case: schemathesis.Case[Any], gateway_url: str
) -> None:
    response = case.call(
        base_url=gateway_url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30
    )
    assert response.status_code < 500, (case.method, case.formatted_path, response.text[:500])
    case.validate_response(
        response,
        checks=[status_code_conformance, content_type_conformance, response_schema_conformance],
    )
