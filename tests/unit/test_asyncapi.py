"""The AsyncAPI 3.0 document: it lists every subject of the `subjects` module, its
references resolve, and real encoded messages validate against its schemas."""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from typer.testing import CliRunner

from agentbus.cli.main import app
from agentbus.contract import subjects
from agentbus.contract.asyncapi import build_asyncapi, render_asyncapi, subject_template
from agentbus.contract.messages import (
    AgentEvent,
    CancelReply,
    CancelRequest,
    Command,
    CommandReply,
    DocumentRef,
    EventKind,
    HistoryQuery,
    HistoryReply,
    JobCanceled,
    JobSubmit,
    Payload,
    SummarizeReply,
    SummarizeRequest,
    TaskAssign,
    TaskResult,
    TokenUsage,
    encode,
)

pytestmark = pytest.mark.unit

NOT_SUBJECTS = {
    "check_token", "check_job_id", "job_id_tenant", "qualify_job_id", "job_id_refusal",
    "tenant_request_refusal",
    "job_state_subject",  # a KV key's subject (the `jobs` bucket is documented), no channel
}  # fmt: skip
"""Helpers of the subjects module that do not make a channel's subject or a name."""


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return build_asyncapi()


def strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield key
            yield from strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value)


def template_regex(template: str) -> re.Pattern[str]:
    parts = re.split(r"(\{[a-z_]+\})", template)
    body = "".join(
        "[A-Za-z0-9_-]+" if p.startswith("{") and p.endswith("}") else re.escape(p) for p in parts
    )
    return re.compile(body)


def templates(doc: dict[str, Any]) -> list[str]:
    found: list[str] = []
    for channel in doc["channels"].values():
        if channel["address"]:
            found.append(channel["address"])
        nats = channel.get("x-nats", {})
        found.extend(nats.get("wildcards", []))
        for key in ("consumer_template", "queue_group_template"):
            if key in nats:
                found.append(nats[key])
    return found


def test_every_subject_of_the_subjects_module_is_documented(doc: dict[str, Any]) -> None:
    everywhere = set(strings(doc))
    patterns = [template_regex(t) for t in templates(doc)]
    checked = 0
    for name in subjects.__all__:
        value = getattr(subjects, name)
        if isinstance(value, str):
            assert value in everywhere, f"subjects.{name} = {value!r} is not in the document"
        elif isinstance(value, tuple):
            for item in value:
                assert item in everywhere, f"subjects.{name} item {item!r} is not in the document"
        elif isinstance(value, re.Pattern):
            assert value.pattern in everywhere, f"subjects.{name} is not in the document"
        elif isinstance(value, int):
            assert value == doc["x-jetstream"]["job_id"]["max_chars"], name  # the one limit
        elif callable(value):
            if name in NOT_SUBJECTS:
                continue
            params = list(inspect.signature(value).parameters)
            made = value(*(f"sample{i}" for i in range(len(params))))
            assert any(p.fullmatch(made) for p in patterns), (
                f"subjects.{name}(...) = {made!r} matches no channel of the document"
            )
        else:
            pytest.fail(f"subjects.{name} is of an unexpected type {type(value).__name__}")
        checked += 1
    assert checked >= 30


def test_channels_come_from_the_subject_functions(doc: dict[str, Any]) -> None:
    addresses = {c["address"] for c in doc["channels"].values()}
    assert subject_template(subjects.task_assign) == "tasks.{skill}.assign"
    assert subject_template(subjects.result_subject) == "results.{job_id}.{task_id}"
    for fn in (
        subjects.task_assign, subjects.result_subject, subjects.agent_events,
        subjects.agent_results, subjects.agent_commands, subjects.dlq_subject,
    ):  # fmt: skip
        assert subject_template(fn) in addresses
    assert {subjects.JOBS_SUBJECT, subjects.RPC_HISTORY, "rpc.{skill}"} <= addresses
    rpc = doc["channels"]["rpcSkill"]["x-nats"]
    assert rpc["queue_group"] == subjects.WORKERS_QUEUE
    assert subjects.RPC_SUMMARIZE in rpc["subjects"]


def resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        assert isinstance(node, dict) and part in node, f"unresolved $ref {ref}"
        node = node[part]
    return node


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def test_structure_and_references(doc: dict[str, Any]) -> None:
    assert doc["asyncapi"] == "3.0.0"
    assert doc["info"]["title"] == "agentbus" and doc["info"]["version"]
    all_refs = list(refs(doc))
    assert len(all_refs) > 50
    for ref in all_refs:
        resolve(doc, ref)
    key = re.compile(r"^[\w.\-]+$")  # AsyncAPI component and channel keys
    for section in ("channels", "operations"):
        assert all(key.match(k) for k in doc[section])
    for section in ("schemas", "messages"):
        assert all(key.match(k) for k in doc["components"][section])
    for name, channel in doc["channels"].items():
        placeholders = set(re.findall(r"\{([a-z_]+)\}", channel["address"] or ""))
        assert set(channel.get("parameters", {})) == placeholders, name
        assert channel["messages"], name
    for name, op in doc["operations"].items():
        assert op["action"] in ("send", "receive"), name
        channel_ref = op["channel"]["$ref"]
        for message in op["messages"]:
            assert message["$ref"].startswith(channel_ref + "/messages/"), name
        if "reply" in op:
            for message in op["reply"]["messages"]:
                assert message["$ref"].startswith(op["reply"]["channel"]["$ref"] + "/messages/")
    # every message is used by an operation, every channel by one
    used_channels = {op["channel"]["$ref"].rsplit("/", 1)[1] for op in doc["operations"].values()}
    used_channels |= {
        op["reply"]["channel"]["$ref"].rsplit("/", 1)[1]
        for op in doc["operations"].values()
        if "reply" in op
    }
    assert used_channels == set(doc["channels"])


def samples() -> list[Payload]:
    sha = "0" * 64
    return [
        JobSubmit(job_id="job-1", text="hello"),
        JobSubmit(
            job_id="job-2",
            document=DocumentRef(bucket="documents", name="job-2.txt", size_bytes=9, sha256=sha),
            summary_chars=500,
        ),
        TaskAssign(job_id="j", task_id="0-1", level=0, index=1, count=2, text="t", max_chars=99),
        TaskResult(
            job_id="j",
            task_id="0-1",
            level=0,
            index=1,
            ok=True,
            summary="s",
            worker_id="w",
            duration_ms=1.5,
            usage=TokenUsage(prompt_tokens=3, completion_tokens=2),
        ),
        AgentEvent(
            event_id="e",
            agent_id="a",
            service="worker",
            kind=EventKind.TASK_COMPLETED,
            job_id="j",
            data={"usage": {"prompt_tokens": 1}},
        ),
        HistoryQuery(job_id="j"),
        HistoryReply(job_id="j", events=[]),
        SummarizeRequest(text="some text", max_chars=100),
        SummarizeReply(ok=False, error="no", worker_id="w"),
        Command(command="pause"),
        CommandReply(agent_id="a", service="worker", ok=True, state="paused"),
        CancelRequest(job_id="j", reason="not needed"),
        CancelReply(job_id="j", canceled=True, status="canceled", detail="job j canceled"),
        JobCanceled(job_id="j"),
    ]


def message_validator(doc: dict[str, Any], title: str) -> jsonschema.Draft202012Validator:
    message = doc["components"]["messages"][title]
    schema = {"$ref": message["payload"]["$ref"], "components": doc["components"]}
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


@pytest.mark.parametrize("payload", samples(), ids=lambda p: type(p).__name__)
def test_real_messages_validate_against_the_document(doc: dict[str, Any], payload: Payload) -> None:
    validator = message_validator(doc, type(payload).__name__)
    wire = json.loads(encode(payload, sender="client-1"))
    validator.validate(wire)
    wrong_type = {**wire, "msg_type": "something.else"}
    assert not validator.is_valid(wrong_type)
    extra = {**wire, "unexpected": 1}
    assert not validator.is_valid(extra)


def test_micro_stats_schema_carries_worker_stats(doc: dict[str, Any]) -> None:
    stats = doc["components"]["schemas"]["MicroStats"]
    data = stats["properties"]["endpoints"]["items"]["properties"]["data"]
    assert data == {"$ref": "#/components/schemas/WorkerStats"}
    assert "in_flight" in doc["components"]["schemas"]["WorkerStats"]["properties"]


def test_cli_writes_the_document(tmp_path: Path) -> None:
    out = tmp_path / "asyncapi.json"
    result = CliRunner().invoke(app, ["asyncapi", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text()) == json.loads(render_asyncapi(build_asyncapi()))
    to_stdout = CliRunner().invoke(app, ["asyncapi"])
    assert to_stdout.exit_code == 0
    assert json.loads(to_stdout.stdout)["asyncapi"] == "3.0.0"
    bad = CliRunner().invoke(app, ["asyncapi", "-o", str(tmp_path / "no" / "such" / "dir.json")])
    assert bad.exit_code == 1 and "cannot write" in bad.output
