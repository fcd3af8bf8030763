"""The stat cache: re-snapshotting an unchanged tree only stats it.

For each file of one snapshotted directory it remembers ``(dev, ino, size,
mtime_ns, ctime_ns, executable bit)`` and the digest the file had, and for the
tree's directory nodes which ones the store holds. A file whose stat still
matches is not read again.

Racily clean files (git's term): a file changed again within the timestamp
granularity of its last hash can keep the same stat. So an entry is trusted only
if the file's mtime and ctime are older than the moment its hash began by more
than :data:`RACY_WINDOW_NS`; a file changed that recently is re-hashed (and then
trusted next time). ctime cannot be set back by a user, so tools that restore
mtimes do not fool it.

Entries say "this blob is in the store"; the store's epoch changes when blobs
are removed (eviction, fsck quarantine), and a cache from another epoch is
dropped as a whole. The cache is a plain optimisation: a lost or damaged cache
file only costs a full re-hash.
"""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass

import blake3

from mesh import codec
from mesh.cas.digest import HASH_SIZE, Digest
from mesh.errors import CodecError

#: An entry is trusted only if the file was last changed this long before its hash began.
RACY_WINDOW_NS = 2_000_000_000
_MAGIC = "statcache"
_VERSION = 1

# value: (dev, ino, size, mtime_ns, ctime_ns, executable, hash, hashed_at_ns)
_Row = tuple[int, int, int, int, int, bool, bytes, int]


@dataclass(frozen=True, slots=True)
class StatCacheStatistics:
    """How a snapshot used the cache: files answered from it, and files hashed."""

    hits: int
    misses: int
    racy: int


class StatCache:
    """One directory tree's stat cache, loaded from and saved to one file.

    ``now_ns`` is injectable so that tests can place hashes in time.
    """

    def __init__(self, path: str, epoch: str, *, now_ns: object = time.time_ns) -> None:
        self.path = path
        self.epoch = epoch
        self._now_ns = now_ns
        self._rows: dict[bytes, _Row] = {}
        self._nodes: set[bytes] = set()
        self._seen: set[bytes] = set()
        self._seen_nodes: set[bytes] = set()
        self._dirty = False
        self.hits = self.misses = self.racy = 0

    @classmethod
    def for_tree(cls, home: str, root: str, store_root: str, epoch: str) -> StatCache:
        """Load the cache of directory ``root`` for the store at ``store_root`` (empty if none)."""
        key = blake3.blake3(os.fsencode(os.path.realpath(root)) + b"\0" + os.fsencode(store_root)).hexdigest()[:32]
        cache = cls(os.path.join(home, "statcache", f"{key}.cbor"), epoch)
        cache.load()
        return cache

    def now_ns(self) -> int:
        """The clock used to stamp hashes."""
        return int(self._now_ns())  # type: ignore[operator]

    def load(self) -> None:
        """Read the cache file; a missing, damaged or stale-epoch file leaves the cache empty."""
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except OSError:
            return
        try:
            value = codec.decode(data, max_size=1 << 30, max_depth=4)
            magic, version, epoch, rows, nodes = value
            if magic != _MAGIC or version != _VERSION or epoch != self.epoch:
                return
            table = {}
            for row in rows:
                path, dev, ino, size, mtime, ctime, executable, hash_, hashed_at = row
                if not isinstance(hash_, bytes) or len(hash_) != HASH_SIZE:
                    return
                table[path] = (dev, ino, size, mtime, ctime, executable, hash_, hashed_at)
            self._rows = table
            self._nodes = {n for n in nodes if isinstance(n, bytes)}
        except (CodecError, ValueError, TypeError):
            self._rows, self._nodes = {}, set()

    def lookup(self, rel: bytes, st: os.stat_result) -> Digest | None:
        """The cached digest of file ``rel`` if its stat ``st`` proves it unchanged."""
        self._seen.add(rel)
        row = self._rows.get(rel)
        if row is None:
            self.misses += 1
            return None
        dev, ino, size, mtime, ctime, executable, hash_, hashed_at = row
        if (
            dev != st.st_dev
            or ino != st.st_ino
            or size != st.st_size
            or mtime != st.st_mtime_ns
            or ctime != st.st_ctime_ns
            or executable != bool(st.st_mode & 0o100)
        ):
            self.misses += 1
            return None
        if max(mtime, ctime) >= hashed_at - RACY_WINDOW_NS:
            self.racy += 1
            self.misses += 1
            return None
        self.hits += 1
        return Digest(hash_, size)

    def record(self, rel: bytes, st: os.stat_result, digest: Digest, hashed_at_ns: int) -> None:
        """Remember that file ``rel`` with stat ``st`` (taken before hashing) has ``digest``."""
        self._seen.add(rel)
        if digest.size != st.st_size:
            # The file changed while it was read; do not vouch for either version.
            self._rows.pop(rel, None)
        else:
            self._rows[rel] = (
                st.st_dev,
                st.st_ino,
                st.st_size,
                st.st_mtime_ns,
                st.st_ctime_ns,
                bool(st.st_mode & 0o100),
                digest.hash,
                hashed_at_ns,
            )
        self._dirty = True

    def has_node(self, digest: Digest) -> bool:
        """True if this directory node was stored by an earlier snapshot of this epoch."""
        if digest.hash in self._nodes:
            self._seen_nodes.add(digest.hash)
            return True
        return False

    def add_node(self, digest: Digest) -> None:
        """Remember that the store holds this directory node."""
        self._seen_nodes.add(digest.hash)
        if digest.hash not in self._nodes:
            self._nodes.add(digest.hash)
            self._dirty = True

    def statistics(self) -> StatCacheStatistics:
        return StatCacheStatistics(self.hits, self.misses, self.racy)

    def save(self) -> None:
        """Write the cache atomically, keeping only files seen by this snapshot.

        Does nothing when nothing changed. Errors are ignored: the cache is only an
        optimisation.
        """
        gone = self._rows.keys() - self._seen
        if not self._dirty and not gone and self._seen_nodes == self._nodes:
            return
        for rel in gone:
            del self._rows[rel]
        self._nodes = set(self._seen_nodes)
        rows = [[rel, *row] for rel, row in self._rows.items()]
        data = codec.encode([_MAGIC, _VERSION, self.epoch, rows, sorted(self._nodes)])
        tmp = f"{self.path}.{os.getpid()}.{secrets.token_hex(4)}"
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, self.path)
            self._dirty = False
        except OSError:
            try:
                os.unlink(tmp)
            except OSError:
                pass
