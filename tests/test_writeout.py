"""mesh.cas.writeout: only the changes between two snapshots are written, by its rules."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mesh.cas.digest import Digest
from mesh.cas.snapshot import ingest
from mesh.cas.store import LocalStore
from mesh.cas.writeout import write_changes
from mesh.errors import BlobDamaged, CheckoutConflict
from tests import treeutil


def snap(store: LocalStore, root: Path, tree: treeutil.Tree) -> Digest:
    root.mkdir()
    treeutil.build(root, tree)
    return ingest(store, root)


INPUT: treeutil.Tree = {
    b"same": ("file", b"same\n", False),
    b"gone": ("file", b"gone\n", False),
    b"lib": ("dir", {b"x": ("file", b"x1\n", False)}),
}
OUTPUT: treeutil.Tree = {
    b"same": ("file", b"same\n", False),
    b"lib": ("dir", {b"x": ("file", b"x2\n", False), b"run": ("file", b"#!/bin/sh\n", True)}),
    b"link": ("link", b"same"),
}


def test_only_changes_are_written_and_deletions_are_reported(store: LocalStore, tmp_path: Path) -> None:
    before, after = snap(store, tmp_path / "in", INPUT), snap(store, tmp_path / "out", OUTPUT)
    target = tmp_path / "target"
    report = write_changes(store, before, after, target)
    assert treeutil.read(target) == {
        b"lib": ("dir", {b"x": ("file", b"x2\n", False), b"run": ("file", b"#!/bin/sh\n", True)}),
        b"link": ("link", b"same"),
    }
    assert report.deleted == [b"gone"] and (report.files, report.symlinks) == (2, 1)


def test_only_declared_paths_are_compared(store: LocalStore, tmp_path: Path) -> None:
    before, after = snap(store, tmp_path / "in", INPUT), snap(store, tmp_path / "out", OUTPUT)
    target = tmp_path / "target"
    report = write_changes(store, before, after, target, only=["lib/run", "gone", "same"])
    assert treeutil.read(target) == {b"lib": ("dir", {b"run": ("file", b"#!/bin/sh\n", True)})}
    assert report.deleted == [b"gone"]


def test_symlinks_in_the_target_are_replaced_never_followed(store: LocalStore, tmp_path: Path) -> None:
    before, after = snap(store, tmp_path / "in", INPUT), snap(store, tmp_path / "out", OUTPUT)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x").write_text("outside\n")
    target = tmp_path / "target"
    target.mkdir()
    (target / "lib").symlink_to(outside)  # where the output has a directory
    (target / "link").symlink_to(outside / "x")  # where the output has another symlink
    write_changes(store, before, after, target)
    assert (outside / "x").read_text() == "outside\n" and sorted(os.listdir(outside)) == ["x"]
    assert not (target / "lib").is_symlink() and (target / "lib" / "x").read_text() == "x2\n"
    assert os.readlink(target / "link") == "same"


def test_a_directory_in_place_of_a_file_is_a_conflict(store: LocalStore, tmp_path: Path) -> None:
    before, after = snap(store, tmp_path / "in", INPUT), snap(store, tmp_path / "out", OUTPUT)
    target = tmp_path / "target"
    (target / "lib" / "x").mkdir(parents=True)
    with pytest.raises(CheckoutConflict, match="lib/x is a directory, where the output has a file"):
        write_changes(store, before, after, target)
    assert sorted(os.listdir(target / "lib")) == ["run", "x"]  # written before it; no temporary file left


def test_a_damaged_blob_keeps_the_old_file(store: LocalStore, tmp_path: Path) -> None:
    before, after = snap(store, tmp_path / "in", INPUT), snap(store, tmp_path / "out", OUTPUT)
    blob = Path(store.root) / "blobs"
    target = tmp_path / "target"
    (target / "lib").mkdir(parents=True)
    (target / "lib" / "x").write_text("mine\n")
    damaged = next(p for p in blob.rglob("*") if p.is_file() and p.read_bytes() == b"x2\n")
    os.chmod(damaged, 0o644)
    damaged.write_bytes(b"X2\n")
    with pytest.raises(BlobDamaged):
        write_changes(store, before, after, target)
    assert (target / "lib" / "x").read_text() == "mine\n"
    assert not [p for p in (target / "lib").iterdir() if p.name.startswith(".mesh-out-")]


def test_a_file_that_became_a_directory_is_replaced_not_reported_deleted(store: LocalStore, tmp_path: Path) -> None:
    before = snap(store, tmp_path / "in", {b"obj": ("file", b"old\n", False)})
    after = snap(store, tmp_path / "out", {b"obj": ("dir", {b"x.o": ("file", b"o\n", False)})})
    target = tmp_path / "target"
    target.mkdir()
    (target / "obj").write_text("old\n")
    report = write_changes(store, before, after, target)
    assert treeutil.read(target) == {b"obj": ("dir", {b"x.o": ("file", b"o\n", False)})}
    assert report.deleted == []
