"""Task directories kept for the next task with the same input, so that it skips the checkout.

Checking a small task's input out and removing its directory afterwards cost more
than running it on a slow disk: mkdir, create, unlink and rmdir take 0.1-1.4 ms each
on this project's test machines (ext4 mounted with ``discard``), about 1.3 ms of a
trivial task's 3.2. Like Bazel's ``--reuse_sandbox_directories``, the runner keeps a
finished task's directory when it can show that the checkout in it is exactly as it
was made, and hands it to the next task whose input is the same snapshot.

What shows it is a :class:`Manifest`. Right after the checkout every entry of the
workdir is stat-ed and recorded with the snapshot entry it came from. After the
task, :meth:`Manifest.verify` walks the workdir again:

* every recorded entry must be there with the same type, permission bits, owner and
  inode; a file also with the same size, link count, mtime and ctime; a symlink with
  the same ctime (a replaced or rewritten entry gets a new ctime: the kernel sets it
  on every write, chmod, chown, link, rename and creation);
* racily clean entries (git's term, as in :mod:`mesh.cas.statcache`): a file changed
  again within the timestamp granularity of the moment it was checked can keep its
  stat, so a file or symlink whose mtime or ctime is less than
  :data:`~mesh.cas.statcache.RACY_WINDOW_NS` older than that moment is read again
  (a file hashed and compared with its digest, a link's target compared); once
  the moment is far enough behind, the stat alone is trusted;
* what the task added (its outputs) are *extras*: the recorded entries alone decide
  whether the checkout is intact, and the extras are removed before the directory
  is kept. Directories' mtimes are not compared (adding and removing extras changes
  them); their names are. The runner sets them again from the times manifest when it
  hands a kept directory to the next task (files' mtimes are compared: a task that
  touched an input file leaves a directory that is not kept). Reuse is keyed by the
  input and its times manifest.

The runner keeps only copy-mode checkouts, of executors that have no ``prepare``
hook (the ``process`` and ``docker`` executors): in a link-mode checkout the files are
the store's own, whose link counts change with every other checkout. A checkout made
for a task uid (the ``process`` executor of a root node, :mod:`mesh.exec.taskusers`)
belongs to that uid, files and directories, and goes only to a later task that leased
the same uid (:meth:`WorkdirPool.take` with ``owner``): handing it to another uid
would change every entry's owner and ctime. Such a task is checked only once every
process of its uid is gone, and while it waits idle its task directory is root's
(0700), so no task uid can reach it by its path.

Checked twice. A check when the task ends is not enough: a task can open a file of
its checkout for writing and pass the descriptor to a task of another uid (over an
abstract unix socket), which writes through it later, while the directory is idle or
while the next task with the same input runs on it; and a later task of the same uid,
handed a descriptor of a directory of the checkout, could change it while it is idle.
So :meth:`WorkdirPool.take` has its caller look again (:meth:`Manifest.unchanged`): the
stat records must still match (any write moves a file's ctime), nothing may have been
added, and no file may be open for writing anywhere: a read lease (``F_SETLEASE``),
taken and given back at once, is granted only while the kernel counts no writer of the
file, whoever holds it. Once the directory is handed to a task, no new writer can
appear but the task's own processes: files and directories are writable by their
owner only, and no other process of the owner's uid runs. Without task uids (a node
that is not root), a process that escaped the task's process group could still change
a kept workdir after its checks, just as it could change anything else of the node's
user.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace

from mesh.cas.digest import Digest
from mesh.cas.hasher import hash_file
from mesh.cas.snapshot import read_node
from mesh.cas.statcache import RACY_WINDOW_NS
from mesh.cas.store import LocalStore
from mesh.cas.tree import Kind

#: Idle task directories a runner keeps by default, and the bytes of files they may hold.
KEEP_DIRS = 8
KEEP_BYTES = 256 << 20

# What is compared: (st_mode, uid, gid, ino) for every entry, then by kind.
_DirRecord = tuple[int, int, int, int]
# + size, nlink, mtime_ns, ctime_ns
_FileRecord = tuple[int, int, int, int, int, int, int, int]
# + mtime_ns, ctime_ns
_LinkRecord = tuple[int, int, int, int, int, int]


@dataclass(frozen=True, slots=True)
class _Entry:
    """One recorded entry: its stat record, and what it must hold if it has to be re-read."""

    record: tuple[int, ...]
    kind: Kind
    digest: Digest | None = None  # files
    target: bytes | None = None  # symlinks
    children: int = 0  # directories: how many recorded entries they hold


@dataclass(frozen=True, slots=True)
class Manifest:
    """The recorded state of one checkout of ``input`` (see the module docstring).

    ``entries`` maps paths relative to the workdir (``b""`` is the workdir itself) to
    what was recorded; ``checked_at_ns`` is the moment the stats were last known to
    describe the snapshot; ``bytes`` the total size of its files; ``epoch`` the store's
    epoch when the snapshot was last known to be whole in the store (blobs removed
    since then, by eviction or fsck, may be among the snapshot's).
    """

    input: Digest
    entries: dict[bytes, _Entry]
    checked_at_ns: int
    bytes: int
    epoch: str
    times: Digest | None = None  # the times manifest the checkout's mtimes come from (mesh.cas.times)

    @property
    def owner(self) -> int:
        """The uid the checkout's directories and files belong to (its top directory's)."""
        return self.entries[b""].record[1]

    @classmethod
    def record(
        cls, store: LocalStore, root: Digest, workdir: str, *, epoch: str, times: Digest | None = None
    ) -> Manifest:
        """Stat every entry of a fresh checkout of ``root`` at ``workdir``; ``epoch`` is the
        store's epoch read before the checkout (which read every blob of the snapshot).

        Raises OSError if the workdir does not have the snapshot's entries (it was
        changed since the checkout), and what reading the snapshot's nodes raises.
        """
        started = time.time_ns()
        base = os.fsencode(workdir)
        entries: dict[bytes, _Entry] = {}
        total = 0
        stack: list[tuple[bytes, Digest]] = [(b"", root)]
        while stack:
            rel, node = stack.pop()
            children = read_node(store, node)
            entries[rel] = _Entry(_dir_record(os.lstat(_join(base, rel))), Kind.DIRECTORY, children=len(children))
            for entry in children:
                path = rel + b"/" + entry.name if rel else entry.name
                if entry.kind == Kind.DIRECTORY:
                    stack.append((path, entry.blob))
                    continue
                st = os.lstat(_join(base, path))
                if entry.kind == Kind.SYMLINK:
                    entries[path] = _Entry(_link_record(st), entry.kind, target=entry.link)
                else:
                    entries[path] = _Entry(_file_record(st), entry.kind, digest=entry.blob)
                    total += st.st_size
        return cls(root, entries, started, total, epoch, times)

    def verify(self, workdir: str) -> Verdict | None:
        """Whether the checkout at ``workdir`` is intact: a Verdict naming the extras, or None.

        Never raises for what a task may have done to the workdir (an unreadable
        directory, a vanished entry): any OSError means the checkout is not intact.
        """
        started = time.time_ns()
        racy_after = self.checked_at_ns - RACY_WINDOW_NS
        base = os.fsencode(workdir)
        entries = self.entries
        extras: list[bytes] = []
        try:
            top = entries[b""]
            if _dir_record(os.lstat(base)) != top.record:
                return None
            stack = [(b"", top)]
            while stack:
                rel, here = stack.pop()
                found = 0
                with os.scandir(_join(base, rel)) as listing:
                    for item in listing:
                        path = rel + b"/" + item.name if rel else item.name
                        want = entries.get(path)
                        if want is None:
                            extras.append(path)
                            continue
                        st = item.stat(follow_symlinks=False)
                        if want.kind == Kind.DIRECTORY:
                            if _dir_record(st) != want.record:
                                return None
                            stack.append((path, want))
                        elif not _intact(want, st, _join(base, path), racy_after):
                            return None
                        found += 1
                if found != here.children:
                    return None  # a recorded entry is gone
        except OSError:
            return None
        return Verdict(replace(self, checked_at_ns=started), extras)

    def unchanged(self, workdir: str) -> Manifest | None:
        """Whether the checkout kept at ``workdir`` may be handed to a task: exactly as
        recorded (nothing added) and no file of it open for writing anywhere; its manifest
        as of this check, or None. Call before handing it over, with no process of its
        owner running (see the module docstring)."""
        verdict = self.verify(workdir)
        if verdict is None or verdict.extras:
            return None
        base = os.fsencode(workdir)
        for rel, entry in self.entries.items():
            if entry.kind in (Kind.FILE, Kind.EXECUTABLE) and not _unwritten(_join(base, rel)):
                return None
        return verdict.manifest


@dataclass(frozen=True, slots=True)
class Verdict:
    """An intact checkout: its manifest as of this check, and the paths the task added."""

    manifest: Manifest
    extras: list[bytes]  # relative to the workdir; an added directory is named, not its contents


def _join(base: bytes, rel: bytes) -> bytes:
    return base + b"/" + rel if rel else base


def _dir_record(st: os.stat_result) -> _DirRecord:
    return (st.st_mode, st.st_uid, st.st_gid, st.st_ino)


def _file_record(st: os.stat_result) -> _FileRecord:
    return (st.st_mode, st.st_uid, st.st_gid, st.st_ino, st.st_size, st.st_nlink, st.st_mtime_ns, st.st_ctime_ns)


def _link_record(st: os.stat_result) -> _LinkRecord:
    return (st.st_mode, st.st_uid, st.st_gid, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)


def _unwritten(path: bytes) -> bool:
    """Whether no open file description anywhere can write the file at ``path``.

    A read lease is granted only while none is open for writing (the kernel's count of
    writers includes descriptors passed to other processes and shared writable
    mappings), and root or the owner may take one; it is given back at once. Any failure
    (leases disabled, say) counts as "cannot show it".
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


def _intact(want: _Entry, st: os.stat_result, path: bytes, racy_after: int) -> bool:
    """Whether a recorded file or symlink still holds what it held (re-read if racily clean)."""
    if want.kind == Kind.SYMLINK:
        if _link_record(st) != want.record:
            return False
        if max(st.st_mtime_ns, st.st_ctime_ns) > racy_after:
            return os.readlink(path) == want.target
        return True
    if _file_record(st) != want.record:
        return False
    if max(st.st_mtime_ns, st.st_ctime_ns) > racy_after:
        return hash_file(path, follow_symlinks=False) == want.digest
    return True


@dataclass(frozen=True, slots=True)
class PoolStatistics:
    """Counters of a WorkdirPool (for /metrics); ``stale``: taken, but changed while idle."""

    idle: int
    reused: int
    kept: int
    evicted: int
    stale: int = 0


class WorkdirPool:
    """Idle task directories by input snapshot; the least recently kept goes first.

    Holds at most ``dirs`` directories and ``max_bytes`` bytes of checked-out files:
    keeping one more evicts the oldest. Thread-safe (tasks finish on worker threads);
    it never touches the filesystem: the caller removes what :meth:`keep` and
    :meth:`drain` hand back.
    """

    def __init__(self, *, dirs: int = KEEP_DIRS, max_bytes: int = KEEP_BYTES) -> None:
        if dirs < 0 or max_bytes < 0:
            raise ValueError("a pool's limits must not be negative")
        self.dirs = dirs
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._idle: OrderedDict[str, Manifest] = OrderedDict()  # task root -> its checkout
        self._bytes = 0
        self._reused = self._kept = self._evicted = self._stale = 0

    def __repr__(self) -> str:
        return f"WorkdirPool(dirs={self.dirs}, max_bytes={self.max_bytes})"

    def fits(self, size: int) -> bool:
        """Whether a checkout of ``size`` bytes may be kept at all."""
        return self.dirs > 0 and size <= self.max_bytes

    def owners(self, input: Digest, times: Digest | None = None) -> set[int]:
        """The uids that own an idle checkout of ``input`` with the mtimes of ``times``."""
        with self._lock:
            return {m.owner for m in self._idle.values() if m.input == input and m.times == times}

    def take(
        self,
        input: Digest,
        owner: int | None,
        check: Callable[[str, Manifest], Manifest | None],
        times: Digest | None = None,
    ) -> tuple[str, Manifest] | None:
        """An idle task root holding a checkout of ``input`` with the mtimes of ``times`` (owned by
        ``owner``, if given), and its manifest as of ``check``; None if there is none.

        ``check(root, manifest)`` (called without the pool's lock) looks at the directory
        again and returns its manifest as of now, or None if it changed while idle: then
        the caller's check has disposed of it, and the next one is tried.
        """
        while True:
            with self._lock:
                found = next(
                    (
                        (root, manifest)
                        for root, manifest in reversed(self._idle.items())  # the most recently kept
                        if manifest.input == input and manifest.times == times and owner in (None, manifest.owner)
                    ),
                    None,
                )
                if found is None:
                    return None
                del self._idle[found[0]]
                self._bytes -= found[1].bytes
            checked = check(*found)
            with self._lock:
                if checked is None:
                    self._stale += 1
                    continue
                self._reused += 1
            return found[0], checked

    def keep(self, root: str, manifest: Manifest) -> list[str]:
        """Keep ``root`` for the next task with its input; returns the roots evicted to make room."""
        evicted: list[str] = []
        with self._lock:
            if not self.fits(manifest.bytes):
                return [root]
            self._idle[root] = manifest
            self._bytes += manifest.bytes
            self._kept += 1
            while len(self._idle) > self.dirs or self._bytes > self.max_bytes:
                old, gone = self._idle.popitem(last=False)
                self._bytes -= gone.bytes
                self._evicted += 1
                evicted.append(old)
        return evicted

    def drain(self) -> list[str]:
        """Give up every idle directory; returns their roots."""
        with self._lock:
            roots = list(self._idle)
            self._idle.clear()
            self._bytes = 0
        return roots

    def statistics(self) -> PoolStatistics:
        with self._lock:
            return PoolStatistics(len(self._idle), self._reused, self._kept, self._evicted, self._stale)
