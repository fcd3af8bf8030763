"""``mesh exec --output PATH`` and ``--out DIR``: only the declared paths are captured, and only
what the task produced or changed is written out (an unchanged file keeps its inode and times).

Real CLI against a real ``mesh up``; one test runs the CLI on a store of its own, so that
what ``--out`` writes is fetched from the node.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests import clientutil, treeutil
from tests.clientutil import client
from tests.nodeutil import NodeProcess


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    treeutil.build(
        src,
        {
            b"a.txt": ("file", b"alpha\n", False),
            b"keep.txt": ("file", b"kept\n", False),
            b"sub": ("dir", {b"b.txt": ("file", b"beta\n", False)}),
        },
    )
    return src


def output_of(node: NodeProcess, done: subprocess.CompletedProcess[bytes]) -> str:
    """The output snapshot of the job ``mesh exec -v`` ran."""
    match = re.search(rb"job (\S+) succeeded", done.stderr)
    assert match, done.stderr
    job = json.loads(node.mesh("job", "--json", match.group(1).decode()).stdout)
    return str(job["tasks"][0]["result"]["output"])


def listing(node: NodeProcess, snap: str) -> list[str]:
    out = node.mesh("ls", "-r", "--json", snap)
    assert out.returncode == 0, out.stderr
    return [e["path"] for e in json.loads(out.stdout)]


#: Makes files, and changes a.txt (by replacing it: the sandbox's inputs are read-only links).
BUILD = (
    "mkdir -p build/obj && echo app > build/app && echo o > build/obj/x.o && echo junk > junk.txt"
    " && { cat a.txt; echo more; } > a.new && mv a.new a.txt"
)


def test_output_captures_only_the_declared_paths(node: NodeProcess, tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = node.mesh(
        "exec", "-v", "-C", str(tree), "--output", "build/app", "--output", "./a.txt", "--output", "never-made",
        "--out", str(out), "--", "sh", "-c", BUILD,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert listing(node, output_of(node, done)) == ["a.txt", "build", "build/app"]
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == ["a.txt", "build", "build/app"]
    assert (out / "build" / "app").read_text() == "app\n" and (out / "a.txt").read_text() == "alpha\nmore\n"


def test_output_paths_are_checked_before_anything_runs(node: NodeProcess, tree: Path) -> None:
    for bad, says in (("/etc/passwd", "must be relative"), ("../up", "must not contain '..'"), ("", "not its root")):
        done = node.mesh("exec", "-C", str(tree), "--output", bad, "--", "touch", "ran")
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith(b"mesh: error: --output") and says.encode() in done.stderr, done.stderr
    assert json.loads(node.mesh("jobs", "--json").stdout)["jobs"] == []


def test_out_into_the_tree_itself_writes_only_what_changed(node: NodeProcess, tree: Path) -> None:
    before = {name: os.stat(tree / name) for name in ("keep.txt", "sub/b.txt")}
    done = node.mesh("exec", "-C", str(tree), "--out", str(tree), "--", "sh", "-c", BUILD + " && rm sub/b.txt")
    assert done.returncode == 0, done.stderr
    assert (tree / "a.txt").read_text() == "alpha\nmore\n"
    assert (tree / "build" / "obj" / "x.o").read_text() == "o\n" and (tree / "junk.txt").exists()
    after = os.stat(tree / "keep.txt")
    assert (after.st_ino, after.st_mtime_ns, after.st_ctime_ns) == (
        before["keep.txt"].st_ino,
        before["keep.txt"].st_mtime_ns,
        before["keep.txt"].st_ctime_ns,
    )  # an unchanged file is not written again
    assert (tree / "sub" / "b.txt").read_text() == "beta\n"  # --out deletes nothing ...
    assert b"the task deleted sub/b.txt; --out deletes nothing" in done.stderr  # ... and says so
    assert not [p for p in tree.rglob(".mesh-out-*")]


def test_out_into_another_directory_from_another_store(node: NodeProcess, tree: Path, tmp_path: Path) -> None:
    home = clientutil.client_home(node, tmp_path / "client-home")
    out = tmp_path / "out"
    outside = tmp_path / "outside"
    outside.mkdir()
    out.mkdir()
    (out / "mine.txt").write_text("the user's\n")
    (out / "a.txt").write_text("stale\n")
    (out / "build").symlink_to(outside)  # a symlink where the output has a directory: never followed
    done = client(home, "exec", "-C", str(tree), "--out", str(out), "--", "sh", "-c", BUILD, MESH_NODE=node.url)
    assert done.returncode == 0, done.stderr
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == [
        "a.txt",
        "build",
        "build/app",
        "build/obj",
        "build/obj/x.o",
        "junk.txt",
        "mine.txt",
    ]
    assert (out / "a.txt").read_text() == "alpha\nmore\n" and (out / "mine.txt").read_text() == "the user's\n"
    assert not (out / "build").is_symlink() and list(outside.iterdir()) == []


def test_a_directory_where_the_output_has_a_file_is_a_conflict(node: NodeProcess, tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "result").mkdir(parents=True)
    (out / "result" / "old").write_text("old\n")
    done = node.mesh("exec", "-C", str(tree), "--out", str(out), "--", "sh", "-c", "echo r > result")
    assert done.returncode == 1
    assert f"{out}/result is a directory, where the output has a file".encode() in done.stderr, done.stderr
    assert (out / "result" / "old").read_text() == "old\n"
