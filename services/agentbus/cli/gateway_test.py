"""`agentbus gateway-test` (hidden): the chart's `helm test` through the gateway's REST
API: submit a document with an API key, wait for its summary, print one JSON record.
Plain HTTP (urllib): it needs nothing but the gateway's URL and a key."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Annotated, Any, Final

import typer

__all__ = ["register"]

_POLL_S: Final = 1.0
_TERMINAL: Final = frozenset({"completed", "failed", "canceled"})


def _call(
    url: str, key: str, *, method: str = "GET", body: dict[str, Any] | None = None
) -> dict[str, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Authorization", f"Bearer {key}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            reply: dict[str, Any] = json.loads(response.read())
            return reply
    except urllib.error.HTTPError as e:
        detail = e.read().decode(errors="replace")[:300]
        raise RuntimeError(f"{method} {url}: {e.code} {detail}") from e
    except (urllib.error.URLError, OSError) as e:
        raise RuntimeError(f"{method} {url}: {e}") from e


def gateway_test(url: str, document: Path, key: str, *, timeout_s: float) -> dict[str, Any]:
    """Submit `document` at `url` and wait for its end; the job's final record."""
    base = url.rstrip("/")
    text = document.read_text()
    submitted = _call(
        f"{base}/v1/jobs", key, method="POST", body={"text": text, "title": document.name}
    )
    job_id = submitted["job_id"]
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            job = _call(f"{base}/v1/jobs/{job_id}", key)
        except RuntimeError:
            job = {"status": "accepted"}  # not recorded yet (another replica answered)
        if job["status"] in _TERMINAL:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"job {job_id} not finished within {timeout_s:g}s: {job}")
        time.sleep(_POLL_S)
    return {
        "job_id": job_id, "status": job["status"], "summary": job.get("summary"),
        "error": job.get("error"), "chars": len(text),
    }  # fmt: skip


def register(app: typer.Typer) -> None:
    @app.command(name="gateway-test", hidden=True)
    def gateway_test_cmd(
        url: Annotated[str, typer.Argument(help="The gateway's URL")],
        document: Annotated[Path, typer.Argument(help="The document to summarize")],
        key_file: Annotated[Path, typer.Option(help="A file holding an API key (submit+)")],
        timeout: Annotated[float, typer.Option(help="Seconds to wait for the summary")] = 180.0,
    ) -> None:
        """`helm test` through the gateway: submit DOCUMENT, wait for its summary."""
        try:
            record = gateway_test(url, document, key_file.read_text().strip(), timeout_s=timeout)
        except (RuntimeError, OSError, KeyError, ValueError) as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(1) from None
        typer.echo(json.dumps([record]))
        if record["status"] != "completed" or not record["summary"]:
            raise typer.Exit(1)
