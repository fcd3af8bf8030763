"""What a task may leave behind, found and removed: processes, and what a task uid left elsewhere.

A task of the ``process`` executor on a root node runs as a uid of its own
(:mod:`mesh.exec.taskusers`). When it ends, the uid must hold nothing of it before
another task gets the uid, or the next task could be spied on or changed by what the
last one left; and the tasks of a node killed meanwhile, of any executor, must not
run on:

* **Processes.** A daemon (``setsid``, a double fork) leaves the task's process
  group, so killing the group is not enough. :func:`kill_processes` kills every
  process whose real, effective, saved or filesystem uid is the task uid
  (:func:`uid_is`), found in ``/proc``. A scan of ``/proc`` visits pids in ascending order, so a process born
  while it runs is missed only if its pid is below the scan's position: every
  process born during a scan has a pid in (last pid before, last pid after] unless
  the pid space wrapped, so those pids are looked at again, and again for what was
  born meanwhile, until a look finds no pid was allocated; a wrap starts a whole
  scan over. Killed processes cannot fork any more (the kernel refuses a fork once
  SIGKILL is pending), and the function returns once they are gone. Each is signalled
  and waited for through a pidfd opened before its uid is checked, so a pid reused
  meanwhile is neither signalled nor waited for. A scan costs
  ~10 µs per process of the machine (1 ms for 100, measured here).
* **Processes of a node that was killed.** A node killed with SIGKILL cannot take
  its tasks' processes with it, whatever they run as: they keep running in their own
  process groups, may still write into their task directories, and would run
  alongside the re-run of the same task. Every task therefore carries
  ``MESH_TASK_DIR=<its task directory>`` (:data:`MARKER`) in its environment,
  inherited by everything it starts; :func:`kill_processes` with :func:`marked_below`
  kills every process whose environment names a directory below a workroot (the
  runner's, at the next start; for task uids, whichever node takes the uid next).
  The marker is matched in ``/proc/PID/environ``, so a recycled pid of an unrelated
  process is never hit; the same search finds what they start meanwhile, which
  inherits the marker.
* **Files in the places every uid may write**: ``/tmp``, ``/var/tmp``, ``/dev/shm``
  (POSIX shared memory and semaphores), ``/run/lock`` and ``/dev/mqueue`` (POSIX
  message queues, where that file system is mounted), and the world-writable
  directories reached through world-writable ones inside them. :class:`SharedDirs`
  watches each with inotify (the small ``inotify_simple``: ctypes over the system
  calls, read without blocking and without a thread, since the kernel queues the
  events) for entries made, moved in, or whose owner or mode changed; at the end of a
  task it stats only the names those events gave since the last sweep, removes every
  entry the uid owns among them with what it holds, as far as the uid could remove it
  itself, never through a symlink, and keeps as candidates the entries of other task
  uids, whose tasks may still run. A sweep so costs what changed, not what the
  directory holds: a /tmp of 20,000 entries that others wrote during the task took
  25 ms to sweep by listing it whole and 0.02 ms by its events (medians of 120 sweeps each, in one
  run). Where the events cannot be trusted the directory is listed whole, as every
  directory is at the start: once after the kernel's queue overflowed or a watch ended
  (the directory removed, moved or unmounted); and, for a directory that cannot be
  watched (no inotify, the per-user limit of watches), whenever its modification or
  change time moved during the task (a task uid can set neither to a value of its
  choosing) or just before the task's start (:data:`RACY_WINDOW_NS`). See
  :class:`SharedDirs`. A task's own TMPDIR is private anyway.
* **System V IPC** (shared memory, semaphores, message queues): every object the
  uid created or owns, listed in ``/proc/sysvipc``, is removed with ``ipcrm``.

What is not removed, and is documented for operators: world-writable directories
elsewhere on the machine (the task may write there as any local user may), POSIX
message queues where ``/dev/mqueue`` is not mounted, and the uid's kernel keyring
(``keyctl``): a later task of the same uid can read what an earlier one put there.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import select
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass

import inotify_simple

log = logging.getLogger("mesh.exec")

#: The environment variable that ties a process to the task directory it belongs to.
MARKER = "MESH_TASK_DIR"
#: The places every uid may write, swept after each task (those that exist).
SHARED_ROOTS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock", "/dev/mqueue")
#: A directory whose times are this close to the moment they were noted is listed whatever
#: its times say later: a change within the same clock tick would not move them. Linux
#: stamps times from a clock that ticks every 1-10 ms (HZ 1000-100); 50 ms is well past
#: it. (The stat cache's 2 s would list a busy /tmp after every task: 130 ms for 19,000
#: entries, measured.) File systems with coarser times are not supported for /tmp.
RACY_WINDOW_NS = 50_000_000
#: Pids looked at one by one before a whole scan of /proc is cheaper.
_RANGE_MAX = 256
#: Seconds killed processes may take to be gone before the kill is said to have failed.
_GONE_TIMEOUT = 10.0
#: Pidfds of killed processes held at once (waited for when there are this many).
_PIDFDS_MAX = 256
_LAST_PID = "/proc/sys/kernel/ns_last_pid"
_IPC = {"shm": "-m", "sem": "-s", "msg": "-q"}


# -- processes ---------------------------------------------------------------------------


def last_pid() -> int:
    """The pid the kernel allocated last in this pid namespace."""
    with open(_LAST_PID, "rb") as f:
        return int(f.read())


#: Which processes to kill, by pid: what :func:`uid_is` and :func:`marked_below` make. True
#: only for a process that exists and is one of them; whatever a process of them starts
#: must be one of them too (the search relies on it for what is born while it runs).
Match = Callable[[int], bool]


def uid_is(uid: int) -> Match:
    """The processes that run as ``uid``: real, effective, saved or filesystem uid."""
    return lambda pid: uid in process_uids(pid)


def marked_below(directory: str) -> Match:
    """The processes whose environment's :data:`MARKER` names a task directory in ``directory``
    (or, if it does not end with "/", whose marker starts with it)."""
    prefix = f"{MARKER}={directory}".encode()
    return lambda pid: marked(pid, prefix) is True


def marked(pid: int, prefix: bytes) -> bool | None:
    """Whether an item of the environment process ``pid`` started with begins with ``prefix``;
    None if it is gone or its environment cannot be read."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = f.read()
    except OSError:
        return None
    return any(item.startswith(prefix) for item in environ.split(b"\0"))


def kill_processes(match: Match) -> int:
    """SIGKILL every process ``match`` names and wait until all are gone; returns how many.

    See the module docstring for why nothing born during the search is missed.
    Raises OSError if a killed process outlives a generous timeout.
    """
    killed = _Killed()
    try:
        while True:
            before = last_pid()
            _kill(match, all_pids(), killed)
            after = last_pid()
            while before <= after and after - before <= _RANGE_MAX:
                if after == before:
                    killed.wait_gone()
                    return killed.count
                _kill(match, range(before + 1, after + 1), killed)
                before, after = after, last_pid()
            # the pid space wrapped, or many pids were allocated meanwhile: scan it all again
    finally:
        killed.close()


def all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


class _Killed:
    """The processes signalled so far, each held by a pidfd until it is gone.

    A process is signalled through a pidfd opened *before* it is looked at: if its pid
    was reused meanwhile, the pidfd's process is gone and the signal fails (ESRCH), so
    no unrelated process is signalled or waited for. Pidfds are waited for and closed in
    batches of :data:`_PIDFDS_MAX`, so that a task with many processes cannot exhaust the
    node's descriptors (killed processes cannot fork, so waiting mid-search loses nothing).
    """

    def __init__(self) -> None:
        self.count = 0
        self._held: list[tuple[int, int]] = []  # (pidfd, pid)

    def add(self, pidfd: int, pid: int) -> None:
        self._held.append((pidfd, pid))
        self.count += 1
        if len(self._held) >= _PIDFDS_MAX:
            self.wait_gone()

    def wait_gone(self) -> None:
        """Wait until every process held has exited (a zombie counts as gone: it runs nothing)."""
        deadline = time.monotonic() + _GONE_TIMEOUT
        poller = select.poll()
        waiting = dict(self._held)
        for fd in waiting:
            poller.register(fd, select.POLLIN)
        while waiting:
            left = deadline - time.monotonic()
            ready = poller.poll(math.ceil(left * 1000)) if left > 0 else []
            if not ready:
                pids = ", ".join(str(pid) for pid in sorted(waiting.values())[:5])
                raise OSError(f"process(es) {pids} outlived their SIGKILL for {_GONE_TIMEOUT:g} s")
            for fd, _ in ready:
                poller.unregister(fd)
                del waiting[fd]
        self.close()

    def close(self) -> None:
        for fd, _ in self._held:
            os.close(fd)
        self._held.clear()


def _kill(match: Match, pids: Iterable[int], killed: _Killed) -> None:
    """SIGKILL the processes ``match`` names among ``pids``, adding them to ``killed``."""
    me = os.getpid()
    for pid in pids:
        if pid == me or not match(pid):
            continue
        try:
            fd = os.pidfd_open(pid)
        except OSError:  # gone (ESRCH)
            continue
        try:
            ours = match(pid)  # again: the first look may have been at a pid's former process
            if ours:
                signal.pidfd_send_signal(fd, signal.SIGKILL)
        except ProcessLookupError:
            ours = False  # the pidfd's process is gone: what /proc showed was another's, or nothing
        except BaseException:
            os.close(fd)
            raise
        if ours:
            killed.add(fd, pid)
        else:
            os.close(fd)


def process_uids(pid: int) -> tuple[int, ...]:
    """The real, effective, saved and filesystem uids of process ``pid`` (empty if it is gone).

    Read from ``status``, not from the owner of ``/proc/PID``: a process that made
    itself non-dumpable shows as root's there.
    """
    try:
        fd = os.open(f"/proc/{pid}/status", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return ()
    try:
        data = os.read(fd, 4096)
    except OSError:
        return ()
    finally:
        os.close(fd)
    start = data.find(b"\nUid:")
    if start < 0:
        return ()
    end = data.find(b"\n", start + 1)
    return tuple(int(field) for field in data[start + 5 : end].split())


# -- files in shared places ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Mark:
    """A directory's times when a task started, and when they were read."""

    mtime_ns: int
    ctime_ns: int
    read_at_ns: int


#: What a watch of a shared directory reports: an entry made, moved in, or whose owner or mode
#: changed (a chmod can make an existing directory world-writable), and the end of the watch.
_WATCH = (
    inotify_simple.flags.CREATE
    | inotify_simple.flags.MOVED_TO
    | inotify_simple.flags.ATTRIB
    | inotify_simple.flags.DELETE_SELF
    | inotify_simple.flags.MOVE_SELF
    | inotify_simple.flags.ONLYDIR
    | inotify_simple.flags.EXCL_UNLINK
)
#: Events after which a watch no longer tells what its path holds.
_WATCH_ENDS = (
    inotify_simple.flags.IGNORED
    | inotify_simple.flags.DELETE_SELF
    | inotify_simple.flags.MOVE_SELF
    | inotify_simple.flags.UNMOUNT
)
_NAMED = inotify_simple.flags.CREATE | inotify_simple.flags.MOVED_TO | inotify_simple.flags.ATTRIB


@dataclass(frozen=True, slots=True)
class _Watch:
    """The inotify watch of a shared directory, and which directory (device, inode) it is."""

    wd: int
    dev: int
    ino: int


class SharedDirs:
    """The directories every uid may write (see the module docstring), and what a task left in them.

    ``roots`` are the top directories (those that do not exist are skipped); ``task_uids``
    every uid that sweeps may be asked about. Thread-safe for concurrent tasks of
    different uids. :meth:`close` releases its inotify descriptor.

    Which entries a sweep looks at. Each shared directory has an inotify watch, and the
    names its events give (an entry made, moved in, or whose owner or mode changed) are
    *candidates*: a sweep stats only those, removes what the swept uids own, and keeps as
    candidates the entries of other task uids (their tasks may still run: their own sweeps
    remove them later); it forgets the rest. A directory without a trustworthy watch is
    listed whole, as every directory is by the first sweep: one whose watch could not be
    made (no inotify, the per-user limit of watches) is listed when its times moved since
    the task's marks or since it was last listed, or changed just before the marks
    (:data:`RACY_WINDOW_NS`), whoever moved them; one whose watch ended (the directory was
    removed, moved or unmounted) or whose events were lost (the queue overflowed) is
    listed once and watched again. A whole listing watches the directory first, so that
    what is made meanwhile is a candidate, and keeps the entries of task uids it leaves
    as candidates. A world-writable directory found (made by another uid, or made
    world-writable by a chmod) is watched and listed whole.

    How a sweep reaches what it removes. Other uids may write the directories swept (that
    is why they are swept), and a task running as another uid can replace any directory
    of a path below a root with a symlink (a non-sticky world-writable directory lets it
    rename what it likes; ``fs.protected_symlinks`` does not stop root from following
    a link there). So a sweep never uses a path below a root: it opens each directory by
    name relative to its parent's descriptor with ``O_NOFOLLOW | O_DIRECTORY``, stats and
    removes entries relative to the descriptor of the directory listed, watches the
    directory through that descriptor, and removes only what the uid could remove itself:
    an entry the uid owns, and inside a directory the uid owns everything but the
    directories of other owners (left with what holds them). A directory whose path now
    leads to another inode than the one watched is listed whole.
    (Removing as the uid instead, through ``setpriv``, would bound it by the kernel's own
    checks too, but costs a process per sweep that finds something; and an entry a task
    left where another uid has since taken its write permission away would stay.)
    """

    def __init__(self, roots: Iterable[str] = SHARED_ROOTS, *, task_uids: Collection[int]) -> None:
        self.roots = tuple(os.path.realpath(r) for r in roots if os.path.isdir(r))  # marks lstat them
        self.task_uids = frozenset(task_uids)
        self._lock = threading.Lock()
        # Every shared directory known, with its times when it was last listed (None: list it whole).
        self._listed: dict[str, Mark | None] = dict.fromkeys(self.roots)
        self._watches: dict[str, _Watch] = {}
        self._paths: dict[int, str] = {}  # the path of each watch descriptor
        # The names to look at in each directory, each with the number of the event that named it.
        self._candidates: dict[str, dict[str, int]] = {}
        self._events = 0
        self._unwatched: set[str] = set()  # the directories that could not be watched (logged once)
        self.inotify: inotify_simple.INotify | None
        try:
            self.inotify = inotify_simple.INotify(nonblocking=True)
        except OSError as exc:  # no inotify, or the per-user limit of instances: list by times
            log.warning("shared directories are listed whole when they change: no inotify (%s)", exc.strerror)
            self.inotify = None
        self.sweep((), {})  # finds the world-writable directories below the roots, and watches them

    def __repr__(self) -> str:
        return f"SharedDirs({list(self.roots)})"

    def close(self) -> None:
        if self.inotify is not None:
            self.inotify.close()

    def mark(self) -> dict[str, Mark]:
        """Note the times of every shared directory: call before the task starts."""
        with self._lock:
            paths = list(self._listed)
        marks = {}
        for path in paths:
            now = time.time_ns()
            try:
                st = os.lstat(path)
            except OSError:
                continue
            marks[path] = Mark(st.st_mtime_ns, st.st_ctime_ns, now)
        return marks

    def take_events(self, events: Iterable[inotify_simple.Event]) -> None:
        """Note what inotify ``events`` tell, as a sweep does with what it reads: for tests, which
        cannot make the kernel's queue overflow without changing a setting of the whole machine."""
        with self._lock:
            self._take(events)

    def _take(self, events: Iterable[inotify_simple.Event]) -> None:
        """Note what inotify ``events`` tell (call holding the lock)."""
        for event in events:
            if event.mask & inotify_simple.flags.Q_OVERFLOW:
                for watched in self._watches:
                    self._listed[watched] = None  # events were lost: each is listed whole once
                self._watches.clear()
                continue
            path = self._paths.get(event.wd)
            if path is None:
                continue  # a watch already ended
            if event.mask & _WATCH_ENDS:
                if event.mask & inotify_simple.flags.IGNORED:
                    del self._paths[event.wd]
                watch = self._watches.get(path)
                if watch is not None and watch.wd == event.wd:
                    del self._watches[path]
                    if path in self._listed:
                        self._listed[path] = None
            elif event.name and event.mask & _NAMED:
                self._events += 1
                self._candidates.setdefault(path, {})[event.name] = self._events

    def _drain(self) -> None:
        """Read every queued event (call holding the lock)."""
        if self.inotify is None:
            return
        while events := self.inotify.read(timeout=0):
            self._take(events)

    def _watch(self, path: str, fd: int, st: os.stat_result) -> None:
        """Watch the directory open as ``fd`` as ``path`` (before it is listed), if inotify can."""
        if self.inotify is None:
            return
        with self._lock:
            old = self._watches.pop(path, None)
            try:
                wd = self.inotify.add_watch(f"/proc/self/fd/{fd}", _WATCH)
            except OSError as exc:  # the per-user limit of watches: this one is listed by its times
                if path not in self._unwatched:
                    self._unwatched.add(path)
                    log.warning("%s is listed whole when it changes: cannot watch it: %s", path, exc.strerror)
                return
            if old is not None and old.wd != wd:
                self._forget_watch(old.wd)
            other = self._paths.get(wd)
            if other is not None and other != path:
                # the same directory was watched at another path, where it is no longer
                self._watches.pop(other, None)
                if other in self._listed:
                    self._listed[other] = None
            self._paths[wd] = path
            self._watches[path] = _Watch(wd, st.st_dev, st.st_ino)

    def _forget_watch(self, wd: int) -> None:
        """Stop the watch ``wd`` (call holding the lock): its directory is no longer at its path."""
        self._paths.pop(wd, None)
        if self.inotify is not None:
            try:
                self.inotify.rm_watch(wd)
            except OSError:
                pass  # ended already

    def sweep(self, uids: Collection[int], marks: dict[str, Mark]) -> int:
        """Remove what ``uids`` own in the shared directories: the entries made, moved in or
        changed since they were last looked at (every entry, for empty ``marks``); see the class.

        Call once no process of theirs runs. Returns how many entries were removed.
        Raises OSError for a failure that another uid's doing does not explain.
        """
        if not self.task_uids.issuperset(uids):
            raise ValueError(f"uids {sorted(set(uids) - self.task_uids)} are not task uids of {self!r}")
        with self._lock:
            self._drain()
            known = dict(self._listed)
            watches = dict(self._watches)
            candidates = {path: dict(names) for path, names in self._candidates.items()}
        result = _Sweep(uids, self.task_uids)
        stack = list(known)
        while stack:
            path = stack.pop()
            if path in result.seen:
                continue
            result.seen.add(path)
            fd = self._open(path)
            if fd is None:
                result.gone.append(path)  # or no longer a directory: its parent changed, and is listed
                continue
            try:
                now = time.time_ns()
                st = os.fstat(fd)
                watch = watches.get(path)
                looked_at = candidates.get(path, {})
                if marks and watch is not None and (watch.dev, watch.ino) == (st.st_dev, st.st_ino):
                    names: Iterable[str] = list(looked_at)
                elif path in known and not _changed(st, marks.get(path)) and not _changed(st, known[path]):
                    continue
                else:
                    self._watch(path, fd, st)
                    result.listed[path] = Mark(st.st_mtime_ns, st.st_ctime_ns, now)
                    names = set(os.listdir(fd))
                    result.drop.update((path, n, event) for n, event in looked_at.items() if n not in names)
                for name in names:
                    child = result.look_at(fd, path, name, looked_at.get(name))
                    if child is not None:
                        stack.append(child)  # world-writable: listed whole unless it is watched
            finally:
                os.close(fd)
        with self._lock:
            self._merge(known, result)
        return result.removed

    def _merge(self, known: dict[str, Mark | None], result: _Sweep) -> None:
        """Bring what a sweep found into what is known (call holding the lock)."""
        for path in result.gone:
            if path in known and self._listed.get(path, _UNKNOWN) is known[path]:
                del self._listed[path]  # unless another sweep found it again meanwhile
                self._candidates.pop(path, None)
                watch = self._watches.pop(path, None)
                if watch is not None:
                    self._forget_watch(watch.wd)
        self._listed.update(result.listed)
        for path, name, event in result.drop:
            names = self._candidates.get(path)
            if names is not None and names.get(name) == event:  # not named again meanwhile
                del names[name]
        for path, name in result.keep:
            self._events += 1
            self._candidates.setdefault(path, {})[name] = self._events

    def _open(self, path: str) -> int | None:
        """A descriptor of the shared directory ``path``, reached from its root one directory at a
        time without following a symlink; None if that is not a directory now."""
        root = next(r for r in self.roots if path == r or path.startswith(f"{r}/"))
        try:
            fd = os.open(root, _DIR_FLAGS)  # a root is the system's, not a task's to replace
        except OSError:
            return None
        for name in path[len(root) :].split("/")[1:]:
            try:
                below = os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as exc:
                if exc.errno not in _REPLACED:
                    os.close(fd)
                    raise
                below = None
            os.close(fd)
            if below is None:
                return None
            fd = below
        return fd


#: Errors that say an entry was removed or replaced (by a task of another uid) meanwhile.
_REPLACED = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EISDIR, errno.ENOTEMPTY})
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_UNKNOWN = Mark(-1, -1, -1)


def _changed(st: os.stat_result, mark: Mark | None) -> bool:
    if mark is None:
        return True
    if (st.st_mtime_ns, st.st_ctime_ns) != (mark.mtime_ns, mark.ctime_ns):
        return True
    return max(mark.mtime_ns, mark.ctime_ns) > mark.read_at_ns - RACY_WINDOW_NS


class _Sweep:
    """What one sweep does and finds: entries removed, directories listed or gone, candidates
    to forget (with the event that named them) and to keep."""

    def __init__(self, uids: Collection[int], task_uids: Collection[int]) -> None:
        self.uids = uids
        self.task_uids = task_uids
        self.removed = 0
        self.seen: set[str] = set()
        self.listed: dict[str, Mark] = {}  # what this sweep listed, with its times just before
        self.gone: list[str] = []
        self.drop: set[tuple[str, str, int]] = set()
        self.keep: list[tuple[str, str]] = []

    def look_at(self, fd: int, path: str, name: str, event: int | None) -> str | None:
        """Remove the entry ``name`` of the directory ``fd`` (``path``) if the swept uids own it,
        and note whether it stays a candidate. Returns its path if it is a world-writable
        directory of another owner."""
        child: str | None = None
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            owner = None
        else:
            owner = st.st_uid
            if owner in self.uids:
                if _remove_owned(fd, name, self.uids, path):
                    self.removed += 1
                    owner = None
            elif stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_IWOTH:
                child = f"{path}/{name}"
        if owner in self.task_uids:
            if event is None:
                self.keep.append((path, name))  # found by a listing: another task's, still running
        elif event is not None:
            self.drop.add((path, name, event))
        return child


def _remove_owned(parent: int, name: str, uids: Collection[int], where: str) -> int:
    """Remove the entry ``name`` of the directory ``parent`` if one of ``uids`` owns it: a
    directory with what is inside it, but for the directories of other owners (see
    :class:`SharedDirs`). Returns 1 if the entry is gone, 0 if it is not (logged)."""
    try:
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        if st.st_uid not in uids:
            return 0
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(name, dir_fd=parent)  # a name in a directory that only writers of it can change
            return 1
        fd = os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=parent)
        try:
            if os.fstat(fd).st_uid not in uids:
                return 0  # replaced between the stat and the open
            _empty_owned(fd, uids)
        finally:
            os.close(fd)
        os.rmdir(name, dir_fd=parent)
        return 1
    except OSError as exc:
        if exc.errno not in _REPLACED:
            raise
        if exc.errno != errno.ENOENT:
            log.warning("left %s/%s of task uid(s) %s: %s", where, name, sorted(uids), exc.strerror)
        return 0


def _empty_owned(top: int, uids: Collection[int]) -> None:
    """Remove what is inside the directory ``top`` (of one of ``uids``), never following a
    symlink: every entry, but subdirectories of other owners, left with the directories
    of ``uids`` that hold them. Walks with one descriptor per level, none by path."""
    stack = [(os.dup(top), os.listdir(top))]
    names: list[str] = []  # the name of each directory of the stack but the first, in its parent
    try:
        while stack:
            fd, entries = stack[-1]
            if not entries:
                stack.pop()
                os.close(fd)
                if stack:
                    try:
                        os.rmdir(names.pop(), dir_fd=stack[-1][0])
                    except OSError as exc:
                        if exc.errno not in _REPLACED:
                            raise
                continue
            name = entries.pop()
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                if not stat.S_ISDIR(st.st_mode):
                    os.unlink(name, dir_fd=fd)
                    continue
                if st.st_uid not in uids:
                    continue
                below = os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as exc:
                if exc.errno not in _REPLACED:
                    raise
                continue
            try:
                if os.fstat(below).st_uid not in uids:
                    os.close(below)
                    continue
                stack.append((below, os.listdir(below)))
            except BaseException:
                os.close(below)
                raise
            names.append(name)
    finally:
        for fd, _ in stack:
            os.close(fd)


# -- System V IPC --------------------------------------------------------------------------------


def remove_ipc(uid: int) -> int:
    """Remove every System V IPC object that ``uid`` owns or created; returns how many."""
    removed = 0
    for kind, flag in _IPC.items():
        try:
            with open(f"/proc/sysvipc/{kind}", "rb") as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        if len(lines) < 2:
            continue
        header = lines[0].split()
        column = {name: i for i, name in enumerate(header)}
        ident = column[b"shmid" if kind == "shm" else b"semid" if kind == "sem" else b"msqid"]
        for line in lines[1:]:
            fields = line.split()
            if str(uid).encode() in (fields[column[b"uid"]], fields[column[b"cuid"]]):
                done = subprocess.run(["ipcrm", flag, fields[ident].decode()], capture_output=True)
                if done.returncode == 0:
                    removed += 1
                else:
                    log.warning("could not remove System V %s %s of uid %d: %s", kind, fields[ident], uid, done.stderr)
    return removed
