"""Checkout never follows or writes through what it finds, never leaves its target,
and never lets a damaged or hostile store object through."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import cbor2
import pytest

from mesh.cas import checkout as checkout_module
from mesh.cas.checkout import checkout
from mesh.cas.digest import Digest
from mesh.cas.fsck import fsck
from mesh.cas.snapshot import ingest
from mesh.cas.store import LocalStore
from mesh.errors import BlobDamaged, CheckoutConflict, InvalidTree, SnapshotError
from tests import treeutil
from tests.damageutil import RESTORED, alter

TREE: treeutil.Tree = {
    b"a.txt": ("file", b"alpha", False),
    b"bin": ("dir", {b"tool": ("file", b"#!/bin/sh\necho hi\n", True)}),
    b"d": ("dir", {b"f": ("file", b"inner", False), b"g": ("file", os.urandom(3 << 20), False)}),
}


@pytest.fixture
def snap(store: LocalStore, tmp_path: Path) -> Digest:
    src = tmp_path / "src"
    src.mkdir()
    treeutil.build(src, TREE)
    return ingest(store, src)


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A file outside every checkout target that an attack would like to overwrite."""
    v = tmp_path / "victim"
    v.write_bytes(b"original")
    return v


def test_target_must_be_absent_or_empty(store: LocalStore, snap: Digest, tmp_path: Path, victim: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(victim, out / "a.txt")
    with pytest.raises(CheckoutConflict, match="not empty"):
        checkout(store, snap, out)
    assert victim.read_bytes() == b"original"
    os.symlink(tmp_path, tmp_path / "target-link")
    with pytest.raises(CheckoutConflict):
        checkout(store, snap, tmp_path / "target-link")  # a symlink as the target itself


def _planting(monkeypatch: pytest.MonkeyPatch, when_reading: Digest | None, plant: Any) -> None:
    """Run ``plant()`` when checkout reads a given directory node: a concurrent attacker."""
    real = checkout_module.read_node

    def read_node(store: LocalStore, digest: Digest) -> Any:
        if when_reading is None or digest == when_reading:
            plant()
        return real(store, digest)

    monkeypatch.setattr(checkout_module, "read_node", read_node)


@pytest.mark.parametrize("mode", ["copy", "link"])
def test_symlink_planted_at_a_file_path_is_not_written_through(
    store: LocalStore, snap: Digest, tmp_path: Path, victim: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    out = tmp_path / "out"
    d_node = next(e.digest for e in checkout_module.read_node(store, snap) if e.name == b"d")

    def plant() -> None:
        if (out / "d").is_dir() and not (out / "d" / "f").is_symlink():
            os.symlink(victim, out / "d" / "f")

    _planting(monkeypatch, d_node, plant)
    with pytest.raises(CheckoutConflict, match="d/f already exists"):
        checkout(store, snap, out, mode=mode)  # type: ignore[arg-type]
    assert victim.read_bytes() == b"original"
    assert os.readlink(out / "d" / "f") == str(victim)
    assert fsck(store).clean


def test_symlink_planted_at_a_directory_path_is_not_followed(
    store: LocalStore, snap: Digest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def plant() -> None:
        if out.is_dir() and not (out / "d").exists():
            os.symlink(elsewhere, out / "d")

    _planting(monkeypatch, snap, plant)
    with pytest.raises(CheckoutConflict, match="d already exists"):
        checkout(store, snap, out)
    assert os.listdir(elsewhere) == []


def test_directory_swapped_for_a_symlink_after_creation_is_not_entered(
    store: LocalStore, snap: Digest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The window between mkdir and open: O_NOFOLLOW refuses the swapped-in link."""
    out = tmp_path / "out"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    real_mkdir = os.mkdir

    def mkdir(path: Any, mode: int = 0o777, *, dir_fd: int | None = None) -> None:
        real_mkdir(path, mode, dir_fd=dir_fd)
        if path == b"d":
            os.rmdir(path, dir_fd=dir_fd)
            os.symlink(elsewhere, path, dir_fd=dir_fd)

    monkeypatch.setattr(checkout_module.os, "mkdir", mkdir)
    with pytest.raises(SnapshotError):
        checkout(store, snap, out)
    assert os.listdir(elsewhere) == []


def _hostile(store: LocalStore, rows: list[list[object]]) -> Digest:
    return store.put(cbor2.dumps(["tree", 1, rows], canonical=True))


@pytest.mark.parametrize("name", [b"..", b"a/b", b"", b"x\0y", b"."])
def test_hostile_node_names_are_refused_on_checkout(store: LocalStore, tmp_path: Path, name: bytes) -> None:
    payload = store.put(b"pwned")
    evil = _hostile(store, [[name, 0, payload.hash, payload.size]])
    parent = _hostile(store, [[b"sub", 3, evil.hash, evil.size]])
    out = tmp_path / "deep" / "out"
    out.parent.mkdir()
    with pytest.raises(InvalidTree):
        checkout(store, parent, out)
    for dirpath, _, filenames in os.walk(tmp_path):
        if dirpath.startswith(store.root):
            continue
        for f in filenames:
            assert Path(dirpath, f).read_bytes() != b"pwned"


def test_damaged_blob_is_detected_by_copy_checkout_and_fsck(store: LocalStore, snap: Digest, tmp_path: Path) -> None:
    for big in (False, True):
        data = TREE[b"d"][1][b"g" if big else b"f"][1]
        path = store.blob_path(Digest.of(data))
        os.chmod(path, 0o644)
        with open(path, "r+b") as f:
            f.write(b"EVIL")
    with pytest.raises(BlobDamaged):  # a DigestMismatch; the blob it met is quarantined
        checkout(store, snap, tmp_path / "out")
    for dirpath, _, filenames in os.walk(tmp_path / "out"):  # no file keeps the damaged bytes
        for name in filenames:
            assert b"EVIL" not in Path(dirpath, name).read_bytes()
    fsck(store)  # quarantines what checkout did not meet
    assert len(os.listdir(store.quarantine_dir)) == 2
    assert fsck(store).clean


@pytest.mark.parametrize("restore_mtime", [False, True], ids=["flipped", "flipped, mtime restored"])
def test_a_damaged_blob_is_detected_by_a_link_checkout(
    store: LocalStore, snap: Digest, tmp_path: Path, restore_mtime: bool
) -> None:
    """Also when a link checkout found the blob intact before: only the file's ctime tells then."""
    checkout(store, snap, tmp_path / "before", mode="link")
    inner = Digest.of(b"inner")
    alter(store.blob_path(inner), RESTORED if restore_mtime else "same size")
    with pytest.raises(BlobDamaged, match=str(inner)):
        checkout(store, snap, tmp_path / "out", mode="link")
    assert not (tmp_path / "out" / "d" / "f").exists()
    assert os.listdir(store.quarantine_dir) and fsck(store).clean


def test_link_mode_makes_read_only_hardlinks_and_exec_copies(store: LocalStore, snap: Digest, tmp_path: Path) -> None:
    out = tmp_path / "out"
    checkout(store, snap, out, mode="link")
    plain = os.stat(out / "a.txt")
    assert stat.S_IMODE(plain.st_mode) == 0o444
    assert plain.st_ino == os.stat(store.blob_path(Digest.of(b"alpha"))).st_ino
    tool = os.stat(out / "bin" / "tool")
    assert stat.S_IMODE(tool.st_mode) == 0o555
    assert tool.st_ino != os.stat(store.blob_path(Digest.of(b"#!/bin/sh\necho hi\n"))).st_ino
    # Through the link the store's blob is reachable: fsck notices when it is changed.
    os.chmod(out / "a.txt", 0o644)
    (out / "a.txt").write_bytes(b"tampered")
    report = fsck(store)
    assert report.quarantined == 1


def test_copy_mode_files_belong_to_the_user(store: LocalStore, snap: Digest, tmp_path: Path) -> None:
    out = tmp_path / "out"
    stats = checkout(store, snap, out)
    assert stats.files == 4 and stats.directories == 2
    assert stat.S_IMODE(os.stat(out / "a.txt").st_mode) & 0o200
    assert os.stat(out / "bin" / "tool").st_mode & 0o100
    (out / "a.txt").write_bytes(b"edited")  # editing a copy never touches the store
    assert fsck(store).clean
    assert store.get(Digest.of(b"alpha")) == b"alpha"


def test_reads_never_change_the_times_of_linked_checkouts(store: LocalStore, snap: Digest, tmp_path: Path) -> None:
    """Link-mode files share the blob's inode: recording a blob's use must not touch it,
    or every build in a linked tree would see its sources change."""
    long_ago = 1_000_000_000
    for blob in store.iter_blobs():
        os.utime(store.file_of(blob), (long_ago, long_ago))
    out = tmp_path / "linked"
    checkout(store, snap, out, mode="link")
    before = os.stat(out / "a.txt")
    assert store.get(Digest.of(b"alpha")) == b"alpha"
    checkout(store, snap, tmp_path / "copy")
    after = os.stat(out / "a.txt")
    assert (after.st_mtime_ns, after.st_ctime_ns) == (before.st_mtime_ns, before.st_ctime_ns)
    # An unlinked blob is still marked as used when read after a long time.
    unlinked = store.put(b"not linked anywhere")
    os.utime(store.blob_path(unlinked), (long_ago, long_ago))
    store.get(unlinked)
    assert os.stat(store.blob_path(unlinked)).st_mtime > long_ago


@pytest.mark.parametrize("what", ["file", "directory", "target"])
def test_an_owner_that_cannot_be_given_a_path_is_a_snapshot_error(
    store: LocalStore, snap: Digest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, what: str
) -> None:
    """fchown failing (EPERM: a node that may not give files away, a filesystem that refuses)
    on a file, a directory or the target itself is a SnapshotError naming the path, as for
    every other write that fails, not a raw OSError."""
    real = os.fchown
    kinds = {"file": stat.S_ISREG, "directory": stat.S_ISDIR, "target": stat.S_ISDIR}

    def refuse(fd: int, uid: int, gid: int) -> None:
        st = os.fstat(fd)
        is_target = st.st_ino == os.stat(tmp_path / "out").st_ino
        if kinds[what](st.st_mode) and is_target == (what == "target"):
            raise PermissionError(1, "Operation not permitted")
        real(fd, uid, gid)

    monkeypatch.setattr(os, "fchown", refuse)
    with pytest.raises(SnapshotError, match="Operation not permitted") as caught:
        checkout(store, snap, tmp_path / "out", workers=1, owner=(os.getuid(), os.getgid()))
    assert str(tmp_path / "out") in str(caught.value)
