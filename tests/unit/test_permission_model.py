"""The permission model itself: least privilege by construction, and renderers that refuse
to write anything a nats-server config could misread."""

from __future__ import annotations

import json

import pytest

from agentbus import permissions
from agentbus.permissions import (
    NKey,
    Password,
    PasswordEnv,
    PermissionsError,
    build_permissions,
    render_json,
    render_nats_conf,
)

pytestmark = pytest.mark.unit

SERVICES = ("orchestrator", "worker", "archiver", "client", "provisioner")


def test_every_role_has_permissions_and_a_private_inbox() -> None:
    perms = build_permissions()
    assert tuple(perms) == permissions.ROLES
    for user in SERVICES:
        p = perms[user]
        assert p.inbox_prefix == f"_INBOX_{user}"
        assert f"_INBOX_{user}.>" in p.subscribe
        assert not any(s.startswith("_INBOX") and s != f"_INBOX_{user}.>" for s in p.subscribe)
        assert ">" not in p.publish and ">" not in p.subscribe
        assert list(p.publish) == sorted(set(p.publish))


@pytest.mark.parametrize("user", SERVICES)
def test_nobody_but_admin_can_destroy_or_reconfigure(user: str) -> None:
    p = build_permissions()[user]
    # the orchestrator's max-deliveries safety net takes a task JetStream gave up on off
    # the work queue (after filing its dead letter): one message at a time, TASKS only
    allowed = {"$JS.API.STREAM.MSG.DELETE.TASKS"} if user == "orchestrator" else set()
    for subject in set(p.publish) - allowed:
        for verb in (".STREAM.DELETE.", ".STREAM.PURGE.", ".STREAM.MSG.DELETE.", ".ACCOUNT."):
            assert verb not in subject, subject
        if user != "provisioner":
            assert ".STREAM.CREATE." not in subject and ".STREAM.UPDATE." not in subject
            assert ".CONSUMER.DURABLE.CREATE." not in subject
        assert not subject.startswith("$JS.API.>"), subject


def test_each_service_pulls_only_its_own_consumers() -> None:
    perms = build_permissions()

    def pulls(user: str) -> set[str]:
        return {
            s.removeprefix("$JS.API.CONSUMER.MSG.NEXT.")
            for s in perms[user].publish
            if s.startswith("$JS.API.CONSUMER.MSG.NEXT.")
        }

    assert pulls("orchestrator") == {
        "JOBS.orchestrator",
        "JOBS.orchestrator-deadlines",
        "RESULTS.orchestrator-results",
    }
    assert pulls("worker") == {"TASKS.summarize-workers"}
    assert pulls("archiver") == {"AGENT_EVENTS.event-archiver"}
    assert pulls("client") == set() and pulls("provisioner") == set()


def test_skills_extend_the_worker_and_provisioner() -> None:
    perms = build_permissions(skills=["summarize", "translate"])
    assert "$JS.API.CONSUMER.MSG.NEXT.TASKS.translate-workers" in perms["worker"].publish
    assert "rpc.translate" in perms["worker"].subscribe
    assert "rpc.translate" in perms["client"].publish
    assert "$JS.API.CONSUMER.INFO.TASKS.translate-workers" in perms["provisioner"].publish
    with pytest.raises(ValueError, match="skill"):
        build_permissions(skills=["bad.skill"])


def test_conf_renders_every_credential_kind() -> None:
    conf = render_nats_conf(
        {
            "worker": Password("p4ss"),
            "client": PasswordEnv("CLIENT_PW"),
            "archiver": NKey("U" + "A" * 55),
        }
    )
    assert 'user: "worker"' in conf and 'password: "p4ss"' in conf
    assert "password: $CLIENT_PW" in conf
    assert f'nkey: "U{"A" * 55}"' in conf
    assert conf.count("allow_responses: true") == 2  # worker and archiver, not the client
    assert conf.startswith("authorization {") and conf.rstrip().endswith("}")


@pytest.mark.parametrize(
    ("credentials", "match"),
    [
        ({"worker": Password('a"b')}, "password of worker"),
        ({"worker": Password("a\nb")}, "password of worker"),
        ({"worker": Password("a\\b")}, "password of worker"),
        ({"worker": PasswordEnv("NOT A VAR")}, "variable"),
        ({"worker": NKey("SUAXXX")}, "NKEY"),
        ({"mallory": Password("x")}, "mallory"),
    ],
)
def test_conf_refuses_what_a_server_could_misread(
    credentials: dict[str, permissions.Credential], match: str
) -> None:
    with pytest.raises(PermissionsError, match=match) as e:
        render_nats_conf(credentials)
    for c in credentials.values():
        if isinstance(c, Password):
            assert c.value not in str(e.value)  # the error names the user, not the secret


def test_json_is_stable_and_complete() -> None:
    text = render_json()
    assert text == render_json() and text.endswith("}\n")
    doc = json.loads(text)
    users = {u["user"]: u for u in doc["users"]}
    assert set(users) == set(permissions.ROLES)
    assert users["worker"]["env"] == {
        "AGENTBUS_NATS__USER": "worker",
        "AGENTBUS_NATS__INBOX_PREFIX": "_INBOX_worker",
    }
    assert users["worker"]["permissions"]["allow_responses"] is True
    assert "allow_responses" not in users["client"]["permissions"]


def test_jwt_claims_mirror_the_config() -> None:
    p = build_permissions()["worker"]
    claims = p.as_jwt_claims()
    assert claims["pub"]["allow"] == list(p.publish)
    assert claims["sub"]["allow"] == list(p.subscribe)
    assert claims["resp"]["max"] == 1
