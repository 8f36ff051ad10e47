"""Reading and cleaning message headers: the delivery count from the ack subject, and the
headers of a hostile message made safe to publish again (dead letters)."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Final

from nats.aio.msg import Msg

log = logging.getLogger("agentbus.bus")

_HEADER_VALUE_MAX: Final = 1024
_ACK_V1_TOKENS: Final = 9
"""`$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<ts>.<pending>`"""
_ACK_V1_DELIVERED: Final = 4
_ACK_V1_TIMESTAMP: Final = 7
_HEADER_NAME_RE: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,128}")
_DLQ_KEPT_HEADERS_MAX: Final = 16 * 1024


def _ack_token(msg: Msg, *, v1: int, v2: int) -> str | None:
    """One token of the ack subject, in its 9-token (`v1`) or 12-token (`v2`) form; None
    for a message not from a consumer. Read from the subject rather than `msg.metadata`:
    that builds three objects and a datetime per message, which showed in profiles of
    every handler."""
    tokens = (msg.reply or "").split(".")
    if len(tokens) < _ACK_V1_TOKENS or tokens[0] != "$JS" or tokens[1] != "ACK":
        return None
    index = v1 if len(tokens) == _ACK_V1_TOKENS else v2
    return tokens[index] if index < len(tokens) else None


def delivery_count(msg: Msg) -> int:
    """How many times JetStream has delivered `msg` (1 for a message not from a consumer)."""
    token = _ack_token(msg, v1=_ACK_V1_DELIVERED, v2=Msg.Ack.NumDelivered)
    try:
        return max(int(token), 1) if token is not None else 1
    except ValueError:
        return 1


def stored_at_s(msg: Msg) -> float | None:
    """When the stream stored `msg` (the server's clock, Unix seconds); None for a message
    not from a consumer."""
    token = _ack_token(msg, v1=_ACK_V1_TIMESTAMP, v2=Msg.Ack.Timestamp)
    try:
        return int(token) / 1e9 if token is not None else None
    except ValueError:
        return None


def header_safe(value: str) -> str:
    """Header values may not hold CR/LF (they would end the header block)."""
    return " ".join(value.split())[:_HEADER_VALUE_MAX]


def headers_size(headers: Mapping[str, str]) -> int:
    return sum(len(k.encode()) + len(v.encode()) + 4 for k, v in headers.items())


def kept_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    """The headers of a hostile message that can be published again: valid names only,
    values without CR/LF and shortened, at most `_DLQ_KEPT_HEADERS_MAX` bytes in all."""
    kept: dict[str, str] = {}
    for key, value in (headers or {}).items():
        if not _HEADER_NAME_RE.fullmatch(key) or key.lower().startswith("agentbus-dlq-"):
            continue
        safe = header_safe(value)
        if headers_size(kept) + len(key) + len(safe.encode()) + 4 > _DLQ_KEPT_HEADERS_MAX:
            break
        kept[key] = safe
    return kept
