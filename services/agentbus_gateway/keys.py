"""API keys: each maps to a tenant and a role. Pure logic, no I/O but reading the file.

The file (`AGENTBUS_GATEWAY__API_KEYS_FILE`, a Secret in the chart) is JSON:

    {"keys": [{"key": "s3cret...", "tenant": "acme", "role": "submit", "name": "ci"}]}

Roles are ordered: `read` (job state, streams, workers) < `submit` (also submit and
cancel jobs) < `operate` (also every tenant's jobs, the DLQ and its replays). A key of a
role other than `operate` sees only its own tenant's jobs.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from agentbus.contract.tenants import DEFAULT_TENANT
from agentbus_gateway.errors import ApiKeysError

__all__ = ["MIN_KEY_CHARS", "ApiKey", "KeyRing", "Role", "bearer_token", "load_keys"]

MIN_KEY_CHARS: Final = 16
_TENANT_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-")


class Role(enum.StrEnum):
    READ = "read"
    SUBMIT = "submit"
    OPERATE = "operate"

    @property
    def rank(self) -> int:
        return _RANKS[self]

    def allows(self, needed: Role) -> bool:
        """May a key of this role do what needs `needed`?"""
        return self.rank >= needed.rank


_RANKS: Final = {Role.READ: 0, Role.SUBMIT: 1, Role.OPERATE: 2}


@dataclass(frozen=True, slots=True)
class ApiKey:
    name: str
    tenant: str
    role: Role
    digest: bytes
    """sha256 of the key: the key itself is not kept."""

    def sees_tenant(self, tenant: str) -> bool:
        """May this key see a job of `tenant`? (`operate` sees every tenant's.)"""
        return self.role is Role.OPERATE or tenant == self.tenant


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class KeyRing:
    """The configured keys, looked up in constant time per key."""

    def __init__(self, keys: Iterable[ApiKey]) -> None:
        self._keys = tuple(keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[ApiKey]:
        return iter(self._keys)

    def authenticate(self, token: str | None) -> ApiKey | None:
        """The key `token` is, or None (no token, or not a configured key)."""
        if not token:
            return None
        digest = _digest(token)
        found = None
        for key in self._keys:  # compare with every key: no early exit to time
            if hmac.compare_digest(key.digest, digest):
                found = key
        return found


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The API key of a request: `Authorization: Bearer KEY`, else `X-API-Key: KEY`."""
    auth = headers.get("Authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return headers.get("X-API-Key", "").strip() or None


def parse_keys(doc: object, *, source: str) -> KeyRing:
    """The keys of a parsed keys document; `ApiKeysError` naming `source` and the entry."""
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ApiKeysError(f'{source}: expected {{"keys": [...]}}')
    keys: list[ApiKey] = []
    seen: set[bytes] = set()
    for i, entry in enumerate(doc["keys"]):
        where = f"{source}: keys[{i}]"
        if not isinstance(entry, dict):
            raise ApiKeysError(f"{where}: expected an object")
        unknown = set(entry) - {"key", "tenant", "role", "name"}
        if unknown:
            raise ApiKeysError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
        key = entry.get("key")
        if not isinstance(key, str) or len(key) < MIN_KEY_CHARS or not key.isprintable():
            raise ApiKeysError(f"{where}: key must be a string of {MIN_KEY_CHARS}+ characters")
        tenant = entry.get("tenant", DEFAULT_TENANT)
        if (
            not isinstance(tenant, str)
            or not 1 <= len(tenant) <= 32
            or not set(tenant) <= _TENANT_CHARS
        ):
            raise ApiKeysError(f"{where}: tenant must be 1-32 of [a-z0-9_-]")
        try:
            role = Role(entry.get("role", Role.READ))
        except ValueError:
            choices = ", ".join(r.value for r in Role)
            raise ApiKeysError(f"{where}: role must be one of {choices}") from None
        digest = _digest(key)
        if digest in seen:
            raise ApiKeysError(f"{where}: the same key twice")
        seen.add(digest)
        name = entry.get("name", f"key-{i}")
        if not isinstance(name, str):
            raise ApiKeysError(f"{where}: name must be a string")
        keys.append(ApiKey(name=name, tenant=tenant, role=role, digest=digest))
    return KeyRing(keys)


def load_keys(path: Path | None) -> KeyRing:
    """The keys of the file at `path` (None: no keys, every request is refused)."""
    if path is None:
        return KeyRing(())
    try:
        doc = json.loads(path.read_text())
    except OSError as e:
        raise ApiKeysError(
            f"cannot read AGENTBUS_GATEWAY__API_KEYS_FILE {path}: {e.strerror or e}"
        ) from e
    except ValueError as e:
        raise ApiKeysError(f"AGENTBUS_GATEWAY__API_KEYS_FILE {path}: not JSON: {e}") from e
    return parse_keys(doc, source=f"AGENTBUS_GATEWAY__API_KEYS_FILE {path}")
