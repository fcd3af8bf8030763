"""A lean HTTP/1.1 GET of one blob from a peer, for the data plane between nodes.

httpx's async client under trio delivers a large body in 64 KiB pieces and ran at
0.17-0.3 GB/s on loopback (bench/mesh.py), a fraction of a raw trio stream. This
is the same signed ``GET /v1/blobs/{digest}``, spoken with h11 over a trio TCP
stream read in 1 MiB pieces, each written to the store as it arrives (hashed and
verified by the store's BlobWriter). One connection per blob.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import h11
import trio

from mesh.api.auth import MeshKey, sign
from mesh.api.wire import PEER_HEADER
from mesh.cas.digest import Digest
from mesh.cas.store import LocalStore
from mesh.errors import NodeError, NodeUnreachable

#: Bytes asked of the socket per read.
READ_SIZE = 1 << 20
#: Seconds to connect, and to wait for any progress of the transfer.
CONNECT_TIMEOUT = 2.0
IDLE_TIMEOUT = 60.0


async def get_blob(key: MeshKey, base_url: str, digest: Digest, store: LocalStore) -> bool:
    """Copy blob ``digest`` from the node at ``base_url`` into ``store``; False if it lacks it.

    Raises NodeUnreachable when the node cannot be reached or goes away mid-transfer,
    NodeError for other refusals, DigestMismatch (from the store) for wrong bytes.
    """
    parts = urlsplit(base_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    target = f"{parts.path.rstrip('/')}/v1/blobs/{digest}"
    headers = [("host", f"{host}:{port}"), ("accept", "application/octet-stream"), (PEER_HEADER, "1")]
    headers += list(sign(key, "GET", target, b"").items())
    connection = h11.Connection(our_role=h11.CLIENT)
    try:
        with trio.fail_after(CONNECT_TIMEOUT):
            stream = await trio.open_tcp_stream(host, port)
    except (OSError, trio.TooSlowError) as exc:
        raise NodeUnreachable(f"peer {base_url} does not answer ({exc})") from None
    async with stream:
        try:
            request = connection.send(h11.Request(method="GET", target=target, headers=headers))
            end = connection.send(h11.EndOfMessage())
            await stream.send_all((request or b"") + (end or b""))
            return await _receive(stream, connection, digest, store, base_url)
        except (OSError, trio.BrokenResourceError, trio.TooSlowError, h11.RemoteProtocolError) as exc:
            raise NodeUnreachable(f"peer {base_url} was lost while sending {digest} ({exc!r})") from None


async def _receive(
    stream: trio.SocketStream, connection: h11.Connection, digest: Digest, store: LocalStore, base_url: str
) -> bool:
    writer = None
    error = bytearray()
    status = 0
    try:
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                with trio.fail_after(IDLE_TIMEOUT):
                    data = await stream.receive_some(READ_SIZE)
                connection.receive_data(data)  # b"" marks the end of the stream
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
                if status == 200:
                    writer = store.writer(expected=digest)
            elif isinstance(event, h11.Data):
                if writer is not None:
                    writer.write(event.data)
                elif len(error) < 4096:
                    error += event.data
            elif isinstance(event, h11.EndOfMessage):
                if status == 404:
                    return False
                if writer is None:
                    raise NodeError(f"peer {base_url} refused {digest}: HTTP {status} {bytes(error[:300])!r}")
                writer.commit()
                return True
            elif isinstance(event, h11.ConnectionClosed):
                raise NodeUnreachable(f"peer {base_url} closed the connection while sending {digest}")
    finally:
        if writer is not None:
            writer.abort()
