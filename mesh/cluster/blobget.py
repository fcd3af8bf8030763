"""Lean HTTP/1.1 blob downloads from a peer, for the data plane between nodes.

httpx's async client under trio delivers a large body in 64 KiB pieces and ran at
0.17-0.3 GB/s on loopback (bench/mesh.py), a fraction of a raw trio stream. This
is the same signed ``GET /v1/blobs/{digest}``, spoken with h11 over a trio TCP
stream. Past the response head, the body (its length is the digest's size) is read
off the socket into reused buffers, each hashed and written to the store (the
store's BlobWriter verifies the digest) on a worker thread while the next one is
received. One connection per blob.

Trees of many small files come in batches instead (:func:`get_blobs`): one signed
``POST /v1/blobs:download`` names up to 10,000 blobs and the answer carries them
all as records (mesh.wire.records), where a GET each cost a round trip (~3 ms here).
"""

from __future__ import annotations

import contextlib
import queue
from collections.abc import AsyncGenerator

import h11
import trio

from mesh import codec
from mesh.cas.access import BlobAccess
from mesh.cas.blobio import BlobWriter
from mesh.cas.digest import Digest
from mesh.errors import DigestMismatch, NodeError, NodeUnreachable
from mesh.wire.auth import MeshKey, signed_request
from mesh.wire.formats import CBOR, PEER_HEADER
from mesh.wire.records import RecordError, RecordReader

#: Bytes asked of the socket per read of the response head.
READ_SIZE = 1 << 20
#: The body's pipeline: buffers of this many bytes, this many of them (one being filled,
#: one queued, one being written: a buffer is filled again only once it is written).
PIPE_BUFFER = 4 << 20
PIPE_DEPTH = 3
#: Seconds to connect, and to wait for any progress of the transfer.
CONNECT_TIMEOUT = 2.0
IDLE_TIMEOUT = 60.0


async def get_blob(key: MeshKey, base_url: str, digest: Digest, store: BlobAccess) -> bool:
    """Copy blob ``digest`` from the node at ``base_url`` into ``store``; False if it lacks it.

    Raises NodeUnreachable when the node cannot be reached or goes away mid-transfer,
    NodeError for other refusals, DigestMismatch (from the store) for wrong bytes.
    """
    own = [("accept", "application/octet-stream"), (PEER_HEADER, "1")]
    host, port, target, headers = signed_request(key, "GET", base_url, f"/v1/blobs/{digest}", b"", own)
    connection = h11.Connection(our_role=h11.CLIENT)
    stream = await _connect(host, port, base_url)
    async with stream:
        try:
            request = connection.send(h11.Request(method="GET", target=target, headers=headers))
            end = connection.send(h11.EndOfMessage())
            await stream.send_all((request or b"") + (end or b""))
            return await _receive(stream, connection, digest, store, base_url)
        except (OSError, trio.BrokenResourceError, trio.TooSlowError, h11.RemoteProtocolError) as exc:
            raise NodeUnreachable(f"peer {base_url} was lost while sending {digest} ({exc!r})") from None


async def _receive(
    stream: trio.SocketStream, connection: h11.Connection, digest: Digest, store: BlobAccess, base_url: str
) -> bool:
    response = await _head(stream, connection)
    if response.status_code == 200:
        length = _content_length(response)
        if length != digest.size:
            raise NodeError(f"peer {base_url} sent {digest} with content-length {length}, not {digest.size}")
        await _receive_body(stream, connection, digest, store, base_url)
        return True
    error = await _error_body(stream, connection, base_url)
    if response.status_code == 404:
        return False
    raise NodeError(f"peer {base_url} refused {digest}: HTTP {response.status_code} {error!r}")


async def get_blobs(key: MeshKey, base_url: str, digests: list[Digest], store: BlobAccess) -> list[Digest]:
    """Copy ``digests`` (at most the API's 10,000) from the node at ``base_url`` into ``store``
    with one ``POST /v1/blobs:download``; returns those that arrived, each verified.

    For trees of many small files, where a GET per blob costs a round trip each.
    The node leaves out what it lacks. Blobs stored before a failure stay stored.
    Raises NodeUnreachable when the node cannot be reached or goes away mid-answer,
    NodeError for a refusal or an answer that breaks the format or the digests.
    """
    body = codec.encode({"digests": [str(d) for d in digests]})
    own = [
        ("content-type", CBOR),
        ("content-length", str(len(body))),
        ("accept", "application/octet-stream"),
        (PEER_HEADER, "1"),
    ]
    host, port, target, headers = signed_request(key, "POST", base_url, "/v1/blobs:download", body, own)
    wanted = set(digests)

    def accept(digest: Digest) -> None:
        if digest not in wanted:
            raise RecordError(f"it sent {digest}, which was not asked for (or twice)")
        wanted.discard(digest)

    connection = h11.Connection(our_role=h11.CLIENT)
    stream = await _connect(host, port, base_url)
    reader = RecordReader(store, accept, "the answer")
    async with stream:
        try:
            request = connection.send(h11.Request(method="POST", target=target, headers=headers))
            data = connection.send(h11.Data(data=body))
            end = connection.send(h11.EndOfMessage())
            await stream.send_all((request or b"") + (data or b"") + (end or b""))
            response = await _head(stream, connection)
            if response.status_code != 200:
                error = await _error_body(stream, connection, base_url)
                raise NodeError(f"peer {base_url} refused a batched download: HTTP {response.status_code} {error!r}")
            while True:
                event = await _next_event(stream, connection)
                if isinstance(event, h11.Data):
                    # A piece may hold hundreds of small blobs, each a file to make (0.1-0.5 ms
                    # here): made on a worker thread, so the node's loop keeps serving meanwhile.
                    await trio.to_thread.run_sync(reader.feed, event.data)
                elif isinstance(event, h11.EndOfMessage):
                    reader.close()
                    return reader.received
                elif isinstance(event, h11.ConnectionClosed):
                    raise NodeUnreachable(f"peer {base_url} closed the connection during a batched download")
        except (RecordError, DigestMismatch) as exc:
            raise NodeError(f"peer {base_url} sent a bad batch of blobs: {exc}") from None
        except (OSError, trio.BrokenResourceError, trio.TooSlowError, h11.RemoteProtocolError) as exc:
            raise NodeUnreachable(f"peer {base_url} was lost during a batched download ({exc!r})") from None
        finally:
            reader.abort()


async def _connect(host: str, port: int, base_url: str) -> trio.SocketStream:
    try:
        with trio.fail_after(CONNECT_TIMEOUT):
            return await trio.open_tcp_stream(host, port)
    except (OSError, trio.TooSlowError) as exc:
        raise NodeUnreachable(f"peer {base_url} does not answer ({exc})") from None


async def _error_body(stream: trio.SocketStream, connection: h11.Connection, base_url: str) -> bytes:
    """The first bytes of a refusal's body (for the message), read to its end."""
    error = bytearray()
    while True:
        event = await _next_event(stream, connection)
        if isinstance(event, h11.Data):
            if len(error) < 4096:
                error += event.data
        elif isinstance(event, h11.EndOfMessage):
            return bytes(error[:300])
        elif isinstance(event, h11.ConnectionClosed):
            raise NodeUnreachable(f"peer {base_url} closed the connection in the middle of its answer")


async def _receive_body(
    stream: trio.SocketStream, connection: h11.Connection, digest: Digest, store: BlobAccess, base_url: str
) -> None:
    """Read the body's ``digest.size`` bytes straight off the socket into the store.

    h11 copies every piece of a body twice (into its buffer and out of it); past the
    response head the body is plain bytes of a known length, read here into a few
    reused buffers, which one worker thread hashes and writes (both release the GIL)
    while the next ones are received (:func:`_write_behind`): writing new data into
    the page cache is the slowest step on the project's VMs (0.25-0.35 GB/s of
    kernel time), and overlapping it with the socket keeps the two from adding up.
    """
    first = connection.trailing_data[0][: digest.size]  # what follows the body is not ours to read
    with store.writer(expected=digest) as writer:
        writer.write(first)
        remaining = digest.size - len(first)
        views = _filled(stream, remaining, PIPE_DEPTH, digest, base_url)
        if remaining <= PIPE_BUFFER:  # a small blob (most are): no thread, one read or a few
            async with contextlib.aclosing(views):
                async for view in views:
                    writer.write(view)
        else:
            await _write_behind(views, writer)
        writer.commit()


async def _write_behind(views: AsyncGenerator[memoryview, None], writer: BlobWriter) -> None:
    """Hand each of ``views`` (PIPE_DEPTH buffers filled in turn) to one worker thread that
    writes them in order, taking the next buffer once the thread is done with it.

    The thread runs for the whole body and goes from one buffer to the next without
    waiting for the event loop: a trip to the loop and back per buffer (a
    ``to_thread.run_sync`` each) left the writing idle 1.2-4 ms per 4 MiB buffer
    on 2 shared cores, 8-25% of a 256 MiB fetch whose writes took 0.6-1.3 s.
    Raises what the writing raised (StoreFull, DigestMismatch) or the receiving did.
    """
    filled: queue.SimpleQueue[memoryview | None] = queue.SimpleQueue()  # None: no more
    free = trio.Semaphore(PIPE_DEPTH)  # buffers that may be filled: written out, or never used
    token = trio.lowlevel.current_trio_token()
    failures: list[Exception] = []  # raised past the nursery, which would wrap them in a group

    def write_in_turn() -> None:
        while (view := filled.get()) is not None:
            writer.write(view)
            token.run_sync_soon(free.release)

    async def write() -> None:
        try:
            await trio.to_thread.run_sync(write_in_turn)
        except Exception as exc:  # StoreFull (disk full), DigestMismatch (too long)
            failures.append(exc)
            nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(write)
        try:
            async with contextlib.aclosing(views):
                await free.acquire()
                async for view in views:
                    filled.put(view)
                    await free.acquire()  # the buffer the next view fills has been written out
        except Exception as exc:
            failures.append(exc)
            nursery.cancel_scope.cancel()
        finally:
            filled.put(None)  # the thread ends once it has written what it was given
    if failures:
        raise failures[0]


async def _filled(
    stream: trio.SocketStream, remaining: int, depth: int, digest: Digest, base_url: str
) -> AsyncGenerator[memoryview, None]:
    """Receive ``remaining`` bytes into ``depth`` reused buffers in turn, yielding each when full.

    A yielded view is filled again ``depth`` yields later: its consumer must be done with it.
    """
    size = min(remaining, PIPE_BUFFER)
    buffers: list[memoryview] = []
    turn = 0
    while remaining > 0:
        if len(buffers) < depth:  # made as they are first needed
            buffers.append(memoryview(bytearray(size)))
        buffer = buffers[turn % depth]
        turn += 1
        want = min(remaining, size)
        filled = 0
        while filled < want:
            with trio.fail_after(IDLE_TIMEOUT):
                count = await stream.socket.recv_into(buffer[filled:want])
            if not count:
                raise NodeUnreachable(f"peer {base_url} closed the connection while sending {digest}")
            filled += count
        remaining -= filled
        yield buffer[:filled]


async def _head(stream: trio.SocketStream, connection: h11.Connection) -> h11.Response:
    """Read up to the response head (skipping any 1xx)."""
    while True:
        event = await _next_event(stream, connection)
        if isinstance(event, h11.Response):
            return event
        if isinstance(event, h11.ConnectionClosed):
            raise h11.RemoteProtocolError("connection closed before the response")


async def _next_event(stream: trio.SocketStream, connection: h11.Connection) -> object:
    while True:
        event = connection.next_event()
        if event is not h11.NEED_DATA:
            return event
        with trio.fail_after(IDLE_TIMEOUT):
            data = await stream.receive_some(READ_SIZE)
        connection.receive_data(data)  # b"" marks the end of the stream


def _content_length(response: h11.Response) -> int | None:
    for name, value in response.headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
