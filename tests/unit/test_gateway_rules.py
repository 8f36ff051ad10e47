"""The gateway's pure rules: API keys (roles ordered, tenants, a bad file is one line),
SSE framing and cursors, A2A event ids (ordered: resuming after one skips exactly the
events up to it), and the A2A view of a job's partial results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentbus.client.stream import PartialResult
from agentbus.contract.messages import StreamKind
from agentbus_gateway.a2a_map import EventId, stream_events
from agentbus_gateway.errors import ApiKeysError
from agentbus_gateway.keys import Role, bearer_token, load_keys, parse_keys
from agentbus_gateway.sse import format_event, parse_cursor

pytestmark = pytest.mark.unit


def _ring(*entries: dict[str, object]) -> object:
    return parse_keys({"keys": list(entries)}, source="test")


def test_roles_are_ordered() -> None:
    assert Role.OPERATE.allows(Role.SUBMIT) and Role.SUBMIT.allows(Role.READ)
    assert not Role.READ.allows(Role.SUBMIT) and not Role.SUBMIT.allows(Role.OPERATE)


def test_keys_authenticate_and_scope_tenants() -> None:
    ring = parse_keys(
        {"keys": [
            {"key": "k" * 20, "tenant": "acme", "role": "submit", "name": "a"},
            {"key": "o" * 20, "role": "operate"},
        ]},
        source="test",
    )  # fmt: skip
    a = ring.authenticate("k" * 20)
    assert a is not None and (a.name, a.tenant, a.role) == ("a", "acme", Role.SUBMIT)
    assert a.sees_tenant("acme") and not a.sees_tenant("default")
    op = ring.authenticate("o" * 20)
    assert op is not None and op.tenant == "default" and op.sees_tenant("acme")
    assert ring.authenticate("x" * 20) is None and ring.authenticate(None) is None
    assert len(load_keys(None)) == 0


@pytest.mark.parametrize(
    ("doc", "needle"),
    [
        ([], 'expected {"keys"'),
        ({"keys": [{"key": "short"}]}, "keys[0]: key must be"),
        ({"keys": [{"key": "k" * 20, "role": "admin"}]}, "role must be one of"),
        ({"keys": [{"key": "k" * 20, "tenant": "Acme!"}]}, "tenant must be"),
        ({"keys": [{"key": "k" * 20, "extra": 1}]}, "unknown field(s) extra"),
        ({"keys": [{"key": "k" * 20}, {"key": "k" * 20}]}, "keys[1]: the same key twice"),
    ],
)
def test_a_bad_keys_document_is_one_line_naming_the_entry(doc: object, needle: str) -> None:
    with pytest.raises(ApiKeysError) as e:
        parse_keys(doc, source="FILE")
    assert needle in str(e.value) and str(e.value).startswith("FILE") and "\n" not in str(e.value)


def test_a_keys_file_that_is_not_json(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text("{nope")
    with pytest.raises(ApiKeysError, match=r"AGENTBUS_GATEWAY__API_KEYS_FILE .*: not JSON"):
        load_keys(path)
    with pytest.raises(ApiKeysError, match="cannot read"):
        load_keys(tmp_path / "missing.json")
    path.write_text(json.dumps({"keys": [{"key": "z" * 16}]}))
    assert len(load_keys(path)) == 1


def test_bearer_token_and_api_key_header() -> None:
    assert bearer_token({"Authorization": "Bearer abc"}) == "abc"
    assert bearer_token({"Authorization": "bearer  abc "}) == "abc"
    assert bearer_token({"Authorization": "Basic abc"}) is None
    assert bearer_token({"X-API-Key": "xyz"}) == "xyz"
    assert bearer_token({}) is None


def test_sse_framing_and_cursor() -> None:
    frame = format_event(event_id="7", event="chunk", data={"text": "a\nb"})
    assert frame == b'id: 7\nevent: chunk\ndata: {"text":"a\\nb"}\n\n'
    assert parse_cursor(None) is None and parse_cursor(" ") is None and parse_cursor("12") == 12
    for bad in ("-1", "x", "1.5", "9" * 20):
        with pytest.raises(ValueError, match="not a stream sequence"):
            parse_cursor(bad)


@given(st.lists(st.tuples(st.integers(1, 10**6), st.integers(0, 2)), min_size=1, unique=True))
def test_event_ids_resume_exactly_after_the_last_seen(ids: list[tuple[int, int]]) -> None:
    events = sorted(EventId(c, n) for c, n in ids)
    for i, last in enumerate(events):
        parsed = EventId.parse(str(last))
        assert parsed == last
        assert [e for e in events if e > parsed] == events[i + 1 :]
    bare = EventId.parse(str(events[0].cursor))  # a bare cursor: all of that result seen
    assert bare is not None and all(e <= bare for e in events if e.cursor == events[0].cursor)


def test_bad_event_ids() -> None:
    assert EventId.parse(None) is None
    for bad in ("a.1", "1.x", "1.", "-2.0"):
        with pytest.raises(ValueError, match=r"not CURSOR\.N"):
            EventId.parse(bad)


def _item(kind: StreamKind, **kw: object) -> PartialResult:
    base: dict[str, object] = {
        "cursor": 5, "kind": kind, "job_id": "j1", "level": 0, "index": None, "count": None,
        "text": "", "summary_ref": None, "error": None, "worker_id": None,
    }  # fmt: skip
    return PartialResult(**(base | kw))  # type: ignore[arg-type]  # the fields above


def test_partial_results_as_a2a_events() -> None:
    chunk = stream_events(_item(StreamKind.CHUNK, index=2, count=4, text="part"))
    assert [e.WhichOneof("payload") for e in chunk] == ["artifact_update"]
    assert chunk[0].artifact_update.artifact.artifact_id == "part-0-2"
    done = stream_events(_item(StreamKind.COMPLETED, text="small"), summary="the summary")
    assert [e.WhichOneof("payload") for e in done] == ["artifact_update", "status_update"]
    assert done[0].artifact_update.artifact.parts[0].text == "the summary"
    failed = stream_events(_item(StreamKind.FAILED, error="boom"))
    assert failed[0].status_update.status.message.parts[0].text == "boom"
