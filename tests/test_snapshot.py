"""Snapshots: any tree ingests and checks out to the identical tree; ids are canonical."""

from __future__ import annotations

import os
import random
import shutil
import socket
import tempfile
from pathlib import Path

import blake3
import cbor2
import pytest
from hypothesis import given, settings

from mesh.cas.checkout import checkout
from mesh.cas.digest import Digest
from mesh.cas.snapshot import Change, diff, ingest, resolve, walk
from mesh.cas.store import LocalStore
from mesh.cas.tree import Kind
from mesh.errors import PathNotFound, SnapshotError, UnsupportedFile
from tests import treeutil
from tests.strategies import trees


def fresh(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


@given(trees)
def test_any_tree_round_trips_in_copy_and_link_mode(tree: treeutil.Tree) -> None:
    work = fresh("mesh-rt-")
    try:
        (work / "src").mkdir()
        treeutil.build(work / "src", tree)
        with LocalStore(work / "cas") as store:
            snap = ingest(store, work / "src", sync=False)
            checkout(store, snap, work / "copy")
            assert treeutil.read(work / "copy") == tree
            checkout(store, snap, work / "link", mode="link")
            assert treeutil.read(work / "link") == tree
    finally:
        shutil.rmtree(work)


@settings(max_examples=30)
@given(trees)
def test_id_independent_of_mtimes_walk_order_location_and_store(tree: treeutil.Tree) -> None:
    work = fresh("mesh-id-")
    try:
        rng = random.Random(len(tree))
        (work / "one").mkdir()
        (work / "elsewhere" / "two").mkdir(parents=True)
        treeutil.build(work / "one", tree)
        treeutil.build(work / "elsewhere" / "two", tree, order=lambda names: sorted(names, reverse=True))
        for dirpath, dirnames, filenames in os.walk(work / "elsewhere"):
            for n in dirnames + filenames:
                t = rng.randrange(0, 2**31)
                os.utime(os.path.join(dirpath, n), (t, t), follow_symlinks=False)
        with LocalStore(work / "cas1") as s1, LocalStore(work / "cas2") as s2:
            first = ingest(s1, work / "one", sync=False)
            assert ingest(s2, work / "elsewhere" / "two", sync=False) == first
            usage = s1.usage()
            written = s1.statistics().blobs_written
            assert ingest(s1, work / "one", sync=False) == first  # twice: same id ...
            assert s1.usage() == usage  # ... and no new blobs
            assert s1.statistics().blobs_written == written
    finally:
        shutil.rmtree(work)


def test_known_tree_has_the_id_the_spec_gives(store: LocalStore, tmp_path: Path) -> None:
    """Computed from DESIGN's encoding with cbor2 and blake3 alone: same on every machine."""
    src = tmp_path / "src"
    (src / "empty").mkdir(parents=True)
    (src / "hello.txt").write_bytes(b"hello\n")
    (src / "run").write_bytes(b"#!/bin/sh\n")
    os.chmod(src / "run", 0o700)
    os.symlink("hello.txt", src / "link")

    def node(rows: list[list[object]]) -> bytes:
        return cbor2.dumps(["tree", 1, rows], canonical=True)

    empty = node([])
    root = node(
        [
            [b"empty", 3, blake3.blake3(empty).digest(), len(empty)],
            [b"hello.txt", 0, blake3.blake3(b"hello\n").digest(), 6],
            [b"link", 2, b"hello.txt", 9],
            [b"run", 1, blake3.blake3(b"#!/bin/sh\n").digest(), 10],
        ]
    )
    assert ingest(store, src) == Digest(blake3.blake3(root).digest(), len(root))


def test_special_files_are_refused_naming_the_path(store: LocalStore, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "deep").mkdir(parents=True)
    os.mkfifo(src / "deep" / "pipe")
    with pytest.raises(UnsupportedFile, match=r"deep/pipe: it is a FIFO"):
        ingest(store, src)
    os.unlink(src / "deep" / "pipe")
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(src / "deep" / "sock"))
        with pytest.raises(UnsupportedFile, match=r"deep/sock: it is a socket"):
            ingest(store, src)
    finally:
        sock.close()


def test_ingest_of_a_non_directory_or_missing_path(store: LocalStore, tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(SnapshotError, match="not a directory"):
        ingest(store, tmp_path / "f")
    with pytest.raises(SnapshotError, match="No such file"):
        ingest(store, tmp_path / "missing")


def _ingest_error_as(uid: int | None, store_dir: Path, src: Path) -> str:
    """Ingest ``src`` (as ``uid`` if given, in a forked child) and return the error message."""
    if uid is None:
        with LocalStore(store_dir) as store:
            try:
                ingest(store, src)
            except SnapshotError as exc:
                return str(exc)
        return "no error"
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to an unprivileged uid, then try
        code = 1
        try:
            os.close(read_end)
            os.setgid(uid)
            os.setuid(uid)
            os.write(write_end, _ingest_error_as(None, store_dir, src).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as r:
        message = r.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, message
    return message


def test_unreadable_directory_is_a_clear_error() -> None:
    """As root (CI), the ingest runs in a child as uid 65534, for whom the directory is unreadable."""
    base = Path(tempfile.mkdtemp(prefix="mesh-perm-"))
    try:
        os.chmod(base, 0o755)
        (base / "src" / "secret").mkdir(parents=True)
        (base / "src" / "secret" / "f").write_bytes(b"hidden")
        (base / "src" / "open").write_bytes(b"visible")
        os.chmod(base / "src" / "secret", 0)
        (base / "cas").mkdir()
        uid = 65534 if os.geteuid() == 0 else None
        if uid is not None:
            os.chown(base / "cas", uid, uid)
        message = _ingest_error_as(uid, base / "cas", base / "src")
        assert "cannot read directory" in message and "secret" in message and "Permission denied" in message
    finally:
        os.chmod(base / "src" / "secret", 0o755)
        shutil.rmtree(base)


def test_ignore_callback_leaves_paths_out(store: LocalStore, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / ".git").mkdir(parents=True)
    (src / ".git" / "HEAD").write_bytes(b"ref")
    (src / "keep").write_bytes(b"k")
    snap = ingest(store, src, ignore=lambda rel, is_dir: rel == b".git")
    assert [p for p, _ in walk(store, snap)] == [b"keep"]


def test_resolve_walk_and_diff(store: LocalStore, tmp_path: Path) -> None:
    a = tmp_path / "a"
    a.mkdir()
    treeutil.build(
        a,
        {
            b"same": ("file", b"s", False),
            b"mod": ("file", b"1", False),
            b"gone": ("dir", {b"x": ("file", b"x", False)}),
            b"kind": ("file", b"k", False),
            b"d": ("dir", {b"inner": ("file", b"i", False)}),
        },
    )
    b = tmp_path / "b"
    b.mkdir()
    treeutil.build(
        b,
        {
            b"same": ("file", b"s", False),
            b"mod": ("file", b"2", False),
            b"kind": ("link", b"same"),
            b"d": ("dir", {b"inner": ("file", b"i", True)}),
            b"new": ("dir", {b"y": ("file", b"y", False)}),
        },
    )
    sa, sb = ingest(store, a), ingest(store, b)
    assert resolve(store, sa, "d/inner").digest == Digest.of(b"i")
    assert resolve(store, sa, "/d/").kind == Kind.DIRECTORY
    assert resolve(store, sa, "").digest == sa
    with pytest.raises(PathNotFound, match="no d/missing"):
        resolve(store, sa, "d/missing")
    with pytest.raises(PathNotFound, match="not a directory"):
        resolve(store, sa, "mod/x")
    with pytest.raises(PathNotFound, match="invalid path"):
        resolve(store, sa, "d/../mod")
    changes = [(c.status, c.path) for c in diff(store, sa, sb)]
    assert changes == [
        ("T", b"d/inner"),
        ("D", b"gone"),
        ("D", b"gone/x"),
        ("T", b"kind"),
        ("M", b"mod"),
        ("A", b"new"),
        ("A", b"new/y"),
    ]
    assert list(diff(store, sa, sa)) == []
    assert isinstance(next(iter(diff(store, sa, sb))), Change)
