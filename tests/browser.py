"""A real browser for the UI's tests: Debian's Chromium, driven by Playwright, kept off the network.

Chromium reaches for the network on its own (updates, safe browsing, sync), so it runs
inside a network namespace that has only a loopback interface, held open by a sleeping
``unshare --net`` process. The node under test runs outside, on the machine's loopback:
a :class:`Forwarder` listens at the node's own address inside the namespace and
copies each connection to the node, so the browser uses the node's real URL and
nothing it sends can leave the machine. No browser is downloaded: Playwright is told
where Debian's Chromium is (``executable_path``), through a wrapper that enters the
namespace (``nsenter``) first.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
#: Chromium's switches for tests: no sandbox (we are root), no GPU, nothing in the background.
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
_CLONE_NEWNET = 0x40000000


def unavailable() -> str | None:
    """Why the browser tests cannot run here (None: they can)."""
    if not os.path.exists(CHROMIUM):
        return f"{CHROMIUM} is missing: `make test-deps` installs Debian's chromium"
    if os.geteuid() != 0:
        return "the browser runs in a network namespace of its own, which takes root"
    for tool in ("unshare", "nsenter", "ip"):
        if shutil.which(tool) is None:
            return f"{tool} is missing (util-linux, iproute2)"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "the playwright Python package is missing: `make test-deps` installs it"
    return None


@contextmanager
def loopback_namespace() -> Iterator[str]:
    """A network namespace with only ``lo`` (up): the path of its handle, ``/proc/PID/ns/net``."""
    holder = subprocess.Popen(
        ["unshare", "--net", "sh", "-c", "ip link set lo up && echo up && exec sleep 1000000"],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        if holder.stdout.readline().strip() != b"up":
            raise AssertionError("could not make a loopback-only network namespace (unshare --net)")
        yield f"/proc/{holder.pid}/ns/net"
    finally:
        holder.kill()
        holder.wait()


def chromium_in(namespace: str, directory: Path) -> str:
    """An executable that runs Debian's Chromium inside ``namespace``, for ``executable_path``."""
    wrapper = directory / "chromium-in-namespace"
    wrapper.write_text(f'#!/bin/sh\nexec nsenter --net={namespace} {CHROMIUM} "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


class Forwarder:
    """Listens at ``127.0.0.1:port`` inside ``namespace`` and copies every connection to the
    same address outside it, both ways, until :meth:`close`."""

    def __init__(self, namespace: str, port: int) -> None:
        self.port = port
        self.listener = self._listen_in(namespace, port)
        self._closed = False
        self._accepting = threading.Thread(target=self._accept, name="forwarder", daemon=True)
        self._accepting.start()

    @staticmethod
    def _listen_in(namespace: str, port: int) -> socket.socket:
        """A listening socket made inside ``namespace``: by a thread that enters it (setns moves
        only the calling thread), so this process stays outside."""
        made: list[socket.socket | BaseException] = []

        def enter_and_listen() -> None:
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                fd = os.open(namespace, os.O_RDONLY)
                try:
                    if libc.setns(fd, _CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), "setns into the browser's network namespace")
                finally:
                    os.close(fd)
                listener = socket.create_server(("127.0.0.1", port))
                made.append(listener)
            except BaseException as exc:  # handed to the caller below
                made.append(exc)

        thread = threading.Thread(target=enter_and_listen)
        thread.start()
        thread.join()
        if isinstance(made[0], BaseException):
            raise made[0]
        return made[0]

    def _accept(self) -> None:
        while not self._closed:
            try:
                inside, _ = self.listener.accept()
            except OSError:
                return  # closed
            try:
                outside = socket.create_connection(("127.0.0.1", self.port))
            except OSError:
                inside.close()
                continue
            for source, sink in ((inside, outside), (outside, inside)):
                threading.Thread(target=_pump, args=(source, sink), daemon=True).start()

    def close(self) -> None:
        self._closed = True
        self.listener.close()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    """Copy ``source`` to ``sink`` until it ends; then end ``sink``'s writing side."""
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        try:
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass
