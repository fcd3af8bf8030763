"""HTTP handlers of the blob API: find-missing, upload and download (single and batched).

Every byte that arrives is hashed as it is written (the store's BlobWriter) and
nothing is published unless it matches the digest it was sent under; a
mismatch is a 400 naming the digest. An upload names each blob's digest, which
carries its size, so before any of a blob's bytes is read: one larger than the
node takes (MAX_BLOB, or its whole store cap MESH_STORE_MAX) is refused with 413;
one that would take the store past its cap gets room from the node's StoreSpace
(mesh.cas.space), which evicts least recently used blobs that nothing pins, or
refuses with 507 (StoreCapReached, naming the cap, what the store holds and what
is pinned); one larger than the free space of the store's filesystem gets 507
(StoreFull, naming the store and its free space). A disk that fills up meanwhile
is a 507 too.

Downloads stream the stored file through the store's verifying reader, which
hashes the bytes as they are sent and raises on the read that would complete a
damaged blob (quarantining it): the response then stops short of its
Content-Length and the connection is closed, so no client takes it for a
success (:class:`BlobStream`). Hashing as we send, rather than hashing the file
first, reads it once and leaves no time between the check and the sending;
measured on 2 cores, a node fetching a 256 MiB blob from another over loopback
(mesh.cluster.blobget, into its store; medians of 9-11 rounds, two runs): unverified
1.13-1.25 GB/s, hashed as sent 0.90-1.00 GB/s, hashed first (all cores, through
mmap) then sent 0.94-1.26 GB/s, with the first byte ~30 ms later.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing, nullcontext
from typing import Any

import trio
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Send

from mesh import codec
from mesh.api.http import ApiError, authenticate, read_body, read_message, reply
from mesh.api.services import services
from mesh.api.sessions import for_people
from mesh.cas.digest import Digest
from mesh.errors import BlobDamaged, CodecError, DigestMismatch, InvalidDigest
from mesh.exec.action import parse_digest
from mesh.wire.formats import PEER_HEADER
from mesh.wire.records import RecordError, RecordReader, write_records

#: Most digests one find-missing request may ask about.
MAX_MISSING_QUERY = 10_000
#: Largest single blob the node accepts, in bytes.
MAX_BLOB = 64 << 30
#: Bytes per piece of a streamed blob (one read, one hash update, one send). Serving a
#: 256 MiB blob to a lean client on loopback (2 cores, read ahead, medians of 5): 4 MiB
#: pieces 1.11-1.15 GB/s, 1 MiB pieces 0.77-0.88 GB/s; every piece costs a trip through
#: Starlette and hypercorn and a hop to a worker thread.
SEND_PIECE = 4 << 20


def _digest_param(text: str) -> Digest:
    try:
        digest = Digest.parse(text)
    except InvalidDigest as exc:
        raise ApiError(400, str(exc)) from None
    _within_limit(digest)
    return digest


def _within_limit(digest: Digest) -> None:
    """Refuse (413) a blob larger than the node takes."""
    if digest.size > MAX_BLOB:
        raise ApiError(413, f"blob of {digest.size} bytes exceeds the node's limit of {MAX_BLOB} bytes")


def _upload_limit(request: Request) -> Callable[[Digest], None]:
    """The check of each blob an upload names, made before any of its bytes is read: 413
    past MAX_BLOB or the node's whole store cap. (Room under the cap is the StoreSpace's,
    and the free space the store's own check, as it opens the blob's writer: 507.)"""
    cap = services(request).blobs.space.cap

    def check(digest: Digest) -> None:
        _within_limit(digest)
        if cap is not None and digest.size > cap:
            raise ApiError(
                413, f"blob of {digest.size} bytes exceeds this node's store cap (MESH_STORE_MAX) of {cap} bytes"
            )

    return check


async def _digest_list(request: Request, what: str) -> list[Digest]:
    """The ``digests`` of a signed ``{"digests": [...]}`` request (at most MAX_MISSING_QUERY)."""
    body = codec.Fields(await read_message(request, 2 << 20), what)
    texts = body.texts("digests")
    body.done()
    if len(texts) > MAX_MISSING_QUERY:
        raise ApiError(413, f"name at most {MAX_MISSING_QUERY} digests per request, not {len(texts)}")
    return [parse_digest(t, "digests") for t in texts]


async def find_missing(request: Request) -> Response:
    store = services(request).blobs.store
    digests = await _digest_list(request, "find-missing request")
    return reply(request, {"missing": [str(d) for d in store.find_missing(digests)]})


async def put_blob(request: Request) -> Response:
    """``PUT /v1/blobs/{digest}``: store the body if it hashes to the digest."""
    authenticate(request, None, content_addressed=True)
    blobs = services(request).blobs
    store = blobs.store
    digest = _digest_param(request.path_params["digest"])
    _upload_limit(request)(digest)
    if store.has(digest):
        async for _ in request.stream():
            pass
        return reply(request, {"digest": str(digest), "stored": False}, status=200)
    room = await blobs.space.reserve(digest.size)  # StoreCapReached (507) if eviction cannot make room
    with room, store.writer(expected=digest) as writer:
        async for chunk in request.stream():
            writer.write(chunk)
        writer.commit()
    return reply(request, {"digest": str(digest), "stored": True}, status=201)


@for_people
async def get_blob(request: Request) -> Response:
    """``GET /v1/blobs/{digest}``: the blob's bytes, streamed (404 when absent); a UI session
    may read them too (a task's whole log is its stdout and stderr blobs)."""
    authenticate(request, await read_body(request, 0))
    digest = _digest_param(request.path_params["digest"])
    # A peer's own request is answered from this node's store alone (see Blobs.open).
    reader = await services(request).blobs.open(digest, ask_peers=not request.headers.get(PEER_HEADER))

    async def pieces() -> AsyncIterator[bytes]:
        with reader:
            # Read and hashed on a worker thread: a piece of a file not in the page cache
            # would otherwise hold the node's loop while the disk reads it.
            while data := await trio.to_thread.run_sync(reader.read, SEND_PIECE):  # BlobDamaged instead of
                yield data  # the last piece of a damaged blob

    return BlobStream(pieces(), media_type="application/octet-stream", headers={"content-length": str(digest.size)})


class BlobStream(StreamingResponse):
    """A streamed answer, its body read one piece ahead of the sending, that a damaged blob
    (BlobDamaged from its body) leaves unfinished.

    The head went out already, so the failure cannot be a status: the answer ends
    without its last bytes and without its end, and the server closes the
    connection (hypercorn does when an HTTP/1.1 answer is left short of its
    Content-Length). The store logged and quarantined the blob.

    The next piece is read (and hashed, by the store's reader) while the one before
    is sent, so the two take turns on neither core.
    """

    async def stream_response(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        ahead, sending = trio.open_memory_channel[bytes | memoryview](0)
        # Raised past the nursery, which would wrap them in a group.
        read_failure: list[Exception] = []  # BlobDamaged, or the file could not be read
        send_failure: list[Exception] = []  # the client went away

        async def read_ahead() -> None:
            body = self.body_iterator
            closing = aclosing(body) if isinstance(body, AsyncGenerator) else nullcontext(body)
            try:
                async with ahead, closing:
                    async for piece in body:
                        await ahead.send(piece.encode(self.charset) if isinstance(piece, str) else piece)
            except trio.BrokenResourceError:
                pass  # the sending stopped (send_failure says why)
            except Exception as exc:
                read_failure.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_ahead)
            try:
                async with sending:
                    async for piece in sending:
                        await send({"type": "http.response.body", "body": piece, "more_body": True})
            except Exception as exc:
                send_failure.append(exc)
                nursery.cancel_scope.cancel()
        if send_failure:
            raise send_failure[0]
        if read_failure:
            if isinstance(read_failure[0], BlobDamaged):
                return
            raise read_failure[0]
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def upload_batch(request: Request) -> Response:
    """``POST /v1/blobs:upload``: many blobs in one streamed body (see mesh.wire.records)."""
    authenticate(request, None, content_addressed=True)
    blobs = services(request).blobs
    space = blobs.space
    records = RecordReader(blobs.store, _upload_limit(request), "upload", room=space.try_reserve)
    # Blobs this upload stored are kept through evictions until it ends (the last records
    # must not take the room of the first).
    try:
        with space.protecting(since_ns=time.time_ns()):
            async for chunk in request.stream():
                rest = records.feed(chunk)
                while rest is not None:  # a record the store must evict for, off the event loop
                    assert records.waiting is not None
                    records.admit(await space.reserve(records.waiting.size))  # or StoreCapReached: 507
                    rest = records.feed(rest)
            records.close()
    except (RecordError, DigestMismatch) as exc:
        raise ApiError(400, f"upload refused: {exc}") from None
    finally:
        records.abort()
    result: dict[str, Any] = {"stored": records.stored, "present": records.present}
    return reply(request, result)


async def download_batch(request: Request) -> Response:
    """``POST /v1/blobs:download``: the records of the asked-for blobs this node holds, in the
    order asked, in one streamed answer (blobs it lacks are left out). For nodes fetching a
    tree of many small files from a peer: one request instead of one per file."""
    digests = await _digest_list(request, "download request")
    store = services(request).blobs.store
    # A plain iterator: Starlette reads it on a worker thread, so the file reads stay off the loop.
    return BlobStream(write_records(store, digests), media_type="application/octet-stream")


__all__ = ["find_missing", "put_blob", "get_blob", "upload_batch", "download_batch", "CodecError"]
