"""Least-privilege NATS permissions of every agentbus user: the single source of truth.

One NATS user per role, each allowed to publish and subscribe to exactly the subjects and
JetStream API calls its code uses (nothing to delete, purge or reconfigure except the
provisioner's create/update calls, and the orchestrator's removal of a task JetStream
gave up on):

- `orchestrator`: pulls `JOBS/orchestrator` and `RESULTS/orchestrator-results`, publishes
  tasks, reads and writes the `jobs` and `job-parts` KV buckets, reads the documents;
- `worker`: pulls `TASKS/{skill}-workers`, publishes results, answers `rpc.{skill}`;
- `archiver`: pulls `AGENT_EVENTS/event-archiver`, answers `rpc.history`;
- `client`: publishes `jobs.submit`, writes documents, reads (watches) job state, asks
  `rpc.history` and `rpc.{skill}`;
- `provisioner`: creates and updates the streams, consumers, KV buckets and object store;
- `admin`: everything (operators: `agentbus events`, DLQ inspection, replays).

Every service user may also emit events (`agent.*.events`, `agent.*.results`), file dead
letters on its own `dlq.{stream}` subjects, take control commands (`agent.*.commands`)
and answer requests (`allow_responses`). Each user has a private inbox prefix
(`_INBOX_{user}`, set as `AGENTBUS_NATS__INBOX_PREFIX`): nobody can read another user's
replies, JetStream API answers included.

The same data renders as a nats-server `authorization { users = [...] }` block
(`render_nats_conf`, used by the tests) and as JSON for the Helm chart
(`charts/agentbus/files/nats-permissions.json`, written by
`python -m agentbus.permissions --write`; `--check` fails when it is out of date;
`--format conf` prints the nats-server block with passwords taken from the server's
environment, `$AGENTBUS_NATS_PASSWORD_<USER>`).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from agentbus import subjects
from agentbus.errors import AgentBusError
from agentbus.settings import NATS_PASSWORD_ENV_PREFIX

__all__ = [
    "ADMIN",
    "ARCHIVER",
    "CHART_FILE",
    "CLIENT",
    "ORCHESTRATOR",
    "PROVISIONER",
    "ROLES",
    "WORKER",
    "NKey",
    "Password",
    "PasswordEnv",
    "PermissionsError",
    "UserPermissions",
    "build_permissions",
    "inbox_prefix",
    "main",
    "password_env_var",
    "render_json",
    "render_nats_conf",
    "user_env",
]

ORCHESTRATOR: Final = "orchestrator"
WORKER: Final = "worker"
ARCHIVER: Final = "archiver"
CLIENT: Final = "client"
PROVISIONER: Final = "provisioner"
ADMIN: Final = "admin"
ROLES: Final = (ORCHESTRATOR, WORKER, ARCHIVER, CLIENT, PROVISIONER, ADMIN)

CHART_FILE: Final = Path("charts/agentbus/files/nats-permissions.json")
"""Where the chart reads the permissions from, relative to the repository root."""

_JS: Final = "$JS.API"
_KV_STREAM_PREFIX: Final = "KV_"
_OBJ_STREAM_PREFIX: Final = "OBJ_"
_RESPONSE_TTL_NS: Final = 120 * 10**9
"""How long a requester's reply subject stays publishable (nats-server's default)."""
_SAFE_CONF_STRING: Final = re.compile(r'^[^"\\\x00-\x1f]*$')


class PermissionsError(AgentBusError):
    """Permissions could not be rendered (unknown user, unsafe credential value)."""


@dataclass(frozen=True)
class UserPermissions:
    """What one NATS user may do; subjects are sorted and unique."""

    user: str
    description: str
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    allow_responses: bool
    inbox_prefix: str

    def as_jwt_claims(self) -> dict[str, Any]:
        """The same permissions as the `nats` claims of a user JWT (operator mode: a
        `.creds` file per service, AGENTBUS_NATS__CREDS_FILE)."""
        claims: dict[str, Any] = {
            "pub": {"allow": list(self.publish)},
            "sub": {"allow": list(self.subscribe)},
        }
        if self.allow_responses:
            claims["resp"] = {"max": 1, "ttl": _RESPONSE_TTL_NS}
        return claims

    def as_dict(self) -> dict[str, Any]:
        perms: dict[str, Any] = {
            "publish": {"allow": list(self.publish)},
            "subscribe": {"allow": list(self.subscribe)},
        }
        if self.allow_responses:
            perms["allow_responses"] = True
        return perms


@dataclass(frozen=True)
class Password:
    """A literal password or a bcrypt hash (`$2a$...`) of one."""

    value: str


@dataclass(frozen=True)
class PasswordEnv:
    """A password the nats-server reads from its environment (`password: $NAME`)."""

    variable: str


@dataclass(frozen=True)
class NKey:
    """A user authenticated by its NKEY public key (`U...`)."""

    public_key: str


Credential = Password | PasswordEnv | NKey


def inbox_prefix(user: str) -> str:
    """The private inbox prefix of `user` (its `AGENTBUS_NATS__INBOX_PREFIX`)."""
    return f"_INBOX_{subjects.check_token(user, field='user')}"


def password_env_var(user: str) -> str:
    """The nats-server environment variable holding `user`'s password (`--format conf`)."""
    return NATS_PASSWORD_ENV_PREFIX + user.upper().replace("-", "_")


def user_env(user: str) -> dict[str, str]:
    """The environment a process running as `user` needs besides its password."""
    return {"AGENTBUS_NATS__USER": user, "AGENTBUS_NATS__INBOX_PREFIX": inbox_prefix(user)}


def _pull(stream: str, durable: str) -> list[str]:
    """Fetch from and ack/nak/term/in-progress on one durable pull consumer."""
    return [f"{_JS}.CONSUMER.MSG.NEXT.{stream}.{durable}", f"$JS.ACK.{stream}.{durable}.>"]


def _stream_read(stream: str) -> list[str]:
    """Read a KV bucket or object store stream: info, get (direct or not), ordered
    consumers (watch, keys, object chunks) with their flow-control replies."""
    return [
        f"{_JS}.STREAM.INFO.{stream}",
        f"{_JS}.STREAM.MSG.GET.{stream}",
        f"{_JS}.DIRECT.GET.{stream}",
        f"{_JS}.DIRECT.GET.{stream}.>",
        f"{_JS}.CONSUMER.CREATE.{stream}",
        f"{_JS}.CONSUMER.CREATE.{stream}.>",
        f"{_JS}.CONSUMER.INFO.{stream}.*",
        f"{_JS}.CONSUMER.DELETE.{stream}.*",
        f"$JS.FC.{stream}.>",
    ]


def _kv_read(bucket: str) -> list[str]:
    return _stream_read(_KV_STREAM_PREFIX + bucket)


def _kv_write(bucket: str) -> list[str]:
    return [f"$KV.{bucket}.>"]


def _obj_read(bucket: str) -> list[str]:
    # the object store client looks its chunk stream up by subject
    return [*_stream_read(_OBJ_STREAM_PREFIX + bucket), f"{_JS}.STREAM.NAMES"]


def _obj_write(bucket: str) -> list[str]:
    return [f"{_JS}.STREAM.INFO.{_OBJ_STREAM_PREFIX}{bucket}", f"$O.{bucket}.>"]


def _service_common(user: str) -> tuple[list[str], list[str]]:
    """Publish and subscribe subjects every service user needs: events, control commands."""
    publish = list(subjects.AGENT_EVENTS_SUBJECTS)
    subscribe = [subjects.AGENT_COMMANDS_WILDCARD, f"{inbox_prefix(user)}.>"]
    return publish, subscribe


def _provision_streams(skills: Sequence[str]) -> list[str]:
    streams = [
        *subjects.ALL_STREAMS,
        _KV_STREAM_PREFIX + subjects.JOBS_BUCKET,
        _KV_STREAM_PREFIX + subjects.JOB_PARTS_BUCKET,
        _OBJ_STREAM_PREFIX + subjects.DOCUMENTS_BUCKET,
    ]
    out = [f"{_JS}.INFO", f"{_JS}.STREAM.NAMES", f"{_JS}.STREAM.LIST"]
    for stream in streams:
        out += [
            f"{_JS}.STREAM.INFO.{stream}",
            f"{_JS}.STREAM.CREATE.{stream}",
            f"{_JS}.STREAM.UPDATE.{stream}",
        ]
    durables = [
        (subjects.JOBS_STREAM, subjects.ORCHESTRATOR_CONSUMER),
        (subjects.RESULTS_STREAM, subjects.ORCHESTRATOR_RESULTS_CONSUMER),
        (subjects.AGENT_EVENTS_STREAM, subjects.ARCHIVER_CONSUMER),
        *((subjects.TASKS_STREAM, subjects.workers_consumer(s)) for s in skills),
    ]
    for stream, durable in durables:
        out += [
            f"{_JS}.CONSUMER.INFO.{stream}.{durable}",
            f"{_JS}.CONSUMER.CREATE.{stream}.{durable}",
            f"{_JS}.CONSUMER.CREATE.{stream}.{durable}.>",
            f"{_JS}.CONSUMER.DURABLE.CREATE.{stream}.{durable}",
        ]
    return out


def _user(
    user: str,
    description: str,
    publish: Iterable[str],
    subscribe: Iterable[str],
    *,
    allow_responses: bool,
) -> UserPermissions:
    return UserPermissions(
        user=user,
        description=description,
        publish=tuple(sorted(set(publish))),
        subscribe=tuple(sorted(set(subscribe))),
        allow_responses=allow_responses,
        inbox_prefix=inbox_prefix(user),
    )


def build_permissions(
    *, skills: Sequence[str] = (subjects.SUMMARIZE_SKILL,)
) -> dict[str, UserPermissions]:
    """The permissions of every user, by user name (the names in `ROLES`)."""
    skills = sorted({subjects.check_token(s, field="skill") for s in skills})
    users: dict[str, UserPermissions] = {}

    pub, sub = _service_common(ORCHESTRATOR)
    users[ORCHESTRATOR] = _user(
        ORCHESTRATOR,
        "job intake, fan-out, result collection, reduce, job state",
        [
            *pub,
            *_pull(subjects.JOBS_STREAM, subjects.ORCHESTRATOR_CONSUMER),
            *_pull(subjects.RESULTS_STREAM, subjects.ORCHESTRATOR_RESULTS_CONSUMER),
            subjects.TASKS_SUBJECTS,
            subjects.dlq_subject(subjects.JOBS_STREAM),
            subjects.dlq_subject(subjects.RESULTS_STREAM),
            *_kv_read(subjects.JOBS_BUCKET),
            *_kv_write(subjects.JOBS_BUCKET),
            *_kv_read(subjects.JOB_PARTS_BUCKET),
            *_kv_write(subjects.JOB_PARTS_BUCKET),
            *_obj_read(subjects.DOCUMENTS_BUCKET),
            # the max-deliveries safety net: file the dead letter of a task JetStream gave
            # up on, and take that task off the work queue
            subjects.dlq_subject(subjects.TASKS_STREAM),
            f"{_JS}.STREAM.MSG.GET.{subjects.TASKS_STREAM}",
            f"{_JS}.STREAM.MSG.DELETE.{subjects.TASKS_STREAM}",
        ],
        [*sub, f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{subjects.TASKS_STREAM}.*"],
        allow_responses=True,
    )

    pub, sub = _service_common(WORKER)
    worker_pub = [*pub, "results.*.*", subjects.dlq_subject(subjects.TASKS_STREAM)]
    worker_sub = [*sub, "$SRV.>"]
    for skill in skills:
        worker_pub += _pull(subjects.TASKS_STREAM, subjects.workers_consumer(skill))
        worker_sub.append(f"rpc.{skill}")
    users[WORKER] = _user(
        WORKER,
        "task workers of the skills " + ", ".join(skills),
        worker_pub,
        worker_sub,
        allow_responses=True,
    )

    pub, sub = _service_common(ARCHIVER)
    users[ARCHIVER] = _user(
        ARCHIVER,
        "event archive and history queries",
        [
            *pub,
            *_pull(subjects.AGENT_EVENTS_STREAM, subjects.ARCHIVER_CONSUMER),
            subjects.dlq_subject(subjects.AGENT_EVENTS_STREAM),
        ],
        [*sub, subjects.RPC_HISTORY],
        allow_responses=True,
    )

    users[CLIENT] = _user(
        CLIENT,
        "submits documents, watches job state, reads history",
        [
            subjects.JOBS_SUBJECT,
            subjects.RPC_HISTORY,
            *(f"rpc.{skill}" for skill in skills),
            *_kv_read(subjects.JOBS_BUCKET),
            *_obj_read(subjects.DOCUMENTS_BUCKET),
            *_obj_write(subjects.DOCUMENTS_BUCKET),
        ],
        [f"{inbox_prefix(CLIENT)}.>"],
        allow_responses=False,
    )

    users[PROVISIONER] = _user(
        PROVISIONER,
        "creates and updates streams, consumers, KV buckets and the object store",
        _provision_streams(skills),
        [f"{inbox_prefix(PROVISIONER)}.>"],
        allow_responses=False,
    )

    users[ADMIN] = _user(
        ADMIN,
        "operators: every subject and JetStream API call",
        [">"],
        [">"],
        allow_responses=False,
    )
    return users


# --- renderers -------------------------------------------------------------------------


def _conf_string(value: str, *, what: str) -> str:
    if not _SAFE_CONF_STRING.fullmatch(value):
        raise PermissionsError(f"{what} holds a quote, backslash or control character")
    return f'"{value}"'


def _conf_list(values: Sequence[str], *, indent: str, what: str) -> str:
    inner = "\n".join(f"{indent}  {_conf_string(v, what=what)}" for v in values)
    return f"[\n{inner}\n{indent}]"


def _conf_credential(user: str, credential: Credential) -> str:
    if isinstance(credential, Password):
        return f"password: {_conf_string(credential.value, what=f'password of {user}')}"
    if isinstance(credential, PasswordEnv):
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", credential.variable):
            raise PermissionsError(f"password variable of {user} is not a variable name")
        return f"password: ${credential.variable}"
    if not re.fullmatch(r"U[A-Z2-7]{55}", credential.public_key):
        raise PermissionsError(f"NKEY of {user} is not a user public key (U...)")
    return f"nkey: {_conf_string(credential.public_key, what=f'nkey of {user}')}"


def render_nats_conf(
    credentials: Mapping[str, Credential],
    *,
    permissions: Mapping[str, UserPermissions] | None = None,
) -> str:
    """A nats-server `authorization { users = [...] }` block for the users in `credentials`.

    Credentials are literal passwords (or bcrypt hashes), environment variables of the
    server, or NKEY public keys; the permissions default to `build_permissions()`."""
    perms = permissions if permissions is not None else build_permissions()
    blocks: list[str] = []
    for user, credential in credentials.items():
        if user not in perms:
            raise PermissionsError(f"no permissions defined for NATS user {user!r}")
        p = perms[user]
        pub = _conf_list(p.publish, indent="        ", what="subject")
        sub = _conf_list(p.subscribe, indent="        ", what="subject")
        lines = [
            "    {",
            f"      user: {_conf_string(user, what='user name')}"
            if not isinstance(credential, NKey)
            else f"      # user {user}",
            f"      {_conf_credential(user, credential)}",
            "      permissions: {",
            f"        publish: {{ allow: {pub} }}",
            f"        subscribe: {{ allow: {sub} }}",
        ]
        if p.allow_responses:
            lines.append("        allow_responses: true")
        lines += ["      }", "    }"]
        blocks.append("\n".join(lines))
    return "authorization {\n  users = [\n" + "\n".join(blocks) + "\n  ]\n}\n"


def render_json(*, skills: Sequence[str] = (subjects.SUMMARIZE_SKILL,)) -> str:
    """The permissions as JSON for the Helm chart (stable: sorted, one trailing newline)."""
    perms = build_permissions(skills=skills)
    doc = {
        "comment": (
            "Generated by `python -m agentbus.permissions --write` from "
            "services/agentbus/permissions.py; do not edit by hand."
        ),
        "skills": sorted(skills),
        "users": [
            {
                "user": p.user,
                "description": p.description,
                "inbox_prefix": p.inbox_prefix,
                "env": user_env(p.user),
                "permissions": p.as_dict(),
            }
            for p in perms.values()
        ],
    }
    return json.dumps(doc, indent=2) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m agentbus.permissions [--write|--check] [--path P] [--skill S ...]`."""
    parser = argparse.ArgumentParser(
        prog="python -m agentbus.permissions",
        description="Print, write or check the NATS permissions file of the Helm chart.",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="write the file")
    mode.add_argument("--check", action="store_true", help="fail if the file is out of date")
    parser.add_argument("--path", type=Path, default=CHART_FILE, help=f"default {CHART_FILE}")
    parser.add_argument("--skill", action="append", dest="skills", help="worker skill (repeatable)")
    parser.add_argument(
        "--format",
        choices=("json", "conf"),
        default="json",
        help="json (the chart's file) or conf: a nats-server `authorization` block whose "
        "passwords come from the server's environment ($AGENTBUS_NATS_PASSWORD_<USER>)",
    )
    args = parser.parse_args(argv)
    skills = args.skills or [subjects.SUMMARIZE_SKILL]
    if args.format == "conf":
        perms = build_permissions(skills=skills)
        creds: dict[str, Credential] = {u: PasswordEnv(password_env_var(u)) for u in perms}
        sys.stdout.write(render_nats_conf(creds, permissions=perms))
        return 0
    text = render_json(skills=skills)
    path: Path = args.path
    if args.write:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}")
        return 0
    if args.check:
        try:
            current = path.read_text()
        except OSError as e:
            print(f"error: cannot read {path}: {e.strerror or e}", file=sys.stderr)
            return 1
        if current != text:
            print(
                f"error: {path} is out of date: run `python -m agentbus.permissions --write`",
                file=sys.stderr,
            )
            return 1
        print(f"{path} is up to date")
        return 0
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
