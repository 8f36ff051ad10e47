"""The data of the chart's NATS auth Secret (`<nats>-auth`), computed from the files
`agentbus permissions --write` puts in the chart, the Secret as it is now, and optionally
a Secret of the operator's with the passwords.

Pure: `agentbus nats-auth-secret` (the chart's pre-install/pre-upgrade hook Job) reads and
writes the Secrets; this decides what they hold. A password, once in the Secret, is kept
(renders with `helm template`, as Argo CD and Flux do, never see nor change it); a user
without one gets a new one; with `passwordsSecret` the operator's passwords win.

The Secret holds one key per user (its password, mounted by the pods of that user) and
`auth.conf`, the nats-server authorization include that the NATS pods load: each user's
password as the nats-server variable its entry in the users block uses, a blank line, then
the users block (`nats-auth.conf`, passwords as `$AGENTBUS_NATS_PASSWORD_<USER>`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any, Final

from agentbus.contract.errors import PermissionsError

__all__ = [
    "AUTH_CONF_KEY",
    "AUTH_OFF_CONF",
    "VARIABLES_COMMENT",
    "auth_secret_data",
    "users_of",
]

AUTH_CONF_KEY: Final = "auth.conf"
VARIABLES_COMMENT: Final = (
    "# The password of each NATS user below, as the nats-server variable its entry uses.\n"
)
AUTH_OFF_CONF: Final = "# natsAuth.enabled is false: no NATS users (anyone may connect)\n"
WRITE_COMMAND: Final = "run `agentbus permissions --write`"
_VARIABLE: Final = re.compile(r"[A-Z_][A-Z0-9_]*")
_SAFE_CONF_STRING: Final = re.compile(r'[^"\\\x00-\x1f]*')
_PASSWORD_LINE: Final = re.compile(r"^\s*password: \$", re.MULTILINE)


def users_of(permissions_json: str) -> list[tuple[str, str]]:
    """(user, password variable) of every user of nats-permissions.json, in its order."""
    try:
        doc: Any = json.loads(permissions_json)
        users = [(str(u["user"]), str(u["password_variable"])) for u in doc["users"]]
    except (ValueError, KeyError, TypeError) as e:
        raise PermissionsError(
            f"nats-permissions.json is not readable ({e}): {WRITE_COMMAND}"
        ) from e
    for user, variable in users:
        if not _VARIABLE.fullmatch(variable):
            raise PermissionsError(
                f"nats-permissions.json: user {user!r} has no password_variable: {WRITE_COMMAND}"
            )
    return users


def _check_auth_file(auth_file: str, users: list[tuple[str, str]]) -> None:
    """nats-server refuses a defined variable nothing uses and cannot resolve one never
    defined: the file's users and the JSON's must be the same."""
    if len(_PASSWORD_LINE.findall(auth_file)) != len(users):
        raise PermissionsError(
            "nats-auth.conf and nats-permissions.json do not have the same users: " + WRITE_COMMAND
        )
    for user, variable in users:
        if f"\n      password: ${variable}\n" not in auth_file:
            raise PermissionsError(
                f"nats-auth.conf has no user with the password ${variable} of {user!r}: "
                + WRITE_COMMAND
            )


def auth_secret_data(
    *,
    permissions_json: str | None,
    auth_file: str | None,
    current: Mapping[str, str],
    source: Mapping[str, str] | None = None,
    source_name: str = "",
    new_password: Callable[[], str],
) -> dict[str, str]:
    """The Secret's new data (decoded): `current` is its data now ({} before the first
    install); `source` the operator's Secret (`natsAuth.passwordsSecret`, one key per user)
    or None; `new_password()` makes a password for a user that has none.

    Without the files (natsAuth.enabled false) auth.conf defines no users and the
    passwords already stored are kept (turning auth back on does not change them).
    Errors name the Secret, key or file, never a password."""
    if permissions_json is None or auth_file is None:
        kept = {k: v for k, v in current.items() if k != AUTH_CONF_KEY}
        return {AUTH_CONF_KEY: AUTH_OFF_CONF, **kept}
    users = users_of(permissions_json)
    _check_auth_file(auth_file, users)
    out: dict[str, str] = {}
    lines = [VARIABLES_COMMENT]
    for user, variable in users:
        if source is not None:
            password = source.get(user, "").strip()
            if not password:
                raise PermissionsError(
                    f"natsAuth.passwordsSecret {source_name} has no (non-empty) key {user!r}: "
                    "it needs one key per NATS user"
                )
        else:
            password = current.get(user, "") or new_password()
        if not _SAFE_CONF_STRING.fullmatch(password):
            raise PermissionsError(
                f"the password of {user} holds a quote, backslash or control character"
            )
        out[user] = password
        lines.append(f'{variable}: "{password}"\n')
    out[AUTH_CONF_KEY] = "".join(lines) + "\n" + auth_file
    return out
