"""Shared fixtures: a fresh store per test, a private MESH_HOME, hypothesis profiles, a Podman service."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from mesh.cas.store import LocalStore
from mesh.exec.removal import remove_tree
from mesh.wire.client import NodeClient
from tests import podmanutil
from tests.nodeutil import NodeProcess, wait_for

#: The size of the ``small_fs`` fixture's filesystem.
SMALL_FS_BYTES = 8 << 20

settings.register_profile(
    "default",
    deadline=None,
    max_examples=60,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.register_profile("thorough", parent=settings.get_profile("default"), max_examples=500)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private MESH_HOME, also exported for CLI subprocesses."""
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("MESH_HOME", str(h))
    monkeypatch.delenv("MESH_STORE_MAX", raising=False)
    return h


@pytest.fixture
def store(home: Path) -> Iterator[LocalStore]:
    """The LocalStore of the private MESH_HOME."""
    with LocalStore(home / "cas") as s:
        yield s


@pytest.fixture
def node(home: Path) -> Iterator[NodeProcess]:
    """A real ``mesh up`` process on a free loopback port, on the test's MESH_HOME (mDNS never runs)."""
    process = NodeProcess(str(home)).start()
    try:
        yield process
    finally:
        process.stop(timeout=30)


@pytest.fixture
def two_nodes(tmp_path: Path) -> Iterator[tuple[NodeProcess, NodeProcess]]:
    """Node a, and node b in a's mesh with the label where=b (a task that requires it runs there)."""
    a = NodeProcess(str(tmp_path / "a")).start()
    b = None
    try:
        (tmp_path / "b").mkdir()
        (tmp_path / "b" / "mesh.key").write_text((tmp_path / "a" / "mesh.key").read_text())
        b = NodeProcess(str(tmp_path / "b"), extra_args=["--peer", a.addr, "--label", "where=b"]).start()

        def b_is_a_peer_of_a() -> bool:
            with NodeClient(a.url) as client:
                return any(p["state"] == "alive" for p in client.status().get("peers", []))

        wait_for(b_is_a_peer_of_a, timeout=30, what="b to join a's mesh")
        yield a, b
    finally:
        if b is not None:
            b.stop()
        a.stop()


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """An empty 8 MiB tmpfs (a disk to fill), unmounted at the end whatever happened."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SMALL_FS_BYTES},mode=0700", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], check=True)


@pytest.fixture
def shared(tmp_path: Path) -> Iterator[Path]:
    """A directory that tasks of any uid may write (0777), for tests that watch a task from outside.

    Not below the test's own temporary directory (root's, 0700: a task uid cannot reach it)
    and not inside a world-writable one (what a task uid leaves there is removed after the
    task): in a root-owned 0711 directory of /var/tmp, as an operator would make one.
    """
    top = Path(tempfile.mkdtemp(prefix="mesh-test-shared-", dir="/var/tmp"))
    try:
        top.chmod(0o711)
        path = top / "shared"
        path.mkdir()
        path.chmod(0o777)
        yield path
    finally:
        remove_tree(str(top))


#: User nobody, whom tests start nodes that are not root as.
NOBODY = 65534


def _closed_to_others(path: Path) -> Path | None:
    """The first directory from / down to ``path`` that users other than its owner and group
    cannot pass through (no o+x), or None."""
    for directory in [*reversed(path.parents), path]:
        if not directory.stat().st_mode & 0o001:
            return directory
    return None


@pytest.fixture
def nobody_home() -> Iterator[Path]:
    """A MESH_HOME that user nobody owns (outside /tmp/pytest-of-root, which nobody cannot reach).

    The node runs as nobody from this checkout's virtualenv, so nobody must be able to reach
    it: a clone made in ``mktemp -d`` (0700) made such a node exit with "No module named
    mesh"; the test now fails saying which directory to open."""
    checkout = Path(__file__).resolve().parent.parent
    closed = _closed_to_others(checkout)
    if closed is not None:
        pytest.fail(
            f"user nobody cannot reach this checkout ({checkout}): {closed} is closed to other users"
            f" (mode {closed.stat().st_mode & 0o777:o}); chmod o+x it (mktemp -d makes 0700 directories)",
            pytrace=False,
        )
    top = Path(tempfile.mkdtemp(prefix="mesh-test-nobody-", dir="/var/tmp"))
    try:
        top.chmod(0o755)
        home = top / "home"
        home.mkdir()
        os.chown(home, NOBODY, NOBODY)
        yield home
    finally:
        remove_tree(str(top))


@pytest.fixture(scope="session")
def docker_host() -> Iterator[str]:
    """The DOCKER_HOST of a private Podman service with the test image (tests.podmanutil), for the session.

    Skips (saying why) where podman cannot run and we are not root; fails as root,
    where ``make test`` installs what it needs. Stopped and removed at the end.
    """
    podmanutil.require_podman("the docker executor tests")
    with podmanutil.podman_service() as host:  # in /tmp: short paths for podman's sockets
        yield host


#: Lines tests print in pytest's terminal summary (the fuzz suite's figures), through ``summary``.
SUMMARY = pytest.StashKey[list[str]]()


@pytest.fixture
def summary(request: pytest.FixtureRequest) -> list[str]:
    """A list whose lines are printed in the terminal summary, after every test has run."""
    return request.config.stash.setdefault(SUMMARY, [])


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    lines = config.stash.get(SUMMARY, [])
    if lines:
        terminalreporter.section("figures")
        for line in lines:
            terminalreporter.write_line(line)
