"""Snapshots: immutable directory trees in the store, and the ways to read them.

``ingest(store, dir)`` turns a directory into a snapshot and returns its id (the
root node's digest); :mod:`mesh.cas.checkout` turns an id back into files.
``walk``, ``resolve`` and ``diff`` read snapshots without touching the disk
beyond the store.

Ingest runs in three phases: walk the tree (:mod:`mesh.cas.walk`: one ``lstat``
per entry, the stat cache answers for unchanged files, large warm trees are
walked by worker processes), store the files that need it on a small thread
pool (reads, writes and BLAKE3 all release the GIL, so two cores are used),
then build the directory nodes bottom-up. The store is synced once before the
id is returned, so an id that was printed survives a crash.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

from mesh.cas.access import BlobAccess
from mesh.cas.digest import Digest
from mesh.cas.forkmap import can_fork, fork_map
from mesh.cas.hasher import hash_bytes, single_threaded
from mesh.cas.nogc import gc_paused
from mesh.cas.statcache import StatCache
from mesh.cas.store import LocalStore, StoreStatistics
from mesh.cas.times import Times
from mesh.cas.tree import Entry, Kind, check_name, decode_node, encode_node
from mesh.cas.walk import DirNode, PendingFile, reusable, tree_root, tree_times, walk_tree
from mesh.errors import InvalidTree, PathNotFound, SnapshotError
from mesh.ignore import Ignore

#: Threads that store files during ingest (and write them during checkout).
#: One per core: more threads only contend for the GIL (measured: 4 on 2 cores was
#: slower than 1 or 2 for checkout).
DEFAULT_WORKERS = max(1, min(8, os.cpu_count() or 1))

Progress = Callable[[int, int, int, int], None]
"""Called as progress(files_done, files_total, bytes_done, bytes_total)."""


def ingest(
    store: LocalStore,
    root: str | os.PathLike[str],
    *,
    cache: StatCache | None = None,
    progress: Progress | None = None,
    ignore: Ignore | None = None,
    workers: int = DEFAULT_WORKERS,
    sync: bool = True,
) -> Digest:
    """Store the directory tree at ``root`` and return its snapshot id.

    Files, executable bits, symlinks (as links, dangling or absolute ones too)
    and empty directories are kept; ``ignore(relpath, is_dir)`` may leave paths
    out. Raises UnsupportedFile for FIFOs, sockets and devices (naming the path)
    and SnapshotError for unreadable paths. ``cache`` (a StatCache) lets unchanged
    files and directories be skipped; it is saved at the end. A cache remembers
    directory nodes as ingested with one ``ignore`` rule: use a separate cache
    (``StatCache.for_tree(..., variant=...)``) per rule.
    """
    with gc_paused():
        return _ingest(store, root, cache, progress, ignore, workers, sync)[0]


def ingest_timed(
    store: LocalStore,
    root: str | os.PathLike[str],
    *,
    cache: StatCache | None = None,
    ignore: Ignore | None = None,
    workers: int = DEFAULT_WORKERS,
) -> tuple[Digest, Times]:
    """:func:`ingest`, and the times manifest of the tree as the same walk saw it
    (mesh.cas.times; not stored: the caller stores it if it needs it)."""
    with gc_paused():
        digest, order = _ingest(store, root, cache, None, ignore, workers, True)
        return digest, tree_times(order)


def _ingest(
    store: LocalStore,
    root: str | os.PathLike[str],
    cache: StatCache | None,
    progress: Progress | None,
    ignore: Ignore | None,
    workers: int,
    sync: bool,
) -> tuple[Digest, list[DirNode]]:
    path, root_st = tree_root(root)

    written_before = store.statistics().blobs_written
    listed_at = cache.now_ns() if cache is not None else 0
    order, pending = walk_tree(path, root_st, cache, ignore, workers=workers)
    digests = _store_files(store, pending, cache, progress, workers)

    nodes: list[bytes] = []  # the directory nodes to store, once all are known
    for node in reversed(order):  # children before their parents
        if reusable(node):
            node.digest, node.reused = node.cached, True
            continue
        node.rows.sort(key=lambda row: row[0])
        entries = []
        for name, kind, value in node.rows:
            if isinstance(value, DirNode):
                assert value.digest is not None
                entries.append(Entry(name, kind, value.digest))
            elif isinstance(value, Digest):  # a subdirectory a walker found unchanged
                entries.append(Entry(name, kind, value))
            elif isinstance(value, int):
                entries.append(Entry(name, kind, digests[value]))
            elif isinstance(value, bytes):
                entries.append(Entry(name, kind, None, value))
            else:
                assert isinstance(value, tuple)
                entries.append(Entry(name, kind, Digest(*value)))
        data = encode_node(entries)
        node.digest = hash_bytes(data)
        nodes.append(data)
        if cache is not None:
            cache.record_dir(node.rel, node.st, node.digest, listed_at)
    _store_nodes(store, nodes, workers)
    root_digest = order[0].digest
    assert root_digest is not None
    if sync and store.statistics().blobs_written != written_before:
        store.sync()
    if cache is not None:
        cache.save()
    return root_digest, order


#: Files handed to a worker thread (or process) at once: large enough that the
#: pool's own per-task cost (a Future, a lock, a wake-up) is paid rarely, small
#: enough to keep both cores busy until the end.
_BATCH = 64
#: Ingests that store at least this many files (or directory nodes) do it with worker
#: processes where forking is safe (see mesh.cas.forkmap); fewer cost less in process.
FORK_MIN_BLOBS = 512


def _store_files(
    store: LocalStore,
    pending: list[PendingFile],
    cache: StatCache | None,
    progress: Progress | None,
    workers: int,
) -> list[Digest]:
    """Put every pending file in the store, in parallel batches; record each in the cache."""

    def put(path: bytes) -> Digest:
        try:
            return store.put_file(path)
        except FileNotFoundError:
            raise SnapshotError(f"{os.fsdecode(path)} disappeared while it was being snapshotted") from None
        except OSError as exc:
            raise SnapshotError(f"cannot read {os.fsdecode(path)}: {exc.strerror}") from None

    return digest_files(pending, put, cache, progress, workers, processes=True, store=store)


def _store_nodes(store: LocalStore, nodes: list[bytes], workers: int) -> None:
    """Put the encoded directory nodes in the store (in worker processes when there are many)."""
    if workers > 1 and len(nodes) >= FORK_MIN_BLOBS and can_fork():
        batches = [nodes[i : i + _BATCH] for i in range(0, len(nodes), _BATCH)]
        _count_workers_writes(store, fork_map(partial(_put_batch, store), batches, workers))
    else:
        for data in nodes:
            store.put(data)


def _put_batch(store: LocalStore, batch: list[bytes]) -> tuple[int, StoreStatistics]:
    before = store.statistics()
    for data in batch:
        store.put(data)
    return os.getpid(), _since(before, store.statistics())


def _digest_forked(
    pending: list[PendingFile],
    digest_of: Callable[[bytes], Digest],
    cache: StatCache | None,
    progress: Progress | None,
    workers: int,
    store: LocalStore | None,
) -> list[Digest]:
    """``digest_of`` every pending file with worker processes; record each in the cache.

    The per-file work is Python holding the GIL plus the kernel's (making blob files on
    ingest), and both run on every core at once for processes, which threads sharing one
    GIL did not reach. Writes the workers make into ``store`` are added to its counters.
    """
    now_ns = cache.now_ns if cache is not None else (lambda: 0)
    starts = range(0, len(pending), _BATCH)

    def batch(start: int) -> tuple[list[tuple[Digest, int]], tuple[int, StoreStatistics] | None]:
        before = store.statistics() if store is not None else None
        done = []
        for item in pending[start : start + _BATCH]:
            started = now_ns()
            done.append((digest_of(item.path), started))
        if store is None or before is None:
            return done, None
        return done, (os.getpid(), _since(before, store.statistics()))

    on_done = None
    if progress is not None:
        total_bytes = sum(p.st.st_size for p in pending)
        counted = [0, 0]

        def on_done(i: int) -> None:
            chunk = pending[starts[i] : starts[i] + _BATCH]
            counted[0] += len(chunk)
            counted[1] += sum(p.st.st_size for p in chunk)
            progress(counted[0], len(pending), counted[1], total_bytes)

    results = fork_map(batch, starts, workers, child_init=single_threaded, on_done=on_done)
    if store is not None:
        _count_workers_writes(store, [writes for _, writes in results if writes is not None])
    digests: list[Digest] = []
    for done, _ in results:
        for digest, started in done:
            item = pending[len(digests)]
            digests.append(digest)
            if cache is not None:
                cache.record(item.rel, item.st, digest, started)
    return digests


def _since(before: StoreStatistics, after: StoreStatistics) -> StoreStatistics:
    return StoreStatistics(
        after.blobs_written - before.blobs_written,
        after.bytes_written - before.bytes_written,
        after.blobs_already_present - before.blobs_already_present,
    )


def _count_workers_writes(store: LocalStore, writes: list[tuple[int, StoreStatistics]]) -> None:
    """Add to ``store``'s counters the writes that worker processes (not this one) made."""
    me = os.getpid()
    for pid, counts in writes:
        if pid != me:
            store.count_writes(counts)


def digest_files(
    pending: list[PendingFile],
    digest_of: Callable[[bytes], Digest],
    cache: StatCache | None,
    progress: Progress | None,
    workers: int,
    *,
    processes: bool = False,
    store: LocalStore | None = None,
) -> list[Digest]:
    """``digest_of(path)`` for every pending file, in parallel batches, in order; record each in the cache.

    Shared by ingest (which stores each file) and mesh.cas.plan (which only hashes).
    ``processes``: many files are done by forked workers where that is safe (see
    :func:`_digest_forked`); ``store`` is the store ``digest_of`` writes to, if any.
    """
    if not pending:
        return []
    if processes and workers > 1 and len(pending) >= FORK_MIN_BLOBS and can_fork():
        return _digest_forked(pending, digest_of, cache, progress, workers, store)
    now_ns = cache.now_ns if cache is not None else (lambda: 0)

    def batch(start: int) -> list[tuple[Digest, int]]:
        done = []
        for item in pending[start : start + _BATCH]:
            started = now_ns()
            done.append((digest_of(item.path), started))
        return done

    total_bytes = sum(p.st.st_size for p in pending)
    done_bytes = 0
    results: list[Digest] = []
    starts = range(0, len(pending), _BATCH)
    # One batch, or one worker: a pool would only add its start-up (a task's outputs, say).
    inline = workers <= 1 or len(starts) == 1
    pool = None if inline else ThreadPoolExecutor(max_workers=workers)
    try:
        for finished in map(batch, starts) if pool is None else pool.map(batch, starts):
            for digest, started in finished:
                item = pending[len(results)]
                results.append(digest)
                if cache is not None:
                    cache.record(item.rel, item.st, digest, started)
                done_bytes += digest.size
            if progress is not None:
                progress(len(results), len(pending), done_bytes, total_bytes)
    finally:
        # On an error (or Ctrl-C) the batches not yet started are dropped, not stored.
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return results


# -- reading snapshots -----------------------------------------------------------


def read_node(store: BlobAccess, digest: Digest) -> list[Entry]:
    """The entries of directory node ``digest``. Raises BlobNotFound, DigestMismatch, InvalidTree."""
    return decode_node(store.get(digest))


def root_entry(digest: Digest) -> Entry:
    """The snapshot root as a directory entry with an empty name."""
    return Entry(b"", Kind.DIRECTORY, digest)


def split_path(path: str | bytes) -> list[bytes]:
    """Split a path inside a snapshot into validated names ('' and '/' are the root)."""
    raw = os.fsencode(path)
    parts = [p for p in raw.split(b"/") if p and p != b"."]
    try:
        for p in parts:
            check_name(p)
    except InvalidTree as exc:
        raise PathNotFound(f"invalid path {os.fsdecode(raw)!r}: {exc}") from None
    return parts


def resolve(store: BlobAccess, root: Digest, path: str | bytes) -> Entry:
    """The entry at ``path`` inside snapshot ``root`` (symlinks are not followed).

    Raises PathNotFound if a component is missing or is not a directory.
    """
    entry = root_entry(root)
    walked: list[bytes] = []
    for name in split_path(path):
        if entry.kind != Kind.DIRECTORY:
            raise PathNotFound(f"{os.fsdecode(b'/'.join(walked))} is not a directory in snapshot {root}")
        walked.append(name)
        found = _find(read_node(store, entry.blob), name)
        if found is None:
            raise PathNotFound(f"no {os.fsdecode(b'/'.join(walked))} in snapshot {root}")
        entry = found
    return entry


def _find(entries: list[Entry], name: bytes) -> Entry | None:
    lo, hi = 0, len(entries)
    while lo < hi:
        mid = (lo + hi) // 2
        if entries[mid].name < name:
            lo = mid + 1
        else:
            hi = mid
    if lo < len(entries) and entries[lo].name == name:
        return entries[lo]
    return None


def walk(store: BlobAccess, root: Digest, prefix: bytes = b"") -> Iterator[tuple[bytes, Entry]]:
    """Yield ``(path, entry)`` for everything below directory node ``root``, depth first, sorted."""
    for entry in read_node(store, root):
        path = prefix + b"/" + entry.name if prefix else entry.name
        yield path, entry
        if entry.kind == Kind.DIRECTORY:
            yield from walk(store, entry.blob, path)


def children(store: BlobAccess, nodes: list[Digest]) -> tuple[list[Digest], list[Digest]]:
    """The file blobs and the directory nodes directly below ``nodes`` (which must be stored).

    For copying a snapshot level by level from another node: fetch a level's nodes,
    then ask this for the files to fetch and the next level.
    """
    files: list[Digest] = []
    below: list[Digest] = []
    for node in nodes:
        for entry in read_node(store, node):
            if entry.kind == Kind.DIRECTORY:
                below.append(entry.blob)
            elif entry.kind != Kind.SYMLINK:
                files.append(entry.blob)
    return files, below


def missing_levels(store: BlobAccess, root: Digest) -> Iterator[list[Digest]]:
    """What ``store`` lacks of snapshot ``root``, a level of the tree at a time: the one walk of
    every path that makes a snapshot complete in a store from elsewhere (a peer's, a node's).

    Yields lists of missing blobs, directory nodes before the files and nodes below them;
    the caller must store a list's blobs before it asks for the next (the walk reads the
    nodes it was given), or stop. A level the store holds whole yields nothing.
    """
    pending = [root]
    while pending:
        missing = store.find_missing(pending)
        if missing:
            yield missing
        files, pending = children(store, pending)
        missing = store.find_missing(files)
        if missing:
            yield missing


def reachable(store: BlobAccess, root: Digest) -> Iterator[Digest]:
    """Every blob digest a snapshot needs: its nodes and its files (with repeats)."""
    yield root
    for _, entry in walk(store, root):
        if entry.digest is not None:
            yield entry.digest


@dataclass(frozen=True, slots=True)
class Change:
    """One difference between two snapshots. status: A added, D deleted, M modified, T type changed."""

    status: str
    path: bytes
    old: Entry | None
    new: Entry | None


def diff(store: BlobAccess, a: Digest, b: Digest, prefix: bytes = b"") -> Iterator[Change]:
    """The changes from snapshot ``a`` to ``b``, sorted by path; equal subtrees are skipped unread."""
    if a == b:
        return
    old = {e.name: e for e in read_node(store, a)}
    new = {e.name: e for e in read_node(store, b)}
    for name in sorted(old.keys() | new.keys()):
        path = prefix + b"/" + name if prefix else name
        x, y = old.get(name), new.get(name)
        if x is not None and y is not None and x.same_content(y):
            continue
        if x is not None and y is not None and x.kind == y.kind == Kind.DIRECTORY:
            yield from diff(store, x.blob, y.blob, path)
        elif x is not None and y is not None and Kind.DIRECTORY not in (x.kind, y.kind):
            yield Change("M" if x.kind == y.kind else "T", path, x, y)
        else:
            if x is not None:
                yield from changes_below(store, "D", path, x)
            if y is not None:
                yield from changes_below(store, "A", path, y)


def changes_below(store: BlobAccess, status: str, path: bytes, entry: Entry) -> Iterator[Change]:
    """A change for ``entry`` and, for a directory, for everything below it."""
    yield Change(status, path, entry if status == "D" else None, entry if status == "A" else None)
    if entry.kind == Kind.DIRECTORY:
        for sub, e in walk(store, entry.blob, path):
            yield Change(status, sub, e if status == "D" else None, e if status == "A" else None)
