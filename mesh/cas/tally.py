"""Tally: how many blob files and bytes a LocalStore holds, kept exact as the store changes.

A node checks the size of its store at every upload (its cap, MESH_STORE_MAX), and a
walk of the store costs O(blobs): on the project's VM, counting 50,000 blobs took 170 ms
with the directory entries cached, 560 ms after dropping the caches. So the store is
walked once, on a worker thread while the node serves, and from then on every blob file
the store links, removes or quarantines moves the tally.

The walk and the writes meet exactly: the store is walked one shard directory at a time
(256 of ``blobs/`` and 256 of ``exec/``) holding that shard's lock, and every link or
unlink of a blob file holds its shard's lock too; a change is counted only in a shard
walked already (the walk of a later shard sees it on disk). The lock is uncontended for
almost every write (two writers meet only in the same shard): ~0.1 us.

What the tally cannot see: files written or removed by other processes (a client that
shares the node's store ingests into it directly; ``mesh gc``; forked workers of an
ingest, mesh.cas.forkmap, which a node does not use). Walking again (a recount: the
same walk, safe while the store is in use) finds them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

#: Shard directories per top directory: named by the first two hex digits of a blob's hash.
SHARDS = 256


def shard_names() -> list[str]:
    """Every shard directory's name, in the order of their indices."""
    return [f"{i:02x}" for i in range(SHARDS)]


_SHARD_INDEX = {name: i for i, name in enumerate(shard_names())}


class Tally:
    """Blob files and bytes of one store, per shard directory; thread-safe.

    ``files`` and ``bytes`` are the totals; they mean something once :attr:`counted` is set
    (every shard walked once). The store calls :meth:`shard` around each change and
    :meth:`add` inside it; its walk calls :meth:`walked` inside :meth:`shard`.
    """

    def __init__(self) -> None:
        self._locks = [threading.Lock() for _ in range(2 * SHARDS)]
        self._files = [0] * (2 * SHARDS)
        self._bytes = [0] * (2 * SHARDS)
        self._walked = [False] * (2 * SHARDS)
        self._unwalked = 2 * SHARDS
        self._totals = threading.Lock()
        self.files = 0
        self.bytes = 0
        #: Set once every shard was walked: the totals are the store's from then on.
        self.counted = threading.Event()

    def __repr__(self) -> str:
        state = "counted" if self.counted.is_set() else "not counted yet"
        return f"Tally({self.files} files, {self.bytes} bytes, {state})"

    @staticmethod
    def index(hex_: str, executable: bool) -> int | None:
        """The shard index of a blob file (None for a name that is not a blob's)."""
        shard = _SHARD_INDEX.get(hex_[:2])
        if shard is None:
            return None
        return shard + (SHARDS if executable else 0)

    @contextmanager
    def shard(self, hex_: str, executable: bool) -> Iterator[int | None]:
        """Hold the lock of the blob's shard around a change of its file; yields the index for add()."""
        index = self.index(hex_, executable)
        if index is None:
            yield None
            return
        with self._locks[index]:
            yield index

    def add(self, index: int | None, files: int, size: int) -> None:
        """Count a change of shard ``index``, whose lock the caller holds (inside :meth:`shard`)."""
        if index is None or not self._walked[index]:
            return  # the walk of that shard, still to come, counts what is on disk
        self._files[index] += files
        self._bytes[index] += size
        with self._totals:
            self.files += files
            self.bytes += size

    def walked(self, index: int, files: int, size: int) -> None:
        """The walk found ``files`` files of ``size`` bytes in shard ``index`` (lock held: inside shard())."""
        with self._totals:
            self.files += files - self._files[index]
            self.bytes += size - self._bytes[index]
            self._files[index], self._bytes[index] = files, size
            if not self._walked[index]:
                self._walked[index] = True
                self._unwalked -= 1
                if not self._unwalked:
                    self.counted.set()
