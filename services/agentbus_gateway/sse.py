"""Server-sent events framing (pure): one event per partial result, its stream cursor as
the event id, so `Last-Event-ID` resumes right after it."""

from __future__ import annotations

import json
from typing import Final

__all__ = ["KEEPALIVE", "format_event", "parse_cursor"]

KEEPALIVE: Final = b": keepalive\n\n"


def format_event(*, data: object, event: str | None = None, event_id: str | None = None) -> bytes:
    """One SSE event whose data is `data` as JSON (one line: JSON escapes newlines)."""
    lines = []
    if event_id is not None:
        lines.append(f"id: {event_id}")
    if event is not None:
        lines.append(f"event: {event}")
    lines.append("data: " + json.dumps(data, separators=(",", ":"), ensure_ascii=False))
    return ("\n".join(lines) + "\n\n").encode()


def parse_cursor(value: str | None) -> int | None:
    """A resume cursor from `Last-Event-ID` (or `?after=`): a stream sequence, 0 or more;
    None when absent. `ValueError` naming the value otherwise."""
    if value is None or value.strip() == "":
        return None
    text = value.strip()
    if not text.isdigit() or len(text) > 19:
        raise ValueError(f"cursor {value[:40]!r} is not a stream sequence (0 or more)")
    return int(text)
