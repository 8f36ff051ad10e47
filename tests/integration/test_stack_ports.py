"""`agentbus up`'s stack picks free ports and its children bind them a moment later: a
child whose port another process took in between is started again on another one (the
gateway's default 8080 included), while a port the user chose stays an error."""

from __future__ import annotations

import json
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentbus.contract.errors import StackError
from agentbus.dev import stack as stack_module
from agentbus.dev.embedded import EmbeddedNatsServer
from agentbus.dev.stack import STATE_FILE, Stack

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port something else listens on."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        yield int(squatter.getsockname()[1])


def test_a_child_whose_port_was_taken_first_starts_on_another(
    tmp_path: Path,
    nats_server: EmbeddedNatsServer,
    taken_port: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    picked = iter([taken_port])  # the first port the stack picks (the archiver's) is taken
    free = stack_module.free_port
    monkeypatch.setattr(stack_module, "free_port", lambda: next(picked, None) or free())
    monkeypatch.setattr(stack_module, "_default_or_free_port", lambda: taken_port)
    stack = Stack(data_dir=tmp_path / "stack", workers=1, nats_url=nats_server.url, gateway=True)
    stack.start()
    try:
        archiver, *_, gateway = stack.processes
        assert (archiver.agent_id, archiver.port_tries) == ("archiver-1", 1)
        assert archiver.http_port != taken_port and archiver.ready()
        assert (gateway.agent_id, gateway.port_tries) == ("gateway-1", 1)
        assert stack.gateway_port not in (None, taken_port)
        assert [p.port_tries for p in stack.processes[1:-1]] == [0, 0]  # orchestrator, worker
        with urllib.request.urlopen(f"{stack.gateway_url}/healthz", timeout=5) as reply:
            assert reply.status == 200
        # what the first try said is in the log; the state file names the ports in use
        assert "address already in use" in archiver.log_path.read_text().lower()
        assert "address already in use" not in archiver.last_output().lower()
        state = json.loads((tmp_path / "stack" / STATE_FILE).read_text())
        assert state["gateway_url"] == stack.gateway_url
        assert {s["agent_id"]: s["http"] for s in state["services"]}["archiver-1"] == archiver.url
    finally:
        stack.stop()


def test_a_taken_health_port_moves_even_when_the_gateway_port_was_chosen(
    tmp_path: Path,
    nats_server: EmbeddedNatsServer,
    taken_port: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Only the port that was taken moves: the gateway's own health port here, while
    the gateway port the user gave stays."""
    picked = iter([0, 0, taken_port])  # archiver, orchestrator, then the gateway's health
    free = stack_module.free_port
    monkeypatch.setattr(stack_module, "free_port", lambda: next(picked, 0) or free())
    chosen = free()
    stack = Stack(
        data_dir=tmp_path / "stack", workers=0, nats_url=nats_server.url, gateway=True,
        gateway_port=chosen,
    )  # fmt: skip
    stack.start()
    try:
        gateway = stack.processes[-1]
        assert (gateway.port_tries, stack.gateway_port) == (1, chosen)
        assert gateway.http_port != taken_port and gateway.ready()
    finally:
        stack.stop()


def test_a_gateway_port_the_user_chose_and_is_taken_fails_the_start(
    tmp_path: Path, nats_server: EmbeddedNatsServer, taken_port: int
) -> None:
    stack = Stack(
        data_dir=tmp_path / "stack", workers=0, nats_url=nats_server.url, gateway=True,
        gateway_port=taken_port,
    )  # fmt: skip
    with pytest.raises(StackError, match=f"cannot listen on 127.0.0.1:{taken_port}"):
        stack.start()
    assert not any(p.alive() for p in stack.processes)
