"""Checkout in worker processes writes what the checkout in one process writes.

Workers only fork in a process that runs one thread (mesh.cas.forkmap), so each test
runs its script in a fresh interpreter, with the share-out threshold lowered so that a
small tree is written by several processes.
"""

from __future__ import annotations

import pickle
import textwrap
from pathlib import Path

from mesh.errors import BlobDamaged, BlobNotFound, DigestMismatch, SnapshotError, StoreFull
from tests.freshpy import run_fresh

SETUP = """
import os, sys
import blake3
from mesh.cas import checkout as checkout_module, forkmap
from mesh.cas.checkout import checkout
from mesh.cas.digest import Digest
from mesh.cas.snapshot import ingest
from mesh.cas.store import LocalStore
from mesh.errors import DigestMismatch
from tests import treeutil

checkout_module.SUBTREES = 3
base = sys.argv[1]
tree = base + "/tree"
big = blake3.blake3(b"big").digest(length=3 << 20)  # large enough to be hashed on threads
for a in range(4):
    for b in range(5):
        d = f"{tree}/a{a}/b{b}"
        os.makedirs(d + "/deep")
        for f in range(4):
            with open(f"{d}/f{f}", "wb") as out:
                out.write(big if (a, b, f) == (2, 3, 1) else f"{a}{b}{f}".encode())
        os.chmod(f"{d}/f3", 0o755)
        os.symlink("../f0", f"{d}/deep/up")
        os.symlink("/nowhere", f"{d}/dangling")
    os.makedirs(f"{tree}/a{a}/empty")
store = LocalStore(base + "/store")
root = ingest(store, tree)
assert forkmap.can_fork()
"""


def run_script(body: str, tmp_path: Path) -> str:
    return run_fresh(SETUP + textwrap.dedent(body), tmp_path)


def test_both_modes_in_workers_write_the_tree_that_was_ingested(tmp_path: Path) -> None:
    out = run_script(
        """
        expected = treeutil.read(tree)
        for mode in ("copy", "link"):
            stats = checkout(store, root, f"{base}/{mode}-forked", mode=mode, workers=2)
            serial = checkout(store, root, f"{base}/{mode}-serial", mode=mode, workers=1)
            assert stats == serial, (stats, serial)
            assert treeutil.read(f"{base}/{mode}-forked") == expected, mode
            assert os.stat(f"{base}/{mode}-forked/a1/b2/f3").st_mode & 0o111, "executable bit lost"
        print(stats.files, stats.directories, stats.symlinks)
        """,
        tmp_path,
    )
    assert out.split() == [str(4 * 5 * 4), str(4 * (1 + 5 * 2 + 1)), str(4 * 5 * 2)]


def test_a_damaged_blob_met_by_a_worker_is_reported(tmp_path: Path) -> None:
    out = run_script(
        """
        digest = Digest(blake3.blake3(big).digest(), len(big))
        os.chmod(store.blob_path(digest), 0o644)
        with open(store.blob_path(digest), "r+b") as f:
            f.write(b"EVIL")
        try:
            checkout(store, root, base + "/out", workers=2)
        except DigestMismatch as exc:
            print(type(exc).__name__, exc.expected == digest)
        """,
        tmp_path,
    )
    assert out.split() == ["BlobDamaged", "True"]  # a DigestMismatch, raised in a worker


def test_mesh_errors_survive_pickling_with_their_attributes() -> None:
    for error in (
        DigestMismatch("b3:aa:1", "b3:bb:1", "a/b"),
        BlobNotFound("b3:cc:2"),
        BlobDamaged("b3:dd:3", "b3:ee:3", "/store"),
        StoreFull("/store", 4096),
        SnapshotError("no room"),
    ):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and str(copy) == str(error) and copy.__dict__ == error.__dict__
