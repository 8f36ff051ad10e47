"""Least-privilege NATS permissions of every agentbus user: the single source of truth.

One NATS user per role, each allowed to publish and subscribe to exactly the subjects and
JetStream API calls its code uses (nothing to delete, purge or reconfigure except the
provisioner's create/update calls, and the orchestrator's removal of a task JetStream
gave up on):

- `orchestrator`: pulls `JOBS/orchestrator` and `RESULTS/orchestrator-results`, publishes
  tasks and live partial results (`progress.*`), reads and writes the `jobs` and
  `job-parts` KV buckets, reads the documents;
- `worker`: pulls `TASKS/{skill}-workers` (and `-high`, `-low`: one consumer per
  priority), publishes results and token deltas (`progress.*`), answers `rpc.{skill}`;
- `archiver`: pulls `AGENT_EVENTS/event-archiver`, answers `rpc.history`;
- `gateway`: the HTTP front door, a client of the rest: the `client` permissions (its API
  keys say which tenant a job is submitted as), plus worker discovery (`$SRV.STATS`),
  reading the DLQ and replaying a dead letter (republish to its original subject, then
  delete it from the DLQ: the one destructive call it has), and the tenants' usage
  (their counters, their task consumers' info);
- `client`: publishes `jobs.submit` (and `jobs.submit.{tenant}`: a trusted client may
  submit as any tenant), writes documents, reads (watches) job state and
  live partial results (ordered consumers on `PROGRESS`), asks
  `rpc.history` and `rpc.{skill}`;
- one user per tenant user (`AGENTBUS_TENANTS__CONFIGURED`, a tenant's `users`): submits
  only on `jobs.submit.{tenant}` (so its jobs are that tenant's whatever they claim),
  cancels on `jobs.cancel.{tenant}` and asks `rpc.history.{tenant}` (answered for that
  tenant's job ids only), and reads only the states and partial results of its tenant's
  jobs, named `{tenant}.{id}`: direct gets and named consumers under
  `$KV.jobs.{tenant}.>` and `progress.{tenant}.>` (not the streams' info, which lists
  every job id; not `rpc.{skill}`, which is outside the tenant's limits); it uses the
  shared documents store, whose objects are sealed (`agentbus.bus.documents`);
- `provisioner`: creates and updates the streams, consumers, KV buckets and object store;
- `admin`: everything (operators: `agentbus events`, DLQ inspection, replays).

Every service user may also emit events (`agent.*.events`, `agent.*.results`), file dead
letters on its own `dlq.{stream}` subjects, take control commands (`agent.*.commands`)
and answer requests (`allow_responses`). Each user has a private inbox prefix
(`_INBOX_{user}`, set as `AGENTBUS_NATS__INBOX_PREFIX`): nobody can read another user's
replies, JetStream API answers included.

The same data renders as a nats-server `authorization { users = [...] }` block
(`render_nats_conf`, for any credentials) and, for the Helm chart, as two files written
by `agentbus permissions --write` (`--check` fails when either is out of date):
`charts/agentbus/files/nats-permissions.json` (users, env, permissions, skills: what the
chart's pods and checks read) and `charts/agentbus/files/nats-auth.conf` (`render_auth_conf`:
the whole users block, each password the nats-server variable `$AGENTBUS_NATS_PASSWORD_<USER>`).
The chart's Secret `auth.conf` is that variable defined for each user, followed by that
file: the chart never renders permissions itself. nats-server resolves a variable from
earlier in the same file (an including file's variables are not visible to the included
one), else from its environment, so the file alone also serves a server given the
passwords as environment variables (`--format conf` prints it). Every variable defined
must be used: nats-server refuses an unknown top-level key.
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

from agentbus.contract import plugins, subjects
from agentbus.contract.errors import PermissionsError
from agentbus.contract.priority import PRIORITIES, task_consumer
from agentbus.contract.settings import NATS_PASSWORD_ENV_PREFIX

__all__ = [
    "ADMIN",
    "ARCHIVER",
    "CHART_AUTH_FILE",
    "CHART_FILE",
    "CLIENT",
    "GATEWAY",
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
    "render_auth_conf",
    "render_json",
    "render_nats_conf",
    "user_env",
]

ORCHESTRATOR: Final = "orchestrator"
WORKER: Final = "worker"
ARCHIVER: Final = "archiver"
GATEWAY: Final = "gateway"
CLIENT: Final = "client"
PROVISIONER: Final = "provisioner"
ADMIN: Final = "admin"
ROLES: Final = (ORCHESTRATOR, WORKER, ARCHIVER, GATEWAY, CLIENT, PROVISIONER, ADMIN)

CHART_FILE: Final = Path("charts/agentbus/files/nats-permissions.json")
"""Where the chart reads the permissions from, relative to the repository root."""
CHART_AUTH_FILE: Final = CHART_FILE.parent / "nats-auth.conf"
"""Where the chart reads its nats-server users block from (passwords as variables)."""

_JS: Final = "$JS.API"
_KV_STREAM_PREFIX: Final = "KV_"
_OBJ_STREAM_PREFIX: Final = "OBJ_"
_RESPONSE_TTL_NS: Final = 120 * 10**9
"""How long a requester's reply subject stays publishable (nats-server's default)."""
_SAFE_CONF_STRING: Final = re.compile(r'^[^"\\\x00-\x1f]*$')
_AUTH_CONF_HEADER: Final = """\
# Generated by `agentbus permissions --write` from
# services/agentbus/contract/permissions.py; do not edit by hand.
# The NATS users of agentbus. Each password is a nats-server variable,
# $AGENTBUS_NATS_PASSWORD_<USER>, defined above this block in the same file (the Helm
# chart's Secret auth.conf) or else taken from the server's environment.
"""


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


def _reader_pulls(stream: str) -> str:
    """Pull from a reader's own named consumer (`agentbus.bus.ordered_read`)."""
    return f"{_JS}.CONSUMER.MSG.NEXT.{stream}.*"


def _subject_read(stream: str, prefix: str) -> list[str]:
    """Read only the subjects under `prefix` of a stream: direct gets of a subject's last
    message, and named consumers filtered under it (`agentbus.bus.ordered_read`; the
    server checks the filter in the API subject against the consumer's). Not the
    stream's info: asked with a subjects filter, it lists every subject (every job id)."""
    return [
        f"{_JS}.DIRECT.GET.{stream}.{prefix}.>",
        f"{_JS}.CONSUMER.CREATE.{stream}.*.{prefix}.>",
        _reader_pulls(stream),
        f"{_JS}.CONSUMER.DELETE.{stream}.*",
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


def _obj_delete(bucket: str) -> list[str]:
    """Delete an object: a rollup of its meta subject, a purge of its chunks."""
    return [f"$O.{bucket}.M.>", f"{_JS}.STREAM.PURGE.{_OBJ_STREAM_PREFIX}{bucket}"]


def _service_common(user: str) -> tuple[list[str], list[str]]:
    """Publish and subscribe subjects every service user needs: events, control commands,
    and the stream names (a publish that finds no stream asks whether any stream takes
    its subject, to tell a missing topology from an outage: `Bus._no_stream_takes`; a
    service started before `agentbus provision` ran does so for its events)."""
    publish = [*subjects.AGENT_EVENTS_SUBJECTS, f"{_JS}.STREAM.NAMES"]
    subscribe = [subjects.AGENT_COMMANDS_WILDCARD, f"{inbox_prefix(user)}.>"]
    return publish, subscribe


def _provision_streams(skills: Sequence[str]) -> list[str]:
    streams = [
        *subjects.ALL_STREAMS,
        _KV_STREAM_PREFIX + subjects.JOBS_BUCKET,
        _KV_STREAM_PREFIX + subjects.JOB_PARTS_BUCKET,
        _KV_STREAM_PREFIX + subjects.TENANTS_BUCKET,
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
        (subjects.RESULTS_STREAM, subjects.ORCHESTRATOR_RESULTS_CONSUMER),
        (subjects.AGENT_EVENTS_STREAM, subjects.ARCHIVER_CONSUMER),
        # every consumer of JOBS and TASKS: the orchestrator's and the workers' of each
        # priority, and those of configured tenants (named by the deployment's settings);
        # one wildcard each keeps the user's JWT below nats-server's control line limit
        (subjects.JOBS_STREAM, "*"),
        (subjects.TASKS_STREAM, "*"),
    ]
    for stream, durable in durables:
        out += [
            f"{_JS}.CONSUMER.INFO.{stream}.{durable}",
            f"{_JS}.CONSUMER.CREATE.{stream}.{durable}",
            f"{_JS}.CONSUMER.CREATE.{stream}.{durable}.>",
            f"{_JS}.CONSUMER.DURABLE.CREATE.{stream}.{durable}",
        ]
    # capped tenants' run permits (counted, then added: never deleted)
    out.append(subjects.TASKS_SLOT_SUBJECTS)
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
    *,
    skills: Sequence[str] = (subjects.SUMMARIZE_SKILL,),
    tenant_users: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, UserPermissions]:
    """The permissions of every user, by user name (the names in `ROLES`, then the users
    of `tenant_users`: tenant -> its clients' NATS users)."""
    skills = sorted({subjects.check_token(s, field="skill") for s in skills})
    users: dict[str, UserPermissions] = {}

    pub, sub = _service_common(ORCHESTRATOR)
    users[ORCHESTRATOR] = _user(
        ORCHESTRATOR,
        "job intake, fan-out, result collection, reduce, job state",
        [
            *pub,
            *_pull(subjects.JOBS_STREAM, subjects.ORCHESTRATOR_CONSUMER),
            # and the configured tenants' intake consumers (`orchestrator-{tenant}`): every
            # consumer of JOBS is the orchestrator's
            *_pull(subjects.JOBS_STREAM, "*"),
            *_pull(subjects.RESULTS_STREAM, subjects.ORCHESTRATOR_RESULTS_CONSUMER),
            subjects.TASKS_SUBJECTS,
            subjects.PROGRESS_SUBJECTS,
            subjects.TASKS_PRIORITY_SUBJECTS,
            subjects.TASKS_TENANT_SUBJECTS,
            subjects.dlq_subject(subjects.JOBS_STREAM),
            subjects.dlq_subject(subjects.RESULTS_STREAM),
            *_kv_read(subjects.JOBS_BUCKET),
            *_kv_write(subjects.JOBS_BUCKET),
            *_kv_read(subjects.JOB_PARTS_BUCKET),
            *_kv_write(subjects.JOB_PARTS_BUCKET),
            # tenants' rates and token budgets (compare-and-set counters), and jobs held
            # back by them published again on their own subject
            subjects.JOBS_SUBJECT,
            subjects.JOBS_TENANT_SUBJECTS,
            *_kv_read(subjects.TENANTS_BUCKET),
            *_kv_write(subjects.TENANTS_BUCKET),
            *_obj_read(subjects.DOCUMENTS_BUCKET),
            # the max-deliveries safety net: file the dead letter of a task JetStream gave
            # up on, and take that task off the work queue
            subjects.dlq_subject(subjects.TASKS_STREAM),
            f"{_JS}.STREAM.MSG.GET.{subjects.TASKS_STREAM}",
            f"{_JS}.STREAM.MSG.DELETE.{subjects.TASKS_STREAM}",
            # cancel: broadcast it to every worker, remove the job's documents
            subjects.JOBS_CANCELED_WILDCARD,
            *_obj_delete(subjects.DOCUMENTS_BUCKET),
        ],
        [
            *sub,
            f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{subjects.TASKS_STREAM}.*",
            subjects.JOBS_CANCEL,
            subjects.JOBS_CANCEL_TENANTS,
        ],
        allow_responses=True,
    )

    pub, sub = _service_common(WORKER)
    # cancels: the broadcast, and the job's state for a job first seen (late joiners)
    worker_pub = [
        *pub,
        subjects.RESULTS_SUBJECTS,
        subjects.PROGRESS_SUBJECTS,  # token deltas of the summaries being written
        subjects.dlq_subject(subjects.TASKS_STREAM),
        *_kv_read(subjects.JOBS_BUCKET),
        # tenants' token counters: a spent budget holds the tenant's tasks at the start
        *_kv_read(subjects.TENANTS_BUCKET),
    ]
    worker_sub = [*sub, "$SRV.>", subjects.JOBS_CANCELED_WILDCARD]
    for skill in skills:
        for priority in PRIORITIES:  # one consumer per priority
            worker_pub += _pull(subjects.TASKS_STREAM, task_consumer(skill, priority))
        worker_sub.append(f"rpc.{skill}")
    # and one per configured tenant and priority (named by the deployment's settings, so
    # any consumer of TASKS: they are all the workers')
    worker_pub += _pull(subjects.TASKS_STREAM, "*")
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
        [*sub, subjects.RPC_HISTORY, subjects.RPC_HISTORY_TENANTS],
        allow_responses=True,
    )

    def client_publish(*submit: str) -> list[str]:
        return [
            *submit,
            subjects.JOBS_CANCEL,
            subjects.JOBS_CANCEL_TENANTS,
            subjects.RPC_HISTORY,
            subjects.RPC_HISTORY_TENANTS,
            *(f"rpc.{skill}" for skill in skills),
            # job states (and watching one), live partial results of a job
            *_kv_read(subjects.JOBS_BUCKET),
            _reader_pulls(_KV_STREAM_PREFIX + subjects.JOBS_BUCKET),
            *_stream_read(subjects.PROGRESS_STREAM),
            _reader_pulls(subjects.PROGRESS_STREAM),
            *_obj_read(subjects.DOCUMENTS_BUCKET),
            *_obj_write(subjects.DOCUMENTS_BUCKET),
        ]

    def tenant_publish(tenant: str) -> list[str]:
        """A tenant's user: submit, cancel and ask history only as the tenant; read only
        the states and partial results of its jobs (`{tenant}.{id}`: its namespace). No
        `rpc.{skill}`: a request/reply summary would bypass the tenant's fair share, cap,
        rate and budget (its summaries go through jobs)."""
        return [
            subjects.tenant_submit(tenant),
            f"{subjects.JOBS_CANCEL}.{tenant}",
            f"{subjects.RPC_HISTORY}.{tenant}",
            *_subject_read(
                _KV_STREAM_PREFIX + subjects.JOBS_BUCKET, f"$KV.{subjects.JOBS_BUCKET}.{tenant}"
            ),
            *_subject_read(subjects.PROGRESS_STREAM, f"progress.{tenant}"),
            # documents above the inline limit, and summaries above it: the object store
            # API reads by stream sequence, which permissions cannot limit to a tenant, so
            # every object is sealed under a key only its job's tenant can read
            # (`agentbus.bus.documents`; docs/operations.md)
            *_obj_read(subjects.DOCUMENTS_BUCKET),
            *_obj_write(subjects.DOCUMENTS_BUCKET),
        ]

    pub, sub = _service_common(GATEWAY)
    users[GATEWAY] = _user(
        GATEWAY,
        "the HTTP front door: submits as its keys' tenants, watches and lists jobs, cancels, "
        "reads history, discovers workers, lists and replays dead letters, reads tenants' use",
        [
            *pub,
            *client_publish(subjects.JOBS_SUBJECT, subjects.JOBS_TENANT_SUBJECTS),
            subjects.srv_subject("STATS", subjects.WORKER_SERVICE),
            *_stream_read(subjects.DLQ_STREAM),
            # a replay: the dead letter back on its original subject, then out of the DLQ
            subjects.TASKS_SUBJECTS,
            subjects.TASKS_PRIORITY_SUBJECTS,
            subjects.TASKS_TENANT_SUBJECTS,
            subjects.RESULTS_SUBJECTS,
            f"{_JS}.STREAM.MSG.DELETE.{subjects.DLQ_STREAM}",
            # the tenants page: their shared counters, their task consumers' queues
            *_kv_read(subjects.TENANTS_BUCKET),
            f"{_JS}.CONSUMER.INFO.{subjects.TASKS_STREAM}.*",
        ],
        [*sub, f"{inbox_prefix(GATEWAY)}.>"],
        allow_responses=True,
    )

    users[CLIENT] = _user(
        CLIENT,
        "submits documents (as any tenant), watches job state, reads history",
        client_publish(subjects.JOBS_SUBJECT, subjects.JOBS_TENANT_SUBJECTS),
        [f"{inbox_prefix(CLIENT)}.>"],
        allow_responses=False,
    )
    for tenant, names in sorted((tenant_users or {}).items()):
        for name in names:
            if name in ROLES:
                raise PermissionsError(f"tenant {tenant}'s user {name!r} is a service user")
            users[name] = _user(
                name,
                f"a client of tenant {tenant}: submits, cancels, reads states, partial "
                f"results and history only as {tenant}",
                tenant_publish(tenant),
                [f"{inbox_prefix(name)}.>"],
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


def render_auth_conf(*, skills: Sequence[str] = (subjects.SUMMARIZE_SKILL,)) -> str:
    """The chart's nats-server users block (`CHART_AUTH_FILE`): every user, each password
    the variable `password_env_var(user)`, after a comment saying so."""
    perms = build_permissions(skills=skills)
    creds: dict[str, Credential] = {u: PasswordEnv(password_env_var(u)) for u in perms}
    return _AUTH_CONF_HEADER + render_nats_conf(creds, permissions=perms)


def render_json(*, skills: Sequence[str] = (subjects.SUMMARIZE_SKILL,)) -> str:
    """The permissions as JSON for the Helm chart (stable: sorted, one trailing newline)."""
    perms = build_permissions(skills=skills)
    doc = {
        "comment": (
            "Generated by `agentbus permissions --write` from "
            "services/agentbus/contract/permissions.py; do not edit by hand."
        ),
        "skills": sorted(skills),
        "users": [
            {
                "user": p.user,
                "description": p.description,
                "inbox_prefix": p.inbox_prefix,
                "env": user_env(p.user),
                "password_variable": password_env_var(p.user),
                "permissions": p.as_dict(),
            }
            for p in perms.values()
        ],
    }
    return json.dumps(doc, indent=2) + "\n"


def _write_command(skills: Sequence[str]) -> str:
    flags = "".join(f" --skill {s}" for s in skills)
    if list(skills) == [subjects.SUMMARIZE_SKILL]:
        flags = ""
    return f"agentbus permissions --write{flags}"


def main(argv: Sequence[str] | None = None) -> int:
    """`agentbus permissions [--write|--check] [--path P] [--conf-path C]
    [--skill S ...] [--format json|conf]`."""
    parser = argparse.ArgumentParser(
        prog="agentbus permissions",
        description="Print, write or check the NATS permissions files of the Helm chart "
        f"({CHART_FILE.name} and {CHART_AUTH_FILE.name}).",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="write both files")
    mode.add_argument("--check", action="store_true", help="fail if either is out of date")
    parser.add_argument(
        "--path", type=Path, default=CHART_FILE, help=f"the JSON file (default {CHART_FILE})"
    )
    parser.add_argument(
        "--conf-path",
        type=Path,
        help=f"the nats-server users block (default: {CHART_AUTH_FILE.name} beside --path)",
    )
    parser.add_argument("--skill", action="append", dest="skills", help="worker skill (repeatable)")
    parser.add_argument(
        "--format",
        choices=("json", "conf"),
        default="json",
        help="what to print without --write/--check: json (the chart's permissions file) or "
        "conf (its nats-server `authorization` block, passwords from the variables "
        "$AGENTBUS_NATS_PASSWORD_<USER>, e.g. the server's environment)",
    )
    args = parser.parse_args(argv)
    # a skill is declared once, by its entry point: every installed one unless named
    skills = args.skills or plugins.installed_skills() or [subjects.SUMMARIZE_SKILL]
    path: Path = args.path
    conf_path: Path = args.conf_path or path.with_name(CHART_AUTH_FILE.name)
    files = {path: render_json(skills=skills), conf_path: render_auth_conf(skills=skills)}
    if args.write:
        for target, text in files.items():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            print(f"wrote {target}")
        return 0
    if args.check:
        failed = False
        for target, text in files.items():
            try:
                current = target.read_text()
            except OSError as e:
                print(f"error: cannot read {target}: {e.strerror or e}", file=sys.stderr)
                failed = True
                continue
            if current != text:
                print(
                    f"error: {target} is out of date: run `{_write_command(skills)}`",
                    file=sys.stderr,
                )
                failed = True
            else:
                print(f"{target} is up to date")
        return 1 if failed else 0
    sys.stdout.write(files[conf_path] if args.format == "conf" else files[path])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
