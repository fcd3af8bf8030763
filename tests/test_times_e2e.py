"""End to end: a task sees its input's modification times as they are in the user's tree.

The real ``mesh`` CLI against real ``mesh up`` processes on loopback (mDNS off). The make
case of issue 15: a library built from an edited source, the original source restored
(newer than the object), must be rebuilt through ``mesh exec`` as a local ``make`` would,
in every executor (``process``; ``sandbox``, whose root node checks inputs out as copies of
its task uid; ``docker`` when Podman is there), and the action-cache key must cover the
times. A root node with ``--sandbox-inputs link`` links *timed copies* instead: the same
times, but read-only files, on which GNU ``ar`` cannot update an archive in place.
"""

from __future__ import annotations

import datetime
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mesh import codec
from mesh.cas.digest import Digest
from mesh.cas.times import Times
from mesh.errors import NodeError
from mesh.wire.client import NodeClient
from mesh.wire.upload import put_blob
from tests import test_task_isolation as isolation
from tests.nodeutil import MESH, NodeProcess, free_port, node_env, wait_for

# A plain lib rule: ``ar`` updates the existing lib.a of the input, as a local make does.
MAKEFILE = """\
lib.a: one.o two.o
\tar rcs $@ $^

%.o: %.c
\tcc -c -o $@ $<
"""
# ``rm -f`` first: GNU ar rewrites an archive that has other hard links in place (to keep the
# links), which a link-mode checkout's read-only files refuse (--sandbox-inputs link).
LINK_MAKEFILE = MAKEFILE.replace("\tar rcs", "\trm -f $@\n\tar rcs")
ORIGINAL = "int one(void) { return 1; }\n"
EDITED = "int one_edited(void) { return 2; }\n"
#: Times well apart and with odd nanoseconds, so that a lost ns or a rounded second shows.
BASE_NS = 1_700_000_000_123_456_789


needs_cc = pytest.mark.skipif(
    shutil.which("cc") is None or shutil.which("make") is None or shutil.which("nm") is None,
    reason="the make case needs cc, make, ar and nm (apt-get install build-essential)",
)


def executors() -> list[str]:
    found = ["process"]
    if shutil.which("bwrap") is not None:
        found.append("sandbox")  # on a root node: copies of the task uid
    return found


needs_root_sandbox = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("bwrap") is None,
    reason="link-mode inputs are a root node's sandbox's (run as root, with bubblewrap installed)",
)


@pytest.fixture
def link_node(home: Path) -> Iterator[NodeProcess]:
    """A node whose sandbox links its inputs (``--sandbox-inputs link``)."""
    process = NodeProcess(str(home), extra_args=["--sandbox-inputs", "link"]).start()
    try:
        yield process
    finally:
        process.stop(timeout=30)


def _c_tree(root: Path, makefile: str = MAKEFILE) -> Path:
    src = root / "src"
    src.mkdir(parents=True)
    (src / "Makefile").write_text(makefile)
    (src / "one.c").write_text(ORIGINAL)
    (src / "two.c").write_text("int two(void) { return 2; }\n")
    return src


def _symbols(path: Path) -> str:
    return subprocess.run(["nm", str(path)], capture_output=True, check=True, text=True).stdout


@needs_cc
@pytest.mark.parametrize("executor", executors())
def test_a_restored_source_is_rebuilt_as_a_local_make_would(node: NodeProcess, tmp_path: Path, executor: str) -> None:
    done = _make_restored(node, _c_tree(tmp_path), tmp_path / "out", executor)
    assert done.returncode == 0, done.stderr
    assert b"up to date" not in done.stdout, done.stdout
    symbols = _symbols(tmp_path / "out" / "lib.a")
    assert " T one\n" in symbols and "one_edited" not in symbols, symbols


@needs_cc
@needs_root_sandbox
def test_a_link_mode_sandbox_rebuilds_with_timed_copies(link_node: NodeProcess, tmp_path: Path) -> None:
    """Link mode: the same times (timed copies); ``ar`` must not update the read-only lib.a in
    place, which the plain rule does (the caveat of the setting), and ``rm -f`` first avoids."""
    plain = _make_restored(link_node, _c_tree(tmp_path / "plain"), tmp_path / "plain-out", "sandbox")
    assert plain.returncode != 0 and b"Permission denied" in plain.stderr, plain.stderr
    src = _c_tree(tmp_path / "rm", LINK_MAKEFILE)
    done = _make_restored(link_node, src, tmp_path / "out", "sandbox")
    assert done.returncode == 0, done.stderr
    assert b"up to date" not in done.stdout, done.stdout
    symbols = _symbols(tmp_path / "out" / "lib.a")
    assert " T one\n" in symbols and "one_edited" not in symbols, symbols


def _make_restored(node: NodeProcess, src: Path, out: Path, executor: str) -> subprocess.CompletedProcess[bytes]:
    """The issue's case: lib.a built here from an edited one.c, the original one.c restored
    (newer than one.o), then ``make lib.a`` through ``mesh exec`` into ``out``."""
    subprocess.run(["make", "-s", "lib.a"], cwd=src, check=True)
    first = node.mesh("exec", "--executor", executor, "-C", str(src), "--", "true")  # the original one.c is stored
    assert first.returncode == 0, first.stderr
    original = (src / "one.c").read_bytes()
    (src / "one.c").write_text(EDITED)
    subprocess.run(["make", "-s", "lib.a"], cwd=src, check=True)  # one.o, lib.a from the edited source
    assert "one_edited" in _symbols(src / "lib.a")
    (src / "one.c").write_bytes(original)  # restored: newer than one.o again
    later = (src / "lib.a").stat().st_mtime_ns + 1_000
    os.utime(src / "one.c", ns=(later, later))
    local = subprocess.run(["make", "-n", "lib.a"], cwd=src, capture_output=True, text=True, check=True)
    assert "one.c" in local.stdout  # a local make would rebuild

    return node.mesh("exec", "--executor", executor, "-C", str(src), "--out", str(out), "--", "make", "lib.a")


def _timed_tree(tree: Path) -> dict[str, int]:
    """A tree of every kind of entry, each with its own odd mtime; returns them by path."""
    (tree / "dir" / "deep").mkdir(parents=True)
    (tree / "file").write_text("f\n")
    (tree / "tool").write_text("#!/bin/sh\n")
    (tree / "tool").chmod(0o755)
    (tree / "dir" / "deep" / "leaf").write_text("l\n")
    (tree / "link").symlink_to("file")
    (tree / "dangling").symlink_to("nowhere")
    paths = ["file", "tool", "dir/deep/leaf", "link", "dangling", "dir/deep", "dir", "."]
    wanted = {p: BASE_NS + i * 1_000_000_007 for i, p in enumerate(paths)}
    for p in paths:  # directories last (listed last), so that their times stay
        os.utime(tree / p, ns=(wanted[p], wanted[p]), follow_symlinks=False)
    return wanted


@pytest.mark.parametrize("executor", executors())
def test_the_task_sees_the_exact_nanosecond_times(node: NodeProcess, tmp_path: Path, executor: str) -> None:
    tree = tmp_path / "tree"
    wanted = _timed_tree(tree)
    assert _seen_times(node, tree, "--executor", executor) == wanted


@needs_root_sandbox
def test_a_link_mode_sandbox_sees_the_exact_times(link_node: NodeProcess, tmp_path: Path) -> None:
    """The timed copies that a link checkout links carry the tree's times."""
    tree = tmp_path / "tree"
    wanted = _timed_tree(tree)
    assert _seen_times(link_node, tree, "--executor", "sandbox") == wanted


def test_a_client_with_its_own_store_sends_the_times(node: NodeProcess, tmp_path: Path) -> None:
    """The remote path: the tree is planned (hashed, not stored) and uploaded, times and all."""
    tree = tmp_path / "tree"
    wanted = _timed_tree(tree)
    key = node.mesh("key", "show").stdout.decode().strip()
    env = node_env(str(tmp_path / "client-home"), MESH_NODE=node.url, MESH_KEY=key)
    assert _seen_times(node, tree, "--executor", "process", env=env) == wanted


def _seen_times(node: NodeProcess, tree: Path, *how: str, env: dict[str, str] | None = None) -> dict[str, int]:
    """The mtimes a task run with ``how`` sees on the tree's entries."""
    paths = ["file", "tool", "dir/deep/leaf", "link", "dangling", "dir/deep", "dir", "."]
    script = "import os,sys\nfor p in sys.argv[1:]: print(p, os.lstat(p).st_mtime_ns)\n"
    argv = ["exec", *how, "-C", str(tree), "--", "python3", "-c", script, *paths]
    if env is None:
        done = node.mesh(*argv)
    else:
        done = subprocess.run(MESH + argv, env=env, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return {p: int(t) for p, t in (line.split() for line in done.stdout.decode().splitlines())}


def test_a_copy_mode_sandbox_sees_the_exact_times(nobody_home: Path, tmp_path: Path) -> None:
    """A node that is not root checks a sandbox's input out in copy mode."""
    node = isolation.nobody_node(nobody_home).start()
    try:
        offered = httpx.get(node.url + "/status", timeout=5, trust_env=False).json()["executors"]["offered"]
        if "sandbox" not in offered:
            pytest.skip(f"a node that is not root offers no sandbox here (it offers {offered})")
        tree = tmp_path / "tree"
        wanted = _timed_tree(tree)
        assert _seen_times(node, tree, "--executor", "sandbox") == wanted
    finally:
        node.stop()


def test_a_container_sees_the_exact_times(docker_host: str, home: Path, tmp_path: Path) -> None:
    """The docker executor bind-mounts a copy-mode checkout; busybox's stat shows the times."""
    from tests.podmanutil import IMAGE

    tree = tmp_path / "tree"
    wanted = _timed_tree(tree)
    node = NodeProcess(str(home), env={"DOCKER_HOST": docker_host}).start()
    try:
        done = node.mesh("exec", "--image", IMAGE, "-C", str(tree), "--", "busybox", "stat", "-c", "%n|%y", *wanted)
        assert done.returncode == 0, done.stderr
    finally:
        node.stop()
    seen = dict(line.split("|") for line in done.stdout.decode().splitlines())
    assert seen == {p: _stat_y(ns) for p, ns in wanted.items()}


def _stat_y(ns: int) -> str:
    """What ``stat -c %y`` prints for ``ns`` in UTC (the tasks' TZ)."""
    when = datetime.datetime.fromtimestamp(ns // 10**9, datetime.UTC)
    return f"{when:%Y-%m-%d %H:%M:%S}.{ns % 10**9:09d} +0000"


def test_an_unchanged_tree_is_a_hit_and_a_touched_file_a_miss(node: NodeProcess, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "a.txt").write_text("alpha\n")
    os.utime(tree / "a.txt", ns=(BASE_NS, BASE_NS))
    argv = ["exec", "-v", "-C", str(tree), "--", "sh", "-c", "ls -l --time-style=+%s a.txt | cut -d' ' -f6"]
    first = node.mesh(*argv)
    assert first.returncode == 0, first.stderr
    assert first.stdout == str(BASE_NS // 10**9).encode() + b"\n"
    assert b"(cached)" not in first.stderr
    again = node.mesh(*argv)
    assert again.returncode == 0 and b"(cached)" in again.stderr, again.stderr  # unchanged: a hit
    os.utime(tree / "a.txt", ns=(BASE_NS + 5 * 10**9, BASE_NS + 5 * 10**9))  # touched, same bytes
    touched = node.mesh(*argv)
    assert touched.returncode == 0 and b"(cached)" not in touched.stderr, touched.stderr
    assert b"inputs changed" in touched.stderr
    assert touched.stdout == str(BASE_NS // 10**9 + 5).encode() + b"\n"


def test_a_task_without_times_sees_one_fixed_time(node: NodeProcess, tmp_path: Path) -> None:
    """An API client that sends no times manifest: every entry gets 1980-01-01, not the store's times."""
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.txt").write_text("alpha\n")
    snapshot = node.mesh("snapshot", str(tree))
    assert snapshot.returncode == 0, snapshot.stderr
    root = snapshot.stdout.decode().split()[0]
    with NodeClient(node.url) as client:
        script = "import os; print(os.lstat('a.txt').st_mtime_ns, os.lstat('sub').st_mtime_ns)"
        job = client.submit(
            {"tasks": [{"name": "t", "argv": ["python3", "-c", script], "input": root, "executor": "process"}]}
        )
        wait_for(lambda: client.job(job["id"])["state"] != "running", what="the job to end")
        [task] = client.job(job["id"])["tasks"]
        assert task["state"] == "succeeded", task
        out = b"".join(client.read_blob(_digest(task["result"]["stdout"])))
    assert out.split() == [b"315532800000000000"] * 2


def _digest(text: str) -> Digest:
    return Digest.parse(text)


def test_the_api_checks_the_times_it_is_given(node: NodeProcess, tmp_path: Path) -> None:
    """A malformed ``times`` is a 400; a missing manifest is refused at submission; a hostile
    one, or one that does not fit the input, fails the task saying so; the node goes on."""
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "a.txt").write_text("alpha\n")
    root = node.mesh("snapshot", str(tree)).stdout.decode().split()[0]
    task = {"name": "t", "argv": ["true"], "input": root, "executor": "process"}
    with NodeClient(node.url) as client:
        with pytest.raises(NodeError, match="field 'times' of task 't'"):
            client.submit({"tasks": [{**task, "times": "b3:nope"}]})
        absent = Digest.of(b"never uploaded")
        with pytest.raises(NodeError, match=f"times manifest {absent} is not on this node"):
            client.submit({"tasks": [{**task, "times": str(absent)}]})
        with pytest.raises(NodeError, match="takes its input from a task"):
            client.submit({"tasks": [task, {**task, "name": "u", "input": None, "input_task": "t", "times": root}]})
        hostile = put_blob(client.http, codec.encode(["times", 1, b"\0../x", bytes(16)]))
        other = put_blob(client.http, Times.of([(b"", 1), (b"b.txt", 2)]).encode())
        for times, says in ((hostile, "invalid path"), (other, "does not list 'a.txt'")):
            job = client.submit({"tasks": [{**task, "times": str(times)}]})
            wait_for(lambda job=job: client.job(job["id"])["state"] != "running", what="the job to end")
            [record] = client.job(job["id"])["tasks"]
            assert record["state"] == "failed" and says in record["result"]["error"], record
    assert node.answers()


def test_a_kept_workdir_gets_its_directories_times_back(node: NodeProcess, tmp_path: Path) -> None:
    """A copy-mode task directory kept for the next task with the same input: what the last
    task added (and the node removed) moved its directories' times, which are set again."""
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "a.txt").write_text("alpha\n")
    os.utime(tree / "sub", ns=(BASE_NS, BASE_NS))
    os.utime(tree, ns=(BASE_NS + 1, BASE_NS + 1))
    script = "import os; print(os.lstat('sub').st_mtime_ns, os.lstat('.').st_mtime_ns); open('sub/new', 'w')"
    argv = ["exec", "--no-cache", "--executor", "process", "-C", str(tree), "--", "python3", "-c", script]
    for _ in range(3):
        done = node.mesh(*argv)
        assert done.returncode == 0, done.stderr
        assert done.stdout == f"{BASE_NS} {BASE_NS + 1}\n".encode()
    reused = httpx.get(node.url + "/metrics", timeout=5, trust_env=False).text
    assert re.search(r"mesh_task_dirs_reused_total [1-9]", reused), reused


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[NodeProcess, NodeProcess]]:
    """Two nodes of one mesh; only the second has the label ``far=1``."""
    ports = [free_port(), free_port()]
    nodes: list[NodeProcess] = []
    try:
        a_home = tmp_path / "a"
        a_home.mkdir()
        nodes.append(NodeProcess(str(a_home), port=ports[0]).start())
        b_home = tmp_path / "b"
        b_home.mkdir()
        (b_home / "mesh.key").write_text((a_home / "mesh.key").read_text())
        extra = ["--peer", f"127.0.0.1:{ports[0]}", "--label", "far=1"]
        nodes.append(NodeProcess(str(b_home), port=ports[1], extra_args=extra).start())
        yield nodes[0], nodes[1]
    finally:
        for n in nodes:
            n.kill()


def test_a_task_placed_on_a_peer_gets_the_times(pair: tuple[NodeProcess, NodeProcess], tmp_path: Path) -> None:
    a, b = pair
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "a.txt").write_text("alpha\n")
    os.utime(tree / "a.txt", ns=(BASE_NS, BASE_NS))
    script = "import os; print(os.lstat('a.txt').st_mtime_ns)"
    wait_for(lambda: b"far=1" in a.mesh("peers").stdout, timeout=30, what="a to know its peer with far=1")
    argv = ["exec", "-v", "--require", "label.far=1", "--executor", "process", "-C", str(tree), "--"]
    done = a.mesh(*argv, "python3", "-c", script)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{BASE_NS}\n".encode()
    b_id = httpx.get(b.url + "/health", timeout=5, trust_env=False).json()["node"]
    assert f"ran on node {b_id}".encode() in done.stderr, done.stderr
