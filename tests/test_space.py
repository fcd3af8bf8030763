"""StoreSpace and the store's tally: what the store holds, room under the cap, and what eviction takes."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from mesh.cas import space as space_module
from mesh.cas.digest import Digest
from mesh.cas.fsck import fsck
from mesh.cas.snapshot import ingest, reachable
from mesh.cas.space import Roots, StoreSpace
from mesh.cas.store import LocalStore, StoredBlob
from mesh.cas.tally import SHARDS
from mesh.errors import BlobDamaged, StoreCapReached, StoreFull
from mesh.exec.action import Action, ActionResult
from mesh.sched.jobs import parse_job
from mesh.sched.scheduler import Scheduler
from mesh.sched.statedb import StateDB


def held(store: LocalStore) -> tuple[int, int]:
    """What the tally says the store holds: (blob files, bytes)."""
    assert store.tally.counted.is_set()
    return store.tally.files, store.tally.bytes


def aged(store: LocalStore, data: bytes, hours: float) -> Digest:
    """Store ``data`` as a blob last used ``hours`` ago (eviction goes by the blob file's mtime)."""
    digest = store.put(data)
    t = time.time() - hours * 3600
    os.utime(store.blob_path(digest), (t, t))
    return digest


def age_all(store: LocalStore, hours: float) -> None:
    t = time.time() - hours * 3600
    for blob in store.iter_blobs():
        os.utime(store.file_of(blob), (t, t))


# -- the tally --------------------------------------------------------------------------


def test_the_tally_counts_the_store_then_follows_every_write_and_removal(store: LocalStore) -> None:
    for i in range(50):
        store.put(os.urandom(100 + i))
    assert not store.tally.counted.is_set()
    StoreSpace(store, None).count()
    assert held(store) == store.usage()

    d = store.put(b"x" * 5000)
    assert held(store) == store.usage()
    store.put(b"x" * 5000)  # present already: nothing changes
    assert held(store) == store.usage()
    exe = store.put(b"#!/bin/sh\n")
    dir_fd = os.open(os.path.dirname(store.root), os.O_RDONLY | os.O_DIRECTORY)
    try:
        store.link_into(exe, executable=True, dir_fd=dir_fd, name=b"linked-exe")  # an executable copy
    finally:
        os.close(dir_fd)
    assert held(store) == store.usage()
    [blob] = [b for b in store.iter_blobs() if b.hex == d.hex]
    assert store.remove(blob) and not store.remove(blob)  # the second finds it gone
    assert held(store) == store.usage()
    damaged = store.put(os.urandom(3000))
    path = store.blob_path(damaged)
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.write(b"\0\0")
    with pytest.raises(BlobDamaged):
        store.get(damaged)  # quarantined
    assert held(store) == store.usage()
    assert fsck(store).clean and held(store) == store.usage()


def test_writes_and_removals_during_the_count_are_counted_exactly(store: LocalStore) -> None:
    """The walk goes shard by shard while other threads put and remove blobs in every shard:
    whatever the interleaving, the tally ends equal to the store."""
    for _ in range(3):
        for i in range(1500):
            store.put(os.urandom(64) + bytes(i % 200))
        doomed = list(store.iter_blobs())[:500]
        store.tally = type(store.tally)()  # counted afresh each round
        stop = threading.Event()

        def put(stop: threading.Event) -> None:
            while not stop.is_set():
                store.put(os.urandom(100))

        def remove(doomed: list[StoredBlob]) -> None:
            for blob in doomed:
                store.remove(blob, new_epoch=False)

        writers = [threading.Thread(target=put, args=(stop,)), threading.Thread(target=remove, args=(doomed,))]
        for thread in writers:
            thread.start()
        for index in range(2 * SHARDS):
            store.walk_shards([index])
        stop.set()
        for thread in writers:
            thread.join()
        assert held(store) == store.usage()


# -- room and eviction ----------------------------------------------------------------------


def test_a_reservation_holds_its_bytes_against_the_cap_until_released(store: LocalStore) -> None:
    store.put(os.urandom(6000))
    space = StoreSpace(store, 10_000)
    assert space.try_reserve(1000) is None  # not counted yet: no answer without the count
    space.count()
    first = space.try_reserve(3000)
    assert first is not None
    assert space.try_reserve(2000) is None  # 6000 held + 3000 reserved + 2000 > 10,000
    first.release()
    first.release()  # once only
    with space.try_reserve(4000) as second:  # type: ignore[union-attr]
        assert second.size == 4000 and space.statistics().reserved_bytes == 4000
    assert space.statistics().reserved_bytes == 0
    assert StoreSpace(store, None).try_reserve(1 << 40) is not None  # no cap: always room


def test_eviction_takes_the_least_recently_used_blobs_nothing_pins(store: LocalStore, tmp_path: Path) -> None:
    """Pinned: a live job's snapshot (all it reaches), its output streams, and a store pin.
    The rest goes oldest first, down to LOW_WATER of the cap; an executable copy goes
    before a blob of the same age."""
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "deep").write_bytes(os.urandom(4000))
    (tree / "top").write_bytes(os.urandom(4000))
    snapshot = ingest(store, tree)
    stream = aged(store, os.urandom(4000), 50)
    pinned = aged(store, os.urandom(4000), 50)
    store.pin("kept", pinned)
    age_all(store, 50)  # the pinned ones are the oldest of all
    old = [store.put(os.urandom(4000)) for _ in range(6)]
    store.put(b"")  # an empty blob: nothing to free
    dir_fd = os.open(str(tmp_path), os.O_RDONLY | os.O_DIRECTORY)
    try:
        store.link_into(old[0], executable=True, dir_fd=dir_fd, name=b"exe")
    finally:
        os.close(dir_fd)
    for blob in store.iter_blobs():  # last used 10, 9 ... 5 hours ago; the copy as long ago as its blob
        if blob.hex in (d.hex for d in old):
            t = time.time() - (10 - [d.hex for d in old].index(blob.hex)) * 3600
            os.utime(store.file_of(blob), (t, t))
    space = StoreSpace(store, None)
    space.count()
    total = held(store)[1]

    roots = Roots(trees=frozenset({snapshot}), blobs=frozenset({stream}))
    space = StoreSpace(store, total + 1000, roots=lambda: roots)
    space.count()
    with space.reserve_blocking(6000):  # 7000 past the cap: 5000 short, then down to 90%
        pass
    remaining = {b.hex for b in store.iter_blobs()}
    gone = {d.hex for d in old} - remaining
    freed = (len(gone) + 1) * 4000  # and the executable copy
    need = total + 6000 - int((total + 1000) * space_module.LOW_WATER)
    assert freed >= need and freed - 4000 < need, (freed, need)  # no more than it takes
    assert gone == {d.hex for d in old[: len(gone)]}  # oldest first
    assert [b for b in store.iter_blobs() if b.executable_copy] == []  # went before its blob of the same age
    for digest in [*reachable(store, snapshot), stream, pinned]:
        assert store.has(digest), digest
    assert held(store) == store.usage()
    stats = space.statistics()
    assert stats.evicted_blobs == len(gone) + 1 and stats.evicted_bytes == (len(gone) + 1) * 4000
    assert fsck(store).clean


def test_room_that_eviction_cannot_make_is_refused_before_anything_is_removed(store: LocalStore) -> None:
    pinned = aged(store, os.urandom(5000), 5)
    loose = aged(store, os.urandom(3000), 5)
    space = StoreSpace(store, 10_000, roots=lambda: Roots(blobs=frozenset({pinned})))
    space.count()
    before = sorted(b.hex for b in store.iter_blobs())
    with pytest.raises(StoreCapReached) as caught:
        space.reserve_blocking(6000)  # 5000 pinned + 6000 > 10,000 even with the loose one gone
    assert sorted(b.hex for b in store.iter_blobs()) == before and store.has(loose)
    message = str(caught.value)
    assert isinstance(caught.value, StoreFull)  # answered as a full store: 507
    for part in (store.root, "MESH_STORE_MAX", "no room for 5.9 KiB", "cap", "9.8 KiB", "holds 7.8 KiB", "4.9 KiB"):
        assert part in message, (part, message)
    assert "pinned" in message and "mesh unpin" in message
    assert space.statistics().refused == 1 and space.statistics().reserved_bytes == 0


def test_what_writers_wrote_since_they_began_is_not_evicted(store: LocalStore) -> None:
    """A writer still at work (an upload, a task until its outputs are captured) keeps the blobs
    written since it began: eviction for another writer takes older ones, or refuses."""
    old = aged(store, os.urandom(4000), 3)
    space = StoreSpace(store, 10_000)
    space.count()
    with space.protecting(since_ns=time.time_ns()):
        mine = store.put(os.urandom(4000))
        with space.reserve_blocking(4000):  # 12,000 past 10,000: the old blob goes, not mine
            pass
        assert store.has(mine) and not store.has(old)
        store.put(os.urandom(4000))
        with pytest.raises(StoreCapReached, match="7.8 KiB belong to uploads and tasks still at work"):
            space.reserve_blocking(4000)
    age_all(store, 1)  # an hour later
    os.utime(store.blob_path(mine), (time.time() - 7200,) * 2)  # the older of the two
    with space.reserve_blocking(4000):  # the writer is done: its blobs may go now
        pass
    assert not store.has(mine)


def test_ingest_under_a_cap_evicts_for_each_new_blob(store: LocalStore, tmp_path: Path) -> None:
    """The store asks the space for room for each new blob (a task's outputs go in by ingest)."""
    old = [aged(store, os.urandom(20_000), 5) for _ in range(5)]
    space = StoreSpace(store, 110_000)
    space.count()
    tree = tmp_path / "out"
    tree.mkdir()
    for i in range(4):
        (tree / f"f{i}").write_bytes(os.urandom(20_000))
    snapshot = ingest(store, tree, workers=1)
    assert space.holds_tree(snapshot)
    assert sum(store.has(d) for d in old) < 5 and held(store)[1] <= 110_000
    (tree / "huge").write_bytes(os.urandom(200_000))
    with pytest.raises(StoreCapReached):
        ingest(store, tree, workers=1)
    assert held(store) == store.usage() and fsck(store).clean


def test_reserve_reads_the_roots_on_the_event_loop_and_evicts_on_a_thread(store: LocalStore) -> None:
    old = aged(store, os.urandom(8000), 5)
    kept = aged(store, os.urandom(1000), 6)
    seen: dict[str, Any] = {}

    def roots() -> Roots:
        seen["roots"] = threading.get_ident()
        return Roots(blobs=frozenset({kept}))

    space = StoreSpace(store, 10_000, roots=roots)

    async def main() -> None:
        seen["loop"] = threading.get_ident()
        async with trio.open_nursery() as nursery:
            await nursery.start(space.run)
            with await space.reserve(5000):
                assert not store.has(old) and store.has(kept)
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert seen["roots"] == seen["loop"]


# -- the action cache ------------------------------------------------------------------


def test_holds_tree_notices_a_blob_evicted_from_inside_a_snapshot(store: LocalStore, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "a" / "b" / "deep").write_bytes(b"deep inside")
    snapshot = ingest(store, tree)
    space = StoreSpace(store, None)
    assert space.holds_tree(snapshot) and space.holds_tree(snapshot)  # the second from memory
    [deep] = [b for b in store.iter_blobs() if b.hex == Digest.of(b"deep inside").hex]
    store.remove(deep)  # as an eviction would: the root is still there
    assert store.has(snapshot) and not space.holds_tree(snapshot)


class OutputRunner:
    """Runs nothing: each task's output is a real snapshot in the store (one file, named by argv)."""

    executors = {"process": object()}

    def __init__(self, store: LocalStore, tmp: Path) -> None:
        self.store, self.tmp, self.ran = store, tmp, 0

    async def run(self, action: Action, *, on_output: Any = None, on_cancel: Any = None) -> ActionResult:
        self.ran += 1
        out = self.tmp / f"out-{self.ran}"
        (out / "dir").mkdir(parents=True)
        (out / "dir" / "made").write_bytes(("made by " + " ".join(action.argv)).encode())
        now = time.time()
        empty = self.store.put(b"")
        output = ingest(self.store, out)
        return ActionResult(
            exit_code=0, stdout=empty, stderr=empty, output=output, started_at=now, finished_at=now, node="n"
        )


async def test_a_cache_hit_whose_output_lost_a_blob_runs_again(store: LocalStore, tmp_path: Path) -> None:
    """Eviction may take any blob of a cached output; the hit is forgotten then, not answered
    with a snapshot that cannot be checked out."""
    space = StoreSpace(store, None)
    runner = OutputRunner(store, tmp_path)
    db = StateDB(str(tmp_path / "state.db"))
    scheduler = Scheduler(db, runner, store, node_id="n", slots=1, holds_tree=space.holds_tree)
    spec = {"tasks": [{"name": "t", "argv": ["make", "it"], "input": str(store.put(b"input"))}]}
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        first = scheduler.submit(parse_job(spec))
        with trio.fail_after(10):
            while scheduler.job_status(first)["state"] != "succeeded":
                await trio.sleep(0.001)
        assert scheduler.job_status(scheduler.submit(parse_job(spec)))["tasks"][0]["result"]["cached"]
        [made] = [b for b in store.iter_blobs() if b.hex == Digest.of(b"made by make it").hex]
        store.remove(made)  # the output's root node stays
        again = scheduler.submit(parse_job(spec))
        with trio.fail_after(10):
            while scheduler.job_status(again)["state"] != "succeeded":
                await trio.sleep(0.001)
        assert not scheduler.job_status(again)["tasks"][0]["result"]["cached"] and runner.ran == 2
        nursery.cancel_scope.cancel()
    db.close()
