"""The record of intact blob files (mesh.cas.verified) behind link checkouts.

A blob file is hashed the first time a link checkout links it, and trusted afterwards while
its stat is unchanged; the checkout's own links and the runner's unlinks move its ctime and
the record follows them. Any other change (a flipped byte, also with its mtime put back;
another size) is found before the tree is handed on: the blob is quarantined, no file of
the tree keeps it, and fsck is clean afterwards. The record survives a new store object
(another process) and a torn or damaged file of its own.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from mesh.cas import verified as verified_module
from mesh.cas.checkout import checkout
from mesh.cas.digest import Digest
from mesh.cas.fsck import fsck
from mesh.cas.snapshot import ingest
from mesh.cas.store import LocalStore
from mesh.cas.verified import VerifiedFiles, fine_timestamps
from mesh.errors import BlobDamaged
from tests import treeutil
from tests.damageutil import ALTERATIONS, RESTORED, alter
from tests.test_checkout import TREE

#: Files of the tree of tests.test_checkout (one executable, one of 3 MiB).
FILES = 4
#: How a blob's file is damaged (tests.damageutil).
DAMAGE = [*ALTERATIONS, RESTORED]


@pytest.fixture
def snap(store: LocalStore, tmp_path: Path) -> Digest:
    return treeutil.stored(store, tmp_path, TREE)


def files_under(root: Path) -> dict[str, bytes]:
    return {
        os.path.relpath(os.path.join(d, name), root): Path(d, name).read_bytes()
        for d, _, names in os.walk(root)
        for name in names
    }


def test_a_blob_file_is_hashed_once_and_trusted_while_unchanged(
    store: LocalStore, snap: Digest, tmp_path: Path
) -> None:
    checkout(store, snap, tmp_path / "c1", mode="link", workers=1)
    assert store.verified.statistics().hashed == FILES
    checkout(store, snap, tmp_path / "c2", mode="link", workers=1)
    # Links of the first checkout are removed the way the runner removes a task's (recorded) ...
    assert store.verified.release(str(tmp_path / "c1")) == FILES
    shutil.rmtree(tmp_path / "c1")
    checkout(store, snap, tmp_path / "c3", mode="link", workers=1)
    stats = store.verified.statistics()
    assert (stats.hashed, stats.trusted) == (FILES, 2 * FILES)
    # ... and another process (a new store object) reads the record from the store's file.
    with LocalStore(store.root) as other:
        checkout(other, snap, tmp_path / "c4", mode="link", workers=1)
        assert (other.verified.statistics().hashed, other.verified.statistics().trusted) == (0, FILES)
    assert files_under(tmp_path / "c4") == files_under(tmp_path / "c2")


def test_a_removal_that_is_not_recorded_costs_one_hash(store: LocalStore, snap: Digest, tmp_path: Path) -> None:
    checkout(store, snap, tmp_path / "c1", mode="link", workers=1)
    shutil.rmtree(tmp_path / "c1")  # not through release: every linked blob's ctime moved
    checkout(store, snap, tmp_path / "c2", mode="link", workers=1)
    assert store.verified.statistics().hashed == 2 * FILES


def test_a_forked_checkouts_records_reach_the_next_checkout(store: LocalStore, snap: Digest, tmp_path: Path) -> None:
    """Workers link (and hash) subtrees in processes of their own: what they found intact
    comes back through the record's file."""
    checkout(store, snap, tmp_path / "c1", mode="link", workers=2)
    before = store.verified.statistics()
    checkout(store, snap, tmp_path / "c2", mode="link", workers=1)
    after = store.verified.statistics()
    assert after.hashed == before.hashed and after.trusted - before.trusted == FILES


@pytest.mark.parametrize("how", DAMAGE)
@pytest.mark.parametrize("trusted_before", [True, False], ids=["trusted before", "never linked"])
def test_a_damaged_blob_is_found_by_a_link_checkout(
    store: LocalStore, snap: Digest, tmp_path: Path, how: str, trusted_before: bool
) -> None:
    inner = Digest.of(b"inner")
    if trusted_before:
        checkout(store, snap, tmp_path / "first", mode="link", workers=1)
        store.verified.release(str(tmp_path / "first"))
        shutil.rmtree(tmp_path / "first")
        assert store.verified.trusts(os.stat(store.blob_path(inner)), inner, False)
    alter(store.blob_path(inner), how)
    with pytest.raises(BlobDamaged) as caught:
        checkout(store, snap, tmp_path / "out", mode="link", workers=1)
    assert str(inner) in str(caught.value) and "quarantine" in str(caught.value)
    assert not os.path.exists(tmp_path / "out" / "d" / "f")  # no file of the tree holds it
    assert not store.has(inner) and [n for n in os.listdir(store.quarantine_dir) if n.startswith(inner.hex)]
    assert fsck(store).clean
    # Given back (as a peer would), the blob is linked and the tree whole.
    store.put(b"inner")
    checkout(store, snap, tmp_path / "again", mode="link", workers=1)
    assert (tmp_path / "again" / "d" / "f").read_bytes() == b"inner"


def test_a_damaged_executable_copy_is_made_again_from_its_blob(store: LocalStore, snap: Digest, tmp_path: Path) -> None:
    checkout(store, snap, tmp_path / "first", mode="link", workers=1)
    tool = os.stat(tmp_path / "first" / "bin" / "tool")
    copy = next(store.file_of(b) for b in store.iter_blobs() if b.executable_copy)
    assert os.stat(copy).st_ino == tool.st_ino
    alter(copy, RESTORED)
    checkout(store, snap, tmp_path / "out", mode="link", workers=1)
    assert (tmp_path / "out" / "bin" / "tool").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert os.stat(tmp_path / "out" / "bin" / "tool").st_mode & 0o777 == 0o555
    assert fsck(store).clean


def test_no_verify_links_without_looking(store: LocalStore, snap: Digest, tmp_path: Path) -> None:
    """``mesh checkout --link --no-verify`` is the caller's choice: nothing is hashed."""
    checkout(store, snap, tmp_path / "out", mode="link", workers=1, verify=False)
    assert store.verified.statistics().hashed == 0


def test_racily_clean_records_are_not_kept(tmp_path: Path) -> None:
    """On a filesystem with a coarse clock a change in the same tick as the stat keeps it:
    a record is kept only for a file changed more than the racy window before its hash."""
    path = tmp_path / "blob"
    path.write_bytes(b"x")
    st = os.stat(path)
    digest = Digest.of(b"x")
    now = max(st.st_mtime_ns, st.st_ctime_ns)
    coarse = VerifiedFiles(str(tmp_path / "record"), fine=False, now_ns=lambda: now)
    coarse.record(st, digest, False, now + 1)
    assert not coarse.trusts(st, digest, False)
    coarse.record(st, digest, False, now + 3_000_000_000)
    assert coarse.trusts(st, digest, False)
    fine = VerifiedFiles(str(tmp_path / "record2"), fine=True, now_ns=lambda: now)
    fine.record(st, digest, False, now + 1)
    assert fine.trusts(st, digest, False)
    assert not fine.trusts(st, Digest.of(b"y"), False) and not fine.trusts(st, digest, True)


def test_on_a_coarse_clock_every_link_checkout_hashes(tmp_path: Path, snap: Digest, store: LocalStore) -> None:
    """A re-stamp right after a link is racy on such a filesystem: correct, and slower."""
    store.verified = VerifiedFiles(os.path.join(store.root, "verified"), fine=False)
    checkout(store, snap, tmp_path / "c1", mode="link", workers=1)
    checkout(store, snap, tmp_path / "c2", mode="link", workers=1)
    assert store.verified.statistics().hashed == 2 * FILES


def test_this_machines_filesystem_stamps_changes_finely(tmp_path: Path) -> None:
    """Linux 6.13+ ext4 (multigrain timestamps): what keeps link checkouts cheap here."""
    if os.uname().release < "6.13":
        pytest.skip(f"kernel {os.uname().release} predates multigrain timestamps")
    assert fine_timestamps(str(tmp_path))


def test_a_torn_or_damaged_record_file_costs_hashes_only(store: LocalStore, snap: Digest, tmp_path: Path) -> None:
    checkout(store, snap, tmp_path / "c1", mode="link", workers=1)
    store.verified.release(str(tmp_path / "c1"))
    shutil.rmtree(tmp_path / "c1")
    path = store.verified.path
    whole = Path(path).read_bytes()
    # A frame cut short (a crash mid-write), then whole frames appended after it.
    Path(path).write_bytes(whole[: len(whole) - 5])
    with LocalStore(store.root) as other:
        checkout(other, snap, tmp_path / "c2", mode="link", workers=1)
        assert other.verified.statistics().hashed > 0  # what the torn frame said is hashed again
        other.verified.release(str(tmp_path / "c2"))
    shutil.rmtree(tmp_path / "c2")
    with LocalStore(store.root) as other:
        checkout(other, snap, tmp_path / "c3", mode="link", workers=1)
        assert other.verified.statistics().hashed == 0  # the frames after the torn one are read
    # A flipped byte inside the file: that frame is skipped, the others are read.
    data = bytearray(Path(path).read_bytes())
    data[12] ^= 0xFF
    Path(path).write_bytes(bytes(data))
    with LocalStore(store.root) as other:
        checkout(other, snap, tmp_path / "c4", mode="link", workers=1)
    assert fsck(store).clean


def test_the_file_is_rewritten_when_it_grows(
    store: LocalStore, snap: Digest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(verified_module, "COMPACT_SLACK", 0)
    for i in range(4):
        checkout(store, snap, tmp_path / f"c{i}", mode="link", workers=1)
    size = os.path.getsize(store.verified.path)
    frame = 12 + FILES * verified_module._RECORD_SIZE + 16  # head, the records known, check
    assert size <= 2 * frame, size  # rewritten as one frame, and at most one appended since
    with LocalStore(store.root) as other:
        checkout(other, snap, tmp_path / "c9", mode="link", workers=1)
        assert other.verified.statistics().hashed == 0


def test_the_record_holds_at_most_max_records(
    store: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(verified_module, "MAX_RECORDS", 8)
    src = tmp_path / "many"
    src.mkdir()
    for i in range(20):
        (src / f"f{i}").write_bytes(f"file {i}".encode())
    snap = ingest(store, src)
    checkout(store, snap, tmp_path / "out", mode="link", workers=1)
    assert store.verified.statistics().records <= 8
    assert fsck(store).clean


def test_a_rewrite_keeps_what_another_process_appended(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two records of one file (two processes): the one that rewrites it reads the other's
    appends first, under the file's exclusive lock."""
    monkeypatch.setattr(verified_module, "COMPACT_SLACK", 0)
    files = {name: tmp_path / name for name in ("x", "y")}
    for name, path in files.items():
        path.write_bytes(name.encode())
    later = max(os.stat(p).st_ctime_ns for p in files.values()) + 1
    first = VerifiedFiles(str(tmp_path / "record"), fine=True)
    second = VerifiedFiles(str(tmp_path / "record"), fine=True)
    first.record(os.stat(files["x"]), Digest.of(b"x"), False, later)
    first.flush()
    second.record(os.stat(files["y"]), Digest.of(b"y"), False, later)
    second.flush()  # over twice its one record: rewritten
    third = VerifiedFiles(str(tmp_path / "record"), fine=True)
    third.refresh()
    assert third.trusts(os.stat(files["x"]), Digest.of(b"x"), False)
    assert third.trusts(os.stat(files["y"]), Digest.of(b"y"), False)
    assert os.path.getsize(tmp_path / "record") == 12 + 2 * verified_module._RECORD_SIZE + 16  # one frame
