"""A private Podman serving the Docker Engine API, for the docker tests and bench/exec_docker.py.

No Docker engine runs on these machines and nothing can be pulled, so (see
ENVIRONMENT.md): a containers.conf with explicit ulimits and the ``runc`` runtime,
a test image imported from a busybox-static root filesystem, and ``podman system
service`` on a socket in a temporary directory. Everything podman keeps (image
and container storage, run state, events) lives in that directory too
(``--root``, ``--runroot``, ``--tmpdir``), so a test session neither uses nor
leaves anything in the machine's own podman storage, and a second session (or a
person's podman) never meets its containers. Importing the 2 MB image there costs
~0.3 s a session.

:func:`podman_service` is the whole life: prepare, start, yield the
``DOCKER_HOST``, and always stop the service and remove the directory. Needs
podman, runc and busybox (``make test`` installs them: podman, runc,
busybox-static) and root (rootless podman would need subuids set up).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

#: The test image: busybox and the links below, nothing else.
IMAGE = "localhost/mesh-test:latest"
#: Commands of the test image (links to /bin/busybox).
APPLETS = (
    "sh", "echo", "cat", "sleep", "env", "id", "ls", "pwd", "true", "false", "printf", "mkdir",
    "rm", "head", "tr", "wc", "ip", "ifconfig", "touch", "kill", "test", "[", "seq", "yes", "chmod",
)  # fmt: skip
#: What the service needs, as (command, Debian package).
TOOLS = (("podman", "podman"), ("runc", "runc"), ("busybox", "busybox-static"))
#: The containers.conf of ENVIRONMENT.md: crun fails on this cgroup setup, and rlimits may not
#: be raised here, so the container's must be set explicitly.
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

[engine]
runtime = "runc"
"""
#: Seconds the service may take to answer /_ping after it is started.
START_TIMEOUT = 30.0


def unavailable_reason() -> str | None:
    """Why a Podman service cannot be run here, or None if it can."""
    missing = [package for command, package in TOOLS if shutil.which(command) is None]
    if missing:
        return f"missing {', '.join(missing)} (make test installs them as root: apt-get install {' '.join(missing)})"
    if os.geteuid() != 0:
        return "the docker tests run podman as root (rootless podman needs subuids set up)"
    return None


def require_podman(what: str) -> None:
    """Skip the calling test (printing why) where podman cannot run and we are not root.

    As root the tools are installed by ``make test``, so their absence there is an
    error, not a reason to skip: a CI run must not pass with these tests quietly gone.
    """
    reason = unavailable_reason()
    if reason is None:
        return
    import pytest  # only tests call this; the bench uses podman_service directly

    if os.geteuid() == 0:
        pytest.fail(f"{what} cannot run: {reason}", pytrace=False)
    print(f"skipping {what}: {reason}", file=sys.stderr)
    pytest.skip(reason)


class Podman:
    """podman commands on a private state directory ``root`` (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.conf = root / "containers.conf"
        self.socket = root / "podman.sock"
        self.log = root / "service.log"
        self.argv = [
            "podman",
            "--root", str(root / "storage"),
            "--runroot", str(root / "run"),
            "--tmpdir", str(root / "tmp"),
        ]  # fmt: skip
        self.env = dict(os.environ, CONTAINERS_CONF=str(self.conf))

    @property
    def docker_host(self) -> str:
        return f"unix://{self.socket}"

    def write_conf(self) -> None:
        self.conf.write_text(CONTAINERS_CONF)

    def run(self, *args: str, stdin: bytes | None = None, timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
        """Run ``podman ARGS`` on this state; raises RuntimeError with podman's stderr if it fails."""
        result = subprocess.run(
            [*self.argv, *args], input=stdin, capture_output=True, env=self.env, timeout=timeout, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"podman {' '.join(args)} failed ({result.returncode}): {result.stderr.decode().strip()}"
            )
        return result

    def ensure_image(self) -> None:
        """Import the test image from a busybox root filesystem, unless it is there already."""
        exists = subprocess.run([*self.argv, "image", "exists", IMAGE], env=self.env, capture_output=True)
        if exists.returncode == 0:
            return
        busybox = shutil.which("busybox")
        assert busybox is not None
        with tempfile.TemporaryDirectory(prefix="mesh-rootfs-") as rootfs:
            top = Path(rootfs)
            for directory in ("bin", "tmp", "etc", "home", "work"):
                (top / directory).mkdir()
            (top / "tmp").chmod(0o1777)
            shutil.copy2(busybox, top / "bin" / "busybox")
            for applet in APPLETS:
                (top / "bin" / applet).symlink_to("busybox")
            (top / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
            (top / "etc" / "group").write_text("root:x:0:\n")
            tar = subprocess.run(["tar", "-C", rootfs, "-c", "."], capture_output=True, check=True)
        self.run("import", "-", IMAGE, stdin=tar.stdout)

    def start(self) -> subprocess.Popen[bytes]:
        """Start ``podman system service`` on the socket; returns once /_ping answers."""
        with open(self.log, "wb") as log:
            service = subprocess.Popen(
                [*self.argv, "system", "service", "--time=0", self.docker_host],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self._wait_until_answering(service)
        except BaseException:
            stop(service)
            raise
        return service

    def _wait_until_answering(self, service: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        transport = httpx.HTTPTransport(uds=str(self.socket))
        with httpx.Client(transport=transport, base_url="http://docker", timeout=5) as client:
            while True:
                if service.poll() is not None:
                    raise RuntimeError(f"podman system service exited ({service.returncode}): {self.log_text()}")
                if self.socket.exists():
                    with contextlib.suppress(httpx.TransportError):
                        if client.get("/_ping").text == "OK":
                            return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"podman system service did not answer in {START_TIMEOUT} s: {self.log_text()}")
                time.sleep(0.02)  # polling a condition, bounded by the deadline

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace").strip()[-2000:]
        except OSError:
            return ""

    def remove_all(self) -> None:
        """Remove every container of this state (a test that failed may have left one)."""
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self.run("rm", "--all", "--force", "--time", "0", timeout=60)


def stop(service: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """Stop the service: SIGTERM, then SIGKILL after ``grace`` seconds; reaps it."""
    if service.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(service.pid, signal.SIGTERM)
        try:
            service.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(service.pid, signal.SIGKILL)
            service.wait()


def _unmount_below(root: Path) -> None:
    """Lazily unmount whatever is still mounted under ``root`` (a container podman could not clean up)."""
    prefix = str(root) + "/"
    with open("/proc/self/mounts") as mounts:
        points = [line.split()[1] for line in mounts if line.split()[1].startswith(prefix)]
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


@contextlib.contextmanager
def podman_service(parent: str | os.PathLike[str] | None = None) -> Iterator[str]:
    """A running private Podman service with the test image; yields its ``DOCKER_HOST``.

    Its state directory is made under ``parent`` (default: the system's temporary
    directory). Afterwards, whatever happened: every container removed, the service
    stopped, the directory removed.
    """
    root = Path(tempfile.mkdtemp(prefix="mesh-podman-", dir=parent))
    podman = Podman(root)
    service: subprocess.Popen[bytes] | None = None
    try:
        podman.write_conf()
        podman.ensure_image()
        service = podman.start()
        yield podman.docker_host
    finally:
        if service is not None:
            stop(service)
        podman.remove_all()
        _unmount_below(root)
        shutil.rmtree(root, ignore_errors=True)
