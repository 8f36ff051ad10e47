"""Least privilege, proven against a real nats-server started with the generated
`authorization` block: the whole pipeline runs with every service on its own user and
no permission violation, and a table of denials holds, each one asserted as the server's
permissions violation naming the subject."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client as NatsClient

from agentbus.bus.connect import flush_barrier
from agentbus.bus.core import Bus
from agentbus.bus.topology import provision
from agentbus.client.api import AgentBusClient
from agentbus.contract import permissions, subjects
from agentbus.contract.messages import Command, CommandReply, JobStatus, decode, encode
from agentbus.contract.settings import LimitsSettings, Settings
from agentbus.runtime.service import _serve_commands
from agentbus.runtime.worker import TaskWorker
from agentbus_event_archiver import EventArchiver
from agentbus_orchestrator import Orchestrator
from agentbus_summarize_worker import SummarizeSkill
from tests.conftest import Running, archived_history, make_settings
from tests.security import SecureNats, ViolationRecorder, settings_as

pytestmark = pytest.mark.integration

REPO: Path = Path(__file__).resolve().parents[2]


@pytest.fixture
def base_settings(secure: SecureNats, tmp_path: Path) -> Settings:
    return make_settings(secure.url, tmp_path)


@pytest.fixture
async def provisioned(secure: SecureNats, base_settings: Settings) -> AsyncIterator[Bus]:
    """Provisioned by the `provisioner` user; yields an `admin` bus for inspection."""
    prov = await Bus.connect(
        secure.nats_settings(permissions.PROVISIONER), agent_id="provisioner", service="provision"
    )
    try:
        await provision(prov.js, base_settings)
    finally:
        await prov.close()
    admin = await Bus.connect(
        secure.nats_settings(permissions.ADMIN), agent_id="admin", service="admin"
    )
    try:
        yield admin
    finally:
        await admin.close()


def _violations(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "violation" in r.getMessage().lower()]


# --- the pipeline, each service on its own user ----------------------------------------


@pytest.mark.timeout(90)
async def test_pipeline_runs_with_each_service_on_its_own_user(
    secure: SecureNats,
    base_settings: Settings,
    provisioned: Bus,
    running: Running,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    s = base_settings.model_copy(
        update={
            "orchestrator": base_settings.orchestrator.model_copy(
                update={"chunk_chars": 400, "chunk_summary_chars": 120, "summary_chars": 300}
            )
        }
    )
    # provisioning again as the provisioner is idempotent and needs only read calls
    prov = await Bus.connect(
        secure.nats_settings(permissions.PROVISIONER), agent_id="provisioner", service="provision"
    )
    again = await provision(prov.js, s)
    await prov.close()
    assert again.created == [] and again.updated == []

    orch = await running.start(Orchestrator, settings_as(secure, s, "orchestrator"), "orch-1")
    await running.start(
        lambda st: TaskWorker(st, SummarizeSkill(st)), settings_as(secure, s, "worker"), "worker-1"
    )
    archiver = await running.start(EventArchiver, settings_as(secure, s, "archiver"), "arch-1")
    for svc in (orch, archiver):  # control commands, as `run_service` serves them
        assert svc.bus is not None
        await _serve_commands(svc.bus, svc, lambda: None)

    text = "\n\n".join(
        f"Paragraph {i} is about lake number {i}. The lake freezes every winter. "
        f"Fishermen on lake {i} cut holes in the ice to catch perch."
        for i in range(30)
    )
    client_nats = secure.nats_settings(permissions.CLIENT)
    # a small inline limit sends the big document through the object store
    async with AgentBusClient(
        client_nats, limits=LimitsSettings(inline_limit_bytes=1024)
    ) as client:
        big_id = await client.submit(text, title="lakes")
        small_id = await client.submit("A short note. It says hello to the lakes.")
        big = await client.wait(big_id, timeout_s=60)
        small = await client.wait(small_id, timeout_s=60)
        assert big.status is JobStatus.COMPLETED, big.error
        assert small.status is JobStatus.COMPLETED, small.error
        assert big.level >= 1 and big.summary and "lake" in big.summary.lower()
        history = await archived_history(client, big_id)
        kinds = {e.kind for e in history}
        assert {"job.accepted", "task.completed", "job.completed"} <= kinds

    # an operator (admin) can ping a service; the service answers as its own user
    reply = await provisioned.nc.request(
        subjects.agent_commands("orch-1"), encode(Command(command="ping"), sender="admin"),
        timeout=5,
    )  # fmt: skip
    assert decode(reply.data, CommandReply).payload.ok

    assert _violations(caplog) == []
    assert "violation" not in secure.server.log.lower(), secure.server.log


# --- the denial table ------------------------------------------------------------------


Action = Callable[[NatsClient], Awaitable[object]]


@dataclass(frozen=True)
class Denial:
    user: str
    what: str
    kind: str  # "publish" or "subscription"
    subject: str
    action: Action


def _js_request(subject: str, payload: bytes = b"") -> Action:
    async def act(nc: NatsClient) -> object:
        return await nc.request(subject, payload, timeout=0.5)

    return act


def _js_publish(subject: str) -> Action:
    async def act(nc: NatsClient) -> object:
        return await nc.jetstream(timeout=0.5).publish(subject, b"{}", timeout=0.5)

    return act


def _subscribe(subject: str, queue: str = "") -> Action:
    async def act(nc: NatsClient) -> object:
        sub = await nc.subscribe(subject, queue=queue)
        await flush_barrier(nc)
        return await sub.next_msg(timeout=0.3)

    return act


def _fetch(stream: str, durable: str) -> Action:
    async def act(nc: NatsClient) -> object:
        sub = await nc.jetstream(timeout=0.5).pull_subscribe_bind(durable=durable, stream=stream)
        return await sub.fetch(1, timeout=0.5)

    return act


def _delete_kv(bucket: str) -> Action:
    async def act(nc: NatsClient) -> object:
        return await nc.jetstream(timeout=0.5).delete_key_value(bucket)

    return act


def _delete_stream(name: str) -> Action:
    async def act(nc: NatsClient) -> object:
        return await nc.jetstream(timeout=0.5).delete_stream(name)

    return act


def _read_stream(name: str, filter_subject: str) -> Action:
    async def act(nc: NatsClient) -> object:
        sub = await nc.jetstream(timeout=0.5).subscribe(
            filter_subject, stream=name, ordered_consumer=True
        )
        return await sub.next_msg(timeout=0.3)

    return act


API = "$JS.API"
DENIALS: list[Denial] = [
    # workers
    Denial("worker", "publish a job", "publish", "jobs.submit", _js_publish("jobs.submit")),
    Denial("worker", "forge a task", "publish", "tasks.summarize.assign",
           _js_publish("tasks.summarize.assign")),
    Denial("worker", "subscribe to the event subjects", "subscription", "agent.*.events",
           _subscribe("agent.*.events")),
    Denial("worker", "read the event stream", "publish",
           f"{API}.CONSUMER.CREATE.AGENT_EVENTS", _read_stream("AGENT_EVENTS", "agent.>")),
    Denial("worker", "pull the archiver's events", "publish",
           f"{API}.CONSUMER.MSG.NEXT.AGENT_EVENTS.event-archiver",
           _fetch("AGENT_EVENTS", "event-archiver")),
    Denial("worker", "delete the jobs KV bucket", "publish", f"{API}.STREAM.DELETE.KV_jobs",
           _delete_kv("jobs")),
    Denial("worker", "write job state", "publish", "$KV.jobs.job-1", _js_publish("$KV.jobs.job-1")),
    Denial("worker", "read a dead letter", "publish", f"{API}.DIRECT.GET.DLQ",
           _js_request(f"{API}.DIRECT.GET.DLQ", b'{"seq":1}')),
    Denial("worker", "pull jobs", "publish", f"{API}.CONSUMER.MSG.NEXT.JOBS.orchestrator",
           _fetch("JOBS", "orchestrator")),
    Denial("worker", "snoop on the client's replies", "subscription", "_INBOX_client.>",
           _subscribe("_INBOX_client.>")),
    # clients
    Denial("client", "pull tasks", "publish", f"{API}.CONSUMER.MSG.NEXT.TASKS.summarize-workers",
           _fetch("TASKS", "summarize-workers")),
    Denial("client", "delete the JOBS stream", "publish", f"{API}.STREAM.DELETE.JOBS",
           _delete_stream("JOBS")),
    Denial("client", "purge the DLQ", "publish", f"{API}.STREAM.PURGE.DLQ",
           _js_request(f"{API}.STREAM.PURGE.DLQ", b"{}")),
    Denial("client", "create a stream", "publish", f"{API}.STREAM.CREATE.EVIL",
           _js_request(f"{API}.STREAM.CREATE.EVIL", b'{"name":"EVIL","subjects":["evil.>"]}')),
    Denial("client", "forge a result", "publish", "results.job-1.0-0",
           _js_publish("results.job-1.0-0")),
    Denial("client", "forge an event", "publish", "agent.orch-1.events",
           _js_publish("agent.orch-1.events")),
    Denial("client", "send a control command", "publish", "agent.orch-1.commands",
           _js_request("agent.orch-1.commands", b"{}")),
    Denial("client", "write job state", "publish", "$KV.jobs.job-1",
           _js_publish("$KV.jobs.job-1")),
    Denial("client", "impersonate a worker on rpc.summarize", "subscription", "rpc.summarize",
           _subscribe("rpc.summarize", queue="summarize-workers")),
    Denial("client", "impersonate the archiver on rpc.history", "subscription", "rpc.history",
           _subscribe("rpc.history")),
    Denial("client", "snoop on every reply", "subscription", "_INBOX.>", _subscribe("_INBOX.>")),
    Denial("client", "read the event stream", "publish", f"{API}.CONSUMER.CREATE.AGENT_EVENTS",
           _read_stream("AGENT_EVENTS", "agent.>")),
    # the archiver
    Denial("archiver", "publish a task", "publish", "tasks.summarize.assign",
           _js_publish("tasks.summarize.assign")),
    Denial("archiver", "publish a job", "publish", "jobs.submit", _js_publish("jobs.submit")),
    Denial("archiver", "delete the DLQ", "publish", f"{API}.STREAM.DELETE.DLQ",
           _delete_stream("DLQ")),
    Denial("archiver", "pull tasks", "publish", f"{API}.CONSUMER.MSG.NEXT.TASKS.summarize-workers",
           _fetch("TASKS", "summarize-workers")),
    # the orchestrator
    Denial("orchestrator", "delete a stream", "publish", f"{API}.STREAM.DELETE.TASKS",
           _delete_stream("TASKS")),
    Denial("orchestrator", "forge a result", "publish", "results.job-1.0-0",
           _js_publish("results.job-1.0-0")),
    Denial("orchestrator", "pull tasks", "publish",
           f"{API}.CONSUMER.MSG.NEXT.TASKS.summarize-workers",
           _fetch("TASKS", "summarize-workers")),
    Denial("orchestrator", "pull the archiver's events", "publish",
           f"{API}.CONSUMER.MSG.NEXT.AGENT_EVENTS.event-archiver",
           _fetch("AGENT_EVENTS", "event-archiver")),
    # the provisioner creates and updates, nothing else
    Denial("provisioner", "delete a stream", "publish", f"{API}.STREAM.DELETE.JOBS",
           _delete_stream("JOBS")),
    Denial("provisioner", "publish a job", "publish", "jobs.submit", _js_publish("jobs.submit")),
    Denial("provisioner", "delete a consumer", "publish",
           f"{API}.CONSUMER.DELETE.TASKS.summarize-workers",
           _js_request(f"{API}.CONSUMER.DELETE.TASKS.summarize-workers")),
]  # fmt: skip


async def test_denials_are_permission_violations(secure: SecureNats, provisioned: Bus) -> None:
    """Every row: the server reports a permissions violation naming the subject, the
    attempt yields nothing, and (checked as admin afterwards) nothing was changed."""

    async def attempt(d: Denial) -> str | None:
        """One row on its own connection; the failure, or None when the denial held."""
        rec = await ViolationRecorder.connect(secure, d.user)
        try:
            outcome: object = None
            try:
                outcome = await d.action(rec.nc)
            except (nats.errors.Error, TimeoutError, nats.js.errors.Error) as e:
                outcome = e
            try:
                await rec.wait_violation(d.kind, d.subject)
            except AssertionError as e:
                return f"{d.user} could {d.what}: {e}; outcome {outcome!r}"
            if not isinstance(outcome, Exception):
                return f"{d.user} {d.what}: got {outcome!r} despite the violation"
            await rec.nc.flush()  # a violation does not cost the connection
            return None
        finally:
            await rec.close()

    failures = [f for f in await asyncio.gather(*(attempt(d) for d in DENIALS)) if f]
    assert failures == [], "\n".join(failures)

    # nothing changed: every stream and bucket is there, nothing was published
    js = provisioned.js
    names = {s.config.name for s in await js.streams_info()}
    assert set(subjects.ALL_STREAMS) | {"KV_jobs", "KV_job-parts", "OBJ_documents"} <= names
    assert "EVIL" not in names
    for stream in (subjects.JOBS_STREAM, subjects.TASKS_STREAM, subjects.RESULTS_STREAM):
        assert (await js.stream_info(stream)).state.messages == 0, stream
    info = await js.consumer_info(subjects.TASKS_STREAM, subjects.WORKERS_CONSUMER)
    assert info.config.durable_name == subjects.WORKERS_CONSUMER


@pytest.mark.parametrize("user", [u for u in permissions.ROLES if u != permissions.ADMIN])
async def test_every_user_is_confined_to_its_private_inbox(
    secure: SecureNats, provisioned: Bus, user: str
) -> None:
    """A user may subscribe to its own inbox prefix, and to no other user's."""
    rec = await ViolationRecorder.connect(secure, user)
    try:
        own = await rec.nc.subscribe(f"{permissions.inbox_prefix(user)}.x")
        await flush_barrier(rec.nc)
        for other in permissions.ROLES:
            if other == user:
                continue
            await rec.nc.subscribe(f"{permissions.inbox_prefix(other)}.>")
            await rec.wait_violation("subscription", f"{permissions.inbox_prefix(other)}.>")
        await provisioned.nc.publish(f"{permissions.inbox_prefix(user)}.x", b"hi")
        assert (await own.next_msg(timeout=2)).data == b"hi"
    finally:
        await rec.close()


async def test_wrong_password_is_refused_without_echoing_it(secure: SecureNats) -> None:
    from agentbus.bus.connect import connect_nats
    from agentbus.contract.errors import BusError

    cfg = secure.nats_settings("worker", password="not-the-password-1234")
    with pytest.raises(BusError) as e:
        await connect_nats(cfg, name="t")
    assert "authorization" in str(e.value).lower()
    assert "not-the-password-1234" not in str(e.value)


# --- the one source of truth -----------------------------------------------------------


def test_chart_permissions_file_is_up_to_date() -> None:
    path = REPO / permissions.CHART_FILE
    assert path.read_text() == permissions.render_json(), (
        f"{permissions.CHART_FILE} is out of date: run `agentbus permissions --write`"
    )
    doc = json.loads(path.read_text())
    assert [u["user"] for u in doc["users"]] == list(permissions.ROLES)


def test_permissions_cli_check_and_write(tmp_path: Path) -> None:
    target = tmp_path / "perms.json"
    cmd = [sys.executable, "-m", "agentbus", "permissions", "--path", str(target)]
    stale = subprocess.run([*cmd, "--check"], capture_output=True, text=True, check=False)
    assert stale.returncode == 1 and "cannot read" in stale.stderr
    wrote = subprocess.run([*cmd, "--write"], capture_output=True, text=True, check=False)
    assert wrote.returncode == 0, wrote.stderr
    ok = subprocess.run([*cmd, "--check"], capture_output=True, text=True, check=False)
    assert ok.returncode == 0 and "up to date" in ok.stdout
    target.write_text(target.read_text().replace("jobs.submit", "jobs.>"))
    out_of_date = subprocess.run([*cmd, "--check"], capture_output=True, text=True, check=False)
    assert out_of_date.returncode == 1 and "out of date" in out_of_date.stderr


async def test_conf_format_takes_passwords_from_the_server_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--format conf` is a working nats-server config; passwords stay out of the file."""
    import contextlib
    import io

    from agentbus.bus.connect import connect_nats
    from agentbus.contract.errors import BusError
    from agentbus.contract.settings import NatsSettings
    from agentbus.dev.embedded import EmbeddedNatsServer

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert permissions.main(["--format", "conf"]) == 0
    conf = tmp_path / "auth.conf"
    conf.write_text(out.getvalue())
    password = "pw-from-the-environment-123"
    for user in permissions.ROLES:
        monkeypatch.setenv(permissions.password_env_var(user), f"{password}-{user}")
    assert password not in out.getvalue()
    with EmbeddedNatsServer(config_file=conf, jetstream=False) as server:
        cfg = NatsSettings(
            url=server.url, user="worker", password=f"{password}-worker",
            inbox_prefix=permissions.inbox_prefix("worker"),
        )  # fmt: skip
        nc = await connect_nats(cfg, name="conf")
        await nc.close()
        with pytest.raises(BusError, match=r"(?i)authorization violation"):
            await connect_nats(cfg.model_copy(update={"user": "client"}), name="conf")
