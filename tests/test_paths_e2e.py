"""End to end: a task sees its directories at the same paths on every run and node (mesh.exec.paths).

Real ``mesh up`` processes (MESH_MDNS=0), two of them with homes and keys of their own, so
that each runs what it is given; the real CLI with ``--no-cache``, so that every run runs.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from mesh.exec.paths import DOCKER_VIEW, PROCESS_VIEW, SANDBOX_VIEW, TaskView
from mesh.exec.sandbox import sandbox_unavailable
from tests.conftest import NOBODY
from tests.nodeutil import MESH, NodeProcess, node_env

VIEWS = {"process": PROCESS_VIEW, "sandbox": SANDBOX_VIEW}


@pytest.fixture(params=["process", "sandbox"])
def executor(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    if name == "sandbox":
        why_not = sandbox_unavailable()
        if why_not is not None:
            pytest.skip(reason=f"the sandbox cannot run here: {why_not}")
    return name


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[tuple[NodeProcess, NodeProcess]]:
    """Two nodes of two meshes (each its own key): each runs the tasks it is given."""
    first = NodeProcess(str(tmp_path / "one")).start()
    try:
        second = NodeProcess(str(tmp_path / "two")).start()
        try:
            yield first, second
        finally:
            second.stop()
    finally:
        first.stop()


@pytest.fixture
def c_tree(tmp_path: Path) -> Path:
    """A small C tree whose object records where it was built: -g (DW_AT_comp_dir, DW_AT_name)
    and __FILE__ of a source named by its absolute path (make's $(CURDIR))."""
    src = tmp_path / "c"
    (src / "src").mkdir(parents=True)
    (src / "include").mkdir()
    (src / "include" / "where.h").write_text("#define WHERE __FILE__\n")
    (src / "src" / "where.c").write_text(
        '#include "where.h"\nconst char *where(void) { return WHERE; }\nconst char *file(void) { return __FILE__; }\n'
    )
    (src / "Makefile").write_text(
        "CFLAGS ?= -O2\n"
        "obj/where.o: src/where.c include/where.h\n"
        "\tmkdir -p obj\n"
        "\t$(CC) $(CFLAGS) -Iinclude -c $(CURDIR)/src/where.c -o $@\n"
    )
    return src


def where(node: NodeProcess, tree: Path, executor: str, *extra: str) -> str:
    """What a task says of where it is: pwd, pwd -P, realpath (the test image has no realpath:
    pwd -P again), PWD, HOME and TMPDIR, and that those two are writable."""
    realpath = "pwd -P" if executor == "docker" else "realpath ."
    script = f'pwd; pwd -P; {realpath}; echo "$PWD $HOME $TMPDIR"; test -w "$HOME" && test -w "$TMPDIR" && echo ok'
    done = node.mesh("exec", "--no-cache", "--executor", executor, *extra, "-C", str(tree), "--", "sh", "-c", script)
    assert done.returncode == 0, done.stderr
    return done.stdout.decode()


def expected(view: TaskView, cwd: str = "") -> str:
    at = f"{view.work}/{cwd}" if cwd else view.work
    return f"{at}\n{at}\n{at}\n{at} {view.home} {view.tmp}\nok\n"


def test_the_workdir_is_at_the_same_path_on_every_run_and_node(
    nodes: tuple[NodeProcess, NodeProcess], c_tree: Path, executor: str
) -> None:
    seen = [where(node, c_tree, executor) for node in nodes for _ in range(2)]
    assert seen == [expected(VIEWS[executor])] * 4
    assert nodes[0].mesh("status").stdout.decode().count(f"{executor} {VIEWS[executor].work}") == 1


def test_debug_objects_are_identical_across_runs_and_nodes(
    nodes: tuple[NodeProcess, NodeProcess], c_tree: Path, executor: str, tmp_path: Path
) -> None:
    objects = []
    for i, node in enumerate(n for n in nodes for _ in range(2)):
        out = tmp_path / f"out{i}"
        command = ["exec", "--no-cache", "--executor", executor, "-C", str(c_tree), "--out", str(out)]
        done = node.mesh(*command, "--", "make", "CFLAGS=-g")
        assert done.returncode == 0, done.stderr
        objects.append((out / "obj" / "where.o").read_bytes())
    assert f"{VIEWS[executor].work}/src/where.c".encode() in objects[0]  # it does record the path
    assert objects == [objects[0]] * 4


class Rendezvous:
    """A loopback TCP server that answers its first ``count`` connections only once all have come:
    tasks that connect and wait for the answer run at the same time."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(60)
        self.port = self.server.getsockname()[1]
        self.met = False
        self.thread = threading.Thread(target=self._serve)
        self.thread.start()

    def _serve(self) -> None:
        peers = []
        try:
            while len(peers) < self.count:
                peers.append(self.server.accept()[0])
            self.met = True
            for peer in peers:
                peer.sendall(b"go")
        finally:
            for peer in peers:
                peer.close()
            self.server.close()


def test_two_tasks_at_once_each_see_their_own_workdir_at_the_same_path(
    node: NodeProcess, tmp_path: Path, executor: str
) -> None:
    meeting = Rendezvous(2)
    script = (
        f"import os, socket; s = socket.create_connection(('127.0.0.1', {meeting.port})); s.recv(2); "
        "print(os.getcwd(), sorted(os.listdir('.')))"
    )
    runs = []
    for name in ("left", "right"):
        tree = tmp_path / name
        tree.mkdir()
        (tree / f"{name}.txt").write_text(name)
        argv = [*MESH, "exec", "--no-cache", "--network", "--executor", executor, "-C", str(tree)]
        env = node_env(node.home, MESH_NODE=node.url)
        runs.append(subprocess.Popen([*argv, "--", "python3", "-c", script], env=env, stdout=subprocess.PIPE))
    outs = [run.communicate(timeout=120)[0].decode() for run in runs]
    meeting.thread.join(timeout=60)
    assert meeting.met and [run.returncode for run in runs] == [0, 0], outs
    work = VIEWS[executor].work
    assert outs == [f"{work} ['left.txt']\n", f"{work} ['right.txt']\n"]


def test_a_container_sees_its_workdir_at_work(docker_host: str, tmp_path: Path, c_tree: Path) -> None:
    from tests.podmanutil import IMAGE

    seen = []
    for name in ("one", "two"):
        node = NodeProcess(str(tmp_path / name), env={"DOCKER_HOST": docker_host}).start()
        try:
            seen += [where(node, c_tree, "docker", "--image", IMAGE) for _ in range(2)]
        finally:
            node.stop()
    assert seen == [expected(DOCKER_VIEW)] * 4


def nobody_node(home: Path, **env: str) -> NodeProcess:
    """A node that is not root (user nobody) offering the process executor, which it must be told to."""
    launcher = ["/usr/bin/setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--"]
    extra = ["--executors", "process"]
    return NodeProcess(str(home), slots=1, launcher=launcher, extra_args=extra, env={"HOME": str(home), **env})


@pytest.mark.skipif(os.geteuid() != 0, reason="starting a node as another user needs root")
def test_a_node_that_is_not_root_shows_process_tasks_the_same_path_through_bwrap(
    nobody_home: Path, c_tree: Path
) -> None:
    if shutil.which("bwrap") is None:
        pytest.skip(reason="bubblewrap is not installed")
    node = nobody_node(nobody_home).start()
    try:
        seen = [where(node, c_tree, "process") for _ in range(2)]
        assert seen == [expected(PROCESS_VIEW)] * 2
        mine = node.mesh("exec", "--executor", "process", "-C", str(c_tree), "--", "sh", "-c", "id -u; stat -c %u .")
        assert mine.stdout == f"{NOBODY}\n{NOBODY}\n".encode(), mine.stderr
        # The CLI (root) shares the node's $MESH_HOME but not its user: it uploads rather than
        # write into the node's store, where a directory of root's would fail the node's writes.
        roots = [p for p in (nobody_home / "cas").rglob("*") if p.lstat().st_uid != NOBODY]
        assert not roots, roots
    finally:
        node.stop()


@pytest.mark.skipif(os.geteuid() != 0, reason="starting a node as another user needs root")
def test_where_no_mount_namespace_can_be_had_the_node_says_so_and_tasks_run_at_their_host_path(
    nobody_home: Path, c_tree: Path
) -> None:
    node = nobody_node(nobody_home, PATH="/nonexistent").start()  # no bwrap to be found
    try:
        said = [line for line in node.log().splitlines() if "process tasks run in their host task directories" in line]
        assert len(said) == 1 and "bwrap (bubblewrap) is not on PATH" in said[0], node.log()
        assert "workdirs: process host directories (no stable path)" in node.mesh("status").stdout.decode()
        pwd = node.mesh("exec", "--executor", "process", "-C", str(c_tree), "--", "pwd")
        assert pwd.returncode == 0, pwd.stderr
        assert re.fullmatch(rf"{re.escape(str(nobody_home))}/work/task-\w+/work\n", pwd.stdout.decode()), pwd.stdout
    finally:
        node.stop()
