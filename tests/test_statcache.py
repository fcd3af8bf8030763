"""The stat cache: unchanged files are only stat'ed; changed and racy ones are re-hashed."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import given, settings

from mesh.cas import gc
from mesh.cas.checkout import checkout
from mesh.cas.snapshot import ingest
from mesh.cas.statcache import RACY_WINDOW_NS, StatCache
from mesh.cas.store import LocalStore
from tests import treeutil
from tests.strategies import trees

CLOCK_REALTIME_COARSE = getattr(time, "CLOCK_REALTIME_COARSE", 5)  # Linux's number for it


class Clock:
    """A clock that a test moves by hand, so hashes can be placed in time."""

    def __init__(self) -> None:
        self.now = time.time_ns()

    def __call__(self) -> int:
        return self.now


def make_tree(root: Path, n: int = 20) -> None:
    (root / "sub").mkdir(parents=True)
    for i in range(n):
        (root / ("sub" if i % 2 else ".") / f"f{i}").write_bytes(f"file {i}\n".encode() * (i + 1))


def age_tree(root: Path, seconds: float) -> None:
    """Make every file look changed long ago (mtime only; ctime is the kernel's)."""
    t = time.time() - seconds
    for dirpath, _, files in os.walk(root):
        for f in files:
            os.utime(os.path.join(dirpath, f), (t, t))


def cache_for(home: Path, root: Path, store: LocalStore, clock: Clock | None = None) -> StatCache:
    if clock is None:
        return StatCache.for_tree(str(home), str(root), store.root, store.epoch())
    c = StatCache.for_tree(str(home), str(root), store.root, store.epoch())
    c._now_ns = clock
    return c


def test_unchanged_tree_is_answered_from_the_cache(home: Path, store: LocalStore, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src)
    clock = Clock()
    first = ingest(store, src, cache=cache_for(home, src, store, clock))
    clock.now += 10 * RACY_WINDOW_NS  # ctimes are "now": move the hashes' clock past the racy window
    again = cache_for(home, src, store, clock)
    assert again.statistics().hits == 0
    # The first cache was made by a clock equal to the files' ctime: racy, so re-hashed once ...
    assert ingest(store, src, cache=again) == first
    assert again.statistics().racy == 20
    # ... and from then on trusted.
    third = cache_for(home, src, store, clock)
    written = store.statistics().blobs_written
    assert ingest(store, src, cache=third) == first
    assert third.statistics().hits == 20 and third.statistics().misses == 0
    assert store.statistics().blobs_written == written


def test_changed_added_and_removed_files_are_seen(home: Path, store: LocalStore, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src)
    clock = Clock()
    clock.now += 10 * RACY_WINDOW_NS
    ingest(store, src, cache=cache_for(home, src, store, clock))
    (src / "f0").write_bytes(b"changed, same length?")
    (src / "new").write_bytes(b"new")
    os.unlink(src / "sub" / "f1")
    os.chmod(src / "f2", 0o755)
    cache = cache_for(home, src, store, clock)
    snap = ingest(store, src, cache=cache)
    assert snap == ingest(store, src)  # the same as a snapshot without any cache
    assert cache.statistics().misses == 3  # f0, new, f2 (mode changed)


def test_rewrite_with_same_size_and_restored_mtime_is_caught_by_ctime(
    home: Path, store: LocalStore, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    make_tree(src)
    age_tree(src, 3600)
    clock = Clock()
    clock.now += 10 * RACY_WINDOW_NS
    ingest(store, src, cache=cache_for(home, src, store, clock))
    before = os.stat(src / "f4")
    (src / "f4").write_bytes(b"X" * before.st_size)
    os.utime(src / "f4", ns=(before.st_atime_ns, before.st_mtime_ns))  # hide the change from mtime
    cache = cache_for(home, src, store, clock)
    assert ingest(store, src, cache=cache) == ingest(store, src)
    assert cache.statistics().misses == 1


def test_racily_clean_file_is_rehashed(home: Path, store: LocalStore, tmp_path: Path) -> None:
    """A file changed within the timestamp granularity of its hash keeps its stat: re-hash it."""
    src = tmp_path / "src"
    make_tree(src, 2)
    age_tree(src, 3600)
    clock = Clock()
    ingest(store, src, cache=cache_for(home, src, store, clock))  # hashed "now": ctime is racy
    cache = cache_for(home, src, store, clock)
    ingest(store, src, cache=cache)
    assert cache.statistics().racy == 2 and cache.statistics().hits == 0


def test_cache_is_dropped_when_the_store_loses_blobs(home: Path, store: LocalStore, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src)
    clock = Clock()
    clock.now += 10 * RACY_WINDOW_NS
    snap = ingest(store, src, cache=cache_for(home, src, store, clock))
    gc.evict(store, 0)  # nothing pinned: everything goes, and the epoch changes
    assert not store.has(snap)
    cache = cache_for(home, src, store, clock)
    assert ingest(store, src, cache=cache) == snap
    assert cache.statistics().hits == 0
    assert store.has(snap)
    checkout(store, snap, tmp_path / "out")


@pytest.mark.parametrize("garbage", [b"", b"\xff\xff", b"\x83\x01\x02\x03"])
def test_damaged_cache_file_only_costs_a_rehash(home: Path, store: LocalStore, tmp_path: Path, garbage: bytes) -> None:
    src = tmp_path / "src"
    make_tree(src, 4)
    snap = ingest(store, src, cache=cache_for(home, src, store))
    cache_file = cache_for(home, src, store).path
    Path(cache_file).write_bytes(garbage)
    cache = cache_for(home, src, store)
    assert ingest(store, src, cache=cache) == snap
    assert cache.statistics().hits == 0


def wait_for_coarse_clock_past(root: Path) -> None:
    """Wait (with a deadline) until the kernel's file-time clock has moved past every
    ctime in ``root``, so a change made now cannot keep an old timestamp."""
    newest = max(
        os.lstat(os.path.join(d, n)).st_ctime_ns for d, dirs, files in os.walk(root) for n in [*dirs, *files, "."]
    )
    deadline = time.monotonic() + 5
    while time.clock_gettime_ns(CLOCK_REALTIME_COARSE) <= newest:
        assert time.monotonic() < deadline, "the coarse clock did not advance"
        time.sleep(0.001)


@settings(max_examples=40)
@given(trees, trees)
def test_cached_snapshot_after_any_change_equals_an_uncached_one(old: treeutil.Tree, new: treeutil.Tree) -> None:
    """Whatever changes between two snapshots, the stat cache (files and directory nodes)
    never answers with stale content."""
    work = Path(tempfile.mkdtemp(prefix="mesh-morph-"))
    try:
        src = work / "src"
        src.mkdir()
        treeutil.build(src, old)
        clock = Clock()
        clock.now += 10 * RACY_WINDOW_NS  # trust everything hashed from here on
        with LocalStore(work / "cas") as store:
            home = str(work / "home")
            first = StatCache.for_tree(home, str(src), store.root, store.epoch())
            first._now_ns = clock
            ingest(store, src, cache=first, sync=False)
            wait_for_coarse_clock_past(src)
            treeutil.morph(src, old, new)
            assert treeutil.read(src) == new
            again = StatCache.for_tree(home, str(src), store.root, store.epoch())
            again._now_ns = clock
            cached = ingest(store, src, cache=again, sync=False)
            assert cached == ingest(store, src, sync=False)
            checkout(store, cached, work / "out")
            assert treeutil.read(work / "out") == new
    finally:
        shutil.rmtree(work)
