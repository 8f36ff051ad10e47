"""Document intake: empty, non-UTF-8, NUL bytes and oversize are refused with one line.
Objects of the shared object store are sealed: a document opens only with its own seal,
under its own name, unaltered."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentbus.bus.documents import check_document, open_sealed, read_document, seal
from agentbus.contract.errors import DocumentRejected
from agentbus.contract.messages import SEAL_TAG_BYTES, DocumentRef

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


@given(st.binary(max_size=4096), st.text(min_size=1, max_size=64))
def test_a_sealed_document_opens_with_its_seal_and_name(data: bytes, name: str) -> None:
    sealed, seal_b64 = seal(data, name=name)
    assert len(sealed) == len(data) + SEAL_TAG_BYTES
    assert open_sealed(sealed, name=name, seal_b64=seal_b64) == data
    # and the seal is what a reference may carry
    DocumentRef(bucket="documents", name=name, size_bytes=len(data), sha256="0" * 64,
                seal=seal_b64)  # fmt: skip


def test_the_same_document_under_the_same_name_is_sealed_alike() -> None:
    """A retried upload writes the same bytes (its first job message may have been stored
    after all); another name or another text has another key."""
    a, seal_a = seal(b"same text", name="x")
    assert seal(b"same text", name="x") == (a, seal_a)
    assert seal(b"same text", name="x", digest=hashlib.sha256(b"same text").digest()) == (
        a,
        seal_a,
    )
    for other_text, other_name in ((b"same text", "y"), (b"other text", "x")):
        b, seal_b = seal(other_text, name=other_name)
        assert seal_b != seal_a and b != a
    with pytest.raises(DocumentRejected, match="replaced or altered"):
        open_sealed(seal(b"other text", name="x")[0], name="x", seal_b64=seal_a)


def test_an_altered_or_renamed_object_does_not_open() -> None:
    sealed, seal_b64 = seal(b"the harbour grew with its trade", name="job-1.txt")
    altered = bytes([sealed[0] ^ 1]) + sealed[1:]
    with pytest.raises(DocumentRejected, match=r"job-1\.txt does not open"):
        open_sealed(altered, name="job-1.txt", seal_b64=seal_b64)
    with pytest.raises(DocumentRejected, match=r"job-2\.txt does not open"):
        open_sealed(sealed, name="job-2.txt", seal_b64=seal_b64)  # moved to another name


@pytest.mark.parametrize("bad", ["", "short=", "A" * 60, "!" * 59 + "="])
def test_a_reference_with_a_malformed_seal_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="seal"):
        DocumentRef(bucket="documents", name="x", size_bytes=1, sha256="0" * 64, seal=bad)
