"""The chart's NATS users come from the one source of truth, agentbus.contract.permissions.

`agentbus permissions --write` writes files/nats-permissions.json and
files/nats-auth.conf (the nats-server `authorization` block, each password a variable);
the chart's auth.conf is those variables defined with the passwords, then that file,
written into the Secret by the chart's hook Job (`agentbus nats-auth-secret`, run here on
the rendered ConfigMap: see render.secret_data); no render holds a password. These
tests render the chart, check that text exactly, and compare it, with the
variables resolved, user by user with what `permissions.render_nats_conf` makes of the
same passwords (as literals); they check that every pod connects
as the user of its role (env from the same JSON, its password as a mounted Secret item),
that every Secret key a pod or the NATS chart mounts exists, that passwords survive an
upgrade, and that the NATS chart's values load the include. The conformance test runs
it all against a real nats-server.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from agentbus.contract import permissions
from tests.chart.render import (
    CHART_DIR,
    NATS_CONFIG_DIR,
    RELEASE,
    SCENARIOS,
    Rendered,
    chart_values,
    env_of,
    job_secret_data,
    job_secret_names,
    load_values,
    nats_auth_wiring,
    prepare_chart,
    render,
    secret_data,
)

pytestmark = pytest.mark.chart

RenderFn = Callable[[str], Rendered]

AUTH_SECRET = f"{RELEASE}-nats-auth"
PASSWORD_FILE = "AGENTBUS_NATS__PASSWORD_FILE"
PERMISSIONS_JSON = CHART_DIR / "files" / "nats-permissions.json"
AUTH_FILE = CHART_DIR / "files" / "nats-auth.conf"
# The first line of the chart's auth.conf, before the password variables.
VARIABLES_COMMENT = (
    "# The password of each NATS user below, as the nats-server variable its entry uses.\n"
)
# The NATS user each of our workloads runs as (the chart's role mapping).
ROLE_OF_WORKLOAD = {
    ("Deployment", f"{RELEASE}-orchestrator"): permissions.ORCHESTRATOR,
    ("Deployment", f"{RELEASE}-summarize-worker"): permissions.WORKER,
    ("Deployment", f"{RELEASE}-event-archiver"): permissions.ARCHIVER,
    ("Deployment", f"{RELEASE}-gateway"): permissions.GATEWAY,
    ("Job", f"{RELEASE}-provision"): permissions.PROVISIONER,
    ("Pod", f"{RELEASE}-test-submit"): permissions.CLIENT,
}


def _workload_name(owner: dict[str, Any]) -> str:
    """The name of a workload without the spec hash of the provisioning Job's name."""
    name = str(owner["metadata"]["name"])
    prefix = f"{RELEASE}-provision-"
    return prefix.removesuffix("-") if name.startswith(prefix) else name


def _json() -> dict[str, Any]:
    return dict(json.loads(PERMISSIONS_JSON.read_text()))


def _auth_on(scenario: str) -> bool:
    return bool(chart_values(load_values(scenario))["natsAuth"]["enabled"])


AUTH_SCENARIOS = [s for s in SCENARIOS if _auth_on(s)]


def _expected_conf(passwords: dict[str, str]) -> str:
    """permissions.py's rendering of the JSON's users (in its order) with `passwords`."""
    doc = _json()
    perms = permissions.build_permissions(skills=doc["skills"])
    creds: dict[str, permissions.Credential] = {
        u["user"]: permissions.Password(passwords[u["user"]]) for u in doc["users"]
    }
    return permissions.render_nats_conf(creds, permissions=perms)


def _expected_auth_conf(passwords: dict[str, str]) -> str:
    """The chart's auth.conf for `passwords`: each user's password variable defined (JSON
    order), a blank line, then files/nats-auth.conf as permissions.py writes it."""
    doc = _json()
    definitions = "".join(
        f'{permissions.password_env_var(u["user"])}: "{passwords[u["user"]]}"\n'
        for u in doc["users"]
    )
    auth_file = permissions.render_auth_conf(skills=doc["skills"])
    return f"{VARIABLES_COMMENT}{definitions}\n{auth_file}"


def _resolved(conf: str) -> str:
    """An auth.conf as nats-server reads it: each `$VARIABLE` replaced by the quoted value
    its definition gives, definitions and comments dropped."""
    head, sep, body = conf.partition("\n\n")
    assert sep, "no blank line after the password variables"
    definitions = head.splitlines()
    assert definitions[0] + "\n" == VARIABLES_COMMENT
    values: dict[str, str] = {}
    for line in definitions[1:]:
        name, _, quoted = line.partition(": ")
        assert name not in values and quoted.startswith('"') and quoted.endswith('"'), line
        values[name] = quoted
    used: set[str] = set()

    def substitute(line: str) -> str:
        key, _, value = line.partition(": $")
        if not value:
            return line
        assert value in values, f"${value} is not defined before its use"
        used.add(value)
        return f"{key}: {values[value]}"

    out = [substitute(line) for line in body.splitlines() if not line.startswith("#")]
    assert used == set(values), "a defined variable nothing uses (nats-server refuses it)"
    return "\n".join(out) + "\n"


def _assert_auth_conf(conf: str, passwords: dict[str, str]) -> None:
    """The rendered auth.conf is exactly the variables of `passwords` then the file, and,
    resolved, has user by user the block permissions.py renders for those passwords."""
    expected = _expected_conf(passwords)
    resolved = _resolved(conf)
    users = [u["user"] for u in _json()["users"]]
    for user in users:  # user by user first, for a readable failure
        assert _user_block(resolved, user) == _user_block(expected, user), user
    assert resolved == expected
    assert conf == _expected_auth_conf(passwords)


def _user_block(conf: str, user: str) -> str:
    """The `{ user: ... }` block of one user in an authorization include."""
    start = conf.index(f'    {{\n      user: "{user}"\n')
    return conf[start : conf.index("\n    }\n", start) + len("\n    }\n")]


def _mount_of(container: dict[str, Any], path: str) -> dict[str, Any]:
    """The volumeMount a file path lies under (the deepest one)."""
    hits = [
        m for m in container.get("volumeMounts", [])
        if PurePosixPath(path).is_relative_to(m["mountPath"])
    ]  # fmt: skip
    assert hits, f"{path} is under no volumeMount"
    return max(hits, key=lambda m: len(m["mountPath"]))


# --- one source of truth -----------------------------------------------------------------


def test_permissions_files_are_what_permissions_py_writes() -> None:
    skills = _json()["skills"]
    assert PERMISSIONS_JSON.read_text() == permissions.render_json(skills=skills), (
        "run `agentbus permissions --write`"
    )
    assert AUTH_FILE.read_text() == permissions.render_auth_conf(skills=skills), (
        "run `agentbus permissions --write`"
    )
    assert [u["user"] for u in _json()["users"]] == list(permissions.ROLES)
    for u in _json()["users"]:
        assert u["password_variable"] == permissions.password_env_var(u["user"])
        assert f"      password: ${u['password_variable']}\n" in AUTH_FILE.read_text()


def test_the_chart_renders_no_permissions_itself() -> None:
    """auth.conf comes from files/: no template spells a permission, user block or subject."""
    for path in sorted((CHART_DIR / "templates").rglob("*")):
        if path.is_file():
            code = re.sub(r"\{\{-?\s*/\*.*?\*/\s*-?\}\}", "", path.read_text(), flags=re.S)
            code = "\n".join(x for x in code.splitlines() if not x.lstrip().startswith("#"))
            for needle in ("allow_responses", "subscribe", "users = [", "$JS."):
                assert needle not in code, f"{path.name} renders {needle!r} itself"


@pytest.mark.parametrize("scenario", AUTH_SCENARIOS)
def test_auth_include_is_what_permissions_py_renders(rendered: RenderFn, scenario: str) -> None:
    data = secret_data(rendered(scenario), AUTH_SECRET)
    users = [u["user"] for u in _json()["users"]]
    assert sorted(data) == sorted([*users, "auth.conf"])
    passwords = {u: data[u] for u in users}
    assert all(len(p) >= 32 for p in passwords.values())
    assert len(set(passwords.values())) == len(users)  # one password per user
    _assert_auth_conf(data["auth.conf"], passwords)


def test_every_user_of_the_include_has_exactly_the_json_permissions(rendered: RenderFn) -> None:
    """Independent of the text format: the subjects of each user's block are the JSON's."""
    conf = secret_data(rendered("default"), AUTH_SECRET)["auth.conf"]
    for entry in _json()["users"]:
        block = _user_block(conf, entry["user"])
        pub, _, sub = block.partition("subscribe:")
        quoted = [line.strip().strip('"') for line in pub.splitlines() if line.startswith(" " * 10)]
        assert quoted == entry["permissions"]["publish"]["allow"], entry["user"]
        quoted = [line.strip().strip('"') for line in sub.splitlines() if line.startswith(" " * 10)]
        assert quoted == entry["permissions"]["subscribe"]["allow"], entry["user"]
        assert ("allow_responses: true" in block) == bool(
            entry["permissions"].get("allow_responses")
        ), entry["user"]
        inbox = f"{entry['inbox_prefix']}.>"
        assert (
            entry["user"] == permissions.ADMIN
            or inbox in entry["permissions"]["subscribe"]["allow"]
        ), entry["user"]


# --- each pod its own user ---------------------------------------------------------------


@pytest.mark.parametrize("scenario", AUTH_SCENARIOS)
def test_every_pod_connects_as_the_user_of_its_role(rendered: RenderFn, scenario: str) -> None:
    r = rendered(scenario)
    entries = {u["user"]: u for u in _json()["users"]}
    data = secret_data(r, AUTH_SECRET)
    seen = set()
    for owner, spec in r.pod_specs():
        key = (owner["kind"], _workload_name(owner))
        # the hook Job writing the Secret, the helm test through the gateway: no NATS
        if key in (("Job", AUTH_SECRET), ("Pod", f"{RELEASE}-test-gateway")):
            (c,) = spec["containers"]
            assert not [e for e in c.get("env", []) if e["name"].startswith("AGENTBUS_NATS")]
            continue
        user = ROLE_OF_WORKLOAD[key]
        seen.add(key)
        (c,) = spec["containers"]
        env = env_of(c)
        # the JSON's env entries of its user, verbatim
        for name, value in entries[user]["env"].items():
            assert env[name] == {"name": name, "value": value}, (key, name)
        assert env["AGENTBUS_NATS__USER"]["value"] == user
        assert env["AGENTBUS_NATS__INBOX_PREFIX"]["value"] == permissions.inbox_prefix(user)
        assert "AGENTBUS_NATS__PASSWORD" not in env and "AGENTBUS_NATS__CREDS_FILE" not in env
        # the password file is its own user's Secret item, and nobody else's
        path = env[PASSWORD_FILE]["value"]
        mount = _mount_of(c, path)
        assert mount["readOnly"] is True
        volume = {v["name"]: v for v in spec["volumes"]}[mount["name"]]
        assert volume["secret"]["secretName"] == AUTH_SECRET
        (item,) = volume["secret"]["items"]
        rel = posixpath.relpath(path, mount["mountPath"])
        assert item == {"key": user, "path": rel}, key
        assert data[user], key
        assert volume["secret"]["defaultMode"] & 0o007 == 0  # not world-readable
    assert seen == set(ROLE_OF_WORKLOAD)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_referenced_secret_key_exists(rendered: RenderFn, scenario: str) -> None:
    """Secret items mounted and env secretKeyRefs that name a Secret of the release exist,
    and every *_FILE setting points into a mounted volume."""
    r = rendered(scenario)
    ours = {s["metadata"]["name"] for s in r.of_kind("Secret")} | job_secret_names(r)
    for owner, spec in r.pod_specs():
        where = f"{owner['kind']}/{owner['metadata']['name']}"
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for v in volumes.values():
            name = v.get("secret", {}).get("secretName")
            if name in ours:
                data = secret_data(r, name)
                for item in v["secret"].get("items", []):
                    assert item["key"] in data, f"{where}: {name} has no key {item['key']}"
        for c in spec["containers"]:
            for var in c.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref and ref["name"] in ours:
                    assert ref["key"] in secret_data(r, ref["name"]), f"{where}: {ref}"
                if var["name"].endswith("_FILE") and "value" in var:
                    mount = _mount_of(c, var["value"])
                    assert mount["name"] in volumes, where
    if chart_values(r.values)["nats"]["enabled"]:
        wiring = nats_auth_wiring(r)
        data = secret_data(r, wiring.secret_name)
        assert set(wiring.items) <= set(data), wiring


# --- the NATS chart loads the include ----------------------------------------------------


@pytest.mark.parametrize("scenario", [s for s in SCENARIOS if s != "external-nats"])
def test_nats_chart_values_include_the_rendered_secret(rendered: RenderFn, scenario: str) -> None:
    r = rendered(scenario)
    wiring = nats_auth_wiring(r)
    assert wiring.secret_name == AUTH_SECRET
    included = {posixpath.normpath(posixpath.join(NATS_CONFIG_DIR, p)) for p in wiring.includes}
    auth_file = posixpath.join(wiring.mount_path, wiring.items["auth.conf"])
    assert auth_file in included
    # the config reloader mounts the NATS container's volumes under /etc/ (its default
    # natsVolumeMountPrefixes) and watches included files: a new auth.conf is reloaded
    assert wiring.mount_path.startswith("/etc/")
    assert not wiring.mount_path.startswith(NATS_CONFIG_DIR)  # the ConfigMap's directory
    # the hook Job that writes the Secret runs before anything else of the release: before
    # the NATS pods and our pods mount it, on install, upgrade and rollback alike
    assert job_secret_names(r) == {AUTH_SECRET}
    (job,) = [j for j in r.of_kind("Job") if "helm.sh/hook" in j["metadata"].get("annotations", {})]
    ann = job["metadata"]["annotations"]
    assert set(ann["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade", "pre-rollback"}


def test_nats_exporter_and_monitors_for_the_dashboard(rendered: RenderFn) -> None:
    nats = chart_values({})["nats"]
    # the NATS chart runs the exporter with -jsz=all (when JetStream is on) and -prefix=nats
    assert nats["promExporter"]["enabled"] is True
    assert nats["config"]["jetstream"]["enabled"] is True
    dashboard = (CHART_DIR / "dashboards" / "agentbus.json").read_text()
    assert "nats_consumer_num_pending" in dashboard
    # one switch covers NATS too: a PodMonitor for the NATS chart's exporter container
    # (port prom-metrics) with either of ours; its own podMonitor stays off
    assert nats["promExporter"]["podMonitor"]["enabled"] is False
    # without the operator: the NATS pods carry scrape annotations for the exporter's port
    annotations = nats["podTemplate"]["merge"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(nats["promExporter"]["port"])
    for scenario, kind in (("autoscaling-keda", "PodMonitor"), ("nats-cluster", "ServiceMonitor")):
        r = rendered(scenario)
        (ours,) = (
            r.of_kind(kind)
            if kind == "ServiceMonitor"
            else [m for m in r.of_kind("PodMonitor") if m["metadata"]["name"] == RELEASE]
        )
        (for_nats,) = [
            m for m in r.of_kind("PodMonitor") if m["metadata"]["name"] == f"{RELEASE}-nats"
        ]
        # our own metrics carry a `service` label: the monitors keep it (honorLabels)
        endpoints = ours["spec"].get("podMetricsEndpoints") or ours["spec"]["endpoints"]
        assert all(ep["honorLabels"] is True for ep in endpoints), kind
        assert [ep["port"] for ep in for_nats["spec"]["podMetricsEndpoints"]] == ["prom-metrics"]
        # the dashboard's and the alerts' release label on every target
        for m in (ours, for_nats):
            assert m["spec"]["podTargetLabels"] == ["app.kubernetes.io/instance"]
        # it selects the NATS pods (the labels the NetworkPolicy and the NATS chart use)
        labels = for_nats["spec"]["selector"]["matchLabels"]
        assert labels == {
            "app.kubernetes.io/name": "nats",
            "app.kubernetes.io/instance": RELEASE,
            "app.kubernetes.io/component": "nats",
        }
    assert [m for m in rendered("default").objects if m["kind"].endswith("Monitor")] == []


def test_custom_resources_need_their_api(chart_dir: Path) -> None:
    """PodMonitor, ServiceMonitor, PrometheusRule and ScaledObject are made only where the
    cluster serves them (.Capabilities.APIVersions); else NOTES.txt names the value and
    the missing API (an API server would refuse the whole install)."""
    cases: list[tuple[dict[str, Any], str]] = [
        ({"metrics": {"podMonitor": {"enabled": True}}}, "monitoring.coreos.com/v1/PodMonitor"),
        (
            {"metrics": {"serviceMonitor": {"enabled": True}}},
            "monitoring.coreos.com/v1/ServiceMonitor",
        ),
        ({"prometheusRule": {"enabled": True}}, "monitoring.coreos.com/v1/PrometheusRule"),
        ({"worker": {"keda": {"enabled": True}}}, "keda.sh/v1alpha1/ScaledObject"),
    ]
    for values, api in cases:
        kind = api.rsplit("/", 1)[1]
        missing = render(chart_dir, values, api_versions=())
        assert missing.of_kind(kind) == [], api
        assert f"serves no {api}: it was not made" in missing.notes, api
        assert f"--api-versions {api}" in missing.notes
        # (the NATS exporter's monitor is a PodMonitor with a ServiceMonitor too)
        served = render(
            chart_dir, values, api_versions=(api, "monitoring.coreos.com/v1/PodMonitor")
        )
        assert served.of_kind(kind), api
        assert "WARNING" not in served.notes
    assert "WARNING" not in render(chart_dir, {}, api_versions=()).notes


# --- passwords -----------------------------------------------------------------------------


def test_passwords_are_kept_across_upgrades(rendered: RenderFn) -> None:
    r = rendered("default")
    first = secret_data(r, AUTH_SECRET)
    old = {k: v for k, v in first.items() if k not in ("auth.conf", permissions.ADMIN)}
    # the Secret exists (without admin, as if that user were new) when the Job runs again
    again = job_secret_data(r, AUTH_SECRET, current={**old, "auth.conf": "stale"})
    for user, password in old.items():
        assert again[user] == password, user
    assert again[permissions.ADMIN] != first[permissions.ADMIN]  # new user: new password
    _assert_auth_conf(again["auth.conf"], again)
    assert job_secret_data(r, AUTH_SECRET, current=again) == again  # nothing to change


def test_offline_renders_are_identical_and_hold_no_password(chart_dir: Path) -> None:
    """`helm template` twice (Argo CD and Flux sync that way): the same objects, and none
    holds a password, so a sync never rotates one."""
    first, second = render(chart_dir, {}), render(chart_dir, {})
    assert first.objects == second.objects
    assert first.of_kind("Secret") == []
    text = json.dumps(first.objects)
    assert "AGENTBUS_NATS_PASSWORD_WORKER:" not in text  # no variable defined, only used


def test_passwords_from_an_existing_secret(chart_dir: Path) -> None:
    mine = {u: f"pw-{u}-Zq8rT2vLx9" for u in permissions.ROLES}
    stored = {u: p + "\n" for u, p in mine.items()}  # e.g. `kubectl create secret --from-file`
    r = render(chart_dir, {"natsAuth": {"passwordsSecret": "my-nats-passwords"}})
    data = job_secret_data(r, AUTH_SECRET, current={"worker": "old"}, source=stored)
    assert {u: data[u] for u in mine} == mine
    _assert_auth_conf(data["auth.conf"], mine)
    (role,) = [o for o in r.of_kind("Role") if o["metadata"]["name"].endswith("-nats-auth")]
    readable = [n for rule in role["rules"] for n in rule.get("resourceNames", [])]
    assert sorted(readable) == sorted([AUTH_SECRET, "my-nats-passwords"])


@pytest.mark.parametrize(
    ("source", "needle"),
    [
        (
            {u: "x" * 20 for u in permissions.ROLES if u != "admin"},
            "my-nats-passwords has no (non-empty) key 'admin'",
        ),
        (dict.fromkeys(permissions.ROLES, 'ab"cd'), "the password of orchestrator holds a quote"),
    ],
)
def test_existing_secret_problems_fail_clearly(
    chart_dir: Path, source: dict[str, str], needle: str
) -> None:
    r = render(chart_dir, {"natsAuth": {"passwordsSecret": "my-nats-passwords"}})
    with pytest.raises(permissions.PermissionsError) as e:
        job_secret_data(r, AUTH_SECRET, source=source)
    assert needle in str(e.value)
    assert 'ab"cd' not in str(e.value)  # never a password in an error


# --- switches and mixes ----------------------------------------------------------------------


def test_auth_off_leaves_an_empty_include_and_no_users(chart_dir: Path) -> None:
    r = render(chart_dir, {"natsAuth": {"enabled": False}})
    data = secret_data(r, AUTH_SECRET)  # the NATS chart still mounts it
    assert data == {"auth.conf": data["auth.conf"]}
    assert all(line.startswith("#") for line in data["auth.conf"].splitlines())
    for owner, c in r.our_containers():
        env = env_of(c)
        assert "AGENTBUS_NATS__USER" not in env and PASSWORD_FILE not in env, owner["kind"]
        assert "nats-auth" not in {m["name"] for m in c["volumeMounts"]}


def test_external_nats_with_the_charts_users(chart_dir: Path) -> None:
    r = render(
        chart_dir,
        {"nats": {"enabled": False}, "externalNats": {"url": "nats://nats.messaging:4222"}},
    )
    data = secret_data(r, AUTH_SECRET)  # auth.conf for the external server to include
    _assert_auth_conf(data["auth.conf"], data)
    users = {env_of(c)["AGENTBUS_NATS__USER"]["value"] for _o, c in r.our_containers()}
    assert users == {"orchestrator", "worker", "archiver", "gateway", "provisioner", "client"}


def test_external_nats_with_credentials_of_its_own(rendered: RenderFn) -> None:
    r = rendered("external-nats")
    assert r.of_kind("Secret") == [] and job_secret_names(r) == set()
    for _owner, c in r.our_containers():
        assert PASSWORD_FILE not in env_of(c)


def test_a_service_with_its_own_secret_overrides_the_charts_user(chart_dir: Path) -> None:
    r = render(chart_dir, {"natsAuth": {"services": {"worker": {"existingSecret": "w"}}}})
    for owner, c in r.our_containers():
        env = env_of(c)
        if owner["metadata"]["name"] == f"{RELEASE}-summarize-worker":
            assert env["AGENTBUS_NATS__USER"]["valueFrom"]["secretKeyRef"] == {
                "name": "w",
                "key": "user",
            }
            assert PASSWORD_FILE not in env
        else:
            assert env["AGENTBUS_NATS__USER"]["value"] != permissions.WORKER
            assert PASSWORD_FILE in env


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        (
            {"worker": {"skill": "translate"}},
            'worker.skill "translate" has no NATS permissions',
        ),
        (
            {"natsAuth": {"services": {"worker": {"inboxPrefix": "_INBOX"}}}},
            "the chart's NATS user worker may only use _INBOX_worker",
        ),
        ({"nats": {"container": {"patch": []}}}, "nats.container.patch"),
        ({"nats": {"podTemplate": {"patch": []}}}, "nats.podTemplate.patch"),
        ({"nats": {"config": {"merge": {"$include": None}}}}, "nats.config.merge ($include)"),
        (
            {"nats": {"config": {"merge": {"$include": "auth.conf"}}}},
            "volume agentbus-nats-auth from Secret agentbus-nats-auth",
        ),
    ],
)
def test_broken_auth_wiring_fails_clearly(
    chart_dir: Path, values: dict[str, Any], needle: str
) -> None:
    import helm_python as helm

    with pytest.raises(helm.HelmError) as e:
        render(chart_dir, values)
    assert needle in str(e.value)


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda conf: None, "files/nats-auth.conf is missing from the chart"),
        (
            lambda conf: conf.replace("PASSWORD_WORKER", "PASSWORD_WORKERS"),
            'no user with the password $AGENTBUS_NATS_PASSWORD_WORKER of "worker"',
        ),
        (
            lambda conf: conf.replace("      password: $AGENTBUS_NATS_PASSWORD_ADMIN\n", ""),
            "do not have the same users",
        ),
    ],
)
def test_a_stale_auth_file_fails_clearly(
    tmp_path: Path, edit: Callable[[str], str | None], needle: str
) -> None:
    """The Secret's variables and the file's users must match (nats-server refuses a
    variable nothing uses, and cannot resolve one never defined)."""
    import helm_python as helm

    chart = prepare_chart(tmp_path)
    auth_file = chart / "files" / AUTH_FILE.name
    edited = edit(auth_file.read_text())
    if edited is None:
        auth_file.unlink()
    else:
        auth_file.write_text(edited)
    with pytest.raises(helm.HelmError) as e:
        render(chart, {})
    assert needle in str(e.value)
    assert "run `agentbus permissions --write`" in str(e.value)
