"""Real ``mesh up`` processes for end-to-end tests: start, wait until serving, stop, kill.

A node is started on a free loopback port with its own ``$MESH_HOME``; readiness
is a ``/health`` answer (polled with a deadline, never a fixed sleep). Its
stderr goes to a file in the home so a failing test can show it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

MESH = [sys.executable, "-m", "mesh"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(
    condition: Callable[[], object],
    *,
    timeout: float = 30.0,
    what: str = "condition",
    delay: float = 0.005,
    longest: float = 0.1,
    error: type[Exception] = AssertionError,
) -> object:
    """Poll ``condition`` until it returns something truthy, from every ``delay`` seconds up to
    every ``longest``; raise ``error`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise error(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, longest)


def stop_process(process: subprocess.Popen[bytes], sig: int, timeout: float, *, what: str, log: str = "") -> int:
    """Signal ``process`` (unless it has exited) and wait for it; its exit status. After ``timeout``
    seconds it is killed and AssertionError names ``what`` (with ``log``, what it wrote)."""
    if process.poll() is not None:
        return process.returncode
    process.send_signal(sig)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise AssertionError(f"{what} did not stop within {timeout}s after {signal.Signals(sig).name}{log}") from None


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (one of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def host_processes(marker: str) -> list[int]:
    """Host pids of live processes whose command line contains ``marker`` (seen from any pid
    namespace: a sandboxed task's processes too)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue  # gone meanwhile
        if marker.encode() in cmdline:
            found.append(int(entry))
    return found


def task_workroot(home: str | os.PathLike[str]) -> str | None:
    """Where a root node keeps the task directories of its task uids (named in its home), or None."""
    try:
        with open(os.path.join(home, "task-users"), encoding="utf-8") as f:
            return str(json.load(f)["workroot"])
    except FileNotFoundError:
        return None


def node_env(home: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESH_")}
    env["MESH_HOME"] = home
    env["MESH_MDNS"] = "0"  # never multicast on the machine's real interfaces (tests/netns.py for mDNS)
    env["MESH_BACKGROUND"] = "0"  # no test leaves a background node behind (tests/test_background_e2e.py asks for one)
    env.update(extra)
    return env


@dataclass
class NodeProcess:
    """One ``mesh up`` process. ``url`` answers once :meth:`start` returns.

    Also used by the benchmarks (bench/throughput.py, bench/mesh.py), which time
    :meth:`spawn` to the first :meth:`answers` themselves.
    """

    home: str
    port: int = 0
    slots: int = 2
    grace: float = 5.0
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # more environment for the node (DOCKER_HOST, say)
    process: subprocess.Popen[bytes] | None = None
    log_name: str = "node-test.log"
    spawned_at: float = 0.0  # time.perf_counter() at spawn
    launcher: list[str] = field(default_factory=list)  # runs `mesh up` (setpriv to another user, say)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> str:
        return os.path.join(self.home, self.log_name)

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def spawn(self) -> NodeProcess:
        """Start ``mesh up`` (on a free port unless one is set) without waiting for it."""
        os.makedirs(self.home, exist_ok=True)
        if not self.port:
            self.port = free_port()
        argv = (
            self.launcher
            + MESH
            + [
                "up",
                "--listen",
                self.addr,
                "--slots",
                str(self.slots),
                "--grace",
                str(self.grace),
                *self.extra_args,
            ]
        )
        with open(self.log_path, "ab") as log:
            self.spawned_at = time.perf_counter()
            self.process = subprocess.Popen(argv, env=node_env(self.home, **self.env), stdout=log, stderr=log)
        return self

    def answers(self) -> bool:
        """Whether ``/health`` answers now; AssertionError (with the log) if the node has exited."""
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"mesh up exited with {self.process.returncode}:\n{self.log()[-4000:]}")
        try:
            return httpx.get(self.url + "/health", timeout=1.0, trust_env=False).status_code == 200
        except httpx.HTTPError:
            return False

    def start(self, timeout: float = 30.0) -> NodeProcess:
        """:meth:`spawn`, then wait until the node serves."""
        self.spawn()
        wait_for(self.answers, timeout=timeout, what=f"node at {self.url}")
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Signal the node and wait for it to exit; returns its exit status."""
        if self.process is None:
            return 0
        return stop_process(self.process, sig, timeout, what="node")

    def kill(self) -> None:
        """SIGKILL the node (a crash) and reap it."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def mesh(
        self, *args: str, cwd: str | None = None, timeout: float = 120.0, input: bytes | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        """Run the real ``mesh`` CLI against this node, its stdin ``input`` (default: empty,
        never the test runner's own, which ``mesh exec`` would read to its end)."""
        return subprocess.run(
            MESH + list(args),
            env=node_env(self.home, MESH_NODE=self.url),
            cwd=cwd,
            capture_output=True,
            timeout=timeout,
            input=b"" if input is None else input,
        )
