"""Task uids: on a root node, each running task of the ``process`` executor is a uid of its own.

Like Nix's build users, a root node takes one unprivileged uid per slot from a range
reserved for the purpose (``task_uids`` in :mod:`mesh.config`, which says why its
default range is where it is; gid = uid, a group of its own), and every task runs as
the uid it leased, with no supplementary group, no capability and ``no_new_privs``
(util-linux ``setpriv``: see :mod:`mesh.exec.process`). So a task cannot read the node's key, store or state
(root's, 0600/0700), nor another running task's directory (another uid's, 0700),
nor signal or trace another task, nor gain privileges through a setuid program.

Where the directories are. A task uid must be able to reach its task directory by
its absolute path, and the node's home usually cannot be reached (root's home is
0700, and so are the private temporary directories tests and services run in). The
task directories of task uids therefore live in a directory of their own,
``/var/tmp/mesh-tasks-XXXXXXXX`` (made fresh by each start with a random name, root's,
0711: traversable, not listable), which each task directory (0700) inside belongs to
the task's uid while it runs and to root again once it ends (:mod:`mesh.exec.takeback`). The node's home
stays 0700. ``/var/tmp`` rather than ``/tmp``: it is on disk where ``/tmp`` may be
memory, and builds are large. A random name, so no local user can make it first. A
node holds a flock on its directory while it lives; a node that starts removes those
of dead nodes (killed and never restarted), and its own previous one.

Claiming uids. Nodes on one machine share the range: a node claims a uid by locking
the byte at offset uid of ``/run/mesh/task-uids.lock`` (an open file description
lock, which the kernel drops when the node closes it or dies), taking the first uids
no other live node holds. A uid that has a passwd or group entry stops the start with
one line (the range belongs to someone). A uid that runs processes although no live node
holds it ran them for a node that was killed, if they carry a task's marker
(mesh.exec.leftovers) or this node's own previous run held it (recorded in
``$MESH_HOME/task-users``, with the previous task directory, which is removed): they are
killed and the uid is taken. Any other process makes the node leave that uid alone (a
log line says which, and how to kill them); only when too few uids are left does that
stop the start.

Each task: :meth:`TaskUsers.lease` a uid (preferring one that owns a kept directory
of the same input, so that :mod:`mesh.exec.workpool` can hand it over), run,
:meth:`TaskUsers.kill`: every process of the uid is killed and waited for, and none
starts until the uid is freed, so the runner can take the task directory back and
read it (:mod:`mesh.exec.takeback`); then :meth:`TaskUsers.end`: what the uid left in
the shared writable places is removed (:mod:`mesh.exec.leftovers`), and only then
does the uid return to the pool.
"""

from __future__ import annotations

import errno
import fcntl
import grp
import itertools
import json
import logging
import os
import pwd
import select
import stat
import struct
import tempfile
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal, NoReturn

from mesh.errors import ExecError
from mesh.exec.hop import Cancel, RunCancelled
from mesh.exec.leftovers import (
    MARKER,
    Mark,
    SharedDirs,
    all_pids,
    kill_processes,
    marked,
    process_uids,
    remove_ipc,
    uid_is,
)
from mesh.exec.removal import remove_tree

__all__ = ["Lease", "TaskUsers"]

log = logging.getLogger("mesh.exec")

#: The lock file through which nodes on one machine share the range.
LOCK_PATH = "/run/mesh/task-uids.lock"
#: Where the directory of the task directories is made.
WORK_PARENT = "/var/tmp"
_WORK_PREFIX = "mesh-tasks-"
#: Seconds after which an unlocked task directories' directory is a dead node's.
_DEAD_AFTER = 60.0
#: struct flock (l_type, l_whence, l_start, l_len, l_pid, padding), for open file
#: description locks: held by this node's descriptor, not by its process, so that two
#: nodes in one process (tests, benchmarks) cannot both take a uid.
_FLOCK = struct.Struct("hhqqi4x")


@dataclass(slots=True)
class Lease:
    """One task's hold on a uid (and its gid, the same number), from lease to end.

    ``state``: ``leased``; ``killed`` once no process of the uid runs (:meth:`TaskUsers.kill`);
    ``ended`` once the uid is free again, or dropped.
    """

    uid: int
    marks: dict[str, Mark]  # the shared directories' times at the start
    state: Literal["leased", "killed", "ended"] = "leased"

    @property
    def gid(self) -> int:
        return self.uid


class TaskUsers:
    """The task uids this node holds, and the directory their task directories live in.

    Made by :meth:`claim`; thread-safe (tasks lease and end on worker threads).
    :meth:`close` gives the uids back.
    """

    def __init__(self, uids: list[int], workroot: str, lock_fd: int, shared: SharedDirs, root_fd: int) -> None:
        self.uids = tuple(uids)
        self.workroot = workroot
        self.shared = shared
        self._lock_fd = lock_fd
        self._root_fd = root_fd
        self._free = list(uids)
        self._lock = threading.Lock()
        self._waiters: set[int] = set()  # an eventfd per lease waiting for a uid, written when one frees

    def __repr__(self) -> str:
        return f"TaskUsers(uids={list(self.uids)}, workroot={self.workroot!r})"

    @classmethod
    def claim(
        cls,
        first: int,
        last: int,
        count: int,
        *,
        record: str,
        lock_path: str = LOCK_PATH,
        parent: str = WORK_PARENT,
    ) -> TaskUsers:
        """Claim ``count`` uids of ``first``-``last`` and make the task directories' directory.

        ``record`` is the file (in the node's home) that names what this node held, for
        its next start. Raises ExecError, in one line, when the range is someone's or has
        too few uids free.
        """
        previous_root, previous = _read_record(record)
        os.makedirs(os.path.dirname(lock_path), mode=0o755, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            uids = _claim(fd, first, last, count, previous)
            shared = SharedDirs(task_uids=uids)
            shared.sweep(uids, {})  # what previous holders of the uids may have left
            for uid in uids:
                remove_ipc(uid)
            if previous_root is not None:
                _remove_previous(previous_root, parent)
            _remove_dead(parent)
            workroot = tempfile.mkdtemp(prefix=_WORK_PREFIX, dir=parent)
            root_fd = os.open(workroot, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            fcntl.flock(root_fd, fcntl.LOCK_EX)  # held while this node lives: see _remove_dead
            os.chmod(workroot, 0o711)
            _write_record(record, workroot, uids)
        except BaseException:
            os.close(fd)  # drops every lock taken
            raise
        return cls(uids, workroot, fd, shared, root_fd)

    def lease(self, prefer: Collection[int] = (), cancel: Cancel | None = None) -> Lease:
        """A free uid, one of ``prefer`` if one is free; waits while all are leased.

        A node runs no more process tasks than it has slots, one uid each, so a task waits
        only once a uid was dropped (see :meth:`end`), until another task frees one. The
        wait ends with RunCancelled when ``cancel`` (the task's hop) fires. Notes the shared
        directories' times for :meth:`end`. Raises ExecError when no uid is left (each
        failed to be cleaned).
        """
        waiter: int | None = None
        try:
            while True:
                with self._lock:
                    if self._free:
                        uid = next((u for u in self._free if u in prefer), self._free[0])
                        self._free.remove(uid)
                        break
                    if not self.uids:
                        raise ExecError("no task uid is left: cleaning each after its task failed (see the log)")
                    if waiter is None:
                        waiter = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
                        self._waiters.add(waiter)
                if cancel is not None and cancel.cancelled:
                    raise RunCancelled
                poller = select.poll()
                poller.register(waiter, select.POLLIN)
                if cancel is not None:
                    poller.register(cancel.fileno(), select.POLLIN)
                poller.poll()
                try:
                    os.eventfd_read(waiter)
                except BlockingIOError:
                    pass  # woken by the cancellation alone
        finally:
            if waiter is not None:
                with self._lock:
                    self._waiters.discard(waiter)
                os.close(waiter)
        return Lease(uid, self.shared.mark())

    def kill(self, lease: Lease) -> None:
        """Kill every process of the lease's uid and wait until all are gone.

        None can start again until :meth:`end` has freed the uid and it is leased again: so
        whatever the uid owns (the task's directories) changes no more, which is what lets
        the runner read the task's directory. A uid whose process outlives SIGKILL is not
        leased again; the error is logged and raised as ExecError.
        """
        if lease.state != "leased":
            return
        try:
            kill_processes(uid_is(lease.uid))
        except OSError as exc:
            self._drop(lease, exc)
        lease.state = "killed"

    def end(self, lease: Lease) -> None:
        """Kill what runs of the task (unless :meth:`kill` did), remove what it left in shared
        places, free the uid. Nothing to do for a lease that ended.

        A uid that cannot be cleaned (a process that outlives SIGKILL) is not leased
        again; the error is logged and raised as ExecError.
        """
        if lease.state == "ended":
            return
        self.kill(lease)
        try:
            self.shared.sweep((lease.uid,), lease.marks)
            remove_ipc(lease.uid)
        except OSError as exc:
            self._drop(lease, exc)
        lease.state = "ended"
        with self._lock:
            self._free.append(lease.uid)
            self._wake()

    def _drop(self, lease: Lease, exc: OSError) -> NoReturn:
        lease.state = "ended"
        with self._lock:
            self.uids = tuple(u for u in self.uids if u != lease.uid)
            self._wake()
        log.error("task uid %d is not used again: cleaning it after its task failed: %s", lease.uid, exc)
        raise ExecError(f"cannot clean up after the task's uid {lease.uid}: {exc}") from None

    def _wake(self) -> None:
        """Wake every lease waiting for a uid (call holding the lock)."""
        for waiter in self._waiters:
            os.eventfd_write(waiter, 1)

    def close(self) -> None:
        """Give the uids back (call when no task runs); the task directories' directory goes too."""
        try:
            os.rmdir(self.workroot)
        except OSError:
            remove_tree(self.workroot)
        os.close(self._root_fd)
        os.close(self._lock_fd)
        self.shared.close()


def _claim(fd: int, first: int, last: int, count: int, previous: list[int]) -> list[int]:
    running = _uids_running()
    claimed: list[int] = []
    foreign: dict[int, list[int]] = {}
    ours = [u for u in previous if first <= u <= last]
    for uid in itertools.chain(ours, (u for u in range(first, last + 1) if u not in ours)):
        if len(claimed) == count:
            break
        try:
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, uid, 1, 0))
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EAGAIN):
                continue  # another live node holds it
            raise
        owner = _account(uid)
        if owner is not None:
            raise ExecError(
                f"task uid {uid} (of task_uids {first}-{last}) is the {owner}: choose a range of uids "
                "that no account uses (task_uids in mesh.toml, MESH_TASK_UIDS or --task-uids)"
            )
        if uid in running:
            if uid not in previous and not all(_left_by_a_task(pid) for pid in running[uid]):
                # Not a task's: another program's processes under this uid. Leave the uid alone.
                fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _FLOCK.pack(fcntl.F_UNLCK, os.SEEK_SET, uid, 1, 0))
                foreign[uid] = running[uid]
                continue
            killed = kill_processes(uid_is(uid))
            log.warning("killed %d process(es) that tasks of a killed node left running as uid %d", killed, uid)
        claimed.append(uid)
    if foreign:
        busy = ", ".join(f"{uid} (pids {', '.join(map(str, sorted(pids)[:5]))})" for uid, pids in foreign.items())
        hint = (
            f"task uid(s) {busy} of task_uids {first}-{last} run processes that are neither a live node's "
            f"nor a task's; kill them (pkill -KILL -U UID) or choose another range"
        )
        if len(claimed) < count:
            raise ExecError(f"{hint}: this node needs {count} free task uids, one per slot, and found {len(claimed)}")
        log.warning("%s; this node does without them", hint)
    if len(claimed) < count:
        raise ExecError(
            f"only {len(claimed)} of the {count} task uids this node needs (one per slot) are free in "
            f"task_uids {first}-{last}: other nodes hold the rest; give this node a larger range or fewer slots"
        )
    return claimed


def _left_by_a_task(pid: int) -> bool:
    """Whether process ``pid`` was started by a task of a root node's process executor (its
    environment names a task directory of task uids: mesh.exec.leftovers' marker), or is gone.
    Such a process of a uid no live node holds is what a killed node left: every live node
    holds its uids."""
    return marked(pid, f"{MARKER}={WORK_PARENT}/{_WORK_PREFIX}".encode()) is not False


def _account(uid: int) -> str | None:
    """Which account or group uses ``uid`` as its id, or None."""
    try:
        return f"uid of user {pwd.getpwuid(uid).pw_name!r}"
    except KeyError:
        pass
    try:
        return f"gid of group {grp.getgrgid(uid).gr_name!r}"
    except KeyError:
        return None


def _uids_running() -> dict[int, list[int]]:
    """Every uid that runs a process now (any of real, effective, saved, fs), with its pids."""
    found: dict[int, list[int]] = {}
    for pid in all_pids():
        for uid in set(process_uids(pid)):
            found.setdefault(uid, []).append(pid)
    return found


def _read_record(path: str) -> tuple[str | None, list[int]]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        root, uids = data["workroot"], data["uids"]
        if isinstance(root, str) and isinstance(uids, list) and all(isinstance(u, int) for u in uids):
            return root, uids
    except FileNotFoundError:
        return None, []
    except (OSError, ValueError, KeyError, TypeError):
        pass
    log.warning("ignoring %s: not what this node writes there", path)
    return None, []


def _write_record(path: str, workroot: str, uids: list[int]) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"workroot": workroot, "uids": uids}, f)
        f.write("\n")
    os.replace(tmp, path)


def _remove_dead(parent: str) -> None:
    """Remove the task directories' directories of nodes that died (killed, never restarted).

    A live node holds a flock on its own; one older than :data:`_DEAD_AFTER` seconds
    (a node starting takes its lock right after making it) that can be locked is a dead
    node's, and goes with what is left in it.
    """
    now = time.time()
    for name in os.listdir(parent):
        if not name.startswith(_WORK_PREFIX):
            continue
        path = os.path.join(parent, name)
        try:
            st = os.lstat(path)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or now - st.st_mtime < _DEAD_AFTER:
                continue
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # a live node's
        else:
            remove_tree(path)
        finally:
            os.close(fd)


def _remove_previous(root: str, parent: str) -> None:
    """Remove the task directories' directory of this node's previous run, if it is one."""
    name = os.path.basename(root)
    try:
        st = os.lstat(root)
    except FileNotFoundError:
        return
    if os.path.dirname(root) != parent or not name.startswith(_WORK_PREFIX) or st.st_uid != os.geteuid():
        log.warning("not removing %s: not a directory this node made", root)
        return
    remove_tree(root)
