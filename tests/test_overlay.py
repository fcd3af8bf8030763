"""Snapshot overlays (mesh.cas.overlay): a base with layers laid over it equals the tree a copy
of the layers over a checkout of the base gives, shares every unchanged subtree by digest,
refuses two layers writing one path, and keeps the base's times on the base's entries."""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings

from mesh.cas.digest import Digest
from mesh.cas.overlay import overlay, overlay_times, overlay_tree
from mesh.cas.snapshot import ingest
from mesh.cas.store import LocalStore
from mesh.cas.times import FIXED_MTIME_NS, Times
from mesh.cas.tree import Kind, decode_node, encode_node
from mesh.errors import InvalidTree, OverlayConflict
from tests import strategies
from tests.treeutil import Tree, stored


def _laid(base: Tree, layer: Tree) -> Tree:
    """The tree a copy of ``layer`` over ``base`` gives (what is in the way removed first)."""
    out = copy.deepcopy(base)
    for name, spec in layer.items():
        below = out.get(name)
        if spec[0] == "dir" and below is not None and below[0] == "dir":
            out[name] = ("dir", _laid(below[1], spec[1]))
        else:
            out[name] = copy.deepcopy(spec)
    return out


def _snap(store: LocalStore, scratch: Path, tree: Tree) -> Digest:
    where = Path(tempfile.mkdtemp(dir=scratch))
    digest: Digest = stored(store, where, tree)
    return digest


def _entries(store: LocalStore, root: Digest) -> dict[bytes, Any]:
    return {e.name: e for e in decode_node(store.get(root))}


@settings(max_examples=60, deadline=None)
@given(base=strategies.trees, first=strategies.trees, second=strategies.trees)
def test_overlay_is_the_base_with_the_layers_copied_over(base: Tree, first: Tree, second: Tree) -> None:
    # Two layers must not share a path (a conflict): the second keeps only names the first lacks.
    second = {name: spec for name, spec in second.items() if name not in first}
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        store = LocalStore(scratch / "cas")
        roots = [_snap(store, scratch, tree) for tree in (base, first, second)]
        got = overlay(store, roots[0], roots[1:])
        assert got == _snap(store, scratch, _laid(_laid(base, first), second))
        # Every base entry at the top that no layer names is shared by its digest.
        before, after = _entries(store, roots[0]), _entries(store, got)
        for name, entry in before.items():
            if name not in first and name not in second:
                assert after[name] == entry


def test_only_the_nodes_on_changed_paths_are_new(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "cas")
    big = {b"f%d" % i: ("file", b"%d" % i, False) for i in range(50)}
    base = _snap(
        store, tmp_path, {b"src": ("dir", {b"a": ("dir", big), b"b": ("dir", big)}), b"README": ("file", b"r", False)}
    )
    layer = _snap(store, tmp_path, {b"src": ("dir", {b"a": ("dir", {b"new": ("file", b"n", False)})})})
    result = overlay_tree(store, base, [layer], ["build"])
    src_before, src_after = (
        _entries(store, _entries(store, base)[b"src"].blob),
        _entries(store, _entries(store, result.root)[b"src"].blob),
    )
    assert src_after[b"b"] == src_before[b"b"]  # untouched subtree: the same digest
    assert _entries(store, src_after[b"a"].blob)[b"new"].kind == Kind.FILE
    assert result.fresh == [b"src/a/new"]
    assert result.replaced == set()


def test_the_layer_wins_over_the_other_sort_of_entry(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "cas")
    base = _snap(store, tmp_path, {b"out": ("dir", {b"old": ("file", b"o", False)}), b"x": ("file", b"x", False)})
    layer = _snap(store, tmp_path, {b"out": ("file", b"now a file", False), b"x": ("dir", {b"y": ("link", b"../out")})})
    result = overlay_tree(store, base, [layer])
    got = _entries(store, result.root)
    assert got[b"out"].kind == Kind.FILE and got[b"x"].kind == Kind.DIRECTORY
    assert result.replaced == {b"out", b"x"}
    assert sorted(result.fresh) == [b"out", b"x", b"x/y"]


def test_two_layers_writing_one_path_are_refused_naming_both(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "cas")
    base = _snap(store, tmp_path, {})
    one = _snap(store, tmp_path, {b"build": ("dir", {b"app": ("file", b"1", False)})})
    two = _snap(store, tmp_path, {b"build": ("dir", {b"app": ("file", b"2", False)})})
    with pytest.raises(OverlayConflict, match=r"'build/app' is written by both test:1 and test:2"):
        overlay(store, base, [one, two], ["test:1", "test:2"])
    dir_and_file = _snap(store, tmp_path, {b"build": ("file", b"f", False)})
    with pytest.raises(OverlayConflict, match="'build'"):
        overlay(store, base, [one, dir_and_file], ["a", "b"])
    # The same entry from two layers is no conflict; nor are two directories, which merge.
    same = _snap(store, tmp_path, {b"build": ("dir", {b"app": ("file", b"1", False)})})
    assert overlay(store, base, [one, same]) == one
    other = _snap(store, tmp_path, {b"build": ("dir", {b"lib": ("file", b"l", False)})})
    merged = _snap(store, tmp_path, {b"build": ("dir", {b"app": ("file", b"1", False), b"lib": ("file", b"l", False)})})
    assert overlay(store, base, [one, other]) == merged


def test_a_hostile_layer_is_refused(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "cas")
    base = _snap(store, tmp_path, {b"a": ("file", b"a", False)})
    bad = store.put(encode_node([]) + b"\0")  # not canonical
    with pytest.raises(InvalidTree):
        overlay(store, base, [bad])


def test_the_base_keeps_its_times_and_the_layers_get_the_fixed_one(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "cas")
    src = tmp_path / "src"
    (src / "build").mkdir(parents=True)
    (src / "main.c").write_text("c")
    (src / "gone").mkdir()
    (src / "gone" / "inner").write_text("i")
    base = ingest(store, src)
    base_times = Times.of([(b"", 1), (b"build", 2), (b"gone", 3), (b"gone/inner", 4), (b"main.c", 5)])
    layer = _snap(store, tmp_path, {b"build": ("dir", {b"app": ("file", b"a", False)}), b"gone": ("file", b"g", False)})
    result = overlay_tree(store, base, [layer])
    times = overlay_times(base_times, result)
    assert dict(zip(times.paths, times.mtimes, strict=True)) == {
        b"": 1,
        b"build": 2,  # merged into: the base's
        b"build/app": FIXED_MTIME_NS,
        b"gone": FIXED_MTIME_NS,  # the layer's file replaced the base's directory and all under it
        b"main.c": 5,
    }


def test_no_layers_is_the_base(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "cas")
    base = _snap(store, tmp_path, {b"a": ("dir", {b"b": ("file", b"b", True)})})
    assert overlay(store, base, []) == base
