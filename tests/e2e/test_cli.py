"""The CLI refuses bad input and bad settings with one clear line, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

AGENTBUS = [sys.executable, "-m", "agentbus"]


def _run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTBUS_")}
    full_env.update(env)
    return subprocess.run(
        [*AGENTBUS, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=60
    )


def test_bad_documents_are_refused_one_line_each(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "binary.bin").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    (tmp_path / "big.txt").write_text("word " * 300)
    done = _run(
        ["submit", "empty.txt", "binary.bin", "big.txt", "missing.txt"],
        tmp_path,
        AGENTBUS_LIMITS__MAX_DOCUMENT_BYTES="1000",
        AGENTBUS_NATS__URL="nats://127.0.0.1:1",  # never reached: every file is refused first
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert lines == [
        "rejected: empty.txt: document is empty",
        "rejected: binary.bin: not UTF-8 text (invalid byte 0x89 at offset 0)",
        "rejected: big.txt: 1500 bytes exceeds the cap of 1000 bytes "
        "(AGENTBUS_LIMITS__MAX_DOCUMENT_BYTES)",
        "rejected: missing.txt: cannot read: No such file or directory",
    ]
    assert "Traceback" not in done.stdout + done.stderr


def test_unreachable_nats_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "ok.txt").write_text("A fine document. It has two sentences.")
    done = _run(
        ["submit", "ok.txt"],
        tmp_path,
        AGENTBUS_NATS__URL="nats://127.0.0.1:1",
        AGENTBUS_NATS__CONNECT_TIMEOUT_S="0.5",
        AGENTBUS_NATS__RECONNECT_WAIT_S="0.2",
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "error: cannot connect to NATS at nats://127.0.0.1:1: "
        "[Errno 111] Connect call failed ('127.0.0.1', 1)"
    ]


@pytest.mark.parametrize("role", ["orchestrator", "worker", "archiver"])
def test_bad_settings_stop_a_service_with_one_line(tmp_path: Path, role: str) -> None:
    done = _run([role], tmp_path, AGENTBUS_HTTP__PORT="not-a-port")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: invalid settings: AGENTBUS_HTTP__PORT: Input should be a valid integer, "
        "unable to parse string as an integer"
    ]


@pytest.mark.parametrize("role", ["orchestrator", "worker", "archiver"])
def test_a_misspelt_setting_stops_a_service_with_one_line(tmp_path: Path, role: str) -> None:
    """A variable naming no setting is refused, not ignored (the service would otherwise
    start with the default): one line naming it and the closest real one."""
    done = _run([role], tmp_path, AGENTBUS_WORKR__CONCURRENCY="2")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: invalid settings: AGENTBUS_WORKR__CONCURRENCY: no such setting "
        "(did you mean AGENTBUS_WORKER__CONCURRENCY?)"
    ]
    assert done.stdout == ""


# --- conventions ---------------------------------------------------------------------------

CLIENT_COMMANDS = [
    ["submit"], ["status"], ["cancel"], ["history"], ["events"], ["provision"],
    ["dlq", "list"], ["dlq", "replay"], ["ctl"], ["workers"],
]  # fmt: skip


def test_version_and_completion(tmp_path: Path) -> None:
    from agentbus.contract.version import agentbus_version

    done = _run(["--version"], tmp_path)
    assert done.returncode == 0
    assert done.stdout.strip() == f"agentbus {agentbus_version()}"
    helped = _run(["--help"], tmp_path, COLUMNS="100")
    assert "--install-completion" in helped.stdout and "--show-completion" in helped.stdout


@pytest.mark.parametrize("command", CLIENT_COMMANDS, ids=" ".join)
def test_every_client_command_takes_a_server_and_shows_flags_as_flags(
    tmp_path: Path, command: list[str]
) -> None:
    done = _run([*command, "--help"], tmp_path, COLUMNS="120")
    assert done.returncode == 0, done.stderr
    assert "--server" in done.stdout and "-s " in done.stdout
    assert "AGENTBUS_NATS__URL" in done.stdout
    assert "<bool>" not in done.stdout  # `--json`, not `--json <bool>`
    assert "--no-" not in done.stdout


def test_server_option_wins_and_fails_in_one_line(tmp_path: Path) -> None:
    done = _run(
        ["status", "some-job", "-s", "nats://127.0.0.1:1"],
        tmp_path,
        AGENTBUS_NATS__URL="nats://127.0.0.1:2",  # the option wins over the environment
        AGENTBUS_NATS__CONNECT_TIMEOUT_S="0.5",
        AGENTBUS_NATS__RECONNECT_WAIT_S="0.2",
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "error: cannot connect to NATS at nats://127.0.0.1:1: "
        "[Errno 111] Connect call failed ('127.0.0.1', 1)"
    ]
