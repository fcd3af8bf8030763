"""Blob files hashed once and trusted while their stat is unchanged: what link checkouts stand on.

When to use it: wherever the store hands on a blob's *file* rather than bytes that pass
through a verifying read. Reads (``get``, ``open``, ``copy_to``, and so copy checkouts)
hash what they read and need no record; a link-mode checkout hardlinks the file itself
into a tree a task then reads, so :meth:`mesh.cas.store.LocalStore.link_into` asks this
record about each file it links, and hashes the file when the record cannot vouch for it.

**The record.** For each blob file (an inode of ``blobs/`` or ``exec/``) that was hashed and
found right: its ``(st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns)`` and the blob's hash.
A file whose stat still equals its record is trusted without reading it. Every change made
to a file through the filesystem changes its ctime: a write (mtime and ctime), a truncate,
a chmod (which a person must do before writing a 0444 blob as its owner), and a ``utime``
that puts the old mtime back; ctime itself cannot be set by a user. So a change is always
seen, also one that restores the mtime. Damage the filesystem does not see (a failing disk
under it) leaves the stat alone: ``mesh fsck`` re-hashes every blob for that.

**Our own links change ctime too.** The link count lives in the inode, so ``link`` and
``unlink`` of any of a blob's names set its ctime (measured here: each moved it by ~30 us).
A record that only held the stat of the last hash would be stale after every link checkout
and every removal of one, and every task would hash its inputs again. So the store stats
the blob file just before it links it and the new name just after (:meth:`linked`), and the
runner does the same around its unlink of a finished task's links (:meth:`release`): when
the file was trusted before, and after it differs only in its ctime and by exactly that one
link, the record takes the new ctime. What that cannot tell from our own link is a write
*and* a restore of the mtime made by someone else in the few microseconds between the two
stats; see "what it guards against" below.

**Racily clean records** (git's term, as in mesh.cas.statcache): where a filesystem stamps
times with a coarse clock, a change made within the same tick as the stat the record was
taken from keeps that stat. Linux since 6.13 stamps a change made after a stat asked for
the times with a fine-grained time of its own ("multigrain" timestamps, ext4 and others),
so such a change is always seen; :func:`fine_timestamps` probes the store's filesystem
once (back-to-back chmods with stats between: distinct ctimes ~1.5-3 us apart on this
machine's ext4, where a coarse clock gives equal ones). On a filesystem that does not,
a record is kept only when the file's mtime and ctime are older than the moment of its
hash by :data:`~mesh.cas.statcache.RACY_WINDOW_NS` (the stat cache's rule), which no
re-stamp after a link can be: there, link checkouts hash each file they link (correct,
and as slow as reading the tree).

**What it guards against.** Changes made by mistake: a person who chmods and edits a file
of a ``mesh checkout --link`` tree, a tool that writes through a hardlink, a program run as
the store's owner. Not someone who writes the store on purpose: whoever can write a blob
can write this record too (both are the store owner's, in a 0700 home).

**Persisted** in the store's root as ``verified``, so that a restart or another process
(``mesh checkout --link``) does not hash the whole store again: an append-only file of
frames, ``magic, count, inode numbers, the rest of the records, BLAKE3 of them (16
bytes)`` (columns: 56,000 records, 4.1 MB, load in ~20 ms here), each written by one
``write`` with O_APPEND under a shared ``flock`` (appends of several processes do not
interleave, and a rewrite, under an exclusive one, first reads them). A torn or
damaged frame fails its check and is skipped; the reader finds the next frame by its
magic. A record in the file is either still exactly its file's stat, or stale and
harmless (it never matches again: a file changed since has another ctime, and a reused
inode another ctime or another hash), so records lost or kept from before do no harm:
the worst a lost record costs is one hash. The file is rewritten from memory (atomically,
a temp file renamed over it) when it holds more than twice the records known plus 1 MiB.

**When a file is first hashed**: the first time a link checkout links it, not when the
store writes it. Writes hash what they write, so a record could be made there for two more
stats per blob; but most blobs a snapshot writes are never linked (directory nodes, task
output streams, trees only ever copied), and ingest's per-file loop is its hot path. So the
first link checkout of a freshly stored tree reads it once, as a copy checkout would
(without writing it), and later ones stat it.

**Size.** At most :data:`MAX_RECORDS` records in memory (~200 bytes each: 50 MiB at the
cap), the oldest dropped first.
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import stat
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import blake3

from mesh.cas.digest import Digest
from mesh.cas.statcache import RACY_WINDOW_NS

__all__ = ["MAX_RECORDS", "VerifiedFiles", "VerifiedStatistics", "fine_timestamps"]

log = logging.getLogger("mesh.store")

#: Records kept in memory; beyond it the oldest (first made) are dropped (hashed again if used).
MAX_RECORDS = 1 << 18
#: The file is rewritten when it is larger than twice its records known plus this.
COMPACT_SLACK = 1 << 20
#: A file larger than this is not read (this module writes at most ~4x MAX_RECORDS records).
MAX_FILE_BYTES = 1 << 27
#: Records per frame when the file is rewritten.
FRAME_RECORDS = 1 << 15
#: A ctime step this small between two changes cannot come from a coarse clock (a tick is >= 1 ms).
FINE_STEP_NS = 1_000_000
#: Changes made by :func:`fine_timestamps`, and times it tries.
PROBE_CHANGES = 8
PROBE_TRIES = 3

_MAGIC = b"meshvf2\n"
_HEAD = struct.Struct("<8sI")
_CHECK = 16
# Keyed by st_ino; the value: st_dev, st_size, st_mtime_ns, st_ctime_ns, the blob's hash, executable copy.
_VALUE = struct.Struct("<QQqq32s?")
_INO = struct.Struct("<Q")
_RECORD_SIZE = _INO.size + _VALUE.size
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True, slots=True)
class VerifiedStatistics:
    """What the record did since it was made: files trusted, files hashed, records it holds."""

    trusted: int
    hashed: int
    records: int


def fine_timestamps(directory: str) -> bool:
    """Whether the filesystem of ``directory`` gives a change made after a stat a ctime of its own.

    Makes an anonymous file there and changes its mode :data:`PROBE_CHANGES` times with a
    stat before each: every step between the ctimes seen must be above zero and below
    :data:`FINE_STEP_NS` (a coarse clock repeats a time, or moves by at least a tick). A
    try interrupted for a millisecond or more says nothing, and is made again. False when
    the directory cannot hold a file.
    """
    try:
        fd = os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except OSError:
        return False
    try:
        for _ in range(PROBE_TRIES):
            times = []
            for i in range(PROBE_CHANGES):
                times.append(os.fstat(fd).st_ctime_ns)
                os.fchmod(fd, 0o400 if i % 2 == 0 else 0o600)
            times.append(os.fstat(fd).st_ctime_ns)
            steps = [b - a for a, b in zip(times, times[1:], strict=False)]
            if any(step <= 0 for step in steps):
                return False
            if all(step < FINE_STEP_NS for step in steps):
                return True
        return False
    except OSError:
        return False
    finally:
        os.close(fd)


def _value(st: os.stat_result, hash_: bytes, executable: bool) -> bytes:
    return _VALUE.pack(st.st_dev, st.st_size, st.st_mtime_ns, st.st_ctime_ns, hash_, executable)


class VerifiedFiles:
    """The record of one store's blob files (see the module docstring), kept in ``path``.

    ``probe_dir``: a directory on the store's filesystem for :func:`fine_timestamps`, probed
    on first need; ``fine`` says the answer instead (tests). ``now_ns`` is the clock that
    stamps hashes. Safe for concurrent use by threads; several processes may share the file.
    """

    def __init__(
        self,
        path: str,
        *,
        probe_dir: str | None = None,
        fine: bool | None = None,
        now_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.path = path
        self._probe_dir = probe_dir
        self._fine = fine
        self._now_ns = now_ns
        self._records: dict[int, bytes] = {}
        self._pending: list[tuple[int, bytes]] = []  # (st_ino, value) not yet in the file
        self._lock = threading.Lock()
        self._file: tuple[int, int] | None = None  # (st_dev, st_ino) of the file read so far
        self._offset = 0  # bytes of it read
        self._trusted = self._hashed = 0

    def __repr__(self) -> str:
        return f"VerifiedFiles({self.path!r}, records={len(self._records)})"

    def now_ns(self) -> int:
        """The clock that stamps hashes: read it before hashing, after the stat."""
        return self._now_ns()

    def statistics(self) -> VerifiedStatistics:
        return VerifiedStatistics(self._trusted, self._hashed, len(self._records))

    # -- vouching --------------------------------------------------------------------

    def trusts(self, st: os.stat_result, digest: Digest, executable: bool) -> bool:
        """Whether the file whose stat is ``st`` is known to hold ``digest`` (a blob file if not
        ``executable``, else its 0555 copy): hashed and found right, and unchanged since."""
        return self._records.get(st.st_ino) == _value(st, digest.hash, executable)

    def record(self, st: os.stat_result, digest: Digest, executable: bool, hashed_at_ns: int) -> None:
        """The file whose stat ``st`` was taken before ``hashed_at_ns``, when its hash began,
        was found to hold ``digest``. Kept unless it is racily clean."""
        self._hashed += 1
        if st.st_size == digest.size and not self._racy(st, hashed_at_ns):
            self._keep(st.st_ino, _value(st, digest.hash, executable))

    def linked(self, before: os.stat_result, after: os.stat_result, digest: Digest, executable: bool) -> bool:
        """We linked the blob file whose stat was ``before`` and see the new name as ``after``:
        True if the file is trusted (then the record follows its new ctime), False if it
        must be hashed. The hot path of a link checkout, one call per file: written out."""
        ino = before.st_ino
        if (
            after.st_ino != ino
            or after.st_nlink != before.st_nlink + 1
            or after.st_mtime_ns != before.st_mtime_ns
            or after.st_size != before.st_size
            or after.st_dev != before.st_dev
            or self._records.get(ino) != _value(before, digest.hash, executable)
        ):
            return False
        self._trusted += 1
        if not self._fine:
            self._restamp(after, digest.hash, executable)
        else:  # no change after the stat ``after`` can keep it: no racy check
            self._keep(ino, _value(after, digest.hash, executable))
        return True

    def unlinked(self, before: os.stat_result, after: os.stat_result) -> None:
        """We unlinked one name of a file whose stat was ``before``; ``after`` is its stat now.
        A trusted file's record follows its new ctime; any other record of it is dropped."""
        value = self._records.get(before.st_ino)
        if value is None:
            return
        _, _, _, _, hash_, executable = _VALUE.unpack(value)
        if value == _value(before, hash_, executable) and _one_link(before, after, -1):
            self._restamp(after, hash_, executable)
        else:
            self._records.pop(before.st_ino, None)

    def release(self, top: str) -> int:
        """Unlink every file of the tree ``top`` that is a trusted blob file, keeping its record
        (see :meth:`unlinked`); returns how many. The rest of the tree is the caller's to remove.

        For the runner, once a link-mode task is over and its directory is the node's alone
        (mesh.exec.takeback): no symlink is followed, and what cannot be read is left.
        """
        released = 0
        try:
            top_fd = os.open(top, _DIR_FLAGS)
        except OSError:
            return 0
        try:
            pending = [b"."]
            while pending:
                rel = pending.pop()
                try:
                    dir_fd = os.open(rel, _DIR_FLAGS, dir_fd=top_fd)
                except OSError:
                    continue
                try:
                    for name, st in _listing(dir_fd):
                        if stat.S_ISDIR(st.st_mode):
                            pending.append(rel + b"/" + name)
                        elif stat.S_ISREG(st.st_mode) and st.st_nlink > 1 and st.st_ino in self._records:
                            released += self._unlink(dir_fd, name, st)
                finally:
                    os.close(dir_fd)
        finally:
            os.close(top_fd)
        self.flush()
        return released

    def _unlink(self, dir_fd: int, name: bytes, before: os.stat_result) -> int:
        try:
            held = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        except OSError:
            return 0
        try:
            if os.fstat(held).st_ino != before.st_ino:
                return 0
            os.unlink(name, dir_fd=dir_fd)
            self.unlinked(before, os.fstat(held))
            return 1
        except OSError:
            return 0
        finally:
            os.close(held)

    def _restamp(self, st: os.stat_result, hash_: bytes, executable: bool) -> None:
        """Our own link or unlink moved a trusted file's ctime to ``st``'s: follow it, unless racy."""
        if self._racy(st, self._now_ns()):
            self._records.pop(st.st_ino, None)
        else:
            self._keep(st.st_ino, _value(st, hash_, executable))

    def _racy(self, st: os.stat_result, checked_at_ns: int) -> bool:
        """Whether a change after the stat ``st`` (taken before ``checked_at_ns``) could keep it:
        never on a filesystem with fine timestamps (the ``now`` check only guards a clock set
        back), else within :data:`RACY_WINDOW_NS` of the check."""
        if self._fine is None:
            self._fine = self._probe_dir is not None and fine_timestamps(self._probe_dir)
        window = 0 if self._fine else RACY_WINDOW_NS
        return max(st.st_mtime_ns, st.st_ctime_ns) >= checked_at_ns - window

    def _keep(self, ino: int, value: bytes) -> None:
        with self._lock:
            records = self._records
            if ino not in records and len(records) >= MAX_RECORDS:
                _trim(records, MAX_RECORDS // 4)
            records[ino] = value
            self._pending.append((ino, value))

    # -- the file ----------------------------------------------------------------------

    def refresh(self) -> None:
        """Read what other processes (a forked checkout's workers, say) added to the file since
        the last look: all of it when it was rewritten meanwhile. Never raises."""
        with self._lock:
            self._read_new()

    def _read_new(self) -> None:
        """:meth:`refresh`, with the lock held."""
        try:
            st = os.stat(self.path)
        except OSError:
            return
        identity = (st.st_dev, st.st_ino)
        if identity == self._file and st.st_size == self._offset:
            return
        start = self._offset if identity == self._file and st.st_size > self._offset else 0
        if st.st_size - start > MAX_FILE_BYTES:  # not what this module writes: rewritten at the next flush
            self._file, self._offset = identity, st.st_size
            return
        try:
            with open(self.path, "rb") as f:
                f.seek(start)
                data = f.read(max(st.st_size - start, 0))
        except OSError:
            return
        payloads, used = _frames(data)
        self._file, self._offset = identity, start + used  # a frame being appended is read next time
        records = self._records
        for payload in payloads:
            records.update(_records(payload))
        _trim(records, len(records) - MAX_RECORDS)

    def flush(self) -> None:
        """Append the records made since the last flush to the file (one frame, one write),
        and rewrite the file when it has grown too large. Never raises: a record that cannot
        be written costs one hash later.

        Appends hold a shared ``flock`` of the file and a rewrite an exclusive one, which
        first reads what others appended: a rewrite never drops another process's records
        (measured before the locks: a forked checkout's worker rewrote the file from its own
        view, and the next checkout hashed 11,041 of 50,724 files again)."""
        with self._lock:
            pending, self._pending = self._pending, []
            if not pending:
                return
            try:
                fd = self._open_locked()
                try:
                    os.write(fd, _frame(pending))
                    size = os.fstat(fd).st_size
                    if size > 2 * _RECORD_SIZE * len(self._records) + COMPACT_SLACK:
                        fcntl.flock(fd, fcntl.LOCK_EX)  # not atomic: check that no one rewrote it meanwhile
                        if _same_file(fd, self.path):
                            self._read_new()
                            self._rewrite()
                finally:
                    os.close(fd)  # and the lock with it
            except OSError as exc:
                log.debug("cannot write the record of verified blob files %s: %s", self.path, exc)

    def _open_locked(self) -> int:
        """The file open for appending, with a shared lock, and still the one at its path."""
        while True:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_SH)
                if _same_file(fd, self.path):
                    return fd
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)  # rewritten while we waited: append to the new one

    def _rewrite(self) -> None:
        """Replace the file with the records held in memory (with the lock and the file's
        exclusive lock held)."""
        items = list(self._records.items())
        tmp = f"{self.path}.{os.getpid()}.{secrets.token_hex(4)}"
        try:
            with open(tmp, "wb") as f:
                for i in range(0, len(items), FRAME_RECORDS):
                    f.write(_frame(items[i : i + FRAME_RECORDS]))
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except OSError:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        st = os.stat(self.path)
        self._file, self._offset = (st.st_dev, st.st_ino), st.st_size


def _same_file(fd: int, path: str) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def _one_link(before: os.stat_result, after: os.stat_result, change: int) -> bool:
    """Whether ``after`` is the same file as ``before`` with nothing changed but one link
    (added or removed, by ``change``) and the ctime that moved with it."""
    return (
        after.st_ino == before.st_ino
        and after.st_dev == before.st_dev
        and after.st_size == before.st_size
        and after.st_mtime_ns == before.st_mtime_ns
        and after.st_nlink == before.st_nlink + change
    )


def _listing(dir_fd: int) -> Iterator[tuple[bytes, os.stat_result]]:
    """The entries of an open directory with their lstat (those gone meanwhile left out)."""
    with os.scandir(dir_fd) as entries:
        names = [os.fsencode(entry.name) for entry in entries]
    for name in names:
        try:
            yield name, os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            continue


def _frame(records: list[tuple[int, bytes]]) -> bytes:
    """One frame: head, the inodes (a column of 8-byte numbers), the values, the check."""
    head = _HEAD.pack(_MAGIC, len(records))
    body = struct.pack(f"<{len(records)}Q", *(ino for ino, _ in records)) + b"".join(value for _, value in records)
    return head + body + blake3.blake3(head + body).digest(_CHECK)


def _frames(data: bytes) -> tuple[list[bytes], int]:
    """The record bytes of each intact frame in ``data`` (a damaged one is skipped), and how
    many bytes were used: all but a last frame that may still be being written."""
    view = memoryview(data)
    payloads: list[bytes] = []
    pos = 0
    while 0 <= pos < len(data):
        following = data.find(_MAGIC, pos + 1)
        if data.startswith(_MAGIC, pos):
            count = _HEAD.unpack_from(data, pos)[1] if pos + _HEAD.size <= len(data) else 0
            end = pos + _HEAD.size + count * _RECORD_SIZE
            if end + _CHECK > len(data) and following < 0:
                return payloads, pos  # the last frame, short: being written, or torn (skipped once followed)
            if blake3.blake3(view[pos:end]).digest(_CHECK) == data[end : end + _CHECK]:
                payloads.append(data[pos + _HEAD.size : end])
                pos = end + _CHECK
                continue
        pos = following
    return payloads, len(data)


def _trim(records: dict[int, bytes], count: int) -> None:
    """Drop the ``count`` oldest records (first made: a dict keeps its order of insertion)."""
    if count > 0:
        for old in list(records)[:count]:
            records.pop(old, None)


def _records(payload: bytes) -> Iterator[tuple[int, bytes]]:
    """The (st_ino, value) pairs of a frame's payload (columns: a few C-level passes)."""
    count = len(payload) // _RECORD_SIZE
    inos = struct.unpack_from(f"<{count}Q", payload)
    size, start = _VALUE.size, count * _INO.size
    return zip(inos, [payload[i : i + size] for i in range(start, len(payload), size)], strict=True)
