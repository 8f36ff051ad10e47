"""Document intake: empty, non-UTF-8, NUL bytes and oversize are refused with one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentbus.bus.documents import check_document, read_document
from agentbus.contract.errors import DocumentRejected

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "empty"),
        (b"  \n\t ", "empty"),
        (b"\xff\xfeabc", "not UTF-8 text (invalid byte 0xff at offset 0)"),
        (b"ok\x00more", "NUL"),
        (b"x" * 101, "exceeds the cap of 100 bytes (AGENTBUS_LIMITS__MAX_DOCUMENT_BYTES)"),
    ],
)
def test_refused(data: bytes, fragment: str) -> None:
    with pytest.raises(DocumentRejected) as info:
        check_document(data, max_bytes=100)
    assert fragment in str(info.value)


def test_accepted_text_is_returned_unchanged() -> None:
    text = "Grüße aus Köln. 東京も。"
    assert check_document(text.encode(), max_bytes=1000) == text


def test_read_document_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.txt"
    with pytest.raises(DocumentRejected, match=r"nope\.txt: cannot read"):
        read_document(missing, max_bytes=10)
    big = tmp_path / "big.txt"
    big.write_text("y" * 50)
    with pytest.raises(DocumentRejected, match=r"big\.txt: 50 bytes exceeds"):
        read_document(big, max_bytes=10)
