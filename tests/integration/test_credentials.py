"""Credentials: user/password from the environment or a file, NKEY seed files, `.creds`
files (operator mode, the user JWTs carrying the generated permissions). Every bad
credential fails fast with one line naming the setting, and no secret ever shows up in
logs, events, job state, dead letters or metrics."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import REGISTRY, generate_latest

from agentbus.bus.connect import connect_nats, flush_barrier
from agentbus.bus.core import Bus
from agentbus.bus.topology import provision
from agentbus.client.api import AgentBusClient
from agentbus.contract import permissions, subjects
from agentbus.contract.errors import BusError
from agentbus.contract.messages import JobStatus
from agentbus.contract.settings import NatsSettings, load_settings
from agentbus.dev.embedded import EmbeddedNatsServer
from agentbus.runtime.worker import TaskWorker
from agentbus_event_archiver import EventArchiver
from agentbus_orchestrator import Orchestrator
from agentbus_summarize_worker import SummarizeSkill
from tests.conftest import Running, dlq_messages, make_settings, stream_events
from tests.security import (
    NKeyPair,
    SecureNats,
    settings_as,
    start_operator_nats,
)

pytestmark = pytest.mark.integration


async def _connect_error(cfg: NatsSettings) -> str:
    try:
        nc = await connect_nats(cfg, name="creds-test")
    except BusError as e:
        return str(e)
    await nc.close()
    raise AssertionError("connected with bad credentials")


async def test_password_from_the_environment(
    secure: SecureNats, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTBUS_NATS__URL", secure.url)
    for key, value in permissions.user_env("client").items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AGENTBUS_NATS__PASSWORD", secure.passwords["client"])
    cfg = load_settings().nats
    assert secure.passwords["client"] not in repr(cfg) + str(cfg.model_dump())
    nc = await connect_nats(cfg, name="env")
    try:
        assert nc.is_connected
        await nc.flush()
    finally:
        await nc.close()


async def test_password_from_a_file(secure: SecureNats, tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text(secure.passwords["worker"] + "\n")  # as a Kubernetes Secret mounts it
    cfg = secure.nats_settings("worker", password=None, password_file=secret)
    nc = await connect_nats(cfg, name="file")
    await nc.close()

    message = await _connect_error(
        secure.nats_settings("worker", password=None, password_file=tmp_path / "missing")
    )
    assert "AGENTBUS_NATS__PASSWORD_FILE" in message and "No such file" in message


async def test_wrong_password_fails_fast_naming_the_settings(secure: SecureNats) -> None:
    wrong = "wrong-password-0123456789"
    message = await _connect_error(secure.nats_settings("worker", password=wrong))
    assert "authorization violation" in message.lower()
    assert "AGENTBUS_NATS__USER" in message and "AGENTBUS_NATS__PASSWORD" in message
    assert wrong not in message and secure.passwords["worker"] not in message


def test_credential_settings_are_checked_at_load() -> None:
    from agentbus.contract.errors import ConfigError

    with pytest.raises(ConfigError, match="needs AGENTBUS_NATS__USER") as e:
        load_settings(nats={"password": "s3cret-value"})
    assert "s3cret-value" not in str(e.value)
    with pytest.raises(ConfigError, match="not both"):
        load_settings(nats={"user": "u", "password": "p", "password_file": "/x"})
    with pytest.raises(ConfigError, match="INBOX_PREFIX"):
        load_settings(nats={"inbox_prefix": "_INBOX.>"})
    with pytest.raises(ConfigError) as bad_url:
        load_settings(nats={"url": "user:hunter2@localhost"})
    assert "hunter2" not in str(bad_url.value)


def test_cli_error_is_one_line_without_the_secret(secure: SecureNats) -> None:
    wrong = "not-the-provisioner-password-42"
    env = {
        "PATH": "/usr/bin:/bin",
        "AGENTBUS_NATS__URL": secure.url,
        "AGENTBUS_NATS__PASSWORD": wrong,
        **permissions.user_env(permissions.PROVISIONER),
    }
    done = subprocess.run(
        [sys.executable, "-m", "agentbus", "provision"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "authorization violation" in lines[0].lower()
    assert wrong not in done.stdout + done.stderr


# --- NKEYs -------------------------------------------------------------------------------


async def test_nkey_seed_file(tmp_path: Path) -> None:
    import nkeys

    worker_key = NKeyPair.generate(nkeys.PREFIX_BYTE_USER)
    admin_password = "admin-pw-for-the-nkey-test"
    conf = tmp_path / "nkeys.conf"
    conf.write_text(
        f'jetstream {{ store_dir: "{tmp_path / "js"}" }}\n'
        + permissions.render_nats_conf(
            {
                "worker": permissions.NKey(worker_key.public_key),
                "admin": permissions.Password(admin_password),
            }
        )
    )
    seed_file = tmp_path / "worker.nk"
    seed_file.write_bytes(worker_key.seed)
    with EmbeddedNatsServer(config_file=conf, jetstream=False) as server:
        cfg = NatsSettings(
            url=server.url,
            nkey_seed_file=seed_file,
            inbox_prefix=permissions.inbox_prefix("worker"),
        )
        nc = await connect_nats(cfg, name="nkey")
        try:
            sub = await nc.subscribe(f"{permissions.inbox_prefix('worker')}.x")
            await flush_barrier(nc)
            admin = await connect_nats(
                NatsSettings(url=server.url, user="admin", password=admin_password), name="a"
            )
            await admin.publish(f"{permissions.inbox_prefix('worker')}.x", b"ok")
            assert (await sub.next_msg(timeout=2)).data == b"ok"
            await admin.close()
        finally:
            await nc.close()

        other = NKeyPair.generate(nkeys.PREFIX_BYTE_USER)
        stranger = tmp_path / "stranger.nk"
        stranger.write_bytes(other.seed)
        message = await _connect_error(NatsSettings(url=server.url, nkey_seed_file=stranger))
        assert "AGENTBUS_NATS__NKEY_SEED_FILE" in message
        assert other.seed.decode() not in message
        missing = await _connect_error(
            NatsSettings(url=server.url, nkey_seed_file=tmp_path / "nope.nk")
        )
        assert "cannot read AGENTBUS_NATS__NKEY_SEED_FILE" in missing


# --- .creds files (operator mode) ----------------------------------------------------------


@pytest.mark.timeout(60)
async def test_creds_files_run_the_pipeline_with_jwt_permissions(
    tmp_path: Path,
    running: Running,
) -> None:
    op = start_operator_nats(tmp_path)
    try:
        s = make_settings(op.url, tmp_path)
        prov = await Bus.connect(
            op.nats_settings(permissions.PROVISIONER), agent_id="prov", service="provision"
        )
        await provision(prov.js, s)
        await prov.close()
        for role, factory in (
            ("orchestrator", Orchestrator),
            ("worker", lambda st: TaskWorker(st, SummarizeSkill(st))),
            ("archiver", EventArchiver),
        ):
            await running.start(
                factory, s.model_copy(update={"nats": op.nats_settings(role)}), f"{role}-1"
            )
        async with AgentBusClient(op.nats_settings(permissions.CLIENT)) as client:
            job_id = await client.submit("Operator mode works. Each service has its own JWT.")
            state = await client.wait(job_id, timeout_s=30)
        assert state.status is JobStatus.COMPLETED, state.error

        # the JWT carries the same denials as the config file
        nc = await connect_nats(op.nats_settings("worker"), name="w")
        errors: list[str] = []

        async def on_error(e: Exception) -> None:
            errors.append(str(e))

        nc._error_cb = on_error
        await nc.publish(subjects.JOBS_SUBJECT, b"{}")
        await nc.flush()
        for _ in range(100):
            if errors:
                break
            await asyncio.sleep(0.02)
        await nc.close()
        assert any('permissions violation for publish to "jobs.submit"' in e for e in errors)

        missing = await _connect_error(
            NatsSettings(url=op.url, creds_file=tmp_path / "creds" / "nobody.creds")
        )
        assert "cannot read AGENTBUS_NATS__CREDS_FILE" in missing
        for user, seed in op.user_seeds.items():
            assert seed.decode() not in missing, user
    finally:
        op.stop()


# --- secrets never leak ----------------------------------------------------------------------


@pytest.mark.timeout(90)
async def test_secrets_never_reach_logs_events_state_or_metrics(
    secure: SecureNats,
    tmp_path: Path,
    running: Running,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    logging.getLogger("nats").setLevel(logging.DEBUG)
    s = make_settings(secure.url, tmp_path)
    admin = await Bus.connect(
        secure.nats_settings(permissions.ADMIN), agent_id="admin", service="admin"
    )
    try:
        prov = await Bus.connect(
            secure.nats_settings(permissions.PROVISIONER), agent_id="prov", service="provision"
        )
        await provision(prov.js, s)
        await prov.close()
        # one service gets its credentials inside the URL: they must not be logged either
        host = secure.url.removeprefix("nats://")
        orch_nats = NatsSettings(
            url=f"nats://orchestrator:{secure.passwords['orchestrator']}@{host}",
            inbox_prefix=permissions.inbox_prefix("orchestrator"),
            reconnect_wait_s=0.2,
        )
        await running.start(Orchestrator, s.model_copy(update={"nats": orch_nats}), "orch-1")
        await running.start(
            lambda st: TaskWorker(st, SummarizeSkill(st)), settings_as(secure, s, "worker"), "w-1"
        )
        await running.start(EventArchiver, settings_as(secure, s, "archiver"), "arch-1")
        async with AgentBusClient(secure.nats_settings(permissions.CLIENT)) as client:
            first = await client.wait(await client.submit("Before the restart. One."), timeout_s=30)
            assert first.status is JobStatus.COMPLETED
            # a server restart: disconnect and reconnect paths log too
            await asyncio.to_thread(secure.server.restart)
            second_id = None
            for _ in range(100):
                try:
                    second_id = await client.submit("After the restart. Two.")
                    break
                except BusError:
                    await asyncio.sleep(0.1)
            assert second_id is not None
            second = await client.wait(second_id, timeout_s=30)
            assert second.status is JobStatus.COMPLETED
            # a rejected job and a bad login add error paths
            await admin.js.publish(subjects.JOBS_SUBJECT, b"\x00 not json")
            await _connect_error(secure.nats_settings("client", password="bad-" + "x" * 20))
            await asyncio.sleep(1.0)  # let the dead letter and events settle
        haystacks = {
            "logs": caplog.text + "\n".join(r.getMessage() for r in caplog.records),
            "metrics": generate_latest(REGISTRY).decode(),
            "events": "\n".join(d.decode(errors="replace") for _s, d in await stream_events(admin)),
            "dlq": "\n".join(
                f"{h}{d.decode(errors='replace')}" for _s, h, d in await dlq_messages(admin)
            ),
        }
        kv = await admin.js.key_value(subjects.JOBS_BUCKET)
        states = [(await kv.get(k)).value or b"" for k in await kv.keys()]
        haystacks["job state"] = b"\n".join(states).decode(errors="replace")
    finally:
        await admin.close()
    assert "reconnected to NATS" in haystacks["logs"] or "disconnected" in haystacks["logs"]
    for where, text in haystacks.items():
        for user, password in secure.passwords.items():
            assert password not in text, f"the password of {user} is in the {where}"
