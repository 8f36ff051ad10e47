"""The permission model itself: least privilege by construction, and renderers that refuse
to write anything a nats-server config could misread."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agentbus.contract import permissions
from agentbus.contract.errors import PermissionsError
from agentbus.contract.permissions import (
    NKey,
    Password,
    PasswordEnv,
    build_permissions,
    main,
    render_auth_conf,
    render_json,
    render_nats_conf,
)

pytestmark = pytest.mark.unit

SERVICES = ("orchestrator", "worker", "archiver", "gateway", "client", "provisioner")


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
    # the work queue (after filing its dead letter): one message at a time, TASKS only;
    # a canceled job's objects are removed (purge of one object's chunk subject)
    # the gateway's DLQ replay takes the replayed dead letter out of the DLQ
    allowed = {
        "orchestrator": {"$JS.API.STREAM.MSG.DELETE.TASKS", "$JS.API.STREAM.PURGE.OBJ_documents"},
        "gateway": {"$JS.API.STREAM.MSG.DELETE.DLQ"},
    }.get(user, set())
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

    # JOBS.*: the configured tenants' intake consumers (`orchestrator-{tenant}`) too
    assert pulls("orchestrator") == {
        "JOBS.orchestrator", "JOBS.*", "RESULTS.orchestrator-results",
    }  # fmt: skip
    # one consumer per priority (normal keeps the name of old)
    # and any consumer of TASKS: the configured tenants' (`{skill}-workers-{p}-{tenant}`)
    # are named by the deployment's settings, and every TASKS consumer is the workers'
    assert pulls("worker") == {
        "TASKS.summarize-workers", "TASKS.summarize-workers-high", "TASKS.summarize-workers-low",
        "TASKS.*",
    }  # fmt: skip
    assert pulls("archiver") == {"AGENT_EVENTS.event-archiver"}
    # a client pulls only from its own readers of a job's state and partial results
    assert pulls("client") == {"KV_jobs.*", "PROGRESS.*"} and pulls("provisioner") == set()


def test_the_gateway_pulls_only_its_readers_and_reads_no_other_inbox() -> None:
    gw = build_permissions()["gateway"]
    assert {s for s in gw.publish if s.startswith("$JS.API.CONSUMER.MSG.NEXT.")} == {
        "$JS.API.CONSUMER.MSG.NEXT.KV_jobs.*",
        "$JS.API.CONSUMER.MSG.NEXT.PROGRESS.*",
    }
    assert not any(s.startswith("$JS.ACK.") for s in gw.publish)
    assert set(gw.subscribe) == {"_INBOX_gateway.>", "agent.*.commands"}
    assert "$SRV.STATS.agentbus-worker" in gw.publish and "$SRV.>" not in gw.publish


def test_skills_extend_the_worker_and_provisioner() -> None:
    perms = build_permissions(skills=["summarize", "translate"])
    assert "$JS.API.CONSUMER.MSG.NEXT.TASKS.translate-workers" in perms["worker"].publish
    assert "$JS.API.CONSUMER.MSG.NEXT.TASKS.translate-workers-high" in perms["worker"].publish
    assert "rpc.translate" in perms["worker"].subscribe
    assert "rpc.translate" in perms["client"].publish
    # every consumer of TASKS (each skill's, priority's and tenant's) by one wildcard
    assert "$JS.API.CONSUMER.INFO.TASKS.*" in perms["provisioner"].publish
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


def test_auth_conf_file_is_the_users_block_with_password_variables() -> None:
    text = render_auth_conf(skills=["summarize", "translate"])
    comment, _, block = text.partition("authorization {")
    assert all(line.startswith("#") for line in comment.splitlines())
    perms = build_permissions(skills=["summarize", "translate"])
    creds: dict[str, permissions.Credential] = {
        u: PasswordEnv(permissions.password_env_var(u)) for u in perms
    }
    assert "authorization {" + block == render_nats_conf(creds, permissions=perms)
    users = json.loads(render_json(skills=["summarize", "translate"]))["users"]
    assert [u["password_variable"] for u in users] == [
        f"AGENTBUS_NATS_PASSWORD_{u.upper()}" for u in permissions.ROLES
    ]
    for u in users:  # each user's password is exactly its JSON entry's variable
        assert text.count(f"password: ${u['password_variable']}\n") == 1
    assert text.count("password: $") == len(users)
    assert "rpc.translate" in text


def test_cli_writes_and_checks_both_chart_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    json_path = tmp_path / "files" / "perms.json"
    conf_path = json_path.with_name("nats-auth.conf")  # beside --path by default
    args = ["--path", str(json_path)]
    assert main([*args, "--check"]) == 1
    assert capsys.readouterr().err.count("cannot read") == 2
    assert main([*args, "--write"]) == 0
    assert json_path.read_text() == render_json()
    assert conf_path.read_text() == render_auth_conf()
    assert main([*args, "--check"]) == 0
    assert capsys.readouterr().out.count("is up to date") == 2

    conf_path.write_text(conf_path.read_text().replace("jobs.submit", "jobs.>"))
    assert main([*args, "--check"]) == 1
    err = capsys.readouterr().err
    assert f"{conf_path} is out of date" in err and str(json_path) not in err
    assert main([*args, "--check", "--skill", "summarize", "--skill", "translate"]) == 1
    assert "--write --skill summarize --skill translate`" in capsys.readouterr().err

    other = tmp_path / "elsewhere.conf"
    assert main([*args, "--conf-path", str(other), "--write"]) == 0
    assert other.read_text() == render_auth_conf()
    capsys.readouterr()
    assert main(["--format", "conf"]) == 0
    assert capsys.readouterr().out == render_auth_conf()


def test_a_tenant_user_submits_only_as_its_tenant() -> None:
    perms = build_permissions(tenant_users={"acme": ["acme-app"], "beta": ["beta-1", "beta-2"]})
    acme = perms["acme-app"]
    submits = {s for s in acme.publish if s.startswith("jobs.submit")}
    assert submits == {"jobs.submit.acme"}
    assert {s for s in perms["beta-2"].publish if s.startswith("jobs.submit")} == {
        "jobs.submit.beta"
    }
    # the trusted client may submit as anyone; service users are not tenant users
    assert {"jobs.submit", "jobs.submit.*"} <= set(perms["client"].publish)
    assert acme.inbox_prefix == "_INBOX_acme-app" and not acme.allow_responses
    with pytest.raises(PermissionsError, match="service user"):
        build_permissions(tenant_users={"acme": ["worker"]})


def test_a_tenant_user_reads_only_under_its_namespace() -> None:
    """Every read a tenant's user may make names its tenant in the subject: no stream get
    by sequence, no consumer without a filter in its create subject, no wide wildcard."""
    perms = build_permissions(tenant_users={"acme": ["acme-app"]})
    pub = set(perms["acme-app"].publish)
    reads = {s for s in pub if s.startswith("$JS.API.") and ("KV_jobs" in s or "PROGRESS" in s)}
    assert reads == {  # no STREAM.INFO: with a subjects filter it lists every job id
        "$JS.API.DIRECT.GET.KV_jobs.$KV.jobs.acme.>",
        "$JS.API.CONSUMER.CREATE.KV_jobs.*.$KV.jobs.acme.>",
        "$JS.API.CONSUMER.MSG.NEXT.KV_jobs.*",
        "$JS.API.CONSUMER.DELETE.KV_jobs.*",
        "$JS.API.DIRECT.GET.PROGRESS.progress.acme.>",
        "$JS.API.CONSUMER.CREATE.PROGRESS.*.progress.acme.>",
        "$JS.API.CONSUMER.MSG.NEXT.PROGRESS.*",
        "$JS.API.CONSUMER.DELETE.PROGRESS.*",
    }
    asks = {s for s in pub if s.startswith(("jobs.", "rpc."))}
    # no rpc.{skill}: a request/reply summary is outside the tenant's share and limits
    assert asks == {"jobs.submit.acme", "jobs.cancel.acme", "rpc.history.acme"}
    assert perms["acme-app"].subscribe == ("_INBOX_acme-app.>",)
    # trusted users ask on both forms; the answerers subscribe to both
    for user in ("client", "gateway"):
        assert {"jobs.cancel", "jobs.cancel.*", "rpc.history", "rpc.history.*"} <= set(
            perms[user].publish
        )
    assert {"jobs.cancel", "jobs.cancel.*"} <= set(perms["orchestrator"].subscribe)
    assert {"rpc.history", "rpc.history.*"} <= set(perms["archiver"].subscribe)
