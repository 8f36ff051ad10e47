"""Headers of hostile messages are published again with every dead letter: whatever a
message carried (CR/LF, NUL, endless values, invalid names, thousands of headers), what
the DLQ publishes is valid for nats-py and bounded in size."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from agentbus.bus.connect import redact_url
from agentbus.bus.headers import header_safe, headers_size, kept_headers

pytestmark = pytest.mark.unit

FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# nats-py refuses to publish a header whose name does not match this
NATS_PY_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
TEXT = st.text(st.characters(codec="utf-8") | st.sampled_from(list("\r\n\x00:")), max_size=300)


@FUZZ
@given(value=TEXT)
@example(value="a\r\nNats-Msg-Id: forged\r\n\r\nbody")
@example(value="x" * 100_000)
def test_header_values_lose_line_breaks_and_length(value: str) -> None:
    safe = header_safe(value)
    assert "\r" not in safe and "\n" not in safe
    assert len(safe) <= 1024
    assert safe == safe.strip()


@FUZZ
@given(headers=st.dictionaries(TEXT, TEXT, max_size=30))
@example(headers={"Bad Name": "v", "": "v", "ok": "a\r\nb", "Agentbus-Dlq-Reason": "forged"})
@example(headers={f"h{i}": "v" * 1000 for i in range(100)})
def test_kept_headers_can_be_published(headers: dict[str, str]) -> None:
    kept = kept_headers(headers)
    assert headers_size(kept) <= 16 * 1024
    for name, value in kept.items():
        assert NATS_PY_HEADER_NAME.fullmatch(name)
        assert not name.lower().startswith("agentbus-dlq-")  # no forged DLQ metadata
        assert "\r" not in value and "\n" not in value


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("nats://user:secret@127.0.0.1:4222", "nats://***@127.0.0.1:4222"),
        ("tls://a:b@h1:1,nats://c@h2:2", "tls://***@h1:1,nats://***@h2:2"),
        ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
        ("nats://tok3n@host", "nats://***@host"),
    ],
)
def test_urls_are_shown_without_user_info(url: str, shown: str) -> None:
    assert redact_url(url) == shown
