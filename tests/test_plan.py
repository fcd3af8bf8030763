"""Plans: the snapshot a remote node will get, hashed without a local store."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import given

from mesh.cas.digest import Digest
from mesh.cas.hasher import hash_file
from mesh.cas.plan import PLAN_EPOCH, Plan, plan_cache, plan_tree
from mesh.cas.snapshot import ingest, reachable
from mesh.cas.statcache import StatCache
from mesh.cas.store import LocalStore
from mesh.cas.tree import decode_node
from mesh.errors import SnapshotError, UnsupportedFile
from mesh.ignore import IgnoreRules
from tests import treeutil
from tests.strategies import trees


def check_plan(plan: Plan, store: LocalStore, snap: Digest) -> None:
    """``plan`` describes exactly the snapshot ``snap`` that ingest stored."""
    assert plan.root == snap
    assert set(plan.digests()) == set(reachable(store, snap))
    assert len(plan.digests()) == len(set(plan.digests()))
    for digest, data in plan.nodes.items():
        assert Digest.of(data) == digest and store.get(digest) == data
        decode_node(data)
    for digest, source in plan.files.items():
        assert os.path.isabs(source.path) and hash_file(source.path) == digest
        assert source.executable == bool(os.lstat(source.path).st_mode & 0o100)
    assert list(plan.nodes)[-1] == plan.root  # the root comes last
    assert plan.total_bytes == sum(d.size for d in set(reachable(store, snap)))


@given(trees)
def test_plan_gives_the_id_ingest_gives(tree: treeutil.Tree) -> None:
    work = Path(tempfile.mkdtemp(prefix="mesh-plan-"))
    try:
        (work / "src").mkdir()
        treeutil.build(work / "src", tree)
        with LocalStore(work / "cas") as store:
            snap = ingest(store, work / "src", sync=False)
            check_plan(plan_tree(work / "src"), store, snap)
    finally:
        shutil.rmtree(work)


def clock_ahead() -> int:
    """A clock well past the racy window, so entries made now are trusted at once."""
    return time.time_ns() + 10_000_000_000


def test_plan_with_rules_and_cache_matches_ingest(store: LocalStore, home: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    treeutil.build(
        src,
        {
            b".meshignore": ("file", b"*.o\n/build/\n", False),
            b"a.o": ("file", b"object", False),
            b"build": ("dir", {b"out": ("file", b"x", False)}),
            b"run": ("file", b"#!/bin/sh\n", True),
            b"same": ("file", b"dup", False),
            b"sub": ("dir", {b"same": ("file", b"dup", False), b"link": ("link", b"../run"), b"empty": ("dir", {})}),
            b".git": ("dir", {b"HEAD": ("file", b"ref", False)}),
        },
    )
    rules = IgnoreRules.load(src)
    snap = ingest(store, src, ignore=rules, sync=False)
    cache_file = plan_cache(str(home), src, rules.fingerprint).path
    first = plan_tree(src, ignore=rules, cache=StatCache(cache_file, PLAN_EPOCH, now_ns=clock_ahead))
    check_plan(first, store, snap)
    assert sorted(os.path.basename(s.path) for s in first.files.values()) == [b".meshignore", b"run", b"same"]

    cache = StatCache(cache_file, PLAN_EPOCH, now_ns=clock_ahead)
    cache.load()
    again = plan_tree(src, ignore=rules, cache=cache)
    assert cache.statistics().hits == 4 and cache.statistics().misses == 0
    assert (again.root, again.nodes, again.files) == (first.root, first.nodes, first.files)

    (src / "sub" / "same").write_bytes(b"changed")
    cache = StatCache(cache_file, PLAN_EPOCH, now_ns=clock_ahead)
    cache.load()
    third = plan_tree(src, ignore=rules, cache=cache)
    check_plan(third, store, ingest(store, src, ignore=rules, sync=False))
    assert third.root != first.root


def test_plan_cache_is_not_a_store_cache(store: LocalStore, home: Path, tmp_path: Path) -> None:
    cache = plan_cache(str(home), tmp_path, b"rules")
    assert cache.epoch == PLAN_EPOCH
    assert cache.path != StatCache.for_tree(str(home), str(tmp_path), store.root, store.epoch(), variant=b"rules").path
    assert cache.path != plan_cache(str(home), tmp_path, b"other rules").path
    assert cache.path == plan_cache(str(home), tmp_path, b"rules").path


def test_large_files_are_hashed_by_reading(store: LocalStore, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "big").write_bytes(os.urandom(3 << 20) + b"tail")
    plan = plan_tree(src, workers=1)
    check_plan(plan, store, ingest(store, src, sync=False))


def test_errors_are_ingests(tmp_path: Path) -> None:
    with pytest.raises(SnapshotError, match="not a directory"):
        plan_tree(Path(__file__))
    with pytest.raises(SnapshotError, match="No such file"):
        plan_tree(tmp_path / "nope")
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(UnsupportedFile, match="FIFO"):
        plan_tree(tmp_path)
