"""The stat cache: re-snapshotting an unchanged tree only stats it.

For each file of one snapshotted directory tree it remembers ``(dev, ino, size,
mtime_ns, ctime_ns, executable bit)`` and the digest the file had; for each
directory, ``(dev, ino, mtime_ns, ctime_ns)`` and the digest of its node. A file
whose stat still matches is not read again; a directory whose stat matches and
whose children are all unchanged keeps its node without re-encoding it (a
directory's mtime changes whenever an entry is added, removed or renamed).

Racily clean entries (git's term): a file changed again within the timestamp
granularity of its last hash can keep the same stat. So an entry is trusted only
if the mtime and ctime are older than the moment its hash (or listing) began by
more than :data:`RACY_WINDOW_NS`; anything changed that recently is looked at
again (and trusted next time). ctime cannot be set back by a user, so tools that
restore mtimes do not fool it.

Entries say "this blob is in the store"; the store's epoch changes when blobs
are removed (eviction, fsck quarantine), and a cache from another epoch is
dropped as a whole. The cache is only an optimisation: a lost or damaged cache
file costs a full re-hash, nothing else.

On disk it is one canonical CBOR array holding packed columns, so that loading
50,000 entries is a few large reads rather than 50,000 small decodes::

    ["statcache", 2, epoch, file paths (NUL-joined), file records, dir paths, dir records]
"""

from __future__ import annotations

import os
import secrets
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

import blake3

from mesh import codec
from mesh.cas.digest import Digest
from mesh.cas.nogc import gc_paused
from mesh.errors import CodecError

#: An entry is trusted only if its file was last changed this long before its hash began.
RACY_WINDOW_NS = 2_000_000_000
_MAGIC = "statcache"
_VERSION = 2
# dev, ino, size, mtime_ns, ctime_ns, executable | hashed_at_ns, hash
_FILE = struct.Struct("<QQQqqBq32s")
# dev, ino, mtime_ns, ctime_ns | listed_at_ns, node size, node hash
_DIR = struct.Struct("<QQqqqQ32s")

# Rows are kept exactly as struct unpacks them: loading is one C-level pass.
_FileRow = tuple[int, int, int, int, int, int, int, bytes]
_DirRow = tuple[int, int, int, int, int, int, bytes]


def file_key(st: os.stat_result) -> tuple[int, int, int, int, int, int]:
    """What must be unchanged for a file's cached digest to hold."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, 1 if st.st_mode & 0o100 else 0)


def dir_key(st: os.stat_result) -> tuple[int, int, int, int]:
    """What must be unchanged (besides its children) for a directory's cached node to hold."""
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)


@dataclass(frozen=True, slots=True)
class CacheUsage:
    """What one walk used of a cache: the entries it saw and its counts.

    A worker process walking part of a tree hands this back, so that the cache in
    the parent keeps the entries the worker saw and counts its hits.
    """

    files: set[bytes]
    dirs: set[bytes]
    hits: int
    misses: int
    racy: int


@dataclass(frozen=True, slots=True)
class StatCacheStatistics:
    """How a snapshot used the cache: files answered from it, files hashed, and why."""

    hits: int
    misses: int
    racy: int


class StatCache:
    """One directory tree's stat cache, loaded from and saved to one file.

    ``now_ns`` is the clock that stamps hashes; tests inject their own.
    """

    def __init__(self, path: str, epoch: str, *, now_ns: Callable[[], int] = time.time_ns) -> None:
        self.path = path
        self.epoch = epoch
        self._now_ns = now_ns
        self._files: dict[bytes, _FileRow] = {}
        self._dirs: dict[bytes, _DirRow] = {}
        self._seen: set[bytes] = set()
        self._seen_dirs: set[bytes] = set()
        self._dirty = False
        self.hits = self.misses = self.racy = 0

    @classmethod
    def for_tree(
        cls,
        home: str,
        root: str,
        store_root: str,
        epoch: str,
        *,
        variant: bytes = b"",
        now_ns: Callable[[], int] = time.time_ns,
    ) -> StatCache:
        """Load the cache of directory ``root`` for the store at ``store_root`` (empty if none).

        ``variant`` tells apart caches of one tree ingested under different ignore rules.
        """
        parts = [os.fsencode(os.path.realpath(root)), os.fsencode(store_root), variant]
        key = blake3.blake3(b"\0".join(parts)).hexdigest()[:32]
        cache = cls(os.path.join(home, "statcache", f"{key}.cbor"), epoch, now_ns=now_ns)
        cache.load()
        return cache

    def now_ns(self) -> int:
        """The clock used to stamp hashes."""
        return self._now_ns()

    def __len__(self) -> int:
        """The number of files the cache knows."""
        return len(self._files)

    def take_usage(self) -> CacheUsage:
        """What was used since the last call (or since loading), and start counting afresh."""
        usage = CacheUsage(self._seen, self._seen_dirs, self.hits, self.misses, self.racy)
        self._seen, self._seen_dirs = set(), set()
        self.hits = self.misses = self.racy = 0
        return usage

    def add_usage(self, usage: CacheUsage) -> None:
        """Count what another process's walk of part of this tree used (see take_usage)."""
        self._seen |= usage.files
        self._seen_dirs |= usage.dirs
        self.hits += usage.hits
        self.misses += usage.misses
        self.racy += usage.racy

    # -- loading and saving ----------------------------------------------------

    def load(self) -> None:
        """Read the cache file; a missing, damaged or stale-epoch file leaves the cache empty."""
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except OSError:
            return
        try:
            magic, version, epoch, file_paths, file_rows, dir_paths, dir_rows = codec.decode(
                data, max_size=1 << 30, max_depth=2
            )
            if magic != _MAGIC or version != _VERSION or epoch != self.epoch:
                return
            with gc_paused():  # 50,000 records and their keys: no cycles among them
                self._files = dict(zip(_split(file_paths, file_rows, _FILE), _FILE.iter_unpack(file_rows), strict=True))
                self._dirs = dict(zip(_split(dir_paths, dir_rows, _DIR), _DIR.iter_unpack(dir_rows), strict=True))
        except (CodecError, ValueError, TypeError, struct.error):
            self._files, self._dirs = {}, {}

    def save(self) -> None:
        """Write the cache atomically, keeping only what this snapshot saw.

        Does nothing when nothing changed. Errors are ignored: the cache is only an
        optimisation.
        """
        gone = self._files.keys() - self._seen
        gone_dirs = self._dirs.keys() - self._seen_dirs
        if not self._dirty and not gone and not gone_dirs:
            return
        for rel in gone:
            del self._files[rel]
        for rel in gone_dirs:
            del self._dirs[rel]
        file_rows = b"".join(_FILE.pack(*row) for row in self._files.values())
        dir_rows = b"".join(_DIR.pack(*row) for row in self._dirs.values())
        data = codec.encode(
            [_MAGIC, _VERSION, self.epoch, b"\0".join(self._files), file_rows, b"\0".join(self._dirs), dir_rows]
        )
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

    # -- files -----------------------------------------------------------------

    def lookup(self, rel: bytes, st: os.stat_result) -> bytes | None:
        """The cached hash of file ``rel`` (its size is ``st.st_size``) if ``st`` proves it unchanged.

        Returns the raw hash, not a Digest: on the warm path most of them are never
        needed (their directory's node is reused), and this is the hottest loop.
        """
        self._seen.add(rel)
        row = self._files.get(rel)
        mtime, ctime = st.st_mtime_ns, st.st_ctime_ns
        if (
            row is None
            or row[3] != mtime
            or row[4] != ctime
            or row[2] != st.st_size
            or row[1] != st.st_ino
            or row[0] != st.st_dev
            or row[5] != (1 if st.st_mode & 0o100 else 0)
        ):
            self.misses += 1
            return None
        if (mtime if mtime > ctime else ctime) >= row[6] - RACY_WINDOW_NS:
            self.racy += 1
            self.misses += 1
            return None
        self.hits += 1
        return row[7]

    def record(self, rel: bytes, st: os.stat_result, digest: Digest, hashed_at_ns: int) -> None:
        """Remember that file ``rel`` with stat ``st`` (taken before hashing) has ``digest``."""
        self._seen.add(rel)
        if digest.size != st.st_size:
            # The file changed while it was read; vouch for neither version.
            self._files.pop(rel, None)
        else:
            self._files[rel] = (*file_key(st), hashed_at_ns, digest.hash)
        self._dirty = True

    # -- directories ---------------------------------------------------------------

    def lookup_dir(self, rel: bytes, st: os.stat_result) -> Digest | None:
        """The node digest directory ``rel`` had, if its own stat is unchanged and not racy.

        The caller must still check that every child is unchanged before using it.
        """
        self._seen_dirs.add(rel)
        row = self._dirs.get(rel)
        if row is None or row[:4] != dir_key(st) or max(st.st_mtime_ns, st.st_ctime_ns) >= row[4] - RACY_WINDOW_NS:
            return None
        return Digest(row[6], row[5])

    def record_dir(self, rel: bytes, st: os.stat_result, digest: Digest, listed_at_ns: int) -> None:
        """Remember that directory ``rel`` (stat ``st``, listed at ``listed_at_ns``) has node ``digest``."""
        self._seen_dirs.add(rel)
        row = (*dir_key(st), listed_at_ns, digest.size, digest.hash)
        if self._dirs.get(rel) != row:
            self._dirs[rel] = row
            self._dirty = True

    def statistics(self) -> StatCacheStatistics:
        return StatCacheStatistics(self.hits, self.misses, self.racy)


def _split(paths: bytes, rows: bytes, record: struct.Struct) -> list[bytes]:
    """The NUL-joined path column, checked against the number of packed records."""
    if not isinstance(paths, bytes) or not isinstance(rows, bytes) or len(rows) % record.size:
        raise ValueError("malformed stat cache columns")
    if not rows:
        return []
    return paths.split(b"\0")
