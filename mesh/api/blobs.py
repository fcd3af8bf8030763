"""HTTP handlers of the blob API: find-missing, upload (single and batched), download.

Every byte that arrives is hashed as it is written (the store's BlobWriter) and
nothing is published unless it matches the digest it was sent under; a
mismatch is a 400 naming the digest. Downloads stream the stored file; the
client verifies what it receives (blobs are named by their hash).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from mesh import codec
from mesh.api.http import ApiError, authenticate, read_body, read_message, reply
from mesh.api.wire import PEER_HEADER, RECORD_HEADER
from mesh.cas.digest import Digest
from mesh.cas.store import BlobWriter, LocalStore
from mesh.errors import CodecError, DigestMismatch, InvalidDigest
from mesh.exec.action import parse_digest

#: Most digests one find-missing request may ask about.
MAX_MISSING_QUERY = 10_000
#: Largest single blob the node accepts, in bytes.
MAX_BLOB = 64 << 30
_CHUNK = 1 << 20


def _digest_param(text: str) -> Digest:
    try:
        digest = Digest.parse(text)
    except InvalidDigest as exc:
        raise ApiError(400, str(exc)) from None
    if digest.size > MAX_BLOB:
        raise ApiError(413, f"blob of {digest.size} bytes exceeds the node's limit of {MAX_BLOB} bytes")
    return digest


async def find_missing(request: Request) -> Response:
    store: LocalStore = request.app.state.node.store
    body = codec.Fields(await read_message(request, 2 << 20), "find-missing request")
    texts = body.texts("digests")
    body.done()
    if len(texts) > MAX_MISSING_QUERY:
        raise ApiError(413, f"ask about at most {MAX_MISSING_QUERY} digests per request, not {len(texts)}")
    digests = [parse_digest(t, "digests") for t in texts]
    return reply(request, {"missing": [str(d) for d in store.find_missing(digests)]})


async def put_blob(request: Request) -> Response:
    """``PUT /v1/blobs/{digest}``: store the body if it hashes to the digest."""
    authenticate(request, None, content_addressed=True)
    store: LocalStore = request.app.state.node.store
    digest = _digest_param(request.path_params["digest"])
    if store.has(digest):
        async for _ in request.stream():
            pass
        return reply(request, {"digest": str(digest), "stored": False}, status=200)
    with store.writer(expected=digest) as writer:
        async for chunk in request.stream():
            writer.write(chunk)
        writer.commit()
    return reply(request, {"digest": str(digest), "stored": True}, status=201)


async def get_blob(request: Request) -> Response:
    """``GET /v1/blobs/{digest}``: the blob's bytes, streamed (404 when absent)."""
    authenticate(request, await read_body(request, 0))
    node = request.app.state.node
    store: LocalStore = node.store
    digest = _digest_param(request.path_params["digest"])
    if not store.has(digest) and not request.headers.get(PEER_HEADER):
        # Outputs of tasks that ran on peers. A peer's own request never fans out again,
        # or two nodes that both lack a blob would ask each other for ever.
        await node.peering.fetch_from_peers(digest, store)
    # Not verified here: every receiver hashes what it gets (blobs are named by their hash),
    # so a second pass on this side would only halve the rate.
    reader = store.open(digest, verify=False)  # BlobNotFound -> 404

    async def chunks() -> AsyncIterator[bytes]:
        try:
            while True:
                data = reader.read(_CHUNK)
                if not data:
                    return
                yield data
        finally:
            reader.close()

    return StreamingResponse(
        chunks(), media_type="application/octet-stream", headers={"content-length": str(digest.size)}
    )


class _Records:
    """Incremental parser of a batched upload: (u16 length, digest text, raw bytes) records."""

    def __init__(self, store: LocalStore) -> None:
        self.store = store
        self.buffer = bytearray()
        self.writer: BlobWriter | None = None
        self.digest: Digest | None = None
        self.remaining = 0
        self.stored = 0
        self.present = 0

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self.writer is not None or (self.digest is not None and self.remaining):
                take = view[: self.remaining]
                if self.writer is not None:
                    self.writer.write(take)
                self.remaining -= len(take)
                view = view[len(take) :]
                if not self.remaining:
                    self._end_record()
                continue
            self.buffer += view
            view = memoryview(b"")
            rest = self._start_record()
            if rest is not None:
                view = memoryview(rest)

    def _start_record(self) -> bytes | None:
        if len(self.buffer) < RECORD_HEADER.size:
            return None
        (length,) = RECORD_HEADER.unpack_from(self.buffer)
        if length > 200:
            raise ApiError(400, f"upload record header of {length} bytes is not a digest")
        if len(self.buffer) < RECORD_HEADER.size + length:
            return None
        text = bytes(self.buffer[RECORD_HEADER.size : RECORD_HEADER.size + length]).decode("ascii", "replace")
        rest = bytes(self.buffer[RECORD_HEADER.size + length :])
        self.buffer.clear()
        self.digest = _digest_param(text)
        self.remaining = self.digest.size
        if self.store.has(self.digest):
            self.present += 1
        else:
            self.writer = self.store.writer(expected=self.digest)
        if not self.remaining:
            self._end_record()
        return rest

    def _end_record(self) -> None:
        if self.writer is not None:
            try:
                self.writer.commit()
            finally:
                self.writer.abort()
            self.stored += 1
        self.writer, self.digest = None, None

    def close(self) -> None:
        if self.writer is not None:
            self.writer.abort()
            raise ApiError(400, f"upload ended inside the blob {self.digest} ({self.remaining} bytes short)")
        if self.buffer:
            raise ApiError(400, f"upload ended inside a record header ({len(self.buffer)} stray bytes)")


async def upload_batch(request: Request) -> Response:
    """``POST /v1/blobs:upload``: many blobs in one streamed body (see mesh.api.wire)."""
    authenticate(request, None, content_addressed=True)
    records = _Records(request.app.state.node.store)
    try:
        async for chunk in request.stream():
            records.feed(chunk)
        records.close()
    except DigestMismatch as exc:
        raise ApiError(400, f"upload refused: {exc}") from None
    finally:
        if records.writer is not None:
            records.writer.abort()
    result: dict[str, Any] = {"stored": records.stored, "present": records.present}
    return reply(request, result)


__all__ = ["find_missing", "put_blob", "get_blob", "upload_batch", "CodecError"]
