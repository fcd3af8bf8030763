"""A lean HTTP/1.1 client for task offers: one signed ``POST /v1/jobs?follow=1&offer=1``.

An offer is the coordinator's hottest request (one per task it places on a peer),
and httpx's async client costs the coordinator's event loop more per request than
the rest of placing the task. This speaks the same request with h11 over trio TCP
streams and hands the answer's event frames to the caller as they arrive
(mesh.wire.formats). :class:`OfferConnections` keeps the connections of finished offers
for the next ones to the same peer: a new connection costs the peer's server
0.5-0.8 ms of CPU per offer on this project's test machines, and offers come in
bursts at the end of each wave of tasks.

Errors are those of :class:`mesh.cluster.peer.TaskOffers`: PeerDeclined when the peer has
no room or does not answer the connect (the task never started there),
NodeUnreachable when the peer is lost mid-task, NodeError for a refusal. A kept
connection the peer closed meanwhile is noticed before any answer came, and the
offer is sent once more on a new connection (the peer never saw it).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncGenerator
from typing import Any

import h11
import trio

from mesh import codec
from mesh.errors import CodecError, NodeError, NodeUnreachable, PeerDeclined
from mesh.wire.auth import MeshKey, signed_request
from mesh.wire.client import FrameSplitter
from mesh.wire.formats import CBOR, PEER_HEADER

#: Seconds to connect before the peer counts as not answering (the task never started there).
CONNECT_TIMEOUT = 2.0
#: Bytes asked of the socket per read.
READ_SIZE = 1 << 16
#: Bytes of an error answer kept for its message.
ERROR_BODY = 1 << 16


#: Kept connections per peer, and seconds one may wait for its next offer (the node's own
#: server keeps an idle connection 75 s).
KEPT_PER_PEER = 16
IDLE_LIMIT = 30.0


class _Kept:
    """An open connection whose last exchange ended cleanly, ready for the next request."""

    __slots__ = ("connection", "since", "stream")

    def __init__(self, stream: trio.SocketStream, connection: h11.Connection) -> None:
        self.stream = stream
        self.connection = connection
        self.since = trio.current_time()


class _ClosedBeforeAnswer(Exception):
    """A kept connection turned out closed before any answer: the request was not seen."""


class OfferConnections:
    """Kept-alive connections to peers for task offers (see the module docstring).

    Belongs to one trio run; :meth:`aclose` closes what it keeps.
    """

    def __init__(self) -> None:
        self._kept: dict[tuple[str, int], list[_Kept]] = {}
        self._swept = -math.inf

    def kept(self) -> int:
        """How many connections are kept now."""
        return sum(len(conns) for conns in self._kept.values())

    async def aclose(self) -> None:
        kept, self._kept = self._kept, {}
        for conns in kept.values():
            for conn in conns:
                await conn.stream.aclose()

    async def post(self, key: MeshKey, base_url: str, target: str, body: bytes) -> AsyncGenerator[dict[str, Any]]:
        """POST ``body`` (CBOR) to ``target`` on the node at ``base_url``; yield the answer's events."""
        own = [
            ("content-type", CBOR),
            ("content-length", str(len(body))),
            ("user-agent", "mesh-node"),
            (PEER_HEADER, "1"),
        ]
        host, port, path, headers = signed_request(key, "POST", base_url, target, body, own)
        self._sweep()
        peer = (host, port)
        conn = self._take(peer)
        reused = conn is not None
        while True:
            if conn is None:
                try:
                    with trio.fail_after(CONNECT_TIMEOUT):
                        stream = await trio.open_tcp_stream(host, port)
                except (OSError, trio.TooSlowError):
                    raise PeerDeclined(f"peer {base_url} does not answer") from None
                conn = _Kept(stream, h11.Connection(our_role=h11.CLIENT))
            try:
                async with contextlib.aclosing(
                    self._exchange(conn, peer, path, headers, body, base_url, reused=reused)
                ) as events:
                    async for event in events:
                        yield event
                return
            except _ClosedBeforeAnswer:  # closed while kept: the peer never saw this request
                conn, reused = None, False

    def _sweep(self) -> None:
        """Close what waited longer than IDLE_LIMIT, for every peer (looked at once per IDLE_LIMIT):
        connections to a peer that went away are never taken again, and would hold their descriptors."""
        now = trio.current_time()
        if now - self._swept < IDLE_LIMIT:
            return
        self._swept = now
        for peer, conns in list(self._kept.items()):
            fresh = []
            for conn in conns:
                if now - conn.since <= IDLE_LIMIT:
                    fresh.append(conn)
                else:
                    conn.stream.socket.close()
            if fresh:
                self._kept[peer] = fresh
            else:
                del self._kept[peer]

    def _take(self, peer: tuple[str, int]) -> _Kept | None:
        conns = self._kept.get(peer)
        now = trio.current_time()
        while conns:
            conn = conns.pop()
            if now - conn.since <= IDLE_LIMIT:
                return conn
            conn.stream.socket.close()  # too old to trust; closing a socket does not block
        return None

    async def _exchange(
        self,
        conn: _Kept,
        peer: tuple[str, int],
        path: str,
        headers: list[tuple[str, str]],
        body: bytes,
        base_url: str,
        *,
        reused: bool,
    ) -> AsyncGenerator[dict[str, Any]]:
        """One request and its answer on ``conn``; keeps the connection if both ended cleanly."""
        connection, stream = conn.connection, conn.stream
        answer = _Answer()
        done = False
        try:
            request = connection.send(h11.Request(method="POST", target=path, headers=headers)) or b""
            data = connection.send(h11.Data(data=body)) or b""
            end = connection.send(h11.EndOfMessage()) or b""
            await stream.send_all(request + data + end)
            async with contextlib.aclosing(_events(stream, connection, base_url, answer)) as events:
                async for event in events:
                    yield event
            done = True
        except (OSError, trio.BrokenResourceError, h11.RemoteProtocolError, NodeUnreachable) as exc:
            if reused and not answer.began:
                raise _ClosedBeforeAnswer from None
            if isinstance(exc, NodeUnreachable):
                raise
            raise NodeUnreachable(f"peer {base_url} was lost while running the task ({exc!r})") from None
        finally:
            if done and connection.our_state is h11.DONE and connection.their_state is h11.DONE:
                connection.start_next_cycle()
                conn.since = trio.current_time()
                conns = self._kept.setdefault(peer, [])
                conns.append(conn)
                if len(conns) > KEPT_PER_PEER:
                    conns.pop(0).stream.socket.close()
            else:
                stream.socket.close()


class _Answer:
    """Whether the peer began to answer (then it saw the request: it must not be sent again)."""

    __slots__ = ("began",)

    def __init__(self) -> None:
        self.began = False


async def _events(
    stream: trio.SocketStream, connection: h11.Connection, base_url: str, answer: _Answer
) -> AsyncGenerator[dict[str, Any]]:
    splitter = FrameSplitter(f"peer {base_url}")
    status = 0
    error = bytearray()
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            connection.receive_data(await stream.receive_some(READ_SIZE))  # b"": the peer closed
            continue
        if isinstance(event, h11.Response):
            answer.began = True
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
