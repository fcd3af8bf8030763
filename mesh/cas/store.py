"""The blob store: the Store interface and LocalStore, its on-disk implementation.

Streaming one blob in or out (BlobWriter, BlobReader) lives in mesh.cas.blobio.
Like Buildbarn's BlobAccess, the interface is small (``has``/``find_missing``,
``open``/``get``, ``put``/``put_file``/``writer``) so that decorators can wrap it:
a store that fetches missing blobs from peers, one that counts for metrics. Not
found is its own exception (:class:`~mesh.errors.BlobNotFound`) because those
decorators branch on it.

LocalStore layout under its root (``$MESH_HOME/cas``)::

    blobs/ab/<64 hex>   one immutable blob, mode 0444, named by its BLAKE3 hash
    exec/ab/<64 hex>    a 0555 copy of a blob, made on demand for link checkouts
                        of executable files (the mode lives in the inode)
    timed/ab/<64 hex>-<r|x>-<mtime ns>
                        a read-only copy of a blob (0444, or 0555: ``x``) with that mtime,
                        made on demand for link checkouts that give files their
                        user's mtimes (mesh.cas.times); derived, so gc may delete them
    tmp/                named temp files, where O_TMPFILE is not available
    quarantine/         blobs found damaged (by fsck, a read or a link), moved out of the way
    verified            blob files hashed and found right, with their stats (mesh.cas.verified)
    pins/<name>         roots that eviction must keep (one digest per file)
    epoch               changes whenever blobs are removed, so caches of "this
                        blob is stored" (the stat cache) know to forget

A blob is written to an anonymous temp file in the same filesystem, hashed from
what was written, and only then linked under its name: a reader never sees a
partial blob, and a crash leaves nothing but temp files, which opening the store
removes. Blobs are written without a per-file fsync; :meth:`LocalStore.sync`
makes a batch durable (one ``syncfs``) before its result is published.

Every read verifies (``get``, ``open``, ``copy_to``, and so copy checkouts): a blob
whose file no longer hashes to its name (changed on disk) is moved to ``quarantine/``
as soon as a read finds out, and the read raises :class:`~mesh.errors.BlobDamaged`
instead of handing out the bytes that complete it. Link checkouts hand out the file
itself: :meth:`LocalStore.link_into` checks each file it links before the tree is used,
trusting one that :attr:`LocalStore.verified` (mesh.cas.verified: hashed once, unchanged
since) vouches for and hashing any other; a damaged one is quarantined, its link
removed, and BlobDamaged raised. A full disk (ENOSPC, EDQUOT) met by any write into the store is
translated here, once (:attr:`LocalStore.writing`), into
:class:`~mesh.errors.StoreFull`, naming the store and the space left.

Its :attr:`~LocalStore.tally` (mesh.cas.tally) counts the blob files and bytes it
holds, once walked (:meth:`LocalStore.walk_shards`): every link, removal and
quarantine moves it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import secrets
import stat
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from mesh.cas.blobio import BLOB_MODE, BlobReader, BlobWriter, copy_fd, unlink_quietly, write_all
from mesh.cas.digest import Digest
from mesh.cas.hasher import MMAP_THRESHOLD, hash_bytes, hash_fd, read_fd
from mesh.cas.tally import SHARDS, Tally, shard_names
from mesh.cas.verified import VerifiedFiles
from mesh.errors import BlobDamaged, BlobNotFound, StoreError, StoreFull, UnsupportedFile

EXEC_MODE = 0o555
#: A blob's use is recorded (its mtime set) at most this often; see LocalStore._touch.
TOUCH_INTERVAL_S = 3600
#: A named temp file older than this is stale even if a process of its pid lives.
STALE_TEMP_SECONDS = 24 * 3600
#: The errors of a write that found no room: the filesystem is full, or its owner's quota is.
_NO_ROOM = (errno.ENOSPC, errno.EDQUOT)

log = logging.getLogger("mesh.store")


class Admission(Protocol):
    """Room for new blobs under a cap (mesh.cas.space.StoreSpace), held while each is written."""

    def try_reserve(self, size: int) -> contextlib.AbstractContextManager[object] | None:
        """Room at once, or None if it takes eviction."""

    def reserve_blocking(self, size: int) -> contextlib.AbstractContextManager[object]:
        """Room, evicting first if need be; raises StoreCapReached."""


@dataclass(frozen=True, slots=True)
class StoreStatistics:
    """Counters of one LocalStore object since it was opened (for /status and /metrics)."""

    blobs_written: int
    bytes_written: int
    blobs_already_present: int


@dataclass(frozen=True, slots=True)
class StoredBlob:
    """A blob file as found on disk by :meth:`LocalStore.iter_blobs`."""

    hex: str
    size: int
    mtime_ns: int
    executable_copy: bool


class LocalStore:
    """Blobs in a directory on the local disk. See the module docstring for the layout.

    Safe for concurrent use by several threads and processes: every write ends in
    an atomic link of a complete, verified file, and two writers of the same blob
    both succeed. Raises StoreError when the directory cannot be used.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = os.path.abspath(os.fspath(root))
        self._blobs = os.path.join(self.root, "blobs")
        self._exec = os.path.join(self.root, "exec")
        self._timed = os.path.join(self.root, "timed")
        self._tmp = os.path.join(self.root, "tmp")
        self.quarantine_dir = os.path.join(self.root, "quarantine")
        self._pins = os.path.join(self.root, "pins")
        try:
            for path in (self.root, self._blobs, self._exec, self._timed, self._tmp, self.quarantine_dir, self._pins):
                os.makedirs(path, exist_ok=True)
            self._blobs_fd = os.open(self._blobs, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            self._exec_fd = os.open(self._exec, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            self._timed_fd = os.open(self._timed, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise StoreError(f"cannot use {self.root} as a blob store: {exc.strerror or exc}") from None
        self._o_tmpfile = hasattr(os, "O_TMPFILE") and os.path.isdir("/proc/self/fd")
        self._counters = threading.Lock()
        self._written = 0
        self._bytes_written = 0
        self._present = 0
        self._unwritten_epochs = 0  # new epochs whose file could not be written (see new_epoch)
        #: The blob files and bytes held, once walked (mesh.cas.tally).
        self.tally = Tally()
        # Named temp files carry the pid of the process that opened the store, also when a
        # worker it forked writes them (mesh.cas.forkmap): workers die with their parent, so
        # its files are stale as soon as it is gone, even while a killed worker still exits.
        self._owner = os.getpid()
        #: ``with store.writing:`` around a write into the store turns a full disk into StoreFull.
        self.writing = _Writing(self)
        #: Room for each new blob that put and put_file write, when set: a node's cap
        #: (mesh.cas.space), which may evict first or raise StoreCapReached.
        self.admit: Admission | None = None
        #: The blob files known to be intact, that link checkouts trust (mesh.cas.verified).
        self.verified = VerifiedFiles(os.path.join(self.root, "verified"), probe_dir=self._tmp)
        self.remove_stale_temp_files()

    def __repr__(self) -> str:
        return f"LocalStore({self.root!r})"

    def close(self) -> None:
        """Release the directory handles."""
        for fd in (self._blobs_fd, self._exec_fd, self._timed_fd):
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self) -> LocalStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- paths ---------------------------------------------------------------

    @staticmethod
    def _rel(hex_: str) -> str:
        return f"{hex_[:2]}/{hex_}"

    def blob_path(self, digest: Digest) -> str:
        """Where the blob lives (it may not exist)."""
        return os.path.join(self._blobs, self._rel(digest.hex))

    # -- reading ---------------------------------------------------------------

    def has(self, digest: Digest) -> bool:
        """True when the blob is stored with the right size."""
        return self._stat(digest) is not None

    def _stat(self, digest: Digest) -> os.stat_result | None:
        """The blob file's stat if it is stored with the right size, else None."""
        try:
            st = os.stat(self._rel(digest.hex), dir_fd=self._blobs_fd)
        except FileNotFoundError:
            return None
        return st if st.st_size == digest.size else None

    def find_missing(self, digests: Iterable[Digest]) -> list[Digest]:
        """The digests among ``digests`` that the store does not hold (each once, in order)."""
        seen: set[Digest] = set()
        missing = []
        for d in digests:
            if d not in seen:
                seen.add(d)
                if not self.has(d):
                    missing.append(d)
        return missing

    def _open_fd(self, digest: Digest) -> int:
        """Open a blob for reading and mark it used (every read path comes here).

        A file of the wrong size is damaged whatever it holds: BlobDamaged at once.
        """
        try:
            fd = os.open(self._rel(digest.hex), os.O_RDONLY | os.O_CLOEXEC, dir_fd=self._blobs_fd)
        except FileNotFoundError:
            raise BlobNotFound(digest) from None
        st = os.fstat(fd)
        if st.st_size != digest.size:
            try:
                raise self.damaged(digest, fd, hash_fd(fd, st.st_size))
            finally:
                os.close(fd)
        self._touch(digest.hex, st)
        return fd

    def open(self, digest: Digest, *, check_first: bool = False) -> BlobReader:
        """A stream of the blob's bytes, verified as they pass (see BlobReader): the read that
        would complete a damaged blob raises BlobDamaged instead (the blob is quarantined).

        ``check_first`` also hashes the whole file before returning, so that a damaged
        blob raises before its first byte is read: for callers whose reader keeps what
        it gets without checking it (a terminal, a file); a copy to another store, which
        verifies, does not need it. Raises BlobNotFound.
        """
        fd = self._open_fd(digest)
        try:
            if check_first:
                self._check(digest, fd, hash_fd(fd, os.fstat(fd).st_size))
                os.lseek(fd, 0, os.SEEK_SET)
            return BlobReader(self, fd, digest)
        except BaseException:
            os.close(fd)
            raise

    def get(self, digest: Digest) -> bytes:
        """The whole blob, verified. Raises BlobNotFound, or BlobDamaged (it is quarantined then)."""
        fd = self._open_fd(digest)
        try:
            data = read_fd(fd, digest.size)
            self._check(digest, fd, hash_bytes(data))
        finally:
            os.close(fd)
        return data

    def copy_to(self, digest: Digest, dst_fd: int, *, verify: bool = True) -> None:
        """Write the blob into ``dst_fd`` (opened read-write at offset 0).

        Large blobs are copied in the kernel, then hashed from the copy, so the
        check covers exactly the bytes the destination holds; on BlobDamaged the
        destination holds the damaged bytes and the caller removes it.
        """
        if digest.size < MMAP_THRESHOLD:
            data = self.get(digest) if verify else self._read(digest)
            write_all(dst_fd, data)
            return
        src = self._open_fd(digest)
        try:
            copy_fd(src, dst_fd)
            if verify:
                self._check(digest, src, hash_fd(dst_fd))
        finally:
            os.close(src)

    def _check(self, digest: Digest, fd: int, actual: Digest) -> None:
        """Raise BlobDamaged, having quarantined the file open as ``fd``, unless ``actual`` is ``digest``."""
        if actual != digest:
            raise self.damaged(digest, fd, actual)

    def damaged(self, digest: Digest, fd: int, actual: Digest, *, executable: bool = False) -> BlobDamaged:
        """The blob open as ``fd`` (its 0555 copy if ``executable``) hashed to ``actual``, not to
        its name: quarantine that file (not a good copy that replaced it meanwhile) and return
        the error to raise.

        Logged at INFO, which a node's log shows; the CLI says it once, in its error.
        """
        st = os.fstat(fd)
        found = StoredBlob(digest.hex, st.st_size, st.st_mtime_ns, executable)
        moved = self.quarantine(found, inode=(st.st_dev, st.st_ino))
        log.info(
            "blob %s is damaged (its file hashes to %s); %s",
            digest,
            actual,
            f"moved to {moved}" if moved else "it was gone already",
        )
        return BlobDamaged(digest, actual, self.root)

    def _read(self, digest: Digest) -> bytes:
        fd = self._open_fd(digest)
        try:
            return read_fd(fd, digest.size)
        finally:
            os.close(fd)

    def link_into(
        self,
        digest: Digest,
        *,
        executable: bool,
        dir_fd: int,
        name: bytes,
        verify: bool = True,
        mtime_ns: int | None = None,
    ) -> None:
        """Hardlink a read-only file holding the blob as ``name`` in directory ``dir_fd``, checked.

        Plain files link to the blob itself (0444); executables to a 0555 copy made on
        first use (from the blob, verified as it is copied). Link checkouts do not refresh
        the blob's LRU time (whoever uses a linked tree pins it). With ``mtime_ns``, both
        link to a *timed copy* instead (``timed/``: the blob's bytes, read-only, with that
        mtime), made the same way on first use and linked thereafter: a task sees its
        user's mtimes (mesh.cas.times), and the blob files' own times stay the store's.

        The file linked is checked before this returns (unless not ``verify``): trusted if
        :attr:`verified` vouches for it (hashed before and unchanged since; the cost is a
        stat before the link and one of the new name after it), else hashed through the new
        name. A damaged file is quarantined and its new name removed: BlobDamaged, unless
        it was an executable copy of an intact blob (then a new copy is made and linked).
        Raises BlobNotFound, FileExistsError if ``name`` exists, and OSError (EMLINK when the
        blob has as many links as the filesystem allows).
        """
        if mtime_ns is None:
            rel = self._rel(digest.hex)
            src_fd = self._exec_fd if executable else self._blobs_fd
        else:
            rel = self._timed_rel(digest, executable, mtime_ns)
            src_fd = self._timed_fd
        remade = False
        while True:
            try:
                before = os.stat(rel, dir_fd=src_fd, follow_symlinks=False)
                os.link(rel, name, src_dir_fd=src_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                if not self.has(digest):
                    raise BlobNotFound(digest) from None
                if mtime_ns is not None:
                    self._make_timed(digest, executable, mtime_ns, rel)
                    continue
                if not executable:
                    raise
                # The executable copy is made on demand, then linked.
                with self._temp_file(EXEC_MODE, digest) as (fd, tmp_name), self.writing:
                    self.copy_to(digest, fd, verify=True)
                    self.publish(fd, tmp_name, digest, EXEC_MODE)
                continue
            if not verify:
                return
            after = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if self.verified.linked(before, after, digest, executable):
                return
            try:
                self._check_link(digest, executable, dir_fd, name)
                return
            except BlobDamaged:
                if (not executable and mtime_ns is None) or remade:
                    raise
                if mtime_ns is not None:
                    with contextlib.suppress(FileNotFoundError):
                        if os.stat(rel, dir_fd=src_fd, follow_symlinks=False).st_ino == before.st_ino:
                            os.unlink(rel, dir_fd=src_fd)  # a damaged timed copy goes; the next is made afresh
                remade = True  # the copy was damaged: a new one is made from the blob (which raises if it is too)

    @staticmethod
    def _timed_rel(digest: Digest, executable: bool, mtime_ns: int) -> str:
        return f"{digest.hex[:2]}/{digest.hex}-{'x' if executable else 'r'}-{mtime_ns}"

    def _make_timed(self, digest: Digest, executable: bool, mtime_ns: int, rel: str) -> None:
        """Make the timed copy ``rel`` of ``digest`` (verified as it is copied from the blob)."""
        mode = EXEC_MODE if executable else BLOB_MODE
        with self._temp_file(mode) as (fd, tmp_name), self.writing:
            self.copy_to(digest, fd, verify=True)
            os.utime(fd, ns=(mtime_ns, mtime_ns))
            source = tmp_name if tmp_name is not None else f"/proc/self/fd/{fd}"
            for _ in range(2):
                try:
                    os.link(source, rel, dst_dir_fd=self._timed_fd, follow_symlinks=True)
                    return
                except FileExistsError:
                    return  # another checkout made it first
                except FileNotFoundError:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(rel[:2], 0o755, dir_fd=self._timed_fd)  # shard directories are made on demand
            raise StoreError(f"cannot make a timed copy of blob {digest} in {self._timed}: its shard keeps vanishing")

    def prune_timed(self, *, unused: bool) -> int:
        """Delete timed copies (see :meth:`link_into`) whose blob is gone, and with ``unused``
        also those no checkout links now (one name left): they are derived, and made again
        on need. Returns how many were deleted. Eviction calls this under pressure."""
        removed = 0
        for shard in sorted(os.listdir(self._timed)):
            for entry, st in _listing(self._timed, shard):
                blob = entry.name.split("-", 1)[0]
                if (unused and st.st_nlink == 1) or not os.path.exists(os.path.join(self._blobs, shard, blob)):
                    removed += unlink_quietly(entry.path)
        return removed

    def _check_link(self, digest: Digest, executable: bool, dir_fd: int, name: bytes) -> None:
        """Hash the file just linked as ``name``; record it if right, else quarantine it and
        remove ``name`` (BlobDamaged)."""
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dir_fd)
        try:
            st = os.fstat(fd)
            started = self.verified.now_ns()
            actual = hash_fd(fd, st.st_size)
            if actual != digest:
                os.unlink(name, dir_fd=dir_fd)
                raise self.damaged(digest, fd, actual, executable=executable)
            self.verified.record(st, digest, executable, started)
        finally:
            os.close(fd)

    # -- writing -------------------------------------------------------------

    def put(self, data: bytes | bytearray | memoryview) -> Digest:
        """Store bytes held in memory; returns their digest. Idempotent."""
        digest = hash_bytes(data)
        if self._present_already(digest):
            return digest
        if digest.size >= MMAP_THRESHOLD:
            self.check_room(digest.size)
        with self._admitted(digest.size), self._temp_file(near=digest) as (fd, name), self.writing:
            write_all(fd, data)
            self.publish(fd, name, digest, BLOB_MODE)
        return digest

    def put_file(self, path: str | bytes, *, dir_fd: int | None = None) -> Digest:
        """Store the regular file at ``path`` (never following a symlink); returns its digest.

        Small files are read once and hashed and written from that one buffer; large
        ones are copied in the kernel and hashed from the copy, so the stored blob
        is always exactly what its name says even if the source changes meanwhile.
        Raises UnsupportedFile for anything but a regular file, OSError if unreadable.
        """
        src = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
        try:
            st = os.fstat(src)
            if not stat.S_ISREG(st.st_mode):
                raise UnsupportedFile(f"{os.fsdecode(path)}: not a regular file")
            if st.st_size < MMAP_THRESHOLD:
                return self.put(read_fd(src, st.st_size))
            room = self._room_now(st.st_size)
            if room is None:
                # At the cap: a file stored already (a task's whole workdir holds its input)
                # must not make the store evict. One more read of it, only then.
                digest = hash_fd(src, st.st_size)
                if self._present_already(digest):
                    return digest
                os.lseek(src, 0, os.SEEK_SET)
                assert self.admit is not None
                room = self.admit.reserve_blocking(st.st_size)
            self.check_room(st.st_size)  # before copying, not when the copy has filled the disk
            with room, self._temp_file() as (fd, name):
                with self.writing:
                    copy_fd(src, fd)
                digest = hash_fd(fd)
                if not self._present_already(digest):
                    self.publish(fd, name, digest, BLOB_MODE)
            return digest
        finally:
            os.close(src)

    def writer(self, expected: Digest | None = None) -> BlobWriter:
        """A :class:`BlobWriter` for streaming a blob in (uploads, downloads).

        With ``expected``, whose size is known before a byte arrives, raises StoreFull
        at once if it cannot fit in the free space (:meth:`check_room`).
        """
        if expected is not None:
            self.check_room(expected.size)
        return BlobWriter(self, expected)

    def _admitted(self, size: int) -> contextlib.AbstractContextManager[object]:
        """Room for a new blob of ``size`` bytes under the admission hook (:attr:`admit`), if any."""
        room = self._room_now(size)
        if room is None:
            assert self.admit is not None
            return self.admit.reserve_blocking(size)
        return room

    def _room_now(self, size: int) -> contextlib.AbstractContextManager[object] | None:
        """Room for ``size`` bytes without evicting; None when it takes eviction (or cannot be had)."""
        if self.admit is None or not size:
            return contextlib.nullcontext()
        return self.admit.try_reserve(size)

    def _present_already(self, digest: Digest) -> bool:
        st = self._stat(digest)
        if st is not None:
            self._count_present()
            self._touch(digest.hex, st)
            return True
        return False

    def new_temp(self, mode: int = BLOB_MODE, near: Digest | None = None) -> tuple[int, str | None]:
        """An open read-write temp file in the store's filesystem: (fd, name or None if anonymous).

        With ``near`` (the digest, when it is known before writing), the anonymous
        file is made in that blob's shard directory: ext4 allocates an inode near
        its directory, and spreading them over the shards instead of one ``tmp/``
        made small-blob writes several times faster on the project's machines.
        """
        if self._o_tmpfile:
            where = self._tmp
            if near is not None:
                where = os.path.join(self._exec if mode == EXEC_MODE else self._blobs, near.hex[:2])
            try:
                try:
                    return os.open(where, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, mode), None
                except FileNotFoundError:
                    if where == self._tmp:
                        raise
                    os.makedirs(where, exist_ok=True)  # shard directories are made on demand
                    return os.open(where, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, mode), None
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT):
                    raise self.full(exc) or StoreError(
                        f"cannot create a temp file in {where}: {exc.strerror}"
                    ) from None
                self._o_tmpfile = False
        name = os.path.join(self._tmp, f"{self._owner}-{secrets.token_hex(8)}")
        try:
            return os.open(name, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_CLOEXEC, mode), name
        except OSError as exc:
            raise self.full(exc) or StoreError(f"cannot create a temp file in {self._tmp}: {exc.strerror}") from None

    @contextlib.contextmanager
    def _temp_file(self, mode: int = BLOB_MODE, near: Digest | None = None) -> Iterator[tuple[int, str | None]]:
        """A temp file (see :meth:`new_temp`) that is closed, and unlinked if named, on exit."""
        fd, name = self.new_temp(mode, near)
        try:
            yield fd, name
        finally:
            os.close(fd)
            if name is not None:
                unlink_quietly(name)

    def publish(self, fd: int, name: str | None, digest: Digest, mode: int) -> None:
        """Give the finished temp file its name. An existing blob of that name is kept."""
        dir_fd = self._exec_fd if mode == EXEC_MODE else self._blobs_fd
        source = name if name is not None else f"/proc/self/fd/{fd}"
        rel = self._rel(digest.hex)
        with self.tally.shard(digest.hex, mode == EXEC_MODE) as shard:
            try:
                try:
                    os.link(source, rel, dst_dir_fd=dir_fd, follow_symlinks=True)
                except FileNotFoundError:
                    if not os.path.exists(source):
                        raise
                    # First blob of its shard: shard directories are made on demand.
                    try:
                        os.mkdir(rel[:2], 0o755, dir_fd=dir_fd)
                    except FileExistsError:
                        pass  # another writer made it first
                    os.link(source, rel, dst_dir_fd=dir_fd, follow_symlinks=True)
            except FileExistsError:
                self._count_present()
                return
            except OSError as exc:
                raise self.full(exc) or StoreError(
                    f"cannot store blob {digest} in {self.root}: {exc.strerror}"
                ) from None
            self.tally.add(shard, 1, digest.size)
        with self._counters:
            self._written += 1
            self._bytes_written += digest.size
        if self._unwritten_epochs:
            self.new_epoch()  # the write succeeded: there may be room for the epoch file again

    def _count_present(self) -> None:
        with self._counters:
            self._present += 1

    def _touch(self, hex_: str, st: os.stat_result) -> None:
        """Mark a blob (whose stat is ``st``) as used now, for least-recently-used eviction.

        Like the ``relatime`` mount option, the mark is only written when the last
        one is older than :data:`TOUCH_INTERVAL_S`: a metadata write per read would
        cost as much as writing the file on some disks, and LRU does not need
        finer time than that. A blob with other hard links (a link-mode checkout
        uses it) is never marked: its times are the checkout's files' times, which
        builds and stat caches rely on; whoever uses such a tree pins it.
        """
        if st.st_nlink > 1 or time.time() - st.st_mtime < TOUCH_INTERVAL_S:
            return
        try:
            os.utime(self._rel(hex_), dir_fd=self._blobs_fd)
        except OSError:
            pass

    def full(self, exc: OSError) -> StoreFull | None:
        """The StoreFull that ``exc`` means if it is a full disk or quota, else None."""
        if exc.errno not in _NO_ROOM:
            return None
        return StoreFull(self.root, self.free_bytes(), quota=exc.errno == errno.EDQUOT)

    def check_room(self, size: int) -> None:
        """Raise StoreFull if a blob of ``size`` bytes cannot fit in the free space.

        Called before a write whose size is known (uploads, large files): a write that
        is bound to fail would first take all the free space, and other writers on the
        disk (the node's state database) would fail meanwhile. One ``statvfs``: ~0.6 us.
        """
        free = self.free_bytes()
        if free is not None and size > free:
            raise StoreFull(self.root, free, needed=size)

    def free_bytes(self) -> int | None:
        """Bytes an unprivileged writer may still put on the store's filesystem (None if unknown)."""
        try:
            st = os.statvfs(self._blobs_fd)
        except OSError:
            return None
        return st.f_bavail * st.f_frsize

    def sync(self) -> None:
        """Make everything written so far durable: one ``syncfs`` of the store's filesystem."""
        if _syncfs(self._blobs_fd) != 0:
            os.sync()

    # -- maintenance -----------------------------------------------------------

    def remove_stale_temp_files(self) -> int:
        """Delete temp files left by writers that died; returns how many were removed."""
        removed = 0
        now = time.time()
        try:
            names = os.listdir(self._tmp)
        except OSError:
            return 0
        for entry in names:
            path = os.path.join(self._tmp, entry)
            pid_text = entry.split("-", 1)[0]
            try:
                age = now - os.lstat(path).st_mtime
            except OSError:
                continue
            if pid_text.isdigit() and _alive(int(pid_text)) and age < STALE_TEMP_SECONDS:
                continue
            if unlink_quietly(path):
                removed += 1
        return removed

    def iter_blobs(self) -> Iterator[StoredBlob]:
        """Every blob file on disk (plain blobs and executable copies), unverified."""
        for top, executable in ((self._blobs, False), (self._exec, True)):
            for shard in sorted(os.listdir(top)):
                if len(shard) == 2:
                    yield from self._scan(top, shard, executable)

    def walk_shards(self, indices: Iterable[int]) -> list[StoredBlob]:
        """The blob files of the shard directories ``indices`` (0-255 ``blobs/``, 256-511
        ``exec/``: see mesh.cas.tally), each walked under its tally lock, so that the tally
        of each is exact from then on (the first walk of them all counts the store).

        A shard that cannot be read counts as empty (logged); a later walk counts it again.
        """
        names = shard_names()
        found: list[StoredBlob] = []
        for index in indices:
            executable = index >= SHARDS
            name = names[index % SHARDS]
            with self.tally.shard(name, executable):
                try:
                    blobs = list(self._scan(self._exec if executable else self._blobs, name, executable))
                except OSError as exc:
                    log.warning("cannot read %s of the store %s: %s", name, self.root, exc.strerror or exc)
                    blobs = []
                self.tally.walked(index, len(blobs), sum(b.size for b in blobs))
            found += blobs
        return found

    @staticmethod
    def _scan(top: str, shard: str, executable: bool) -> Iterator[StoredBlob]:
        """The blob files of one shard directory (none if it does not exist)."""
        for entry, st in _listing(top, shard):
            yield StoredBlob(entry.name, st.st_size, st.st_mtime_ns, executable)

    def file_of(self, blob: StoredBlob) -> str:
        """The path of a blob file listed by :meth:`iter_blobs`."""
        top = self._exec if blob.executable_copy else self._blobs
        return os.path.join(top, blob.hex[:2], blob.hex)

    def remove(self, blob: StoredBlob, *, new_epoch: bool = True) -> bool:
        """Delete a blob file and, unless told not to, change the epoch. False if it was gone."""
        with self.tally.shard(blob.hex, blob.executable_copy) as shard:
            removed = unlink_quietly(self.file_of(blob))
            if removed:
                self.tally.add(shard, -1, -blob.size)
        if new_epoch:
            self.new_epoch()
        return removed

    def quarantine(self, blob: StoredBlob, *, inode: tuple[int, int] | None = None) -> str | None:
        """Move a damaged blob file to quarantine/ (kept for inspection, never served again) and
        change the epoch, so that no cache keeps vouching for the blob. fsck and every read
        that finds a blob damaged come here.

        ``inode`` (``st_dev``, ``st_ino``) names the file found damaged: if the blob's name
        holds another file by now, that one stays. Returns the file's new path, or None if
        it was gone (another reader, or fsck, moved it first). Raises nothing else: a
        file that cannot be moved (no room for quarantine/'s entry) is deleted instead, and
        an epoch that cannot be written is written later (:meth:`new_epoch`).
        """
        path = self.file_of(blob)
        kind = "exec" if blob.executable_copy else "blob"
        moved = os.path.join(self.quarantine_dir, f"{blob.hex}.{kind}.{time.time_ns()}")
        with self.tally.shard(blob.hex, blob.executable_copy) as shard:
            try:
                if inode is not None:
                    st = os.lstat(path)
                    if (st.st_dev, st.st_ino) != inode:
                        return None
                os.replace(path, moved)
            except FileNotFoundError:
                return None
            except OSError as exc:
                log.warning("cannot move %s to %s (%s): deleting it", path, self.quarantine_dir, exc.strerror or exc)
                if not unlink_quietly(path):
                    return None
                moved = f"nowhere: deleted ({exc.strerror or exc} moving it to {self.quarantine_dir})"
            self.tally.add(shard, -1, -blob.size)
        self.new_epoch()
        return moved

    def shared_with(self, node_store: object) -> bool:
        """Whether a client may write a node's blobs into this store directly: the node's
        ``store`` (from its /health) is this store's id, and this process's user owns the store.
        Root writing into a store of another user (a node run as that user, on the same
        $MESH_HOME) would leave directories the node cannot write to (found on 2026-12-04: a
        root ``mesh exec`` against a node of user nobody made shard directories that then failed
        the node's own stores with EACCES); such a client uploads instead."""
        if node_store != self.store_id():
            return False
        try:
            return os.stat(self.root).st_uid == os.geteuid()
        except OSError:
            return False

    def store_id(self) -> str:
        """A random id of this store, made on first use; equal ids mean one store on one disk.

        A client compares it with a node's to learn that the node shares its store
        (then it ingests into the store directly instead of uploading).
        """
        path = os.path.join(self.root, "id")
        try:
            with open(path, encoding="ascii") as f:
                return f.read().strip()
        except FileNotFoundError:
            pass
        tmp = f"{path}.{os.getpid()}.{secrets.token_hex(4)}"
        with open(tmp, "w", encoding="ascii") as f:
            f.write(secrets.token_hex(16))
        try:
            os.link(tmp, path)  # the first writer wins; others read its id
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
        with open(path, encoding="ascii") as f:
            return f.read().strip()

    def epoch(self) -> str:
        """A token that changes whenever blobs are removed (see the module docstring).

        While a new epoch could not be written (see :meth:`new_epoch`), this process
        answers one that no file holds, new at each removal, so that its own caches
        forget meanwhile.
        """
        try:
            with open(os.path.join(self.root, "epoch"), encoding="ascii") as f:
                text = f.read().strip()
        except FileNotFoundError:
            text = ""
        unwritten = self._unwritten_epochs
        return f"{text}+{unwritten}-unwritten" if unwritten else text

    def new_epoch(self) -> None:
        """Start a new epoch: caches that remembered blobs as present must check again.

        Never raises: a blob is gone already, and whoever removed it must not fail for
        that (a read that quarantines a damaged blob raises BlobDamaged, not the full
        disk it met here). A file that cannot be written (no room) is logged once; this
        process's :meth:`epoch` changes all the same, and the next write into the store
        that succeeds writes it. Other processes see the new epoch only then.
        """
        path = os.path.join(self.root, "epoch")
        tmp = f"{path}.{os.getpid()}.{secrets.token_hex(4)}"
        try:
            with open(tmp, "w", encoding="ascii") as f:
                f.write(secrets.token_hex(16))
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            with self._counters:
                self._unwritten_epochs += 1
                first = self._unwritten_epochs == 1
            if first:
                log.warning(
                    "cannot write the store's epoch file %s (%s): written with the next write into the store "
                    "that succeeds; until then other processes' stat caches may take removed blobs for stored",
                    path,
                    exc.strerror or exc,
                )
            return
        with self._counters:
            was, self._unwritten_epochs = self._unwritten_epochs, 0
        if was:
            log.warning("the store's epoch file %s is written again", path)

    def usage(self) -> tuple[int, int]:
        """``(blob files, bytes)`` currently on disk. Scans the store: O(blobs)."""
        count = total = 0
        for blob in self.iter_blobs():
            count += 1
            total += blob.size
        return count, total

    def statistics(self) -> StoreStatistics:
        """Counters of this object's writes."""
        return StoreStatistics(self._written, self._bytes_written, self._present)

    def count_writes(self, counts: StoreStatistics) -> None:
        """Add writes made on this object's behalf by other processes (ingest's workers)."""
        with self._counters:
            self._written += counts.blobs_written
            self._bytes_written += counts.bytes_written
            self._present += counts.blobs_already_present

    # -- pins ------------------------------------------------------------------

    def pin(self, name: str, digest: Digest) -> None:
        """Keep ``digest`` and all it reaches through eviction, under ``name``."""
        _check_pin_name(name)
        path = os.path.join(self._pins, name)
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="ascii") as f:
            f.write(f"{digest}\n")
        os.replace(tmp, path)

    def unpin(self, name: str) -> None:
        """Drop the pin ``name`` (no error if absent)."""
        _check_pin_name(name)
        unlink_quietly(os.path.join(self._pins, name))

    def pins(self) -> dict[str, Digest]:
        """Every pin: name -> digest. Unreadable pin files are ignored."""
        result = {}
        for name in sorted(os.listdir(self._pins)):
            if ".tmp" in name:
                continue
            try:
                with open(os.path.join(self._pins, name), encoding="ascii") as f:
                    result[name] = Digest.parse(f.read().strip())
            except (OSError, ValueError):
                continue
        return result


def _listing(top: str, shard: str) -> Iterator[tuple[os.DirEntry[str], os.stat_result]]:
    """The files of one shard directory with their stats (none if it does not exist)."""
    try:
        listing = os.scandir(os.path.join(top, shard))
    except FileNotFoundError:
        return
    with listing:
        for entry in listing:
            try:
                yield entry, entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue


def _check_pin_name(name: str) -> None:
    if not name or "/" in name or "\0" in name or name in (".", "..") or ".tmp" in name:
        raise StoreError(f"invalid pin name {name!r}: use letters, digits, '-', '_' and '.'")


def _alive(pid: int) -> bool:
    """Whether process ``pid`` may still write: it exists and is not a zombie.

    A killed ingest's worker (mesh.cas.forkmap) stays a zombie until init reaps it,
    and a zombie writes nothing.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except FileNotFoundError:
        return not os.path.isdir("/proc/self")  # gone since the kill(0), if there is a /proc
    except (OSError, IndexError):
        return True  # no /proc to ask: assume it lives
    return state not in (b"Z", b"X")


_libc: ctypes.CDLL | None = None


def _syncfs(fd: int) -> int:
    """Call syncfs(2); returns -1 where it is unavailable."""
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        return int(_libc.syncfs(fd))
    except (OSError, AttributeError):
        return -1


class _Writing:
    """``with store.writing:``: a write into the store that meets a full disk raises StoreFull.

    One place that knows what a full disk looks like (ENOSPC, EDQUOT), so that every
    write path (put, put_file, BlobWriter, executable copies) answers the same way.
    """

    __slots__ = ("_store",)

    def __init__(self, store: LocalStore) -> None:
        self._store = store

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, OSError):
            full = self._store.full(exc)
            if full is not None:
                raise full from None
