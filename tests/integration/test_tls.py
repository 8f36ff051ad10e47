"""TLS with server verification and client certificates, against a nats-server started
with `tls { verify: true }` and certificates this test generates: the pipeline runs over
mutual TLS (plus per-service users), and every broken identity is refused with one clear
line naming the setting or the failure, never hanging."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agentbus.bus.connect import connect_nats
from agentbus.bus.core import Bus
from agentbus.bus.topology import provision
from agentbus.client.api import AgentBusClient
from agentbus.contract import permissions
from agentbus.contract.errors import BusError, ConfigError
from agentbus.contract.messages import JobStatus
from agentbus.contract.settings import NatsSettings, load_settings
from agentbus.dev.embedded import EmbeddedNatsServer
from agentbus.runtime.worker import TaskWorker
from agentbus_event_archiver import EventArchiver
from agentbus_orchestrator import Orchestrator
from agentbus_summarize_worker import SummarizeSkill
from tests.conftest import Running, make_settings
from tests.security import Pki, SecureNats, make_pki, settings_as, start_secure_nats

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def secure_tls(tmp_path: Path, pki: Pki) -> Iterator[SecureNats]:
    s = start_secure_nats(tmp_path, tls=pki)
    try:
        yield s
    finally:
        s.stop()


@pytest.mark.timeout(60)
async def test_pipeline_over_mutual_tls(
    secure_tls: SecureNats,
    tmp_path: Path,
    running: Running,
) -> None:
    s = make_settings(secure_tls.url, tmp_path)
    prov = await Bus.connect(
        secure_tls.nats_settings(permissions.PROVISIONER), agent_id="prov", service="provision"
    )
    try:
        await provision(prov.js, s)
        assert prov.nc.connected_url is not None
        # the connection really is TLS
        # nats-py's private transport is the only way to see the socket's TLS layer
        transport = prov.nc._transport
        assert transport is not None
        writer = transport._io_writer  # type: ignore[attr-defined]  # private, see above
        assert writer is not None and writer.get_extra_info("ssl_object") is not None
    finally:
        await prov.close()
    await running.start(Orchestrator, settings_as(secure_tls, s, "orchestrator"), "orch-1")
    await running.start(
        lambda st: TaskWorker(st, SummarizeSkill(st)),
        settings_as(secure_tls, s, "worker"),
        "worker-1",
    )
    await running.start(EventArchiver, settings_as(secure_tls, s, "archiver"), "arch-1")
    async with AgentBusClient(secure_tls.nats_settings(permissions.CLIENT)) as client:
        job_id = await client.submit("A document sent over TLS. It is short. It is safe.")
        state = await client.wait(job_id, timeout_s=30)
    assert state.status is JobStatus.COMPLETED, state.error
    assert "verification" not in secure_tls.server.log.lower()


async def _refused(cfg: NatsSettings) -> str:
    try:
        nc = await connect_nats(cfg, name="tls-test")
    except BusError as e:
        return str(e)
    await nc.close()
    raise AssertionError("connected despite a broken TLS identity")


async def test_client_without_certificate_is_refused(secure_tls: SecureNats) -> None:
    cfg = secure_tls.nats_settings("worker", tls_cert_file=None, tls_key_file=None)
    message = await _refused(cfg)
    assert "certificate required" in message and "AGENTBUS_NATS__TLS_CERT_FILE" in message
    assert secure_tls.passwords["worker"] not in message


async def test_client_certificate_of_another_ca_is_refused(
    secure_tls: SecureNats, pki: Pki
) -> None:
    cfg = secure_tls.nats_settings(
        "worker", tls_cert_file=pki.rogue_client_cert, tls_key_file=pki.rogue_client_key
    )
    assert "unknown ca" in (await _refused(cfg)).lower()


async def test_server_of_an_untrusted_ca_is_refused(secure_tls: SecureNats, pki: Pki) -> None:
    cfg = secure_tls.nats_settings("worker", tls_ca_file=pki.rogue_ca_cert)
    assert "certificate verify failed" in (await _refused(cfg)).lower()


async def test_server_certificate_for_another_host_is_refused(tmp_path: Path, pki: Pki) -> None:
    conf = tmp_path / "wrong-host.conf"
    conf.write_text(
        "tls {\n"
        f'  cert_file: "{pki.wrong_host_cert}"\n'
        f'  key_file: "{pki.wrong_host_key}"\n'
        f'  ca_file: "{pki.ca_cert}"\n'
        "  verify: true\n"
        "}\n"
    )
    with EmbeddedNatsServer(config_file=conf, jetstream=False) as server:
        cfg = NatsSettings(
            url=server.url,
            tls_ca_file=pki.ca_cert,
            tls_cert_file=pki.client_cert,
            tls_key_file=pki.client_key,
        )
        message = (await _refused(cfg)).lower()
    assert "certificate verify failed" in message and "127.0.0.1" in message


async def test_tls_settings_errors_name_the_setting(tmp_path: Path, pki: Pki) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot a certificate\n")
    cases = [
        (NatsSettings(tls_ca_file=tmp_path / "missing.pem"), "AGENTBUS_NATS__TLS_CA_FILE"),
        (NatsSettings(tls_ca_file=garbage), "AGENTBUS_NATS__TLS_CA_FILE"),
        (
            NatsSettings(tls_cert_file=garbage, tls_key_file=pki.client_key),
            "AGENTBUS_NATS__TLS_CERT_FILE",
        ),
        (
            NatsSettings(tls_cert_file=pki.client_cert, tls_key_file=pki.rogue_client_key),
            "AGENTBUS_NATS__TLS_KEY_FILE",
        ),
    ]
    for cfg, setting in cases:
        assert setting in await _refused(cfg)
    with pytest.raises(ConfigError, match="TLS_KEY_FILE"):
        load_settings(nats={"tls_cert_file": str(pki.client_cert)})
