"""The `mesh` CLI end to end: real subprocesses, exit codes 0/1/2, clear messages."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests import treeutil
from tests.nodeutil import NodeProcess
from tests.treeutil import mesh

COMMANDS = ["hash", "snapshot", "checkout", "ls", "cat", "diff", "fsck", "gc", "pin", "unpin", "pins"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str) -> None:
    out = mesh(command, "--help")
    assert out.returncode == 0
    assert b"usage: mesh " + command.encode() in out.stdout


def test_top_level_help_and_usage_errors() -> None:
    out = mesh("--help")
    assert out.returncode == 0 and b"Exit status" in out.stdout
    assert mesh().returncode == 2
    assert mesh("no-such-command").returncode == 2
    bad = mesh("ls", "not-a-digest")
    assert bad.returncode == 2 and b"not a digest" in bad.stderr and b"Traceback" not in bad.stderr


@pytest.fixture
def src(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    root.mkdir()
    treeutil.build(
        root,
        {
            b"README": ("file", b"read me\n", False),
            b"bin": ("dir", {b"go": ("file", b"#!/bin/sh\n", True)}),
            b"lib": ("dir", {b"x.py": ("file", b"x = 1\n", False), b"empty": ("dir", {})}),
            b"link": ("link", b"README"),
        },
    )
    return root


def snapshot(path: Path) -> str:
    out = mesh("snapshot", str(path))
    assert out.returncode == 0, out.stderr
    text = out.stdout.decode().strip()
    assert text.startswith("b3:")
    return text


def test_snapshot_ls_cat_checkout_diff(home: Path, src: Path, tmp_path: Path) -> None:
    snap = snapshot(src)
    assert snapshot(src) == snap

    listing = mesh("ls", snap).stdout.decode().splitlines()
    assert [line.split()[0] for line in listing] == ["file", "dir", "dir", "link"]
    assert "README" in listing[0] and "-> README" in listing[3]
    rec = json.loads(mesh("ls", snap, "--recursive", "--json").stdout)
    assert [e["path"] for e in rec] == ["README", "bin", "bin/go", "lib", "lib/empty", "lib/x.py", "link"]
    assert rec[2]["kind"] == "exec"
    assert json.loads(mesh("ls", snap, "lib/x.py", "--json").stdout)[0]["size"] == 6

    assert mesh("cat", snap, "lib/x.py").stdout == b"x = 1\n"
    d = mesh("cat", snap, "lib")
    assert d.returncode == 1 and b"is a directory" in d.stderr
    missing = mesh("cat", snap, "nope")
    assert missing.returncode == 1 and b"no nope in snapshot" in missing.stderr

    out = tmp_path / "out"
    assert mesh("checkout", snap, str(out)).returncode == 0
    assert treeutil.read(out) == treeutil.read(src)
    again = mesh("checkout", snap, str(out))
    assert again.returncode == 1 and b"not empty" in again.stderr
    assert mesh("checkout", "--link", snap, str(tmp_path / "linked")).returncode == 0
    assert treeutil.read(tmp_path / "linked") == treeutil.read(src)

    (src / "README").write_bytes(b"changed\n")
    (src / "lib" / "empty").rmdir()
    snap2 = snapshot(src)
    assert mesh("diff", snap, snap2).stdout == b"M\tREADME\nD\tlib/empty\n"
    assert json.loads(mesh("diff", snap, snap2, "--json").stdout)[0] == {"status": "M", "path": "README"}


def test_missing_snapshot_is_a_failure_not_a_traceback(home: Path) -> None:
    out = mesh("ls", "b3:" + "0" * 64 + ":10")
    assert out.returncode == 1
    assert b"is not in the store" in out.stderr and b"Traceback" not in out.stderr


def test_snapshot_errors(home: Path, tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    out = mesh("snapshot", str(tmp_path))
    assert out.returncode == 1 and b"pipe: it is a FIFO" in out.stderr
    out = mesh("snapshot", str(tmp_path / "absent"))
    assert out.returncode == 1 and b"No such file" in out.stderr


def test_fsck_reports_and_exits_1_on_damage(home: Path, src: Path) -> None:
    snapshot(src)
    ok = mesh("fsck")
    assert ok.returncode == 0 and b"clean" in ok.stdout
    blob = next(p for p in (home / "cas" / "blobs").rglob("*") if p.is_file())
    os.chmod(blob, 0o644)
    blob.write_bytes(b"rot")
    bad = mesh("fsck", "--json")
    assert bad.returncode == 1
    report = json.loads(bad.stdout)
    assert report["quarantined"] == 1 and not report["clean"]
    assert mesh("fsck").returncode == 0


def test_gc_pins_and_store_cap(home: Path, src: Path, tmp_path: Path) -> None:
    snap = snapshot(src)
    assert mesh("gc").returncode == 2  # no cap configured
    assert mesh("pin", "keep", snap).returncode == 0
    assert mesh("pins").stdout.decode() == f"keep\t{snap}\n"
    other = tmp_path / "other"
    other.mkdir()
    (other / "junk").write_bytes(os.urandom(10_000))
    junk = snapshot(other)
    out = mesh("gc", "--max-size", "0")
    assert out.returncode == 0 and b"evicted" in out.stdout
    assert mesh("ls", snap).returncode == 0
    assert mesh("ls", junk).returncode == 1
    assert mesh("unpin", "keep").returncode == 0
    assert mesh("pin", "x", "b3:" + "1" * 64 + ":3").returncode == 1
    assert mesh("gc", "--max-size", "lots").returncode == 2


def test_gc_is_refused_while_a_node_runs_on_the_home(home: Path, src: Path) -> None:
    """A running node keeps blobs no pin names (a live job's input, a watched directory's
    snapshot): mesh gc beside it would take them, so it refuses and evicts nothing."""
    snap = snapshot(src)
    node = NodeProcess(str(home)).start()
    try:
        out = mesh("gc", "--max-size", "0")
        assert out.returncode == 1 and f"pid {node.process.pid}".encode() in out.stderr, out.stderr  # type: ignore[union-attr]
        assert b"mesh down" in out.stderr and b"Traceback" not in out.stderr
        assert mesh("ls", snap).returncode == 0
    finally:
        node.stop()
    assert mesh("gc", "--max-size", "0").returncode == 0
    assert mesh("ls", snap).returncode == 1


def test_store_cap_from_environment_applies_after_snapshot(home: Path, tmp_path: Path) -> None:
    for i in range(3):
        d = tmp_path / f"t{i}"
        d.mkdir()
        (d / "data").write_bytes(os.urandom(100_000))
        out = mesh("snapshot", str(d), env={"MESH_STORE_MAX": "150k"})
        assert out.returncode == 0, out.stderr
        latest = out.stdout.decode().strip()
    assert mesh("ls", latest).returncode == 0  # the snapshot just made is never evicted
    total = sum(p.stat().st_size for p in (home / "cas" / "blobs").rglob("*") if p.is_file())
    assert total <= 150 * 1024


def test_progress_line_only_on_a_terminal(home: Path, src: Path) -> None:
    import pty
    import subprocess
    import sys

    plain = mesh("snapshot", "--no-cache", str(src))
    assert plain.returncode == 0 and plain.stderr == b""
    master, slave = pty.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "mesh", "snapshot", "--no-cache", str(src)],
            stdout=subprocess.PIPE,
            stderr=slave,
            timeout=60,
        )
        os.close(slave)
        shown = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the terminal's other side is closed and drained
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(master)
    assert proc.returncode == 0
    assert proc.stdout.decode().strip() == plain.stdout.decode().strip()
    assert b"snapshot: 3/3 files" in shown


def test_cli_import_stays_light() -> None:
    """`mesh --help` and friends must not pay for the store's dependencies up front."""
    import subprocess
    import sys

    code = "import sys, mesh.cli; print(sorted(m for m in ('blake3', 'cbor2', 'mesh.cas.store') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True)
    assert out.stdout.strip() == b"[]"


def test_snapshot_leaves_out_mesh_home_inside_the_tree(tmp_path: Path) -> None:
    tree = tmp_path / "user"
    (tree / "project").mkdir(parents=True)
    (tree / "project" / "main.c").write_bytes(b"int main;\n")
    home = tree / ".local" / "share" / "mesh"
    first = mesh("snapshot", str(tree), env={"MESH_HOME": str(home)})
    assert first.returncode == 0, first.stderr
    snap = first.stdout.decode().strip()
    second = mesh("snapshot", str(tree), env={"MESH_HOME": str(home)})
    assert second.stdout.decode().strip() == snap  # the store grew, the id did not
    paths = [e["path"] for e in json.loads(mesh("ls", "-r", "--json", snap, env={"MESH_HOME": str(home)}).stdout)]
    assert paths == [".local", ".local/share", "project", "project/main.c"]
