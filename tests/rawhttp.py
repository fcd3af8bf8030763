"""Raw HTTP/1.1 on a plain socket: requests written byte for byte, answers read with a deadline.

The HTTP fuzzer (tests/test_fuzz_http.py) must be able to send what no client library
would: lowercase or invented methods, two conflicting ``Content-Length`` headers, a
chunked body whose chunks lie, a target with a raw NUL. httpx (and h11 as a client)
normalise or refuse those, so a :class:`RawRequest` renders itself to bytes and
:func:`exchange` writes them on a socket.

The answers are parsed by h11 (the HTTP/1.1 parser hypercorn itself uses) in the
client role. h11 frames an answer from what it knows of the request, so it is told
the two things that matter: the request's method (a HEAD answer has no body) and
whether the request asked to switch protocols (``Upgrade``, which a 101 may accept).
An answer h11 cannot parse is reported as such: a node must not break HTTP either.

When a request's framing lies (a body shorter than its Content-Length, chunks that never
end), the socket's writing side is shut after the last request (``SHUT_WR``): the node
meets the end of the stream instead of waiting for bytes that never come, so it must
answer or close at once (measured on hypercorn 0.18: pipelined requests before the
shutdown are still all answered). Only then: Starlette takes the end of the stream for a
client that went away, and stops a streamed answer in the middle.
"""

from __future__ import annotations

import re
import socket
import time
from dataclasses import dataclass, field
from typing import Literal

import h11

#: How a request's body is framed when rendered: ``length`` adds a correct Content-Length,
#: ``chunked`` a Transfer-Encoding and well-formed chunks, ``none`` adds nothing (the
#: request's own headers say whatever they say, and the body is written as it is).
Framing = Literal["length", "chunked", "none"]

_TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")


@dataclass(frozen=True)
class RawRequest:
    """One HTTP/1.x request as bytes on the wire, well formed or not."""

    method: bytes
    target: bytes
    headers: tuple[tuple[bytes, bytes], ...] = ()
    body: bytes = b""
    framing: Framing = "length"
    version: bytes = b"HTTP/1.1"

    def render(self) -> bytes:
        headers = list(self.headers)
        body = self.body
        if self.framing == "length":
            headers.append((b"content-length", str(len(body)).encode()))
        elif self.framing == "chunked":
            headers.append((b"transfer-encoding", b"chunked"))
            body = chunked(body)
        lines = [b" ".join((self.method, self.target, self.version))]
        lines += [name + b": " + value for name, value in headers]
        return b"\r\n".join(lines) + b"\r\n\r\n" + body

    @property
    def delimited(self) -> bool:
        """Whether the request ends where the node will think it ends (its body framed by the
        renderer, or no body and no header that announces one)."""
        if self.framing != "none":
            return True
        return not self.body and self.header(b"content-length") is None and self.header(b"transfer-encoding") is None

    def header(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (any case), as sent."""
        for key, value in self.headers:
            if key.strip().lower() == name:
                return value
        return None

    def describe(self, limit: int = 1500) -> str:
        """The rendered bytes, cut to ``limit`` (for failure messages)."""
        raw = self.render()
        shown = repr(raw[:limit])
        return shown if len(raw) <= limit else f"{shown}... ({len(raw)} bytes in all)"


def chunked(body: bytes, size: int = 4096) -> bytes:
    """``body`` in well-formed chunked transfer coding."""
    pieces = [b"%x\r\n%s\r\n" % (len(body[i : i + size]), body[i : i + size]) for i in range(0, len(body), size)]
    return b"".join(pieces) + b"0\r\n\r\n"


@dataclass
class Answer:
    """One answer of the node: status, headers (names lowercased), the body read."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    complete: bool = False  # the whole body was read (False: still streaming at the deadline)

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


@dataclass
class Exchange:
    """What became of the requests sent on one connection.

    ``answers[i]`` answers request ``i`` (interim 1xx answers other than a 101 are in
    ``interim``). Requests past the last answer were not answered because the node
    closed the connection (``closed``), switched protocols (``switched``: after a 101,
    or when it answers HTTP/2's connection preface in HTTP/2), or neither within the
    deadline (``hung``). ``broken`` says why the answer could not be parsed as HTTP.
    """

    answers: list[Answer] = field(default_factory=list)
    interim: list[int] = field(default_factory=list)
    switched: bytes | None = None  # the protocol the connection switched to (after a 101, or h2 prior knowledge)
    half_closed: bool = False  # the writing side was shut after the requests (see the module's docstring)
    closed: bool = False
    hung: bool = False
    broken: str | None = None
    seconds: float = 0.0


def _mimic(request: RawRequest) -> h11.Request:
    """A request h11 accepts that frames the answer like ``request`` does."""
    method = request.method if _TOKEN.fullmatch(request.method) else b"GET"
    headers = [(b"host", b"fuzz")]
    upgrade = request.header(b"upgrade")
    if upgrade is not None:
        headers += [(b"upgrade", upgrade.strip() or b"x"), (b"connection", b"upgrade")]
    return h11.Request(method=method, target=b"/", headers=headers)


def exchange(
    address: tuple[str, int],
    requests: list[RawRequest],
    *,
    answer_seconds: float = 20.0,
    stream_seconds: float = 1.0,
) -> Exchange:
    """Send ``requests`` on one new connection (pipelined), then read their answers.

    The node has ``answer_seconds`` from the last byte sent to begin each answer
    (its status line and headers); a body still arriving ``stream_seconds`` after its
    headers is left unread (``complete`` False) and the connection is dropped, as a
    client that stops following an event stream does.
    """
    result = Exchange(half_closed=not all(r.delimited for r in requests))
    started = time.monotonic()
    with socket.create_connection(address, timeout=answer_seconds) as sock:
        try:
            sock.sendall(b"".join(r.render() for r in requests))
            if result.half_closed:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the node closed or reset the connection while we wrote: read what it said
        conn = h11.Connection(h11.CLIENT)
        try:
            for request in requests:
                if not _read_answer(sock, conn, request, result, answer_seconds, stream_seconds):
                    break
        except h11.RemoteProtocolError as exc:
            result.broken = f"the answer is not HTTP/1.1 that h11 can parse: {exc}"
    result.seconds = time.monotonic() - started
    return result


def _read_answer(
    sock: socket.socket,
    conn: h11.Connection,
    request: RawRequest,
    result: Exchange,
    answer_seconds: float,
    stream_seconds: float,
) -> bool:
    """Read the answer to one request into ``result``; whether the next may be read."""
    deadline = time.monotonic() + answer_seconds
    if request.method == b"PRI" and request.version == b"HTTP/2.0":  # HTTP/2 with prior knowledge
        head = conn.trailing_data[0] or _receive(sock, answer_seconds, peek=True)
        if head is None or not head:
            result.hung, result.closed = head is None, head == b""
            return False
        if not head.startswith(b"HTTP/"):
            result.switched = b"h2"
            return False
    conn.send(_mimic(request))
    conn.send(h11.EndOfMessage())
    answer: Answer | None = None
    began = bool(conn.trailing_data[0])  # bytes of this answer arrived (with the last one, say)
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            remaining = deadline - time.monotonic()
            data = _receive(sock, remaining) if remaining > 0 else None
            if data is None:  # the deadline passed
                result.hung = answer is None
                return False
            if not data and not began:  # closed before this answer began: no answer, not a broken one
                result.closed = True
                return False
            began = True
            conn.receive_data(data)
            continue
        if isinstance(event, h11.InformationalResponse):
            if event.status_code == 101:
                answer = Answer(101, [(k.lower(), v) for k, v in event.headers], complete=True)
                result.answers.append(answer)
                result.switched = answer.header(b"upgrade") or b"?"
                return False  # another protocol follows (h2c, websocket): not ours to read
            result.interim.append(event.status_code)
            began = bool(conn.trailing_data[0])  # a 100 Continue is not the answer
        elif isinstance(event, h11.Response):
            answer = Answer(event.status_code, [(k.lower(), v) for k, v in event.headers])
            result.answers.append(answer)
            deadline = time.monotonic() + stream_seconds
        elif isinstance(event, h11.Data):
            assert answer is not None
            answer.body += event.data
        elif isinstance(event, h11.EndOfMessage):
            assert answer is not None
            answer.complete = True
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                result.closed = True
                return False
            conn.start_next_cycle()
            return True
        elif isinstance(event, h11.ConnectionClosed):
            result.closed = True
            return False
        else:  # pragma: no cover - h11 has no other events for a client
            raise AssertionError(f"unexpected h11 event {event!r}")


def _receive(sock: socket.socket, seconds: float, *, peek: bool = False) -> bytes | None:
    """Up to 64 KiB from ``sock`` (b"" at its end), or None after ``seconds`` without any;
    ``peek`` leaves them to be read again."""
    sock.settimeout(seconds)
    try:
        return sock.recv(65536, socket.MSG_PEEK if peek else 0)
    except TimeoutError:
        return None
    except ConnectionResetError:
        return b""
