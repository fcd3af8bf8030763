"""The background node: the first ``mesh exec`` with no node starts one, the next ones use it.

The real CLI as subprocesses, on a private MESH_HOME whose default address (MESH_LISTEN) is a
free loopback port, mDNS off. Every test stops what it started: the fixture runs ``mesh down``
and kills a node still holding the home.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mesh.background import node_pid, running
from tests.nodeutil import MESH, NodeProcess, free_port, node_env, wait_for


@dataclass
class Site:
    """A home with no node, a tree to run in, and the environment of its CLI."""

    home: Path
    tree: Path
    env: dict[str, str]
    url: str

    def mesh(self, *args: str, **env: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([*MESH, *args], env={**self.env, **env}, cwd=self.tree, capture_output=True, timeout=120)

    def exec(self, *argv: str, **env: str) -> subprocess.CompletedProcess[bytes]:
        return self.mesh("exec", "-v", "--", *argv, **env)

    def popen_exec(self, *argv: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [*MESH, "exec", "--", *argv],
            env=self.env,
            cwd=self.tree,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    home = tmp_path / "home"
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "a.txt").write_text("alpha\n")
    port = free_port()
    env = node_env(str(home), MESH_BACKGROUND="1", MESH_LISTEN=f"127.0.0.1:{port}", MESH_BACKGROUND_IDLE="600")
    site = Site(home, tree, env, f"http://127.0.0.1:{port}")
    try:
        yield site
    finally:
        site.mesh("down")
        pid = node_pid(str(home))
        if pid is not None and pid > 0:
            os.kill(pid, signal.SIGKILL)
            wait_for(lambda: not running(pid), timeout=10, what="the left node to die")


def test_the_first_exec_starts_a_background_node_the_next_use_it_and_down_stops_it(site: Site) -> None:
    first = site.exec("cat", "a.txt")
    assert first.returncode == 0 and first.stdout == b"alpha\n", first.stderr
    said = first.stderr.decode()
    log = site.home / "node.log"
    assert f"started a background node at {site.url}, log in {log}" in said, said
    assert "stops after 10 min without work" in said and "`mesh down` stops it" in said, said
    assert "in-process" not in said
    pid = node_pid(str(site.home))
    assert pid is not None and running(pid)

    again = site.exec("cat", "a.txt")
    assert again.returncode == 0 and again.stdout == b"alpha\n", again.stderr
    assert b"started a background node" not in again.stderr and b"(cached)" in again.stderr, again.stderr
    assert node_pid(str(site.home)) == pid  # the same node answered
    assert "serving" in log.read_text()  # it logs where it said

    down = site.mesh("down")
    assert down.returncode == 0 and f"stopped the background node (pid {pid})".encode() in down.stderr, down.stderr
    assert node_pid(str(site.home)) is None and not running(pid)
    assert not (site.home / "background.pid").exists()
    after = site.mesh("down")
    assert after.returncode == 0 and b"no background node runs" in after.stderr


def test_an_idle_background_node_stops_by_itself(site: Site) -> None:
    done = site.exec("true", MESH_BACKGROUND_IDLE="1")
    assert done.returncode == 0 and b"stops after 1 s without work" in done.stderr, done.stderr
    pid = node_pid(str(site.home))
    assert pid is not None
    wait_for(lambda: not running(pid), timeout=30, what="the idle node to stop")
    assert "idle for" in (site.home / "node.log").read_text()


def test_two_first_uses_at_once_start_one_node(site: Site) -> None:
    runs = [site.popen_exec("cat", "a.txt") for _ in range(2)]
    outcomes = [run.communicate(timeout=120) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outcomes
    assert all(out == b"alpha\n" for out, _ in outcomes), outcomes
    starters = [err for _, err in outcomes if b"started a background node" in err]
    assert len(starters) == 1, outcomes
    assert (site.home / "node.log").read_text().count(" serving ") == 1


def test_a_killed_background_node_leaves_nothing_that_stops_the_next(site: Site) -> None:
    assert site.exec("true").returncode == 0
    pid = node_pid(str(site.home))
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not running(pid), timeout=10, what="the killed node to be gone")
    assert (site.home / "background.pid").exists() and (site.home / "node.lock").exists()  # stale now

    down = site.mesh("down")
    assert down.returncode == 0 and b"removed the pid file a stopped one left" in down.stderr, down.stderr
    (site.home / "background.pid").write_text(f"{pid}\n")  # as the killed node left it

    again = site.exec("cat", "a.txt")
    assert again.returncode == 0 and again.stdout == b"alpha\n", again.stderr
    assert b"started a background node" in again.stderr, again.stderr
    assert node_pid(str(site.home)) not in (None, pid)


def test_down_leaves_a_foreground_node_alone(site: Site) -> None:
    node = NodeProcess(str(site.home)).start()
    try:
        down = site.mesh("down")
        assert down.returncode == 1 and b"was not started in the background" in down.stderr, down.stderr
        assert node.answers()
    finally:
        node.stop()


def test_opting_out_keeps_the_in_process_node(site: Site) -> None:
    done = site.exec("cat", "a.txt", MESH_BACKGROUND="0")
    assert done.returncode == 0 and done.stdout == b"alpha\n", done.stderr
    assert b"in-process node" in done.stderr and b"background" not in done.stderr
    assert node_pid(str(site.home)) is None
