"""Documents: intake checks, and passing large ones by reference through the object store.

The object store is shared by every tenant, and NATS permissions cannot keep one
tenant's client from reading another's objects there (the object store API reads by
stream sequence). So every object is *sealed*: encrypted with AES-256-GCM, the object's
name as associated data. The key travels only in the reference, which is in the job
message (the JOBS stream, which no tenant's client may read) and in the job state (read
only through the job's own tenant's namespace). A tenant's client that reads another's
object gets ciphertext; one that replaces or alters it makes that job fail with the
reason (the tag does not match), never summarizes someone else's text.

The key and nonce are derived (HKDF-SHA256) from the object's name and the content's
SHA-256, so storing the same document under the same name writes the same bytes: a
submit retried after a lost acknowledgement, whose first job message was stored after
all, still finds the object its reference opens (a fresh random key would have replaced
it). What this gives away: a tenant who holds the exact bytes of another's document can
confirm the guess, never learn anything else.
"""

from __future__ import annotations

import base64
import hashlib
import io
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing_extensions import Buffer

import nats.errors
import nats.js.errors
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from nats.js import JetStreamContext

from agentbus.contract import subjects
from agentbus.contract.errors import AgentBusError, DocumentRejected
from agentbus.contract.messages import SEAL_TAG_BYTES, DocumentRef

__all__ = [
    "check_document",
    "delete_documents",
    "fetch_document",
    "open_sealed",
    "read_document",
    "seal",
    "store_document",
]

_KEY_BYTES = 32
_NONCE_BYTES = 12
_SEAL_INFO = b"agentbus object seal v1\0"

_CAP_SETTING = "AGENTBUS_LIMITS__MAX_DOCUMENT_BYTES"


def check_document(data: bytes, *, max_bytes: int, name: str = "document") -> str:
    """Return the text of `data`, or raise `DocumentRejected` with one clear line."""
    if len(data) > max_bytes:
        raise DocumentRejected(
            f"{name}: {len(data)} bytes exceeds the cap of {max_bytes} bytes ({_CAP_SETTING})"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DocumentRejected(
            f"{name}: not UTF-8 text (invalid byte 0x{data[e.start]:02x} at offset {e.start})"
        ) from e
    if "\x00" in text:
        raise DocumentRejected(
            f"{name}: not text (contains NUL bytes at offset {text.index(chr(0))})"
        )
    if not text.strip():
        raise DocumentRejected(f"{name}: document is empty")
    return text


def read_document(path: Path, *, max_bytes: int) -> str:
    """Read and check a document file; `DocumentRejected` names the file."""
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise DocumentRejected(
                f"{path}: {size} bytes exceeds the cap of {max_bytes} bytes ({_CAP_SETTING})"
            )
        data = path.read_bytes()
    except OSError as e:
        raise DocumentRejected(f"{path}: cannot read: {e.strerror or e}") from e
    return check_document(data, max_bytes=max_bytes, name=str(path))


def seal(data: bytes, *, name: str, digest: bytes | None = None) -> tuple[bytes, str]:
    """`data` sealed for the object `name`, and the seal (key and nonce, base64url),
    both derived from the name and the content (see the module); `digest`: the SHA-256 of
    `data` when the caller has it (hashing 60 MB takes a tenth of a second)."""
    hkdf = HKDF(
        algorithm=hashes.SHA256(),
        length=_KEY_BYTES + _NONCE_BYTES,
        salt=None,
        info=_SEAL_INFO + name.encode(),
    )
    raw = hkdf.derive(digest if digest is not None else hashlib.sha256(data).digest())
    key, nonce = raw[:_KEY_BYTES], raw[_KEY_BYTES:]
    sealed = AESGCM(key).encrypt(nonce, data, name.encode())
    return sealed, base64.urlsafe_b64encode(raw).decode()


def open_sealed(data: bytes, *, name: str, seal_b64: str) -> bytes:
    """The document sealed in `data` for the object `name`; `DocumentRejected` if it was
    not sealed with that seal for that name (replaced or altered)."""
    raw = base64.urlsafe_b64decode(seal_b64)
    key, nonce = raw[:_KEY_BYTES], raw[_KEY_BYTES:]
    try:
        return AESGCM(key).decrypt(nonce, data, name.encode())
    except InvalidTag as e:
        raise DocumentRejected(
            f"object {name} does not open with its reference's seal (replaced or altered)"
        ) from e


async def store_document(
    js: JetStreamContext, *, name: str, data: bytes, sha256: str | None = None
) -> DocumentRef:
    """Store `data` sealed (see the module) as the object `name`; `sha256`: its SHA-256
    (hex) when the caller has it."""
    store = await js.object_store(subjects.DOCUMENTS_BUCKET)
    digest = bytes.fromhex(sha256) if sha256 is not None else hashlib.sha256(data).digest()
    sealed, seal_b64 = seal(data, name=name, digest=digest)
    try:
        await store.put(name, sealed)
    except (nats.errors.Error, TimeoutError) as e:
        raise AgentBusError(
            f"cannot store {name} in object store {subjects.DOCUMENTS_BUCKET}: {e}"
        ) from e
    return DocumentRef(
        bucket=subjects.DOCUMENTS_BUCKET,
        name=name,
        size_bytes=len(data),
        sha256=digest.hex(),
        seal=seal_b64,
    )


class _Chunks(io.BufferedIOBase):
    """Collects an object's chunks as nats-py's object store reads them."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Buffer, /) -> int:
        chunk = bytes(data)
        self.parts.append(chunk)
        return len(chunk)


async def fetch_document(
    js: JetStreamContext, ref: DocumentRef, *, max_bytes: int | None = None
) -> bytes:
    """The document `ref` points at. `DocumentRejected` (permanent) for a reference outside
    the documents bucket, above `max_bytes`, or to a missing object; `AgentBusError` for a
    failure worth retrying. The object's size is checked before it is read."""
    if ref.bucket != subjects.DOCUMENTS_BUCKET:
        raise DocumentRejected(
            f"document reference to bucket {ref.bucket!r}, not {subjects.DOCUMENTS_BUCKET!r}"
        )

    def check_size(size: int, what: str) -> None:
        if max_bytes is not None and size > max_bytes:
            raise DocumentRejected(
                f"document {ref.name}: {what} of {size} bytes exceeds the cap of {max_bytes} "
                f"bytes ({_CAP_SETTING})"
            )

    check_size(ref.size_bytes, "reference")
    try:
        store = await js.object_store(ref.bucket)
        overhead = SEAL_TAG_BYTES if ref.seal is not None else 0
        check_size(int((await store.get_info(ref.name)).size or 0) - overhead, "object")
        # nats-py appends each chunk to a bytes object (quadratic: seconds of copying at
        # 60 MB) unless given somewhere to write them
        chunks = _Chunks()
        await store.get(ref.name, writeinto=chunks)
    except nats.js.errors.NotFoundError as e:
        raise DocumentRejected(f"document {ref.bucket}/{ref.name} not found") from e
    except (nats.errors.Error, TimeoutError) as e:
        raise AgentBusError(f"cannot read {ref.name} from object store {ref.bucket}: {e}") from e
    data = b"".join(chunks.parts)
    chunks.parts.clear()
    if ref.seal is not None:
        data = open_sealed(data, name=ref.name, seal_b64=ref.seal)
    if len(data) != ref.size_bytes or hashlib.sha256(data).hexdigest() != ref.sha256:
        raise DocumentRejected(f"object {ref.bucket}/{ref.name} does not match its reference")
    return data


async def delete_documents(js: JetStreamContext, names: list[str]) -> list[str]:
    """Remove the objects `names` from the documents bucket (a canceled job's document and
    summary); a missing one is no error. Returns the names actually removed; a failure is
    `AgentBusError` naming the object."""
    store = await js.object_store(subjects.DOCUMENTS_BUCKET)
    removed: list[str] = []
    for name in names:
        try:
            info = await store.get_info(name)
            if info.deleted:
                continue
            await store.delete(name)
        except nats.js.errors.NotFoundError:
            continue
        except (nats.errors.Error, TimeoutError) as e:
            raise AgentBusError(
                f"cannot delete {name} from object store {subjects.DOCUMENTS_BUCKET}: {e}"
            ) from e
        removed.append(name)
    return removed
