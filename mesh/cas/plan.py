"""Snapshot plans: hash a tree for a remote node without storing it locally.

A client that sends its tree to a node on another machine has no use for a copy
of every file in a local store: :func:`plan_tree` walks and hashes the tree
exactly as :func:`~mesh.cas.snapshot.ingest` does (ingest's own walk, not a
copy, with the same ignore rule and stat cache), and returns a :class:`Plan`: the snapshot id ingest would
return, the encoded directory nodes (small, kept in memory), and for every file
blob the path to read it from. :mod:`mesh.wire.upload` then sends the node only
what it misses, straight from the files, checking each one's hash again as it
reads it (a file may change between planning and uploading).

The stat cache of a plan says "this file had this hash", not "this blob is in a
store", so it must never be mixed with a store's cache: :func:`plan_cache` keys
it by the tree and the fixed epoch :data:`PLAN_EPOCH`.

Large files are hashed with ``read`` into a buffer, not through ``mmap`` as the
store's own files are: a file that the user's tools truncate while it is mapped
would kill the process with SIGBUS.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass

from mesh.cas.digest import Digest
from mesh.cas.hasher import MMAP_THRESHOLD, StreamHasher, hash_bytes, read_fd
from mesh.cas.snapshot import DEFAULT_WORKERS, Progress, digest_files
from mesh.cas.statcache import StatCache
from mesh.cas.tree import Entry, Kind, encode_node
from mesh.cas.walk import DirNode, PendingFile, tree_root, tree_times, walk_tree
from mesh.errors import SnapshotError, UnsupportedFile
from mesh.ignore import Ignore

#: The epoch of every plan cache: plans never depend on a store's contents.
PLAN_EPOCH = "plan"
#: Stands for the store in a plan cache's key, so it never collides with a store's cache.
_PLAN_STORE = "(plan: no store)"
#: Read size when hashing large files; big enough for BLAKE3 to use every core.
_READ_CHUNK = 8 << 20


@dataclass(frozen=True, slots=True)
class FileSource:
    """Where a file blob of a plan is read from: an absolute path (bytes) and its mode bit."""

    path: bytes
    executable: bool


@dataclass(frozen=True, slots=True, eq=False)
class Plan:
    """What a snapshot of a tree consists of, with nothing stored yet.

    ``nodes`` maps each directory node's digest to its bytes, children before
    parents (the root last). ``files`` maps each file blob's digest to one file
    that held those bytes when it was hashed (identical files share an entry).
    ``times`` is the tree's times manifest (mesh.cas.times), encoded: not a blob of
    the snapshot, but sent with it (mesh.wire.upload.put_blob).
    """

    root: Digest
    nodes: dict[Digest, bytes]
    files: dict[Digest, FileSource]
    times: bytes = b""

    def digests(self) -> list[Digest]:
        """Every blob of the snapshot, each once: files first, then nodes bottom-up."""
        return [*self.files, *(d for d in self.nodes if d not in self.files)]

    @property
    def total_bytes(self) -> int:
        """The size of all distinct blobs of the snapshot."""
        return sum(d.size for d in self.digests())


def plan_cache(
    home: str, root: str | os.PathLike[str], variant: bytes = b"", *, now_ns: Callable[[], int] = time.time_ns
) -> StatCache:
    """The stat cache for planning the tree at ``root`` (``variant``: the ignore rules' fingerprint).

    ``now_ns`` is the cache's clock (tests move it forward to leave no entry racily clean).
    """
    return StatCache.for_tree(home, os.fspath(root), _PLAN_STORE, PLAN_EPOCH, variant=variant, now_ns=now_ns)


def plan_tree(
    root: str | os.PathLike[str],
    *,
    cache: StatCache | None = None,
    progress: Progress | None = None,
    ignore: Ignore | None = None,
    workers: int = DEFAULT_WORKERS,
) -> Plan:
    """Walk and hash the tree at ``root``; the result's ``root`` is the id ingest would give.

    Arguments and errors are ingest's: ``ignore(relpath, is_dir)`` leaves paths
    out, UnsupportedFile for FIFOs, sockets and devices, SnapshotError for
    unreadable paths. ``cache`` must come from :func:`plan_cache`; it is saved at
    the end. Nothing is written anywhere else.
    """
    path, root_st = tree_root(root)

    listed_at = cache.now_ns() if cache is not None else 0
    # One process: a plan needs every node back from the walk, and sending them back
    # from worker processes costs what the workers save (measured on the stdlib).
    order, pending = walk_tree(path, root_st, cache, ignore)
    digests = _hash_files(pending, cache, progress, workers)

    files: dict[Digest, FileSource] = {}
    nodes: dict[Digest, bytes] = {}
    for node in reversed(order):  # children before their parents
        node.rows.sort(key=lambda row: row[0])
        entries = []
        for name, kind, value in node.rows:
            if isinstance(value, DirNode):
                assert value.digest is not None  # children are done before their parents
                entries.append(Entry(name, kind, value.digest))
            elif isinstance(value, bytes):
                entries.append(Entry(name, kind, None, value))
            else:
                if isinstance(value, int):
                    digest = digests[value]
                else:
                    assert isinstance(value, tuple)  # (hash, size) from the stat cache
                    digest = Digest(*value)
                entries.append(Entry(name, kind, digest))
                if digest not in files:
                    files[digest] = FileSource(_absolute(path, node.rel) + b"/" + name, kind == Kind.EXECUTABLE)
        # Every node is encoded, even one the stat cache could vouch for: its bytes
        # are needed in case the node misses it, and encoding costs little next to
        # the walk.
        data = encode_node(entries)
        node.digest = hash_bytes(data)
        nodes.setdefault(node.digest, data)
        if cache is not None:
            cache.record_dir(node.rel, node.st, node.digest, listed_at)
    root_digest = order[0].digest
    assert root_digest is not None
    if cache is not None:
        cache.save()
    return Plan(root_digest, nodes, files, tree_times(order).encode())


def _absolute(root: bytes, rel: bytes) -> bytes:
    """The absolute path of directory ``rel`` of the tree at ``root``."""
    return root + b"/" + rel if rel else root


def _hash_files(
    pending: list[PendingFile], cache: StatCache | None, progress: Progress | None, workers: int
) -> list[Digest]:
    """Hash every pending file, in parallel batches; record each in the cache."""
    return digest_files(pending, _hash_file, cache, progress, workers, processes=True)


def _hash_file(path: bytes) -> Digest:
    """Hash the regular file at ``path`` without following a symlink and without mmap.

    Raises UnsupportedFile if it is no longer a regular file, SnapshotError if it
    disappeared or cannot be read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise SnapshotError(f"{os.fsdecode(path)} disappeared while it was being snapshotted") from None
    except OSError as exc:
        raise SnapshotError(f"cannot read {os.fsdecode(path)}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsupportedFile(f"{os.fsdecode(path)}: not a regular file")
        if st.st_size < MMAP_THRESHOLD:
            return hash_bytes(read_fd(fd, st.st_size))
        hasher = StreamHasher()
        buffer = bytearray(_READ_CHUNK)
        view = memoryview(buffer)
        while n := os.readv(fd, [buffer]):
            hasher.update(view[:n])
        return hasher.digest()
    except OSError as exc:
        raise SnapshotError(f"cannot read {os.fsdecode(path)}: {exc.strerror}") from None
    finally:
        os.close(fd)
