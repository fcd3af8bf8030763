"""StoreSpace: a node's store kept under its cap (MESH_STORE_MAX) by least-recently-used eviction.

The node owns one. Whoever is about to write blobs of a size it knows takes a
:class:`Reservation` first and holds it while writing: an upload (a PUT, each record
of a batched upload) and a fetch from peers (``await space.reserve(size)``, on the
event loop), and a task's outputs (the store asks it, as ``store.admit``, for each new
blob that ingest writes, on the task's thread). There is room when what the store holds
(its tally, mesh.cas.tally: counted once by a walk, then moved by every write and
removal), what other writers reserved and the new bytes add up to at most the cap.

When there is not, a worker thread evicts least recently used blobs (one pass at a
time, down to LOW_WATER of the cap, so that a stream of uploads at the cap does not
walk the store for each blob), never:

* blobs reachable from pinned roots: the store's pins (``mesh pin``) and what
  ``roots()`` names, read on the event loop (a node: the inputs and results of its
  live jobs, and snapshots being fetched from peers);
* blobs written since the oldest writer still at work began: an upload or a fetch
  that holds a reservation, a batched upload until its last record, a task while its
  outputs are captured, since the task started (:meth:`StoreSpace.protecting`), so
  that no writer loses its first blobs to its last.

If even that cannot make room, the reservation raises StoreCapReached (HTTP 507)
before anything is written, naming the cap, what the store holds and what is pinned.

Action-cache entries are not pinned: the cache is not bounded, and pinning it would
make the cap meaningless. A cache hit is answered only if its whole output snapshot
is still stored (:meth:`StoreSpace.holds_tree`); the scheduler forgets an entry
whose blobs are gone and runs the task again.

Writes this object does not see: a task's stdout and stderr (written as they come,
bounded by the runner's stream limit), executable copies for link checkouts, and
other processes' writes (a client sharing the node's store ingests into it
directly, and keeps the cap itself, as ``mesh snapshot`` does). The tally counts
them all the same at every eviction pass and every RECOUNT_SECONDS.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import trio

from mesh.cas.digest import Digest
from mesh.cas.gc import lru_order, pinned_hashes
from mesh.cas.snapshot import reachable
from mesh.cas.store import LocalStore, StoredBlob
from mesh.cas.tally import SHARDS
from mesh.errors import BlobNotFound, CodecError, DigestMismatch, StoreCapReached, size_text

log = logging.getLogger("mesh.space")

#: An eviction pass frees the store down to this share of its cap (or as far as it can).
LOW_WATER = 0.9
#: Seconds between walks of the whole store, which count what the tally cannot see.
RECOUNT_SECONDS = 600.0
#: Shard directories walked per worker-thread hop: 16 hops for the 512, each ~11 ms for a
#: store of 50,000 blobs (170 ms in all; an eviction pass that removes 5,000 of them
#: took 0.9 s), with checks for cancellation between them.
WALK_CHUNK = 32
#: File times come from the kernel's coarse clock, up to a timer tick (10 ms at HZ=100)
#: behind time.time_ns(): blobs written this long before a writer began count as its own.
MTIME_SLACK_NS = 20_000_000
#: Snapshots remembered as whole in the store (:meth:`StoreSpace.holds_tree`).
WHOLE_MEMORY = 10_000


@dataclass(frozen=True, slots=True)
class Roots:
    """What eviction keeps besides the store's pins: snapshots (with all they reach) and plain blobs."""

    trees: frozenset[Digest] = frozenset()
    blobs: frozenset[Digest] = frozenset()


@dataclass(frozen=True, slots=True)
class SpaceStatistics:
    """Figures of a StoreSpace (for /status and /metrics); ``held_*`` are None until counted."""

    cap: int | None
    held_bytes: int | None
    held_blobs: int | None
    reserved_bytes: int
    evicted_blobs: int
    evicted_bytes: int
    refused: int


class Reservation:
    """Bytes held against the cap while a writer writes them. Release it (or leave its
    ``with``) once they are stored, or were not: the tally counts what was stored."""

    __slots__ = ("_space", "size", "since_ns")

    def __init__(self, space: StoreSpace | None, size: int, since_ns: int) -> None:
        self._space = space
        self.size = size
        self.since_ns = since_ns

    def release(self) -> None:
        space, self._space = self._space, None
        if space is not None:
            space._release(self)

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class StoreSpace:
    """Keeps ``store`` under ``cap`` bytes (None: no cap, only the count); see the module docstring.

    ``roots()`` runs on the event loop (the scheduler's state is not thread-safe) and
    names what must stay besides the store's pins. Thread-safe.
    """

    def __init__(self, store: LocalStore, cap: int | None, *, roots: Callable[[], Roots] = Roots) -> None:
        self.store = store
        self.cap = cap
        self._roots = roots
        self._lock = threading.Lock()
        self._passes = threading.Lock()  # one eviction pass at a time
        self._reserved = 0
        self._active: set[Reservation] = set()
        self._settled = threading.Event()  # the first count ended (or will not: the node stops)
        if store.tally.counted.is_set():
            self._settled.set()
        self._token: trio.lowlevel.TrioToken | None = None
        self._whole: dict[Digest, str] = {}
        self._evicted_blobs = self._evicted_bytes = self._refused = 0
        if cap is not None:
            store.admit = self

    def __repr__(self) -> str:
        return f"StoreSpace({self.store.root!r}, cap={self.cap}, {self.store.tally!r})"

    # -- counting ------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Count the store on worker threads, serving meanwhile (writers wait for the count
        only when they need more than the fast check), then again every RECOUNT_SECONDS."""
        self._token = trio.lowlevel.current_trio_token()
        task_status.started()
        try:
            while True:
                started = time.perf_counter()
                shards = list(range(2 * SHARDS))
                for start in range(0, len(shards), WALK_CHUNK):
                    await trio.to_thread.run_sync(self.store.walk_shards, shards[start : start + WALK_CHUNK])
                if not self._settled.is_set():
                    tally = self.store.tally
                    log.info(
                        "the store holds %d blobs, %s (counted in %.2f s); its cap is %s",
                        tally.files,
                        size_text(tally.bytes),
                        time.perf_counter() - started,
                        "none" if self.cap is None else size_text(self.cap),
                    )
                    self._settled.set()
                await trio.sleep(RECOUNT_SECONDS)
        finally:
            self._settled.set()  # no writer waits for a count that will not come

    def count(self) -> None:
        """Count the whole store now, on this thread (for a store not served by a node)."""
        self.store.walk_shards(range(2 * SHARDS))
        self._settled.set()

    def statistics(self) -> SpaceStatistics:
        tally = self.store.tally
        counted = tally.counted.is_set()
        return SpaceStatistics(
            cap=self.cap,
            held_bytes=tally.bytes if counted else None,
            held_blobs=tally.files if counted else None,
            reserved_bytes=self._reserved,
            evicted_blobs=self._evicted_blobs,
            evicted_bytes=self._evicted_bytes,
            refused=self._refused,
        )

    # -- reserving -------------------------------------------------------------------

    def try_reserve(self, size: int, *, since_ns: int | None = None) -> Reservation | None:
        """A reservation of ``size`` bytes if they fit under the cap now, else None (no eviction,
        never blocks: for the event loop). ``since_ns``: when the writer began (default: now)."""
        since = time.time_ns() if since_ns is None else since_ns
        if self.cap is None or size <= 0:
            return Reservation(None, 0, since)
        if not self.store.tally.counted.is_set():
            return None
        with self._lock:
            if self.store.tally.bytes + self._reserved + size > self.cap:
                return None
            reservation = Reservation(self, size, since)
            self._reserved += size
            self._active.add(reservation)
        return reservation

    async def reserve(self, size: int, *, since_ns: int | None = None) -> Reservation:
        """A reservation of ``size`` bytes, evicting on a worker thread if need be.

        Raises StoreCapReached when eviction cannot make room (nothing is written then).
        """
        reservation = self.try_reserve(size, since_ns=since_ns)
        if reservation is not None:
            return reservation
        roots = self._roots()
        since = time.time_ns() if since_ns is None else since_ns
        return await trio.to_thread.run_sync(self._make_room, size, since, roots)

    def reserve_blocking(self, size: int, *, since_ns: int | None = None) -> Reservation:
        """:meth:`reserve` for a worker thread (a task's): evicts on this thread; the roots
        are read on the event loop. Raises StoreCapReached."""
        reservation = self.try_reserve(size, since_ns=since_ns)
        if reservation is not None:
            return reservation
        roots = self._roots() if self._token is None else trio.from_thread.run_sync(self._roots, trio_token=self._token)
        return self._make_room(size, time.time_ns() if since_ns is None else since_ns, roots)

    @contextlib.contextmanager
    def protecting(self, *, since_ns: int) -> Iterator[None]:
        """Keep the blobs written since ``since_ns`` through eviction while the block runs (a
        task's output streams and outputs, from its start until they are captured)."""
        reservation = Reservation(self, 0, since_ns)
        with self._lock:
            self._active.add(reservation)
        with reservation:
            yield

    def _release(self, reservation: Reservation) -> None:
        with self._lock:
            self._active.discard(reservation)
            self._reserved -= reservation.size

    def _make_room(self, size: int, since_ns: int, roots: Roots) -> Reservation:
        """On a worker thread: evict until ``size`` more bytes fit, then reserve them."""
        self._settled.wait()
        assert self.cap is not None
        with self._passes:
            for _ in range(3):  # a writer that needed no eviction may take the room meanwhile
                reservation = self.try_reserve(size, since_ns=since_ns)
                if reservation is not None:
                    return reservation
                if not self.store.tally.counted.is_set():  # never counted: the node is stopping
                    return Reservation(None, 0, since_ns)
                self._evict(size, since_ns, roots)
        raise self._refusal(size, since_ns, roots)

    # -- evicting --------------------------------------------------------------------

    def _evict(self, size: int, since_ns: int, roots: Roots) -> None:
        """One pass: walk the store (which counts it again), then remove least recently used
        blobs that may go, down to LOW_WATER of the cap; raises StoreCapReached, having
        removed nothing, when removing all of them would not make room."""
        assert self.cap is not None
        held, reserved, pinned, fresh, candidates = self._survey(since_ns, roots)
        need = held + reserved + size - self.cap
        evictable = sum(b.size for b in candidates)
        if need > evictable:
            with self._lock:
                self._refused += 1
            raise StoreCapReached(
                self.store.root, cap=self.cap, held=held, needed=size, pinned=pinned, writing=fresh + reserved
            )
        goal = max(need, min(evictable, held + reserved + size - int(self.cap * LOW_WATER)))
        freed = removed = 0
        for blob in candidates:
            if freed >= goal:
                break
            if self.store.remove(blob, new_epoch=False):
                freed += blob.size
                removed += 1
        if removed:
            self.store.prune_timed(unused=True)  # timed copies of blobs now gone, and unused ones
            self.store.new_epoch()
            with self._lock:
                self._evicted_blobs += removed
                self._evicted_bytes += freed
        log.info(
            "evicted %d least recently used blobs (%s) to make room for %s under the store's cap of %s; %s are pinned",
            removed,
            size_text(freed),
            size_text(size),
            size_text(self.cap),
            size_text(pinned),
        )

    def _survey(self, since_ns: int, roots: Roots) -> tuple[int, int, int, int, list[StoredBlob]]:
        """(held, reserved, pinned, being written, the blobs that may go in eviction order)."""
        keep = pinned_hashes(self.store, roots.trees, blobs=roots.blobs)
        blobs = self.store.walk_shards(range(2 * SHARDS))  # and the tally is exact again
        with self._lock:
            reserved = self._reserved
            cutoff = min([since_ns, *(r.since_ns for r in self._active)]) - MTIME_SLACK_NS
        pinned = fresh = 0
        others = []
        for blob in blobs:
            if blob.hex in keep:
                pinned += blob.size
            elif blob.mtime_ns >= cutoff:
                fresh += blob.size
            else:
                others.append(blob)
        return self.store.tally.bytes, reserved, pinned, fresh, lru_order(others, keep)

    def _refusal(self, size: int, since_ns: int, roots: Roots) -> StoreCapReached:
        assert self.cap is not None
        held, reserved, pinned, fresh, _ = self._survey(since_ns, roots)
        with self._lock:
            self._refused += 1
        return StoreCapReached(
            self.store.root, cap=self.cap, held=held, needed=size, pinned=pinned, writing=fresh + reserved
        )

    # -- the action cache ------------------------------------------------------------

    def holds_tree(self, root: Digest) -> bool:
        """Whether snapshot ``root`` and every blob it reaches are stored (an action-cache hit's
        output, some of whose blobs eviction may have taken).

        Walked the first time, then remembered until the store's epoch changes (a blob is
        removed). Measured on the project's VM for a snapshot of 5,000 files in 100
        directories: 28 ms walked, 2.3 us remembered (one read of the epoch file).
        """
        epoch = self.store.epoch()
        if self._whole.get(root) == epoch:
            return True
        try:
            blobs = list(reachable(self.store, root))
        except (BlobNotFound, DigestMismatch, CodecError):
            return False
        if self.store.find_missing(blobs):
            return False
        if len(self._whole) >= WHOLE_MEMORY:
            self._whole.clear()
        self._whole[root] = epoch
        return True
