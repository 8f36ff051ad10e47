"""The OpenAPI 3.0 document of the REST API, served at `/openapi.json` (and checked by
schemathesis in the tests: every response matches it, none is a 5xx but 503)."""

from __future__ import annotations

from typing import Any, Final

from agentbus.contract import subjects
from agentbus.contract.messages import JobStatus
from agentbus.contract.version import agentbus_version

__all__ = ["openapi_document"]

_STR: Final = {"type": "string"}
_NSTR: Final = {"type": "string", "nullable": True}
_INT: Final = {"type": "integer"}


def _obj(props: dict[str, Any], *, required: list[str] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": props,
        "required": required if required is not None else list(props),
    }


def _json(ref: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": _json("Error")}


def _responses(ok: dict[str, Any], *codes: int) -> dict[str, Any]:
    texts = {
        400: "invalid request",
        401: "no valid API key",
        403: "the key's role is too low",
        404: "not found (or another tenant's)",
        409: "the job id names another document",
        413: "request body or document above the cap",
        415: "unsupported content type",
        503: "the bus (NATS, an orchestrator, the archiver) did not answer",
    }
    out = dict(ok)
    for code in (401, 403, 503, *codes):
        out[str(code)] = _error(texts[code])
    return out


_JOB_ID: Final = {
    "name": "job_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": subjects.JOB_ID_RE.pattern},
    "description": "ID, or TENANT.ID for a job of a tenant other than default",
}

_SCHEMAS: Final[dict[str, Any]] = {
    "Error": _obj({"error": _STR}),
    "SubmitJson": {
        **_obj(
            {
                "text": {"type": "string", "minLength": 1},
                "title": {"type": "string", "maxLength": 256},
                "priority": {"type": "string", "enum": ["high", "normal", "low"]},
                "job_id": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
                "summary_chars": {"type": "integer", "minimum": 50, "maximum": 100000},
            },
            required=["text"],
        ),
        "additionalProperties": False,
    },
    "SubmitForm": _obj(
        {
            "file": {"type": "string", "format": "binary"},
            "title": _STR,
            "priority": {"type": "string", "enum": ["high", "normal", "low"]},
        },
        required=["file"],
    ),
    "Submitted": _obj({"job_id": _STR, "tenant": _STR, "status_url": _STR, "stream_url": _STR}),
    "Job": _obj(
        {
            "job_id": _STR,
            "status": {
                "type": "string",
                "enum": ["accepted", "running", "reducing", "completed", "failed", "canceled"],
            },
            "title": _STR,
            "skill": _STR,
            "tenant": _STR,
            "priority": {"type": "string", "enum": ["high", "normal", "low"]},
            "progress": {"type": "number", "minimum": 0, "maximum": 1},
            "chunks": _INT,
            "level": _INT,
            "tasks_done": _INT,
            "document_chars": _INT,
            "summary": _NSTR,
            "error": _NSTR,
            "created_at": {"type": "string", "format": "date-time"},
            "updated_at": {"type": "string", "format": "date-time"},
        }
    ),
    "Jobs": _obj({"jobs": {"type": "array", "items": {"$ref": "#/components/schemas/Job"}}}),
    "Tenant": _obj(
        {
            "tenant": _STR,
            "weight": _INT,
            "max_in_flight": {"type": "integer", "nullable": True},
            "in_flight": _INT,
            "queued": _INT,
            "jobs_this_minute": _INT,
            "jobs_per_minute": {"type": "integer", "nullable": True},
            "over_rate": _STR,
            "tokens_this_window": _INT,
            "token_budget": {"type": "integer", "nullable": True},
            "budget_window_s": {"type": "number"},
            "over_budget": _STR,
            "window_turns_in_s": {"type": "number"},
        }
    ),
    "Tenants": _obj(
        {"tenants": {"type": "array", "items": {"$ref": "#/components/schemas/Tenant"}}}
    ),
    "Canceled": _obj(
        {"job_id": _STR, "canceled": {"type": "boolean"}, "status": _NSTR, "detail": _STR}
    ),
    "Event": _obj(
        {
            "ts": {"type": "string", "format": "date-time"},
            "agent_id": _STR,
            "kind": _STR,
            "task_id": _NSTR,
            "data": {"type": "object"},
        }
    ),
    "Events": _obj(
        {
            "job_id": _STR,
            "events": {"type": "array", "items": {"$ref": "#/components/schemas/Event"}},
        }
    ),
    "Worker": _obj(
        {
            "id": _STR,
            "skill": _STR,
            "backend": _STR,
            "state": _STR,
            "concurrency": _INT,
            "in_flight": _INT,
            "started": _STR,
            "version": _STR,
        }
    ),
    "Workers": _obj(
        {"workers": {"type": "array", "items": {"$ref": "#/components/schemas/Worker"}}}
    ),
    "DeadLetter": _obj(
        {
            "id": _INT,
            "time": _NSTR,
            "stream": _STR,
            "subject": _STR,
            "job_id": _NSTR,
            "task_id": _NSTR,
            "deliveries": _INT,
            "reason": _STR,
            "bytes": _INT,
        }
    ),
    "DeadLetters": _obj(
        {"dead_letters": {"type": "array", "items": {"$ref": "#/components/schemas/DeadLetter"}}}
    ),
    "Replayed": _obj(
        {
            "id": _INT,
            "subject": _STR,
            "stream": _STR,
            "seq": _INT,
            "duplicate": {"type": "boolean"},
            "removed": {"type": "boolean"},
        }
    ),
    "SseEvent": {
        "description": "one server-sent event: `id` the cursor, `event` the kind, `data` JSON",
        **_obj(
            {
                "id": {"type": "string", "pattern": "^[0-9]+$"},
                "event": {
                    "type": "string",
                    "enum": [
                        "started",
                        "chunk",
                        "delta",
                        "reduce",
                        "completed",
                        "failed",
                        "canceled",
                        "error",
                    ],
                },
                "data": _STR,
            },
            required=["event", "data"],
        ),
    },
    "WhoAmI": _obj(
        {
            "name": _STR,
            "tenant": _STR,
            "role": {"type": "string", "enum": ["read", "submit", "operate"]},
        }
    ),
}


def openapi_document() -> dict[str, Any]:
    """The document (a fresh dict each call)."""
    stream_ok = {
        "200": {
            "description": "server-sent events: one per partial result, `id` = its cursor "
            "(send it back as Last-Event-ID to resume right after it)",
            "content": {"text/event-stream": {"schema": {"$ref": "#/components/schemas/SseEvent"}}},
        }
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "agentbus gateway",
            "version": agentbus_version(),
            "description": "Submit documents, follow their jobs live, cancel them; workers "
            "and dead letters. API keys (Authorization: Bearer KEY) carry a tenant and a role "
            "(read < submit < operate).",
        },
        "security": [{"bearer": []}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": _SCHEMAS,
        },
        "paths": {
            "/v1/jobs": {
                "get": {
                    "operationId": "listJobs",
                    "summary": "Recent jobs, newest first, without their summaries; role read "
                    "(a key below operate: its own tenant's only)",
                    "parameters": [
                        {
                            "name": "limit",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "integer", "minimum": 1, "maximum": 500},
                        },
                        {
                            "name": "status",
                            "in": "query",
                            "required": False,
                            "schema": {
                                "type": "string",
                                "enum": [s.value for s in JobStatus],
                            },
                        },
                        {
                            "name": "tenant",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,128}$"},
                        },
                    ],
                    "responses": _responses(
                        {"200": {"description": "jobs", "content": _json("Jobs")}}, 400
                    ),
                },
                "post": {
                    "operationId": "submitJob",
                    "summary": "Submit a document (JSON text or a file upload); role submit",
                    "requestBody": {
                        "required": True,
                        "content": {
                            **_json("SubmitJson"),
                            "multipart/form-data": {
                                "schema": {"$ref": "#/components/schemas/SubmitForm"}
                            },
                        },
                    },
                    "responses": _responses(
                        {"202": {"description": "accepted", "content": _json("Submitted")}},
                        400,
                        409,
                        413,
                        415,
                    ),
                },
            },
            "/v1/jobs/{job_id}": {
                "parameters": [_JOB_ID],
                "get": {
                    "operationId": "getJob",
                    "summary": "The job's state, progress and summary; role read",
                    "responses": _responses(
                        {"200": {"description": "the job", "content": _json("Job")}}, 404
                    ),
                },
                "delete": {
                    "operationId": "cancelJob",
                    "summary": "Cancel the job (idempotent); role submit",
                    "parameters": [
                        {"name": "reason", "in": "query", "required": False, "schema": _STR}
                    ],
                    "responses": _responses(
                        {
                            "200": {
                                "description": "what the cancel did",
                                "content": _json("Canceled"),
                            }
                        },
                        404,
                    ),
                },
            },
            "/v1/jobs/{job_id}/stream": {
                "parameters": [_JOB_ID],
                "get": {
                    "operationId": "streamJob",
                    "summary": "The job's live partial results as server-sent events; role read",
                    "parameters": [
                        {
                            "name": "Last-Event-ID",
                            "in": "header",
                            "required": False,
                            "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"},
                        },
                        {
                            "name": "after",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "integer", "minimum": 0, "maximum": 10**18},
                        },
                    ],
                    "responses": _responses(stream_ok, 400, 404),
                },
            },
            "/v1/jobs/{job_id}/events": {
                "parameters": [_JOB_ID],
                "get": {
                    "operationId": "jobEvents",
                    "summary": "The job's archived events, oldest first; role read",
                    "responses": _responses(
                        {"200": {"description": "the events", "content": _json("Events")}}, 404
                    ),
                },
            },
            "/v1/workers": {
                "get": {
                    "operationId": "listWorkers",
                    "summary": "Every running worker; role read",
                    "responses": _responses(
                        {"200": {"description": "workers", "content": _json("Workers")}}
                    ),
                }
            },
            "/v1/dlq": {
                "get": {
                    "operationId": "listDeadLetters",
                    "summary": "Dead letters, oldest first; role operate",
                    "parameters": [
                        {
                            "name": "limit",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                        }
                    ],
                    "responses": _responses(
                        {"200": {"description": "dead letters", "content": _json("DeadLetters")}},
                        400,
                    ),
                }
            },
            "/v1/dlq/{dlq_id}/replay": {
                "post": {
                    "operationId": "replayDeadLetter",
                    "summary": "Republish a dead letter to its original subject; role operate",
                    "parameters": [
                        {
                            "name": "dlq_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "integer", "minimum": 1},
                        }
                    ],
                    "responses": _responses(
                        {"200": {"description": "replayed", "content": _json("Replayed")}}, 404
                    ),
                }
            },
            "/v1/tenants": {
                "get": {
                    "operationId": "listTenants",
                    "summary": "Each tenant's limits, use and queue (`agentbus tenants`); "
                    "role operate, or read for the key's own tenant only",
                    "responses": _responses(
                        {"200": {"description": "tenants", "content": _json("Tenants")}}
                    ),
                }
            },
            "/v1/whoami": {
                "get": {
                    "operationId": "whoAmI",
                    "summary": "The calling key's name, tenant and role; role read",
                    "responses": _responses(
                        {"200": {"description": "the key", "content": _json("WhoAmI")}}
                    ),
                }
            },
        },
    }
