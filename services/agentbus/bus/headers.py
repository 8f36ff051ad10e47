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
_HEADER_NAME_RE: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,128}")
_DLQ_KEPT_HEADERS_MAX: Final = 16 * 1024


def delivery_count(msg: Msg) -> int:
    """How many times JetStream has delivered `msg` (1 for a message not from a consumer).

    Read from the ack subject's delivery token (both its 9- and 12-token forms) rather
    than `msg.metadata`: that builds three objects and a datetime per message, which
    showed in profiles of every handler."""
    tokens = (msg.reply or "").split(".")
    if len(tokens) < _ACK_V1_TOKENS or tokens[0] != "$JS" or tokens[1] != "ACK":
        return 1
    index = _ACK_V1_DELIVERED if len(tokens) == _ACK_V1_TOKENS else Msg.Ack.NumDelivered
    try:
        return max(int(tokens[index]), 1)
    except (ValueError, IndexError):
        return 1


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
