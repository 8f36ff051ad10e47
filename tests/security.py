"""Test helpers for the security tests: a nats-server started with the generated
`authorization` block (one user per role, random passwords), settings per role, raw
connections that record permission violations, and a throwaway PKI for TLS."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nats.aio.client import Client as NatsClient

from agentbus.contract import permissions
from agentbus.contract.settings import NatsSettings, Settings
from agentbus.dev.embedded import EmbeddedNatsServer
from tests.conftest import provisioned

__all__ = [
    "NKeyPair",
    "OperatorNats",
    "Pki",
    "SecureNats",
    "ViolationRecorder",
    "creds_file_text",
    "make_pki",
    "mint_jwt",
    "settings_as",
    "start_operator_nats",
    "start_secure_nats",
]


@dataclass
class SecureNats:
    """A running nats-server whose users are exactly the generated ones."""

    server: EmbeddedNatsServer
    passwords: dict[str, str]
    conf_path: Path
    tls: Pki | None = None

    @property
    def url(self) -> str:
        return self.server.url

    def nats_settings(self, user: str, **extra: object) -> NatsSettings:
        values: dict[str, object] = {
            "url": self.url,
            "user": user,
            "password": self.passwords[user],
            "inbox_prefix": permissions.inbox_prefix(user),
            "reconnect_wait_s": 0.2,
        }
        if self.tls is not None:
            values |= {
                "tls_ca_file": self.tls.ca_cert,
                "tls_cert_file": self.tls.client_cert,
                "tls_key_file": self.tls.client_key,
            }
        values |= extra
        return NatsSettings.model_validate(values)

    def stop(self) -> None:
        self.server.stop()


def settings_as(secure: SecureNats, settings: Settings, user: str) -> Settings:
    """`settings` with the NATS connection of `user`."""
    return settings.model_copy(update={"nats": secure.nats_settings(user)})


async def provision_as_provisioner(secure: SecureNats, settings: Settings) -> None:
    """`agentbus provision` of `settings` on its own NATS user (skill `summarize`)."""
    await provisioned(settings, nats=secure.nats_settings(permissions.PROVISIONER))


def start_secure_nats(
    tmp_path: Path,
    *,
    users: tuple[str, ...] = permissions.ROLES,
    tenant_users: Mapping[str, Sequence[str]] | None = None,
    tls: Pki | None = None,
    extra_conf: str = "",
) -> SecureNats:
    """A nats-server with a password user per role in `users`, plus the users of
    `tenant_users` (tenant -> its clients' users) with their tenants' permissions."""
    users = (*users, *(u for names in (tenant_users or {}).values() for u in names))
    passwords = {u: secrets.token_urlsafe(18) for u in users}
    creds: dict[str, permissions.Credential] = {
        u: permissions.Password(p) for u, p in passwords.items()
    }
    perms = permissions.build_permissions(tenant_users=tenant_users)
    store = tmp_path / "js"
    conf = [
        f'jetstream {{ store_dir: "{store}" }}',
        permissions.render_nats_conf(creds, permissions=perms),
    ]
    if tls is not None:
        conf.append(
            "tls {\n"
            f'  cert_file: "{tls.server_cert}"\n'
            f'  key_file: "{tls.server_key}"\n'
            f'  ca_file: "{tls.ca_cert}"\n'
            "  verify: true\n"
            "  timeout: 5\n"
            "}\n"
        )
    conf.append(extra_conf)
    conf_path = tmp_path / "nats.conf"
    conf_path.write_text("\n".join(conf))
    server = EmbeddedNatsServer(config_file=conf_path, jetstream=False)
    server.start()
    return SecureNats(server=server, passwords=passwords, conf_path=conf_path, tls=tls)


@dataclass
class ViolationRecorder:
    """A raw nats-py connection as one user that records every async error."""

    nc: NatsClient
    errors: list[str] = field(default_factory=list)

    @classmethod
    async def connect(cls, secure: SecureNats, user: str) -> ViolationRecorder:
        rec = cls(nc=NatsClient())
        cfg = secure.nats_settings(user)

        async def on_error(e: Exception) -> None:
            rec.errors.append(str(e))

        assert cfg.password is not None
        await rec.nc.connect(
            servers=[secure.url],
            user=user,
            password=cfg.password.get_secret_value(),
            inbox_prefix=cfg.inbox_prefix,
            error_cb=on_error,
            allow_reconnect=False,
            connect_timeout=5,
        )
        return rec

    def violations(self) -> list[str]:
        return [e for e in self.errors if "permissions violation" in e.lower()]

    async def wait_violation(self, kind: str, subject: str, *, timeout_s: float = 3.0) -> str:
        """The recorded violation of `kind` (publish|subscription) on `subject`."""
        want = f'permissions violation for {kind} to "{subject}"'.lower()
        deadline = time.monotonic() + timeout_s
        while True:
            for e in self.errors:
                if want in e.lower():
                    return e
            if time.monotonic() > deadline:
                raise AssertionError(f"no {want!r}; errors seen: {self.errors}")
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        if not self.nc.is_closed:
            await self.nc.close()


# --- a throwaway PKI -------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_ca_cert: Path
    rogue_client_cert: Path
    rogue_client_key: Path
    wrong_host_cert: Path
    wrong_host_key: Path


def make_pki(directory: Path) -> Pki:
    """A CA, a server certificate for 127.0.0.1/localhost, a client certificate, and for
    the negative tests a rogue CA with its own client certificate and a server
    certificate for another host name."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "agentbus tests"),
                x509.NameAttribute(NameOID.COMMON_NAME, cn),
            ]
        )

    def write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        path.chmod(0o600)
        return path

    def write_cert(cert: x509.Certificate, path: Path) -> Path:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path

    def ca(cn: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(name(cn))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        return cert, key

    def leaf(
        cn: str,
        issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
        *,
        server: bool,
        hosts: tuple[str, ...] = (),
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        ca_cert, ca_key = issuer
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
        )
        if hosts:
            sans: list[x509.GeneralName] = []
            for h in hosts:
                try:
                    sans.append(x509.IPAddress(ipaddress.ip_address(h)))
                except ValueError:
                    sans.append(x509.DNSName(h))
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(ca_key, hashes.SHA256()), key

    the_ca = ca("agentbus test CA")
    rogue_ca = ca("rogue CA")
    server = leaf("nats", the_ca, server=True, hosts=("127.0.0.1", "localhost"))
    wrong_host = leaf("elsewhere", the_ca, server=True, hosts=("nats.example.com",))
    client = leaf("worker", the_ca, server=False)
    rogue_client = leaf("worker", rogue_ca, server=False)
    d = directory
    return Pki(
        ca_cert=write_cert(the_ca[0], d / "ca.pem"),
        server_cert=write_cert(server[0], d / "server.pem"),
        server_key=write_key(server[1], d / "server-key.pem"),
        client_cert=write_cert(client[0], d / "client.pem"),
        client_key=write_key(client[1], d / "client-key.pem"),
        rogue_ca_cert=write_cert(rogue_ca[0], d / "rogue-ca.pem"),
        rogue_client_cert=write_cert(rogue_client[0], d / "rogue-client.pem"),
        rogue_client_key=write_key(rogue_client[1], d / "rogue-client-key.pem"),
        wrong_host_cert=write_cert(wrong_host[0], d / "wrong-host.pem"),
        wrong_host_key=write_key(wrong_host[1], d / "wrong-host-key.pem"),
    )


# --- operator mode: JWTs and .creds files ------------------------------------------------


@dataclass(frozen=True)
class NKeyPair:
    seed: bytes
    public_key: str

    @classmethod
    def generate(cls, prefix: int) -> NKeyPair:
        import nkeys

        seed = nkeys.encode_seed(secrets.token_bytes(32), prefix)
        kp = nkeys.from_seed(bytearray(seed))
        return cls(seed=seed, public_key=kp.public_key.decode())

    def sign(self, data: bytes) -> bytes:
        import nkeys

        return bytes(nkeys.from_seed(bytearray(self.seed)).sign(data))


def _b64(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def mint_jwt(*, issuer: NKeyPair, subject: str, name: str, nats_claims: dict[str, object]) -> str:
    """A NATS v2 JWT (ed25519-nkey) signed by `issuer`."""
    import json

    header = {"typ": "JWT", "alg": "ed25519-nkey"}
    claims = {
        "jti": secrets.token_hex(16).upper(),
        "iat": int(time.time()),
        "iss": issuer.public_key,
        "name": name,
        "sub": subject,
        "nats": {**nats_claims, "version": 2},
    }
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{_b64(issuer.sign(signing_input.encode()))}"


def creds_file_text(jwt: str, seed: bytes) -> str:
    return (
        "-----BEGIN NATS USER JWT-----\n"
        f"{jwt}\n"
        "------END NATS USER JWT------\n\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n\n"
        "-----BEGIN USER NKEY SEED-----\n"
        f"{seed.decode()}\n"
        "------END USER NKEY SEED------\n"
    )


@dataclass
class OperatorNats:
    """A nats-server in operator mode (memory resolver) with one `.creds` file per user,
    each user's JWT carrying the generated permissions."""

    server: EmbeddedNatsServer
    creds: dict[str, Path]
    user_seeds: dict[str, bytes]

    @property
    def url(self) -> str:
        return self.server.url

    def nats_settings(self, user: str, **extra: object) -> NatsSettings:
        values: dict[str, object] = {
            "url": self.url,
            "creds_file": self.creds[user],
            "inbox_prefix": permissions.inbox_prefix(user),
            "reconnect_wait_s": 0.2,
        }
        return NatsSettings.model_validate(values | extra)

    def stop(self) -> None:
        self.server.stop()


def start_operator_nats(
    tmp_path: Path, *, users: tuple[str, ...] = permissions.ROLES
) -> OperatorNats:
    import nkeys

    operator = NKeyPair.generate(nkeys.PREFIX_BYTE_OPERATOR)
    account = NKeyPair.generate(nkeys.PREFIX_BYTE_ACCOUNT)
    operator_jwt = mint_jwt(
        issuer=operator,
        subject=operator.public_key,
        name="agentbus-test",
        nats_claims={"type": "operator"},
    )
    unlimited = -1
    account_jwt = mint_jwt(
        issuer=operator,
        subject=account.public_key,
        name="agentbus",
        nats_claims={
            "type": "account",
            "limits": {
                "subs": unlimited, "data": unlimited, "payload": unlimited,
                "imports": unlimited, "exports": unlimited, "wildcards": True,
                "conn": unlimited, "leaf": unlimited, "mem_storage": unlimited,
                "disk_storage": unlimited, "streams": unlimited, "consumer": unlimited,
            },
        },
    )  # fmt: skip
    system = NKeyPair.generate(nkeys.PREFIX_BYTE_ACCOUNT)
    system_jwt = mint_jwt(
        issuer=operator, subject=system.public_key, name="SYS", nats_claims={"type": "account"}
    )
    perms = permissions.build_permissions()
    creds: dict[str, Path] = {}
    seeds: dict[str, bytes] = {}
    cred_dir = tmp_path / "creds"
    cred_dir.mkdir(parents=True, exist_ok=True)
    for user in users:
        kp = NKeyPair.generate(nkeys.PREFIX_BYTE_USER)
        jwt = mint_jwt(
            issuer=account,
            subject=kp.public_key,
            name=user,
            nats_claims={
                "type": "user",
                "issuer_account": account.public_key,
                "subs": unlimited,
                "data": unlimited,
                "payload": unlimited,
                **perms[user].as_jwt_claims(),
            },
        )
        path = cred_dir / f"{user}.creds"
        path.write_text(creds_file_text(jwt, kp.seed))
        path.chmod(0o600)
        creds[user], seeds[user] = path, kp.seed
    (tmp_path / "operator.jwt").write_text(operator_jwt)
    conf_path = tmp_path / "operator.conf"
    conf_path.write_text(
        f'operator: "{tmp_path / "operator.jwt"}"\n'
        "resolver: MEMORY\n"
        f'system_account: "{system.public_key}"\n'
        "resolver_preload: {\n"
        f'  {account.public_key}: "{account_jwt}"\n'
        f'  {system.public_key}: "{system_jwt}"\n'
        "}\n"
        f'jetstream {{ store_dir: "{tmp_path / "js"}" }}\n'
    )
    server = EmbeddedNatsServer(config_file=conf_path, jetstream=False)
    server.start()
    return OperatorNats(server=server, creds=creds, user_seeds=seeds)
