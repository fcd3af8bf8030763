"""A container's stdin, written from a file on a thread of its own (the docker executor's).

The Docker Engine API gives a container its stdin through an attachment: ``POST
/containers/{id}/attach?stream=1&stdin=1`` upgraded to a bare connection, whose bytes
become the container's stdin, and whose half-close (``shutdown(SHUT_WR)``) its end of file,
for a container made with ``OpenStdin`` and ``StdinOnce``. Checked with Podman 4.3
(tests/test_docker.py): ``wc -c`` read 5,000,000 bytes sent so, on an attachment of its own
made after the start, while the output went on the executor's attachment
(mesh.exec.engine.Attachment).

On a thread of its own, polling its socket, because the stdin must be written while the
output is read: a command may read a little, write a lot, and read again, and neither
side may wait for the other. The thread owns the socket; :meth:`StdinFeed.close` (which
the executor calls however the task ended) shuts the socket down, which ends any write or
read under way, and joins the thread. A container that ends or closes its stdin before
reading it all is the command's own business, as with a process: the rest is dropped.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import threading
from urllib.parse import quote

import h11

log = logging.getLogger("mesh.exec")

#: Bytes of the file sent at a time.
CHUNK = 1 << 20


class StdinFeed:
    """Writes what descriptor ``fd`` holds (from offset 0, to its end) to ``container``'s stdin
    through the engine at ``socket_path``; :meth:`start`, then :meth:`close`."""

    def __init__(self, socket_path: str, container: str, fd: int, *, timeout: float) -> None:
        self.socket_path = socket_path
        self.container = container
        self.fd = fd
        self.timeout = timeout
        self.sent = 0
        self.error: str | None = None
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._thread = threading.Thread(target=self._run, name=f"stdin of {container}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stop writing (if it still does) and wait for the thread."""
        try:
            self._socket.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # not connected, or closed already
        if self._thread.ident is not None:  # started
            self._thread.join()
        self._socket.close()

    def _run(self) -> None:
        try:
            self._socket.settimeout(self.timeout)
            self._socket.connect(self.socket_path)
            self._attach()
            self._feed()
        except (OSError, h11.ProtocolError) as exc:
            self.error = str(exc) or type(exc).__name__
            log.debug("the stdin of container %s ended after %d bytes: %s", self.container, self.sent, self.error)

    def _feed(self) -> None:
        """Send the file, then the end of file, reading (and dropping) what the engine sends
        meanwhile: Podman 4.3 sends the container's output on this attachment too, and stops
        the container's output while nobody reads it (a ``cat`` of 5 MiB stalled until its
        timeout when this wrote without reading). Ends when the engine closes the connection
        (the container ended), or :meth:`close` shuts it down."""
        sock = self._socket
        sock.setblocking(False)
        poller = select.poll()
        pending = b""
        ended = False  # the whole file was sent, and then the end of file
        while True:
            if not pending and not ended:
                pending = os.pread(self.fd, CHUNK, self.sent)
                if not pending:
                    sock.shutdown(socket.SHUT_WR)  # the end of the container's stdin
                    ended = True
            poller.register(sock, select.POLLIN | (0 if ended else select.POLLOUT))
            for _, events in poller.poll():
                if events & (select.POLLIN | select.POLLHUP | select.POLLERR):
                    try:
                        if not sock.recv(1 << 16):
                            return
                    except BlockingIOError:
                        pass
                if events & select.POLLOUT and pending:
                    try:
                        n = sock.send(pending)
                    except BlockingIOError:
                        continue
                    pending = pending[n:]
                    self.sent += n

    def _attach(self) -> None:
        """Ask for the upgraded connection; raise OSError when the engine refuses it."""
        connection = h11.Connection(our_role=h11.CLIENT)
        target = f"/containers/{quote(self.container)}/attach?stream=1&stdin=1&stdout=0&stderr=0"
        headers = [("Host", "docker"), ("Content-Length", "0"), ("Connection", "Upgrade"), ("Upgrade", "tcp")]
        request = connection.send(h11.Request(method="POST", target=target, headers=headers))
        self._socket.sendall((request or b"") + (connection.send(h11.EndOfMessage()) or b""))
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                data = self._socket.recv(4096)
                if not data:
                    raise OSError("the engine closed the connection before it answered")
                connection.receive_data(data)
            elif event is h11.PAUSED or isinstance(event, h11.InformationalResponse) and event.status_code == 101:
                return
            elif isinstance(event, h11.Response):
                if event.status_code != 200:
                    raise OSError(f"the engine refused to attach the stdin: HTTP {event.status_code}")
                return
