"""Checkout: write a snapshot out as a directory tree.

Two modes:

* ``copy`` (the default): every file is a new file owned by the caller, who may
  edit it freely. Each blob is verified as it is copied.
* ``link``: files are hardlinks to the store's read-only blob files (executables
  to 0555 copies kept for the purpose). Fast and free of space, and safe only for
  trees used by a uid that can neither write nor chmod the store's files (the
  sandbox and container executors): whoever owns the store could chmod a linked
  file and so change a blob. Each file is checked as it is linked
  (:meth:`~mesh.cas.store.LocalStore.link_into`): trusted while the store's record
  of intact blob files vouches for it (mesh.cas.verified), hashed otherwise, so a
  blob changed on disk is found (and quarantined) before anyone uses the tree.

Safety: every path is created relative to an open descriptor of its parent
directory, with O_EXCL / O_NOFOLLOW / mkdir semantics, so checkout never
follows a symlink while writing, never replaces or writes through anything it
finds in its way (a planted symlink, a file) and never writes outside its
target; it stops with CheckoutConflict instead. Names are validated again by
decode_node before any is used. The target must be absent or an empty directory.
"""

from __future__ import annotations

import errno
import os
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

from mesh.cas.digest import Digest
from mesh.cas.forkmap import can_fork, fork_map
from mesh.cas.hasher import single_threaded
from mesh.cas.snapshot import DEFAULT_WORKERS, read_node
from mesh.cas.store import LocalStore
from mesh.cas.times import Times
from mesh.cas.tree import Entry, Kind
from mesh.errors import BlobDamaged, CheckoutConflict, InvalidTimes, SnapshotError

Mode = Literal["copy", "link"]
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: Directories whose files are handed to the pool and not yet settled.
_INFLIGHT = 64
#: A checkout in worker processes shares out at least this many subtrees (when the
#: tree has them), so that the workers end at about the same moment.
SUBTREES = 64


@dataclass(frozen=True, slots=True)
class CheckoutStatistics:
    files: int
    directories: int
    symlinks: int
    bytes: int


def checkout(
    store: LocalStore,
    root: Digest,
    target: str | os.PathLike[str],
    *,
    mode: Mode = "copy",
    verify: bool = True,
    workers: int = DEFAULT_WORKERS,
    owner: tuple[int, int] | None = None,
    times: Times | int | None = None,
) -> CheckoutStatistics:
    """Write snapshot ``root`` into directory ``target`` (created if absent; must be empty).

    ``times``: the mtimes to give the entries (a task's input: mesh.cas.times), by path from
    a manifest, which must list exactly the snapshot's entries (else InvalidTimes), or one
    for every entry; None leaves them as the checkout makes them. Files and symlinks get
    theirs as they are written, directories at the end, bottom-up, once they are filled, at
    nanosecond resolution. A link checkout links *timed copies* of the blobs
    (:meth:`~mesh.cas.store.LocalStore.link_into` with ``mtime_ns``): the blob files are
    shared, and their times are not the checkout's to set.

    ``owner`` (uid, gid), copy mode only: every directory, file and symlink written, and
    ``target``, is given to it as it is made (the node, as root, checks a tree out for a
    task uid, which then owns its copies as any user owns a checkout of its own).

    Raises CheckoutConflict if something is in the way, BlobNotFound if the store
    lacks a blob, BlobDamaged if a blob is damaged (both modes check every file unless
    not ``verify``; the store quarantines it, and no file keeps its bytes), and
    InvalidTree for a hostile directory node. On error the partial tree is left for
    inspection; nothing outside ``target`` is touched.
    """
    if mode not in ("copy", "link"):
        raise ValueError(f"checkout mode must be 'copy' or 'link', not {mode!r}")
    if owner is not None and mode != "copy":
        raise ValueError("a link-mode checkout's files are the store's: they cannot be given to an owner")
    path = os.fspath(target)
    try:
        os.mkdir(path, 0o755)
    except FileExistsError:
        pass
    except OSError as exc:
        raise SnapshotError(f"cannot create {path}: {exc.strerror}") from None
    try:
        top = os.open(path, _DIR_FLAGS)
    except OSError as exc:
        raise CheckoutConflict(f"cannot check out into {path}: {exc.strerror}") from None
    try:
        if os.listdir(top):
            raise CheckoutConflict(f"cannot check out into {path}: the directory is not empty")
        if owner is not None:
            try:
                os.fchown(top, *owner)
            except OSError as exc:
                raise SnapshotError(f"cannot give {path} to uid {owner[0]}: {exc.strerror}") from None
        writer = _Writer(store, mode, verify, path, owner, times)
        if mode == "link":
            store.verified.refresh()  # what other processes found intact since the last look
        try:
            if workers > 1 and can_fork():
                stats = writer.run_forked(root, top, workers)
            else:
                stats = writer.run(root, top, workers)
        finally:
            if mode == "link":
                store.verified.flush()
        if times is not None:
            set_dir_times(top, times)
            if isinstance(times, Times) and len(times) != 1 + stats.files + stats.directories + stats.symlinks:
                raise InvalidTimes(f"the times manifest lists {len(times)} entries; the snapshot has others")
        return stats
    finally:
        os.close(top)


class _Handle:
    """An open directory descriptor shared by the work that still needs it."""

    __slots__ = ("fd", "refs")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.refs = 1

    def release(self) -> None:
        self.refs -= 1
        if self.refs == 0:
            os.close(self.fd)

    def close(self) -> None:
        """Close now, whatever still refers to it (error clean-up)."""
        if self.refs > 0:
            self.refs = 0
            os.close(self.fd)


class _Inline:
    """The pool's stand-in for ``workers <= 1``: runs each task at once on the calling thread.

    A small tree (a task's input, say) costs less written inline than a pool's start-up.
    """

    def submit(self, fn: Callable[..., None], *args: Any) -> Future[None]:
        future: Future[None] = Future()
        try:
            fn(*args)
            future.set_result(None)
        except Exception as exc:
            future.set_exception(exc)
        return future

    def shutdown(self, wait: bool = True) -> None:
        pass

    def __enter__(self) -> _Inline:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def _settle(future: Future[None], handle: _Handle) -> None:
    """Wait for one file write, raise its error, and release its directory."""
    try:
        future.result()
    finally:
        handle.release()


class _Writer:
    """One checkout: walks the nodes on this thread, writes files on a pool."""

    def __init__(
        self,
        store: LocalStore,
        mode: Mode,
        verify: bool,
        target: str,
        owner: tuple[int, int] | None = None,
        times: Times | int | None = None,
    ) -> None:
        self.store = store
        self.mode = mode
        self.verify = verify
        self.target = target
        self.owner = owner
        self.times = times
        self.files = self.dirs = self.links = self.bytes = 0
        self._counting = threading.Lock()  # files are counted on the pool's threads

    def run(
        self, root: Digest, top: int, workers: int, name: bytes | None = None, rel: bytes = b""
    ) -> CheckoutStatistics:
        """Depth first over the nodes; each directory's descriptor stays open while
        a file write or an unvisited subdirectory still needs it, so the number of
        open descriptors is bounded by the depth plus the writes in flight.

        ``root`` is written into directory ``top``, or into a new directory ``name``
        made in ``top`` (``rel`` is its path within the whole checkout, for messages).
        """
        inflight: deque[tuple[Future[None], _Handle]] = deque()
        stack: list[tuple[Digest, _Handle, bytes | None, bytes]] = [(root, _Handle(os.dup(top)), name, rel)]
        with ThreadPoolExecutor(max_workers=workers) if workers > 1 else _Inline() as pool:
            try:
                while stack:
                    digest, parent, name, rel = stack.pop()
                    if name is None:
                        here = parent
                    else:
                        try:
                            here = _Handle(self._mkdir(parent.fd, name, rel))
                        finally:
                            parent.release()
                    try:
                        files: list[tuple[Entry, bytes]] = []
                        for entry in read_node(self.store, digest):
                            child = rel + b"/" + entry.name if rel else entry.name
                            if entry.kind == Kind.DIRECTORY:
                                here.refs += 1
                                stack.append((entry.blob, here, entry.name, child))
                            elif entry.kind == Kind.SYMLINK:
                                self._symlink(here.fd, entry, child)
                            else:
                                files.append((entry, child))
                        if files:
                            # One task per directory: the pool's per-task cost is paid per
                            # directory, not per file.
                            here.refs += 1
                            inflight.append((pool.submit(self._files, here.fd, files), here))
                            while len(inflight) > _INFLIGHT:
                                _settle(*inflight.popleft())
                    finally:
                        here.release()
                while inflight:
                    _settle(*inflight.popleft())
            finally:
                for future, _ in inflight:
                    future.cancel()
                pool.shutdown(wait=True)
                for _, handle in inflight:
                    handle.close()
                for _, handle, _, _ in stack:
                    handle.close()
        return CheckoutStatistics(self.files, self.dirs, self.links, self.bytes)

    def run_forked(self, root: Digest, top: int, workers: int) -> CheckoutStatistics:
        """Write the tree with ``workers`` processes (see :mod:`mesh.cas.forkmap`).

        The top levels are written here, breadth first, until there are enough
        subtrees to share out; each worker then writes whole subtrees with
        :meth:`run`. Making inodes is most of a checkout's cost, and the kernel makes
        them on every core at once (measured: two processes hardlink the stdlib's
        files in half the time of one), which threads sharing one GIL do not reach.
        """
        opened: list[_Handle] = [_Handle(os.dup(top))]
        try:
            level: list[tuple[Digest, _Handle, bytes]] = [(root, opened[0], b"")]
            while level and len(level) < SUBTREES:
                below: list[tuple[Digest, _Handle, bytes]] = []
                for digest, here, rel in level:
                    for entry in read_node(self.store, digest):
                        child = rel + b"/" + entry.name if rel else entry.name
                        if entry.kind == Kind.DIRECTORY:
                            handle = _Handle(self._mkdir(here.fd, entry.name, child))
                            opened.append(handle)
                            below.append((entry.blob, handle, child))
                        elif entry.kind == Kind.SYMLINK:
                            self._symlink(here.fd, entry, child)
                        else:
                            self._file(here.fd, entry, child)
                level = below
            self.store.verified.flush()  # so that no worker writes this process's records again
            done = fork_map(self._subtree, level, workers, child_init=single_threaded)
        finally:
            for handle in opened:
                handle.close()
        for stats in done:
            self.files += stats.files
            self.dirs += stats.directories
            self.links += stats.symlinks
            self.bytes += stats.bytes
        return CheckoutStatistics(self.files, self.dirs, self.links, self.bytes)

    def _subtree(self, item: tuple[Digest, _Handle, bytes]) -> CheckoutStatistics:
        """In a worker: write the contents of one directory the parent made."""
        digest, here, rel = item
        writer = _Writer(self.store, self.mode, self.verify, self.target, self.owner, self.times)
        try:
            return writer.run(digest, here.fd, 1, None, rel)
        finally:
            self.store.verified.flush()  # a worker's records reach other checkouts through the file

    def _where(self, rel: bytes) -> str:
        return os.path.join(self.target, os.fsdecode(rel))

    def _mkdir(self, dfd: int, name: bytes, rel: bytes) -> int:
        try:
            os.mkdir(name, 0o755, dir_fd=dfd)
            fd = os.open(name, _DIR_FLAGS, dir_fd=dfd)
        except FileExistsError:
            raise CheckoutConflict(f"{self._where(rel)} already exists; checkout does not overwrite") from None
        except OSError as exc:
            raise self._failed(rel, exc) from None
        if self.owner is not None:
            try:
                os.fchown(fd, *self.owner)
            except OSError as exc:
                os.close(fd)
                raise self._failed(rel, exc) from None
        self.dirs += 1
        return fd

    def _symlink(self, dfd: int, entry: Entry, rel: bytes) -> None:
        try:
            os.symlink(entry.link, entry.name, dir_fd=dfd)
            if self.owner is not None:
                os.chown(entry.name, *self.owner, dir_fd=dfd, follow_symlinks=False)
            mtime = self._mtime(rel)
            if mtime is not None:
                os.utime(entry.name, ns=(mtime, mtime), dir_fd=dfd, follow_symlinks=False)
        except FileExistsError:
            raise CheckoutConflict(f"{self._where(rel)} already exists; checkout does not overwrite") from None
        except OSError as exc:
            raise self._failed(rel, exc) from None
        self.links += 1

    def _files(self, dfd: int, files: list[tuple[Entry, bytes]]) -> None:
        for entry, rel in files:
            self._file(dfd, entry, rel)

    def _mtime(self, rel: bytes) -> int | None:
        """The mtime the entry at ``rel`` gets, or None to leave it as made."""
        times = self.times
        if times is None or isinstance(times, int):
            return times
        mtime = times.get(rel)
        if mtime is None:
            raise InvalidTimes(f"the times manifest does not list {os.fsdecode(rel)!r} of the snapshot")
        return mtime

    def _file(self, dfd: int, entry: Entry, rel: bytes) -> None:
        executable = entry.kind == Kind.EXECUTABLE
        mtime = self._mtime(rel)
        if self.mode == "link":
            try:
                self.store.link_into(
                    entry.blob, executable=executable, dir_fd=dfd, name=entry.name, verify=self.verify, mtime_ns=mtime
                )
                self._count(entry)
                return
            except FileExistsError:
                raise CheckoutConflict(f"{self._where(rel)} already exists; checkout does not overwrite") from None
            except OSError as exc:
                if exc.errno != errno.EMLINK:
                    raise self._failed(rel, exc) from None
                # Too many links to this blob: fall back to a read-only copy.
            perm = 0o555 if executable else 0o444
        else:
            perm = 0o755 if executable else 0o644
        try:
            fd = os.open(
                entry.name, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, perm, dir_fd=dfd
            )
        except FileExistsError:
            raise CheckoutConflict(f"{self._where(rel)} already exists; checkout does not overwrite") from None
        except OSError as exc:
            raise self._failed(rel, exc) from None
        try:
            if self.owner is not None:
                try:
                    os.fchown(fd, *self.owner)
                except OSError as exc:
                    raise self._failed(rel, exc) from None
            self.store.copy_to(entry.blob, fd, verify=self.verify)
            if mtime is not None:
                os.utime(fd, ns=(mtime, mtime))
        except BlobDamaged:
            os.unlink(entry.name, dir_fd=dfd)  # a large blob is checked in the copy: drop the bad bytes
            raise
        finally:
            os.close(fd)
        self._count(entry)

    def _count(self, entry: Entry) -> None:
        with self._counting:
            self.files += 1
            self.bytes += entry.size

    def _failed(self, rel: bytes, exc: OSError) -> SnapshotError:
        return SnapshotError(f"cannot write {self._where(rel)}: {exc.strerror}")


def set_dir_times(top: int, times: Times | int, rel: bytes = b"") -> None:
    """Give the directory open as ``top`` (at ``rel`` in the checkout) and every directory
    below it their mtimes, bottom-up (a directory's own time is set once nothing more is
    made in it). No symlink is followed. Also for a kept workdir whose task added and
    removed entries (mesh.exec.workpool)."""
    with os.scandir(top) as listing:
        below = [os.fsencode(item.name) for item in listing if item.is_dir(follow_symlinks=False)]
    for name in below:
        fd = os.open(name, _DIR_FLAGS, dir_fd=top)
        try:
            set_dir_times(fd, times, rel + b"/" + name if rel else name)
        finally:
            os.close(fd)
    mtime = times if isinstance(times, int) else times.get(rel)
    if mtime is None:
        raise InvalidTimes(f"the times manifest does not list {os.fsdecode(rel)!r} of the snapshot")
    os.utime(top, ns=(mtime, mtime))
