"""A node in the background for ``mesh exec`` when none answers at the default address.

Why: the in-process node (mesh.embedded) costs every ``mesh exec`` a node's start, 2.3 s
even for a cache hit, against ~0.1 s through a running node. Like sccache's server and the
Gradle daemon, the first ``mesh exec`` with no node starts one in the background and the
next ones talk to it: a later use costs what a use of any running node costs.

What it is: ``mesh up --idle-stop S`` (:mod:`mesh.api.idle`), started detached (its own
session, stdin from /dev/null, its working directory ``/``), with the environment and
home of the ``mesh exec`` that started it, so with the configuration ``mesh up`` would
use there (MESH_* variables, ``mesh.toml``; MESH_MDNS is honoured). It listens where
``mesh up`` would, which is where clients look for a node by default. Its log (stdout and
stderr) goes to ``$MESH_HOME/node.log`` (the previous one is kept as ``node.log.1`` once
it passes :data:`LOG_KEEP` bytes). It stops after :data:`DEFAULT_IDLE` seconds without
work (``MESH_BACKGROUND_IDLE=S``; 0: never); ``mesh down`` stops it at once.
``MESH_BACKGROUND=0`` keeps the in-process node instead.

One at a time: starting one holds an exclusive ``flock`` of ``$MESH_HOME/background.lock``
until the node answers or has failed, so two first uses at once start one node (the
second finds it answering once it has the lock). The kernel drops the lock when its holder
dies, so a killed ``mesh exec`` leaves nothing stale behind. ``background.pid`` names the
background node for ``mesh down``, which believes it only while the node's own lock
(``node.lock``, held for the node's life, mesh.node) is held and names the same pid: a pid
file a killed node left (or a pid reused since) is recognised and removed.

This module is on the client's side: it never imports trio or the node.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

from mesh.errors import BackgroundNodeError, NodeUnreachable, UsageError

#: Seconds without work (no job, no request) after which a background node stops.
DEFAULT_IDLE = 1800.0
#: Seconds a starting background node gets to answer, and a stopping one to be gone.
START_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0
#: A log larger than this is kept as node.log.1 when the next background node starts.
LOG_KEEP = 16 << 20

LOG_NAME = "node.log"
PID_NAME = "background.pid"
LOCK_NAME = "background.lock"


def enabled() -> bool:
    """Whether ``mesh exec`` may start a background node (``MESH_BACKGROUND=0`` says no)."""
    return os.environ.get("MESH_BACKGROUND", "1").strip().lower() not in ("0", "no", "false", "off")


def idle_seconds() -> float:
    """The idle time of a background node: MESH_BACKGROUND_IDLE (seconds; 0: never), else the default."""
    text = os.environ.get("MESH_BACKGROUND_IDLE")
    if text is None or not text.strip():
        return DEFAULT_IDLE
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise UsageError(f"MESH_BACKGROUND_IDLE={text!r}: give the seconds a background node may idle (0: forever)")
    return value


@dataclass(frozen=True)
class Background:
    """A background node that answers at ``url``; ``started`` if this process started it."""

    url: str
    log: str
    pid: int | None
    started: bool

    def announcement(self, idle: float) -> str:
        """What ``mesh exec`` says once, when it started the node."""
        when = "never stops on its own" if not idle else f"stops after {_duration(idle)} without work"
        return f"started a background node at {self.url}, log in {self.log}; it {when}, `mesh down` stops it"


def ensure(home: str, url: str) -> Background:
    """A background node of ``home`` answering at ``url``: the one that answers there once this
    process holds the start lock, else one started now. Raises BackgroundNodeError (naming its
    log) when the node it started exits or does not answer within :data:`START_TIMEOUT`."""
    log = os.path.join(home, LOG_NAME)
    with _start_lock(home):
        if _answers(url):  # another mesh exec started it while this one waited for the lock
            return Background(url, log, None, started=False)
        _remove(os.path.join(home, PID_NAME))  # any is stale: no node answers
        _keep_old_log(log)
        process = _spawn(home, log)
        _write_pid(os.path.join(home, PID_NAME), process.pid)
        deadline = time.monotonic() + START_TIMEOUT
        delay = 0.01
        while not _answers(url):
            if process.poll() is not None:
                _remove(os.path.join(home, PID_NAME))
                raise BackgroundNodeError(
                    f"the background node could not start (exit status {process.returncode}): "
                    f"{_last_error(log)}; its log is {log}"
                )
            if time.monotonic() > deadline:
                raise BackgroundNodeError(
                    f"the background node (pid {process.pid}) did not answer at {url} within {START_TIMEOUT:g} s; "
                    f"its log is {log}"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
        return Background(url, log, process.pid, started=True)


def stop(home: str) -> str:
    """Stop the background node of ``home`` (SIGTERM: its graceful shutdown) and wait until it
    is gone; returns what to say. A node of ``home`` that was not started in the background
    is not stopped (BackgroundNodeError says how); no node is not an error."""
    pid_path = os.path.join(home, PID_NAME)
    recorded = _read_pid(pid_path)
    holder = node_pid(home)
    if holder is None:
        if recorded is not None or os.path.lexists(pid_path):
            _remove(pid_path)
            return f"no background node runs for {home} (removed the pid file a stopped one left)"
        return f"no background node runs for {home}"
    if holder != recorded:
        raise BackgroundNodeError(
            f"the node of {home} (pid {holder}) was not started in the background: stop it where it runs "
            f"(Ctrl-C), or with kill {holder}"
        )
    with contextlib.suppress(ProcessLookupError):
        os.kill(holder, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while node_pid(home) is not None or running(holder):
        if time.monotonic() > deadline:
            raise BackgroundNodeError(
                f"the background node (pid {holder}) did not stop within {STOP_TIMEOUT:g} s; "
                f"kill -9 {holder} stops it (it resumes its jobs at its next start)"
            )
        time.sleep(0.05)
    _remove(pid_path)
    return f"stopped the background node (pid {holder})"


def node_pid(home: str) -> int | None:
    """The pid of the node that holds ``home`` (its node.lock is locked), or None if none runs."""
    try:
        fd = os.open(os.path.join(home, "node.lock"), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            match = re.match(rb"pid (\d+)", os.pread(fd, 200, 0))
            return int(match.group(1)) if match else -1  # locked, being written: a node all the same
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def running(pid: int) -> bool:
    """Whether process ``pid`` exists and has not exited: a zombie (an exited node whose parent,
    init, has not reaped it yet; some container inits never do) has."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] not in (b"Z", b"X")


# -- helpers ------------------------------------------------------------------------------


@contextlib.contextmanager
def _start_lock(home: str) -> Iterator[None]:
    os.makedirs(home, mode=0o700, exist_ok=True)
    fd = os.open(os.path.join(home, LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released by the kernel too if this process dies
        yield
    finally:
        os.close(fd)


def _answers(url: str) -> bool:
    from mesh.wire.client import NodeClient

    with NodeClient(url) as client:
        try:
            client.health()
        except NodeUnreachable:
            return False
    return True


def _spawn(home: str, log: str) -> subprocess.Popen[bytes]:
    """``mesh up --idle-stop S``, detached, logging to ``log``."""
    env = dict(os.environ, MESH_HOME=home)
    # The node runs in /, where `python -m mesh` finds this mesh only if it is installed:
    # the directory it was imported from goes first on the path (a checkout run as is).
    source = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (source, env.get("PYTHONPATH")) if p)
    argv = [sys.executable, "-m", "mesh", "up", "--idle-stop", f"{idle_seconds():g}"]
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        return subprocess.Popen(
            argv, cwd="/", env=env, stdin=subprocess.DEVNULL, stdout=fd, stderr=fd, start_new_session=True
        )
    except OSError as exc:
        raise BackgroundNodeError(f"cannot start a background node ({sys.executable}): {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def _keep_old_log(log: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        if os.stat(log).st_size > LOG_KEEP:
            os.replace(log, log + ".1")


def _last_error(log: str) -> str:
    """The line of the log that says why the node stopped (its ``mesh: error:`` line, else its last)."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 8192))
            lines = [line.strip() for line in f.read().decode(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    errors = [line for line in lines if line.startswith("mesh: error: ")]
    if errors:
        return errors[-1].removeprefix("mesh: error: ")
    return lines[-1] if lines else "it logged nothing"


def _write_pid(path: str, pid: int) -> None:
    tmp = f"{path}.{os.getpid()}"
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="ascii") as f:
        f.write(f"{pid}\n")
    os.replace(tmp, path)


def _read_pid(path: str) -> int | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            text = f.read().strip()
    except (FileNotFoundError, IsADirectoryError):
        return None
    return int(text) if text.isdigit() else None


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _duration(seconds: float) -> str:
    if seconds >= 120 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"
