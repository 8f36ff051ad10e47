"""`agentbus nats-auth-secret`: create or update the chart's NATS auth Secret from inside
the cluster (the chart's pre-install/pre-upgrade/pre-rollback hook Job).

Helm cannot keep generated passwords when it renders offline (`helm template`, the way
Argo CD and Flux install charts: `lookup` finds nothing there), so the chart renders no
passwords at all; this command, run once per install/upgrade, reads the Secret and writes
what `agentbus.contract.nats_auth.auth_secret_data` decides: stored passwords are kept.

It speaks to the Kubernetes API with the standard library (three REST calls with the pod's
service account token) rather than the `kubernetes` client package, which would add
~30 MB of dependencies to the image for these calls.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import ssl
import string
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from agentbus.contract.errors import AgentBusError
from agentbus.contract.nats_auth import auth_secret_data

__all__ = ["KubeApi", "NatsAuthSecretError", "ensure_auth_secret", "in_cluster_api"]

SERVICE_ACCOUNT_DIR: Final = Path("/var/run/secrets/kubernetes.io/serviceaccount")
PASSWORD_LENGTH: Final = 32
_ALPHABET: Final = string.ascii_letters + string.digits
API_TIMEOUT_S: Final = 30.0


class NatsAuthSecretError(AgentBusError):
    """The Secret could not be read or written; the message names it."""


def new_password() -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(PASSWORD_LENGTH))


@dataclass(frozen=True)
class KubeApi:
    """The Kubernetes API server: base URL (https://host:port), bearer token, TLS context."""

    base_url: str
    token: str
    tls: ssl.SSLContext | None = None

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """The decoded JSON answer, None for 404; any other error raises, naming `path`."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.base_url + path,
            data=data,
            method=method,
            headers={
                "Authorization": f"Bearer {self.token}",
                "Accept": "application/json",
                "Content-Type": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(req, timeout=API_TIMEOUT_S, context=self.tls) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as e:
            if e.code == 404 and method == "GET":
                return None
            detail = e.read().decode(errors="replace")[:300]
            raise NatsAuthSecretError(f"{method} {path}: HTTP {e.code} {detail}") from e
        except (urllib.error.URLError, OSError) as e:
            raise NatsAuthSecretError(f"{method} {path}: {e}") from e


def in_cluster_api(*, account_dir: Path = SERVICE_ACCOUNT_DIR) -> KubeApi:
    """The API server as seen from a pod (its service account's token and CA)."""
    host = os.environ.get("KUBERNETES_SERVICE_HOST")
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        raise NatsAuthSecretError("KUBERNETES_SERVICE_HOST is not set: not running in a pod")
    try:
        token = (account_dir / "token").read_text().strip()
    except OSError as e:
        raise NatsAuthSecretError(
            f"no service account token in {account_dir} (automountServiceAccountToken)"
        ) from e
    tls = ssl.create_default_context(cafile=str(account_dir / "ca.crt"))
    if ":" in host:
        host = f"[{host}]"
    return KubeApi(base_url=f"https://{host}:{port}", token=token, tls=tls)


def _secret_path(namespace: str, name: str = "") -> str:
    base = f"/api/v1/namespaces/{namespace}/secrets"
    return f"{base}/{name}" if name else base


def _decoded(secret: dict[str, Any] | None) -> dict[str, str]:
    data = (secret or {}).get("data") or {}
    return {k: base64.b64decode(v).decode() for k, v in data.items()}


def ensure_auth_secret(
    api: KubeApi,
    *,
    namespace: str,
    name: str,
    labels: dict[str, str],
    permissions_json: str | None,
    auth_file: str | None,
    passwords_secret: str = "",
) -> str:
    """Create or update Secret `name`; returns what was done ("created", "updated",
    "unchanged")."""
    source: dict[str, str] | None = None
    if passwords_secret:
        found = api.request("GET", _secret_path(namespace, passwords_secret))
        if found is None:
            raise NatsAuthSecretError(
                f"natsAuth.passwordsSecret: no Secret {passwords_secret!r} in namespace "
                f"{namespace} (create it before installing)"
            )
        source = _decoded(found)
    current_obj = api.request("GET", _secret_path(namespace, name))
    current = _decoded(current_obj)
    data = auth_secret_data(
        permissions_json=permissions_json,
        auth_file=auth_file,
        current=current,
        source=source,
        source_name=passwords_secret,
        new_password=new_password,
    )
    encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    if current_obj is None:
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "type": "Opaque",
            "data": encoded,
        }
        api.request("POST", _secret_path(namespace), body)
        return "created"
    if data == current:
        return "unchanged"
    # a PUT with the resourceVersion read above: a concurrent writer makes it fail (409)
    # and the Job retry, rather than one write silently undoing the other
    current_obj["data"] = encoded
    current_obj.setdefault("metadata", {}).setdefault("labels", {}).update(labels)
    api.request("PUT", _secret_path(namespace, name), current_obj)
    return "updated"
