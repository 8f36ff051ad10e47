"""What the chart's NATS auth Secret holds (agentbus.contract.nats_auth): passwords are
never changed once stored, unless the operator's Secret says otherwise."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentbus.contract import permissions
from agentbus.contract.errors import PermissionsError
from agentbus.contract.nats_auth import AUTH_CONF_KEY, AUTH_OFF_CONF, auth_secret_data

pytestmark = pytest.mark.unit

CHART_FILES = Path(__file__).resolve().parents[2] / "charts" / "agentbus" / "files"
PERMS = (CHART_FILES / "nats-permissions.json").read_text()
AUTH_FILE = (CHART_FILES / "nats-auth.conf").read_text()
USERS = list(permissions.ROLES)


def _counter() -> itertools.count[int]:
    return itertools.count()


def _data(current: dict[str, str], source: dict[str, str] | None = None) -> dict[str, str]:
    n = _counter()
    return auth_secret_data(
        permissions_json=PERMS,
        auth_file=AUTH_FILE,
        current=current,
        source=source,
        source_name="mine",
        new_password=lambda: f"generated{next(n)}",
    )


password = st.text(alphabet="abcXYZ0189-_.", min_size=1, max_size=40)


@given(st.dictionaries(st.sampled_from(USERS), password))
def test_stored_passwords_are_kept_and_missing_ones_made(current: dict[str, str]) -> None:
    data = _data({**current, AUTH_CONF_KEY: "stale"})
    assert set(data) == {*USERS, AUTH_CONF_KEY}
    for user in USERS:
        assert data[user] == current.get(user) or user not in current
        assert data[user]
        variable = permissions.password_env_var(user)
        assert f'{variable}: "{data[user]}"\n' in data[AUTH_CONF_KEY]
    assert data[AUTH_CONF_KEY].endswith(AUTH_FILE)
    assert _data(data) == data  # a second run changes nothing


@given(
    st.dictionaries(st.sampled_from(USERS), password),
    st.fixed_dictionaries(dict.fromkeys(USERS, password)),
)
def test_the_operators_secret_wins(current: dict[str, str], source: dict[str, str]) -> None:
    data = _data(current, {u: p + "\n" for u, p in source.items()})
    assert {u: data[u] for u in USERS} == source


def test_auth_off_defines_no_users_and_keeps_stored_passwords() -> None:
    data = auth_secret_data(
        permissions_json=None,
        auth_file=None,
        current={"worker": "w" * 32, AUTH_CONF_KEY: "old"},
        new_password=lambda: "never",
    )
    assert data == {AUTH_CONF_KEY: AUTH_OFF_CONF, "worker": "w" * 32}


@pytest.mark.parametrize(
    ("perms", "auth_file", "needle"),
    [
        ("{", AUTH_FILE, "nats-permissions.json is not readable"),
        (PERMS, AUTH_FILE.replace("PASSWORD_WORKER\n", "PASSWORD_WORKERS\n"), "of 'worker'"),
        (
            PERMS,
            AUTH_FILE.replace("      password: $AGENTBUS_NATS_PASSWORD_ADMIN\n", ""),
            "same users",
        ),
    ],
)
def test_stale_files_fail_naming_the_fix(perms: str, auth_file: str, needle: str) -> None:
    with pytest.raises(PermissionsError, match="agentbus permissions --write") as e:
        auth_secret_data(
            permissions_json=perms, auth_file=auth_file, current={}, new_password=lambda: "x"
        )
    assert needle in str(e.value)
