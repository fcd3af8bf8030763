"""A lean HTTP/1.1 client for task offers: one signed ``POST /v1/jobs?follow=1&offer=1``.

An offer is the coordinator's hottest request (one per task it places on a peer),
and httpx's async client costs the coordinator's event loop more per request than
the rest of placing the task. This speaks the same request with h11 over a trio
TCP stream, one connection per offer, and hands the answer's event frames to the
caller as they arrive (mesh.api.wire). Errors are those of
:class:`mesh.api.peer.TaskOffers`: PeerDeclined when the peer has no room or does
not answer the connect (the task never started there), NodeUnreachable when the
peer is lost mid-task, NodeError for a refusal.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import h11
import trio

from mesh import codec
from mesh.api.auth import MeshKey, sign
from mesh.api.client import FrameSplitter
from mesh.api.wire import CBOR, PEER_HEADER
from mesh.errors import CodecError, NodeError, NodeUnreachable, PeerDeclined

#: Seconds to connect before the peer counts as not answering (the task never started there).
CONNECT_TIMEOUT = 2.0
#: Bytes asked of the socket per read.
READ_SIZE = 1 << 16
#: Bytes of an error answer kept for its message.
ERROR_BODY = 1 << 16


async def post_offer(key: MeshKey, base_url: str, target: str, body: bytes) -> AsyncIterator[dict[str, Any]]:
    """POST ``body`` (CBOR) to ``target`` on the node at ``base_url``; yield the answer's events."""
    parts = urlsplit(base_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path.rstrip("/") + target
    headers = [
        ("host", f"{host}:{port}"),
        ("content-type", CBOR),
        ("content-length", str(len(body))),
        ("user-agent", "mesh-node"),
        (PEER_HEADER, "1"),
        *sign(key, "POST", path, body).items(),
    ]
    connection = h11.Connection(our_role=h11.CLIENT)
    try:
        with trio.fail_after(CONNECT_TIMEOUT):
            stream = await trio.open_tcp_stream(host, port)
    except (OSError, trio.TooSlowError):
        raise PeerDeclined(f"peer {base_url} does not answer") from None
    async with stream:
        try:
            request = connection.send(h11.Request(method="POST", target=path, headers=headers)) or b""
            data = connection.send(h11.Data(data=body)) or b""
            end = connection.send(h11.EndOfMessage()) or b""
            await stream.send_all(request + data + end)
            async for event in _events(stream, connection, base_url):
                yield event
        except (OSError, trio.BrokenResourceError, h11.RemoteProtocolError) as exc:
            raise NodeUnreachable(f"peer {base_url} was lost while running the task ({exc!r})") from None


async def _events(
    stream: trio.SocketStream, connection: h11.Connection, base_url: str
) -> AsyncIterator[dict[str, Any]]:
    splitter = FrameSplitter(f"peer {base_url}")
    status = 0
    error = bytearray()
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            connection.receive_data(await stream.receive_some(READ_SIZE))  # b"": the peer closed
            continue
        if isinstance(event, h11.Response):
            status = event.status_code
            if status == 409:
                raise PeerDeclined(f"peer {base_url} has no free slot")
        elif isinstance(event, h11.Data):
            if status >= 400:
                error += event.data[: ERROR_BODY - len(error)]
                continue
            for item in splitter.feed(event.data):
                yield item
        elif isinstance(event, h11.EndOfMessage):
            if status >= 400:
                raise NodeError(f"peer {base_url} refused the offer: {_message(bytes(error), status)}", status)
            splitter.end()
            return
        elif isinstance(event, h11.ConnectionClosed):
            raise NodeUnreachable(f"peer {base_url} closed the connection while running the task")


def _message(body: bytes, status: int) -> str:
    try:
        answer = codec.decode(body)
    except CodecError:
        answer = None
    if isinstance(answer, dict) and isinstance(answer.get("error"), str):
        return str(answer["error"])
    return f"HTTP {status}"
