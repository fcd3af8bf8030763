"""The node's HTTP server: hypercorn's HTTP/1.1 protocol on trio, each connection on its own.

``hypercorn.trio.serve`` cannot be configured to do two things a node needs (checked
against hypercorn 0.18.0, whose Config has a setting for neither), so this module runs
hypercorn's per-connection server itself:

- **HTTP/1.1 only.** On plain TCP, hypercorn switches a connection to HTTP/2 when a
  request asks ``Upgrade: h2c`` (it answers 101 before it parses ``HTTP2-Settings``) or
  begins with the HTTP/2 preface ``PRI * HTTP/2.0``. Every client of a node speaks
  HTTP/1.1 (NodeClient's httpx, the lean h11 paths of mesh.cluster.offerpost and
  mesh.cluster.blobget, browsers on a plain ``http://`` URL), so HTTP/2 would only add a
  second protocol stack to attack: an unsigned ``HTTP2-Settings: AAAA`` (3 bytes, not a
  whole setting) made h2 raise in the upgrade and ended the node. Here ``Upgrade: h2c``
  is ignored, as RFC 9110 §7.8 allows, and the request is answered in HTTP/1.1; a
  request of another major version (the preface) is answered 505 HTTP Version Not
  Supported (RFC 9110 §15.6.6, what Go's net/http answers when it has no HTTP/2) and
  its connection closed. ``Upgrade: websocket`` is ignored too: the node serves no
  WebSocket. A method not in capitals (``head``) gets 501 Not Implemented, as an unknown
  method does, and its connection closes: hypercorn would hand it to the app in capitals.
- **One connection's failure ends that connection only.** hypercorn serves every
  connection in one nursery, so whatever one connection raises cancels all the others
  and ends the server. Here each connection catches what it raises, logs one line
  (the traceback at debug level) and closes; the node keeps serving.
- **A lingering close.** hypercorn closes a connection the node ends (after an error
  answer, or a request it cannot parse) at once. When the client has sent more than the
  node read (a body the answer made needless, requests pipelined behind a bad one), the
  kernel then answers with a reset, which throws away what the node's socket had not yet
  delivered: the end of an answer the client was still reading (8,271,709 of 8,315,375
  bytes of a job's answer in a fuzz run; the 4.7 KB stylesheet cut at 4,259 bytes for a
  client with a small receive buffer). As Apache and nginx do, the node sends its end of
  the stream, reads and drops what still comes for up to :data:`LINGER` seconds, until
  the client closes, and only then closes.

The rest is hypercorn's, unchanged: h11 parsing and its limits (400 for a malformed
request, 431 for a header block over 16 KiB), keep-alive and idle timeouts, and the
graceful close of connections at shutdown. There are no ASGI lifespan events: the node
starts and stops its parts itself (mesh.node), and its app has no lifespan handlers.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable
from functools import partial
from typing import cast

import h11
import trio
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.config import Config
from hypercorn.events import Closed, Event
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.trio.task_group import TaskGroup
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ASGIFramework, ConnectionState
from hypercorn.utils import parse_socket_addr, repr_socket_addr
from starlette.types import ASGIApp

from mesh.errors import unwrap
from mesh.urls import netloc

log = logging.getLogger("mesh.http")

#: Seconds an idle keep-alive connection stays open (clients reuse theirs between requests).
KEEP_ALIVE = 75.0
#: Seconds open connections get to finish their request once the node stops serving.
GRACEFUL = 1.0
#: Seconds a connection the node closes goes on reading (and dropping) what the client
#: still sends, before it closes for good: a lingering close (see :meth:`_Connection._close`).
LINGER = 2.0
#: Bytes one read of a lingering close takes (hypercorn reads as much at a time).
LINGER_READ = 65536
#: What a client that speaks another HTTP version than 1.x reads in the 505 it gets.
_VERSION_REFUSED = b"this node speaks HTTP/1.1 only\n"
#: What a client reads in the 501 for a method in other than capitals.
_METHOD_REFUSED = b"methods are case-sensitive (RFC 9110 section 9.1): send it in capitals\n"


def _config() -> Config:
    config = Config()
    config.accesslog = None
    config.errorlog = log
    config.graceful_timeout = GRACEFUL
    config.keep_alive_timeout = KEEP_ALIVE
    return config


def listen(host: str, port: int) -> list[socket.socket]:
    """Listening sockets on ``host:port`` (port 0: any free one), bound now, with hypercorn's
    socket options; OSError if the address is taken or not this machine's. The caller owns them
    until it hands them to :func:`serve`."""
    config = _config()
    config.bind = [netloc(host, port)]
    sockets = config.create_sockets().insecure_sockets
    for sock in sockets:
        sock.listen(config.backlog)
    return sockets


async def serve(
    app: ASGIApp,
    sockets: list[socket.socket],
    *,
    shutdown_trigger: Callable[[], Awaitable[object]],
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on ``sockets`` (from :func:`listen`) until ``shutdown_trigger`` returns, then
    stop accepting, give open connections GRACEFUL seconds and return. ``task_status.started``
    gets the URLs served (``http://host:port``) once connections are accepted. Closes the sockets.
    """
    config = _config()
    context = WorkerContext(None)
    asgi = cast(ASGIFramework, app)  # the same ASGI 3 callable; Starlette and hypercorn spell its types apart
    handler = partial(_Connection, ASGIWrapper(asgi), config, context, {})
    listeners = [trio.SocketListener(trio.socket.from_stdlib_socket(sock)) for sock in sockets]
    urls = [f"http://{repr_socket_addr(sock.family, sock.getsockname())}" for sock in sockets]
    async with trio.open_nursery() as connections:
        async with trio.open_nursery() as accepting:
            await accepting.start(partial(trio.serve_listeners, handler, listeners, handler_nursery=connections))
            task_status.started(urls)
            await shutdown_trigger()
            accepting.cancel_scope.cancel()  # closes the listeners
        await context.terminated.set()  # idle connections close; busy ones close after their answer
        connections.cancel_scope.deadline = trio.current_time() + config.graceful_timeout


class _Connection(TCPServer):
    """One client connection, spoken in HTTP/1.1 only; what it raises ends it alone.

    hypercorn's TCPServer.run without its TLS branch (a node serves plain TCP), with
    :class:`_HTTP11Protocol` in place of the wrapper that can switch to HTTP/2, and the guard.
    """

    async def run(self) -> None:
        self._read_ended = trio.Event()
        sock = self.stream.socket
        peer = "an unknown peer"
        try:
            address = sock.getpeername()
            peer = repr_socket_addr(sock.family, address)
            client = parse_socket_addr(sock.family, address)
            server = parse_socket_addr(sock.family, sock.getsockname())
            async with TaskGroup() as task_group:
                self._task_group = task_group
                # TCPServer calls only initiate() and handle() of its protocol, which H11Protocol has.
                self.protocol = _HTTP11Protocol(  # type: ignore[assignment]
                    self.app,
                    self.config,
                    self.context,
                    task_group,
                    ConnectionState(self.state),
                    False,
                    client,
                    server,
                    self.protocol_send,
                )
                await self.protocol.initiate()
                await self.idle_task.restart(task_group, self._idle_timeout)
                await self._read_data()
        except* OSError:
            pass  # the client went away (what TCPServer.run ignores too)
        except* Exception as group:
            error = unwrap(group, expected=(Exception,))
            log.warning("closed the connection from %s after an error: %s: %s", peer, type(error).__name__, error)
            log.debug("the error that closed the connection from %s", peer, exc_info=group)
        finally:
            await self._close()

    async def _read_data(self) -> None:
        try:
            await super()._read_data()
        finally:
            self._read_ended.set()

    async def _close(self) -> None:
        """hypercorn's close, lingering: send the end of the stream after what is queued,
        then read and drop what the client still sends, until it closes or :data:`LINGER`
        seconds pass, then close (see the module's docstring). When the connection's reader
        is reading at the moment (an answer ended while its request's body still arrives),
        that reader drains it, and the stream is closed when it stops or after
        :data:`LINGER` seconds."""
        closed_later = False
        try:
            try:
                await self.stream.send_eof()
            except (trio.BrokenResourceError, trio.BusyResourceError, trio.ClosedResourceError):
                pass
            with trio.move_on_after(LINGER):
                while await self.stream.receive_some(LINGER_READ):
                    pass
        except trio.BusyResourceError:
            closed_later = True
            self._task_group.spawn(self._close_after_reader)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            if not closed_later:  # also when cancelled (the node stopping): at once
                await trio.aclose_forcefully(self.stream)

    async def _close_after_reader(self) -> None:
        try:
            with trio.move_on_after(LINGER):
                await self._read_ended.wait()
        finally:
            await trio.aclose_forcefully(self.stream)

    async def protocol_send(self, event: Event) -> None:
        """hypercorn's, but a close waits for a send under way, as sends wait for each other.

        hypercorn closes a connection from the task that reads it (a request whose framing
        broke, say) while the app's task may be sending its answer; the close's ``send_eof``
        holds the stream's send side across a checkpoint without the send lock, and the
        app's ``send_all`` then raised BusyResourceError ("another task is currently sending
        data on this SocketStream"): 748 tracebacks logged as internal errors in a
        ten-minute fuzz run, and answers cut short. Under the lock the send finishes, the
        close follows, and a later send finds the stream closed, which hypercorn handles.
        """
        if not isinstance(event, Closed) or self.send_lock.statistics().owner is trio.lowlevel.current_task():
            await super().protocol_send(event)
            return
        async with self.send_lock:
            await self._close()
        await self.protocol.handle(Closed())


class _HTTP11Protocol(H11Protocol):
    """hypercorn's HTTP/1.1 protocol, never switching to another: ``Upgrade`` (``h2c`` or
    ``websocket``) is ignored, a request of HTTP/2 or later gets a 505, and one whose method
    is not in capitals a 501; after either refusal the connection closes."""

    _refused = False

    async def _check_protocol(self, event: h11.Request) -> None:
        if not event.http_version.startswith(b"1."):
            await self._refuse(event, 505, _VERSION_REFUSED)
        elif event.method != event.method.upper():
            # Methods are case-sensitive (RFC 9110 §9.1): ``head`` is not HEAD. hypercorn hands
            # the app the method in capitals while h11 frames the answer by the method as sent,
            # so a ``head`` got a HEAD's answer, a head without its body, framed as a GET's,
            # and h11 raised on the body that never came (fuzzed requests did this).
            await self._refuse(event, 501, _METHOD_REFUSED)

    async def _refuse(self, event: h11.Request, status: int, body: bytes) -> None:
        """Answer ``event`` with ``status`` without reaching the app, and close the connection.
        The answer to a HEAD has the head alone (h11 raises on a body)."""
        self._refused = True
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
            *self.config.response_headers("h11"),
        ]
        await self._send_h11_event(h11.Response(status_code=status, headers=headers))
        if event.method != b"HEAD":
            await self._send_h11_event(h11.Data(data=body))
        await self._send_h11_event(h11.EndOfMessage())
        await self.send(Closed())

    async def _create_stream(self, request: h11.Request) -> None:
        if self._refused:  # a refused request reaches no app; the next event ends the loop
            return
        # The node serves no WebSocket: hypercorn would hand the app a websocket scope, which
        # Starlette closes as not found, and closing it from hypercorn's WebSocket stream raised
        # in h11 when the request had a body. Without the Upgrade header it is a plain request.
        headers = [(name, value) for name, value in request.headers.raw_items() if name.lower() != b"upgrade"]
        await super()._create_stream(
            h11.Request(
                method=request.method, target=request.target, headers=headers, http_version=request.http_version
            )
        )
