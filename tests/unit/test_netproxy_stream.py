"""The partition proxy's reading of the server's side of a NATS connection: deliveries
are found whole wherever TCP split the bytes, so `sever_after` cuts right after one."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.e2e.faults.netproxy import Delivery, ServerStream, subject_matches

pytestmark = pytest.mark.unit

ACK = "$JS.ACK.TASKS.summarize-workers.1.7.7.1700000000000000000.3"
# payloads that look like protocol lines must not be read as such
BODY = b'{"text": "MSG tasks.x.assign 1 5\\r\\nPING\\r\\n"}'
HEADERS = b"NATS/1.0\r\nNats-Msg-Id: a\r\n\r\n"
WIRE = (
    b'INFO {"server_id":"x"}\r\nPING\r\n+OK\r\n'
    + f"MSG agent.w.events 9 {len(BODY)}\r\n".encode() + BODY + b"\r\n"
    + f"HMSG tasks.summarize.assign 3 {ACK} {len(HEADERS)} {len(HEADERS) + len(BODY)}\r\n".encode()
    + HEADERS + BODY + b"\r\n"
    + b"PONG\r\n"
    + f"msg jobs.submit 4 $JS.ACK.JOBS.orchestrator.2.1.1.1.0 {len(BODY)}\r\n".encode()
    + BODY + b"\r\n"
)  # fmt: skip
EXPECTED = [
    ("agent.w.events", None, False),
    ("tasks.summarize.assign", ACK, True),
    ("jobs.submit", "$JS.ACK.JOBS.orchestrator.2.1.1.1.0", True),
]


def _summary(ds: list[Delivery]) -> list[tuple[str, str | None, bool]]:
    assert all(d.body == BODY for d in ds)
    return [(d.subject, d.reply, d.jetstream) for d in ds]


def test_whole_stream_gives_every_delivery_and_where_it_ends() -> None:
    ds = ServerStream().feed(WIRE)
    assert _summary(ds) == EXPECTED
    assert ds[-1].end == len(WIRE)
    assert WIRE[: ds[1].end].endswith(BODY + b"\r\n")
    assert WIRE[ds[1].end :].startswith(b"PONG\r\n")


@given(st.lists(st.integers(min_value=0, max_value=len(WIRE)), max_size=12))
def test_any_split_gives_the_same_deliveries_ending_where_the_message_ends(
    cuts: list[int],
) -> None:
    stream = ServerStream()
    bounds = [0, *sorted(cuts), len(WIRE)]
    found: list[Delivery] = []
    for a, b in itertools.pairwise(bounds):
        for d in stream.feed(WIRE[a:b]):
            # the offset is in the chunk that completed it: the message ends exactly there
            assert WIRE[: a + d.end].endswith(BODY + b"\r\n")
            found.append(d)
    assert _summary(found) == EXPECTED


@pytest.mark.parametrize(
    ("pattern", "subject", "match"),
    [
        ("tasks.>", "tasks.summarize.assign", True),
        ("tasks.>", "tasks", False),
        ("tasks.*.assign", "tasks.summarize.assign", True),
        ("tasks.*.assign", "tasks.summarize.assign.high", False),
        ("jobs.submit", "jobs.submit", True),
        ("jobs.submit", "jobs.submit.acme", False),
        ("jobs.submit.*", "jobs.submit.acme", True),
        ("jobs.submit.*", "jobs.cancel.acme", False),
    ],
)
def test_subject_matches_nats_wildcards(pattern: str, subject: str, match: bool) -> None:
    assert subject_matches(pattern, subject) is match
