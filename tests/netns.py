"""A LAN of network namespaces on a private bridge, for multi-host tests (root only).

``Lan(n)`` creates, as root:

- a bridge ``mt<pid>-<seq>b`` in the root namespace, with no address and no IPv6 (it is
  connected to nothing but the veths below: nothing the tests send leaves it);
- ``n`` namespaces ``mt<pid>-<seq>-n<i>``, each with ``lo`` up and an ``eth0`` (the
  namespace end of a veth pair whose other end ``mt<pid>-<seq>v<i>`` is on the bridge),
  addressed ``10.213.X.(i+1)/24`` with X chosen to clash with no route or address of the
  root namespace, and the multicast route ``224.0.0.0/4 dev eth0``.

It runs commands there (:meth:`Lan.run`) and starts long-running processes
(:meth:`Lan.spawn`, stdout read line by line in a thread, waited on with deadlines).
Teardown is always done: on ``close()``/context exit, at interpreter exit (atexit), and
at the start of a later run for leftovers of a crashed one (names with this prefix whose
pid is no longer alive). Teardown kills every process still inside the namespaces first,
otherwise a namespace (and its veth) outlives ``ip netns del``.

Usable from pytest (:func:`unavailable_reason` -> ``pytest.skip``) and from scripts::

    with Lan(3) as lan:
        p = lan.spawn(0, [sys.executable, "-u", "script.py"])
        p.wait_for(lambda line: "ready" in line, timeout=10)

Needs iproute2 (``ip``) and root; nothing else.
"""

from __future__ import annotations

import atexit
import ipaddress
import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType

from tests.nodeutil import pid_alive

PREFIX = "mt"
_NAME = re.compile(rf"^{PREFIX}(\d+)-(\d+)(?:b|v\d+|-n\d+)$")
_seq = itertools.count()
_live: set[Lan] = set()


def unavailable_reason() -> str | None:
    """Why namespaces cannot be built here (None if they can): for ``pytest.skip``."""
    if not sys.platform.startswith("linux"):
        return f"network namespaces need Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return f"network namespace tests need root (euid is {os.geteuid()})"
    if shutil.which("ip") is None:
        return "network namespace tests need the `ip` command (Debian package iproute2)"
    try:
        with open("/proc/self/status") as f:
            caps = next(int(line.split()[1], 16) for line in f if line.startswith("CapEff:"))
    except (OSError, StopIteration, ValueError):
        caps = -1
    if caps != -1 and not (caps >> 12 & 1 and caps >> 21 & 1):
        return "network namespace tests need CAP_NET_ADMIN and CAP_SYS_ADMIN (root in a restricted container?)"
    return None


def require_namespaces(what: str) -> None:
    """Skip the calling pytest test, printing why, where namespaces cannot be built here."""
    reason = unavailable_reason()
    if reason is not None:
        import pytest  # only tests call this; the harness itself also serves scripts

        print(f"skipping {what}: {reason}", file=sys.stderr)
        pytest.skip(reason)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def _netns_names() -> list[str]:
    return [line.split()[0] for line in _ip("netns", "list").stdout.splitlines() if line.strip()]


def _link_names() -> list[str]:
    return [line.split()[0].split("@")[0] for line in _ip("-br", "link", "show").stdout.splitlines() if line.strip()]


def _kill_netns_processes(ns: str) -> None:
    """SIGKILL whatever still runs in ``ns`` (processes this harness started there)."""
    for _ in range(50):
        pids = [int(p) for p in _ip("netns", "pids", ns, check=False).stdout.split() if p.isdigit()]
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.02)


def cleanup_stale() -> list[str]:
    """Delete namespaces and links left by dead runs of this harness; the names removed."""
    removed: list[str] = []
    for ns in _netns_names():
        m = _NAME.match(ns)
        if m and not pid_alive(int(m.group(1))):
            _kill_netns_processes(ns)
            _ip("netns", "del", ns, check=False)
            removed.append(ns)
    for link in _link_names():
        m = _NAME.match(link)
        if m and not pid_alive(int(m.group(1))):
            _ip("link", "del", link, check=False)
            removed.append(link)
    return removed


def _free_subnet() -> ipaddress.IPv4Network:
    """A 10.213.X.0/24 that overlaps no route and no address of the root namespace."""
    used: list[ipaddress.IPv4Network] = []
    for line in _ip("-4", "route", "show", "table", "all").stdout.splitlines():
        dest = line.split()[0] if line.split() else ""
        if dest in ("default", "broadcast", "local", "unicast", "multicast"):
            dest = line.split()[1] if len(line.split()) > 1 else ""
        try:
            used.append(ipaddress.IPv4Network(dest, strict=False))
        except ValueError:
            continue
    for line in _ip("-4", "-o", "addr", "show").stdout.splitlines():
        parts = line.split()
        if "inet" in parts:
            used.append(ipaddress.IPv4Interface(parts[parts.index("inet") + 1]).network)
    used = [n for n in used if n.prefixlen > 0]  # the default route overlaps everything
    start = os.getpid() % 200 + 20
    for x in itertools.chain(range(start, 250), range(20, start)):
        candidate = ipaddress.IPv4Network(f"10.213.{x}.0/24")
        if not any(candidate.overlaps(n) for n in used):
            return candidate
    raise RuntimeError("no free 10.213.X.0/24 subnet")


class NsProcess:
    """A process started in a namespace; its stdout lines are collected by a thread."""

    def __init__(self, argv: Sequence[str], popen: subprocess.Popen[str]) -> None:
        self.argv = list(argv)
        self.popen = popen
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._eof = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def wait_for(self, predicate: Callable[[list[str]], object], *, timeout: float, what: str = "output") -> object:
        """Wait until ``predicate(lines so far)`` is truthy and return it; AssertionError after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = predicate(list(self.lines))
                if value:
                    return value
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._eof:
                    state = "exited" if self._eof else "still running"
                    tail = "\n".join(self.lines[-20:])
                    raise AssertionError(
                        f"timed out after {timeout}s waiting for {what} from {self.argv[-1]!r} ({state});"
                        f" last output:\n{tail}"
                    )
                self._cond.wait(min(remaining, 0.5))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Send ``sig``, wait (SIGKILL after ``timeout``), return the exit status."""
        if self.popen.poll() is None:
            try:
                self.popen.send_signal(sig)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        self._reader.join(5)
        return self.popen.returncode


class Lan:
    """``n`` network namespaces on one private bridge; see the module docstring."""

    def __init__(self, n: int) -> None:
        if not 1 <= n <= 99:
            raise ValueError("1 to 99 namespaces")
        reason = unavailable_reason()
        if reason is not None:
            raise RuntimeError(reason)
        self.n = n
        self.tag = f"{PREFIX}{os.getpid()}-{next(_seq) % 100}"
        self.bridge = f"{self.tag}b"
        self.namespaces = [f"{self.tag}-n{i}" for i in range(n)]
        self.subnet: ipaddress.IPv4Network | None = None
        self.addresses: list[str] = []
        self.processes: list[NsProcess] = []
        self._closed = False
        cleanup_stale()
        _live.add(self)
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _build(self) -> None:
        self.subnet = _free_subnet()
        _ip("link", "add", self.bridge, "type", "bridge", "mcast_snooping", "0")
        _ip("link", "set", self.bridge, "addrgenmode", "none")  # no IPv6 link-local: silent bridge
        _ip("link", "set", self.bridge, "up")
        hosts = self.subnet.hosts()
        for i, ns in enumerate(self.namespaces):
            veth = f"{self.tag}v{i}"
            address = str(next(hosts))
            _ip("netns", "add", ns)
            _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("link", "set", veth, "addrgenmode", "none")
            _ip("link", "set", veth, "master", self.bridge)
            _ip("link", "set", veth, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "link", "set", "eth0", "addrgenmode", "none")
            _ip("-n", ns, "addr", "add", f"{address}/{self.subnet.prefixlen}", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "route", "add", "224.0.0.0/4", "dev", "eth0")
            self.addresses.append(address)

    def exec_argv(self, i: int, argv: Sequence[str]) -> list[str]:
        """The command line that runs ``argv`` in namespace ``i``."""
        return ["ip", "netns", "exec", self.namespaces[i], *argv]

    def run(self, i: int, argv: Sequence[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        """``subprocess.run`` in namespace ``i`` (text mode, output captured unless told otherwise)."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("timeout", 60)
        return subprocess.run(self.exec_argv(i, argv), text=True, **kwargs)  # type: ignore[call-overload, no-any-return]

    def spawn(
        self, i: int, argv: Sequence[str], *, env: dict[str, str] | None = None, cwd: str | None = None
    ) -> NsProcess:
        """Start a long-running process in namespace ``i``; stderr is inherited (pytest shows it)."""
        popen = subprocess.Popen(
            self.exec_argv(i, argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=cwd,
        )
        process = NsProcess(argv, popen)
        self.processes.append(process)
        return process

    def close(self) -> None:
        """Stop the processes, delete the namespaces and the bridge. Idempotent, never raises."""
        if self._closed:
            return
        self._closed = True
        _live.discard(self)
        for process in self.processes:
            try:
                process.stop(timeout=5)
            except Exception as exc:
                print(f"netns: stopping {process.argv!r}: {exc}", file=sys.stderr)
        existing = set(_netns_names())
        for ns in self.namespaces:
            if ns in existing:
                _kill_netns_processes(ns)
                _ip("netns", "del", ns, check=False)
        links = set(_link_names())
        for link in [self.bridge, *(f"{self.tag}v{i}" for i in range(self.n))]:
            if link in links:
                _ip("link", "del", link, check=False)

    def __enter__(self) -> Lan:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


@atexit.register
def _close_all() -> None:
    for lan in list(_live):
        lan.close()
