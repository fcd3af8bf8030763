"""Stable paths: a task sees its directories at the same absolute paths on every run and node.

Tools write the path they run at into what they make: a compiler's debug information
(``DW_AT_comp_dir``, ``__FILE__``), a script an installer writes, a cache that records
its directory. The runner checks each task out into a fresh host directory
(``task-XXXXXXXX/work``), so two runs of ``make CFLAGS=-g`` would give different objects.
So every executor shows the task its directories at fixed paths, whatever host
directory holds them (:class:`TaskView`):

==========  ==================  ==================  ==================
executor    workdir (cwd)       HOME                TMPDIR
==========  ==================  ==================  ==================
docker      ``/work``           ``/home/mesh``      ``/tmp``
sandbox     ``/work``           ``/tmp``            ``/tmp``
process     ``/run/mesh/work``  ``/run/mesh/tmp``   ``/run/mesh/tmp``
==========  ==================  ==================  ==================

HOME and TMPDIR are one directory of the task's own (the runner's ``tmp``), shown
twice by docker. ``PWD`` in the task's environment is the directory it starts in.

The sandbox and docker show the task a file system of their own making, so the
workdir can be ``/work``, as in the container (the sandbox hides whatever the host
has at ``/work``). The ``process`` executor runs on the host's file system, where
``/work`` may hold what its tasks need (on this project's machines, the repositories
and virtualenvs that tests run tools from), so its tasks' directories appear under
``/run/mesh``, a directory of mesh's own that holds nothing a task needs (a root node
keeps its task-uid lock there): each task gets a mount namespace of its own, in
which its task directory (``work`` and ``tmp``) is bound over ``/run/mesh``. One
mount, so that files can be hard-linked and renamed between the workdir and TMPDIR
as on the host; between the workdir and the rest of the host they now fail with
EXDEV, as between two file systems (``mv`` and most tools copy then, as they do for
a ``/tmp`` on tmpfs). The rest of the host is as it is; two tasks at once each see
their own directories at the same paths. How the namespace is made
(:class:`Namespaces`), measured on this project's machines (2 cores, a threaded
Python process spawning ``/bin/true`` and waiting for it, 0.85-1.0 ms without):

* **A root node** makes it in the thread that starts the task: ``unshare(CLONE_NEWNS)``
  (allowed in a threaded process once the thread has its own working directory and
  root, ``unshare(CLONE_FS)``, done once per thread; only a user namespace needs a
  single thread), every mount made a slave (so nothing mounted here reaches the
  host's namespace, while the host's new mounts still show where they propagate),
  the bind, the usual spawn (the child starts in the namespace, which lives as long
  as the task's processes do and is gone with them), then ``setns`` back to the
  node's namespace and ``fchdir`` back to its working directory. No extra program
  or thread is started: measured +0.1-0.3 ms per ``/bin/true`` (0.97-1.17 against
  0.86-0.88 ms), where a short-lived thread per task to carry the namespace cost
  +0.5-1.3 ms. A namespace kept and re-bound for each task would cost less still
  (~0.02 ms), but keeps the view of the host's mounts it was made with where the
  host's mounts are private (as in a container: no propagation), and shows a task's
  leftover processes the next task's directory. ``/run/mesh`` is made at start if
  missing (root's, 0755).
* **A node that is not root** cannot mount in a threaded process, so bubblewrap does
  it, in an unprivileged user namespace: ``--dev-bind / /`` (the host as it is) and
  the bind. That costs a bwrap start per task (~2.5 ms more), and a user namespace has
  consequences a task may see: files of uids other than the node's show as owned by
  nobody (65534), setuid programs do not gain privileges, and bwrap reports a death
  by signal N as exit status 128 + N, as the sandbox does. Where the host has no
  ``/run/mesh``, ``/run`` is laid out afresh (a tmpfs with each of the host's entries
  bound into it, :func:`mount_points`) to make one.
* **Neither** (not root and no bwrap, or user namespaces disabled): process tasks run
  in their host directories, and the node says so once at start (its log, and
  ``executors.workdirs`` in ``/status``).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import stat
import subprocess
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from mesh.errors import ExecError

__all__ = [
    "DOCKER_VIEW",
    "PROCESS_VIEW",
    "RUN_MESH",
    "SANDBOX_VIEW",
    "Namespaces",
    "TaskDirs",
    "TaskView",
    "mount_points",
]

#: mesh's own directory of /run, where the process executor's tasks see their directories.
RUN_MESH = "/run/mesh"


class TaskDirs(Protocol):
    """What a view needs of a task: its host directories, its cwd in the workdir, its environment
    (a :class:`mesh.exec.process.Command` is one)."""

    @property
    def workdir(self) -> str: ...
    @property
    def cwd(self) -> str: ...
    @property
    def env(self) -> Mapping[str, str]: ...
    @property
    def home(self) -> str: ...
    @property
    def tmpdir(self) -> str: ...


@dataclass(frozen=True, slots=True)
class _Trial:
    """A task's directories and environment, for the trial run."""

    workdir: str
    cwd: str
    env: Mapping[str, str]
    home: str
    tmpdir: str


@dataclass(frozen=True, slots=True)
class TaskView:
    """Where a task sees its directories: ``work`` (the checked-out input), ``home`` and ``tmp``.

    ``root``, where set, is where the whole task directory is shown (``work`` and ``tmp``
    inside it, as the runner lays it out): one mount, so that a file may be hard-linked or
    renamed between the workdir and TMPDIR, as on the host (between two mounts, link and
    rename fail with EXDEV, as across file systems).
    """

    work: str
    home: str
    tmp: str
    root: str | None = None

    def cwd(self, command: TaskDirs) -> str:
        """The directory the task starts in, as the task sees it."""
        return os.path.join(self.work, command.cwd) if command.cwd else self.work

    def environment(self, command: TaskDirs) -> dict[str, str]:
        """The task's environment as it sees its directories: HOME and TMPDIR (where they are
        the runner's) moved to this view's, PWD the directory it starts in."""
        env = dict(command.env)
        if env.get("HOME") == command.home:
            env["HOME"] = self.home
        if env.get("TMPDIR") == command.tmpdir:
            env["TMPDIR"] = self.tmp
        env["PWD"] = self.cwd(command)
        return env

    def mounts(self, command: TaskDirs) -> list[tuple[str, str]]:
        """(host directory, path in the view) of each bind that makes this view: the task
        directory (with ``root``), or the workdir, the tmp directory, and HOME where the view
        shows it elsewhere. Raises ExecError when the command's directories are not laid out
        as the view needs (one directory for HOME and TMPDIR; with ``root``, ``work`` and
        ``tmp`` side by side in the task directory)."""
        if self.root is not None:
            task = os.path.dirname(command.workdir)
            layout = (command.workdir, command.tmpdir, command.home)
            if layout != tuple(os.path.join(task, name) for name in ("work", "tmp", "tmp")):
                raise ExecError(
                    f"this executor needs the task's directories as work/ and tmp/ of one directory: {layout}"
                )
            return [(task, self.root)]
        binds = [(command.workdir, self.work), (command.tmpdir, self.tmp)]
        if self.home != self.tmp:
            binds.append((command.home, self.home))
        elif command.home != command.tmpdir:
            raise ExecError(f"this executor shows HOME and TMPDIR at {self.tmp}: they must be one directory")
        return binds


DOCKER_VIEW = TaskView(work="/work", home="/home/mesh", tmp="/tmp")
SANDBOX_VIEW = TaskView(work="/work", home="/tmp", tmp="/tmp")
PROCESS_VIEW = TaskView(work=RUN_MESH + "/work", home=RUN_MESH + "/tmp", tmp=RUN_MESH + "/tmp", root=RUN_MESH)


# -- bubblewrap: mount points for paths the host may lack ------------------------------------


def mount_points(paths: Sequence[str], bind: str) -> tuple[list[str], list[str]]:
    """bwrap options that lay the host's ``/`` out in the new root so that each of ``paths``
    is a directory there, on which a mount can go, hiding as little of the host as can be.

    ``bind`` is how the host is shown (``--ro-bind`` or ``--dev-bind``). A path that is a
    directory on the host (not a symlink) needs nothing: ``bind / /`` shows it. Else the
    deepest directory above it that the host has is laid out afresh: a tmpfs with each of
    the host's entries in it bound back (``--symlink`` for a symlink), but the one in the
    way, and the path made in it. For ``/`` itself, bwrap's new root is that tmpfs. Returns
    (the options, which go first; the paths to ``--remount-ro`` once everything is mounted
    in them). Each entry bound costs a mount: laying out this machine's ``/`` (~20 entries)
    made a bare sandbox start ~0.8 ms slower (5.3 instead of 4.4 ms).
    """
    laid: dict[str, set[str]] = {}  # directory laid out afresh -> names left out of it
    made: list[str] = []
    for path in paths:
        if _is_dir(path):
            continue
        parent, name = os.path.split(path)
        while not _is_dir(parent):
            parent, name = os.path.split(parent)
        laid.setdefault(parent, set()).add(name)
        made.append(path)
    args: list[str] = []
    if "/" not in laid:
        args += [bind, "/", "/"]
    for parent in sorted(laid, key=lambda p: p.count("/") if p != "/" else 0):
        if parent != "/":
            args += ["--tmpfs", parent]
        for name in sorted(os.listdir(parent)):
            if name in laid[parent]:
                continue
            path = os.path.join(parent, name)
            try:
                target = os.readlink(path)
            except OSError:
                args += [bind, path, path]
            else:
                args += ["--symlink", target, path]
    for path in made:
        args += ["--perms", "0755", "--dir", path]
    return args, sorted(laid)


def _is_dir(path: str) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


# -- the process executor's mount namespaces -------------------------------------------------

_CLONE_FS = 0x00000200
_CLONE_NEWNS = 0x00020000
_MS_BIND = 0x1000
_MS_REC = 0x4000
_MS_SLAVE = 0x80000

_libc: ctypes.CDLL | None = None

T = TypeVar("T")


def _syscall(name: str, *args: object) -> None:
    """Call libc's ``name``; OSError on failure."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if getattr(_libc, name)(*args) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{name}: {os.strerror(errno)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = [None if s is None else os.fsencode(s) for s in (source, target, fstype, data)]
    _syscall("mount", enc[0], enc[1], enc[2], ctypes.c_ulong(flags), enc[3])


class Namespaces:
    """Starts process tasks in a mount namespace of their own, where they see :data:`PROCESS_VIEW`.

    Made by :meth:`for_this_node`, which says why not when it cannot be (then tasks run
    in their host directories). ``bwrap`` is None on a root node (the namespace is made
    in a thread of this process) and bubblewrap's path otherwise. See the module docstring.
    """

    view = PROCESS_VIEW

    def __init__(self, bwrap: str | None) -> None:
        self.bwrap = bwrap
        self._thread = threading.local()  # .own_fs: the thread has unshared its fs (cwd, root, umask)
        self._host = -1 if bwrap is not None else os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)

    def __repr__(self) -> str:
        how = "in-process (root)" if self.bwrap is None else f"through {self.bwrap} (user namespace)"
        return f"Namespaces({how}, work={self.view.work!r})"

    @classmethod
    def for_this_node(cls) -> tuple[Namespaces | None, str | None]:
        """(Namespaces, None) where process tasks can have them here, else (None, why not).

        Tries one: a trial task (``true``) in a namespace, as tasks will be run. Blocking;
        takes a few ms.
        """
        if os.geteuid() == 0:
            try:
                os.makedirs(RUN_MESH, mode=0o755, exist_ok=True)
            except OSError as exc:
                return None, f"cannot make {RUN_MESH}: {exc.strerror or exc}"
            try:
                namespaces = cls(None)
            except OSError as exc:
                return None, f"cannot open this node's mount namespace: {exc.strerror or exc}"
        else:
            bwrap = shutil.which("bwrap")
            if bwrap is None:
                return None, "the node is not root and bwrap (bubblewrap) is not on PATH"
            namespaces = cls(bwrap)
        try:
            namespaces.trial()
        except (OSError, ExecError, subprocess.SubprocessError) as exc:
            return None, f"a trial task in a mount namespace of its own failed: {exc}"
        return namespaces, None

    def trial(self) -> None:
        """Run ``test "$PWD" = "$(pwd -P)"`` in a namespace, as a task runs; raises ExecError if it fails."""
        with tempfile.TemporaryDirectory(prefix="mesh-paths-trial-") as top:
            work, tmp = os.path.join(top, "work"), os.path.join(top, "tmp")
            os.mkdir(work)
            os.mkdir(tmp)
            script = 'test "$PWD" = "$(pwd -P)" && test -d "$HOME"'
            env = {"PATH": "/usr/bin:/bin", "HOME": tmp, "TMPDIR": tmp}
            command = _Trial(workdir=work, cwd="", env=env, home=tmp, tmpdir=tmp)
            wrapped, cwd, env = self.wrap(command, ["sh", "-c", script])

            def run() -> subprocess.CompletedProcess[bytes]:
                return subprocess.run(wrapped, cwd=cwd, env=env, capture_output=True, timeout=30, check=False)

            done = self.within(command, run)
            if done.returncode != 0:
                said = (done.stderr or done.stdout).decode(errors="replace").strip()[-300:]
                raise ExecError(f"exit status {done.returncode}: {said or 'no message'}")

    def wrap(self, command: TaskDirs, argv: list[str]) -> tuple[list[str], str, dict[str, str]]:
        """(argv, cwd, env) to start ``argv`` (the command, or its launcher) as the task sees it:
        through bwrap where this node needs it."""
        env = self.view.environment(command)
        cwd = self.view.cwd(command)
        if self.bwrap is None:
            return argv, cwd, env
        layout, laid = mount_points([RUN_MESH], "--dev-bind")
        args = [self.bwrap, *layout]
        for source, target in self.view.mounts(command):
            args += ["--bind", source, target]
        for path in laid:
            args += ["--remount-ro", path]
        return [*args, "--chdir", cwd, "--", *argv], "/", env

    def within(self, command: TaskDirs, start: Callable[[], T]) -> T:
        """``start()`` (which starts the task's first process) where the task's namespace is.

        On a root node, the calling thread makes the namespace, calls ``start()`` there (the
        process it starts is in it, and keeps it), and goes back to the host's namespace and
        its working directory. Raises ExecError when the namespace cannot be made, or the
        thread cannot go back.
        """
        if self.bwrap is not None:
            return start()
        binds = self.view.mounts(command)
        if not getattr(self._thread, "own_fs", False):
            try:
                _syscall("unshare", _CLONE_FS)  # a mount namespace of its own needs it: once per thread
            except OSError as exc:
                raise ExecError(f"cannot make the task's mount namespace: {exc.strerror or exc}") from None
            self._thread.own_fs = True
        cwd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            try:
                _syscall("unshare", _CLONE_NEWNS)
                _mount(None, "/", None, _MS_REC | _MS_SLAVE)
                for source, target in binds:
                    _mount(source, target, None, _MS_BIND)
            except OSError as exc:
                raise ExecError(f"cannot make the task's mount namespace: {exc.strerror or exc}") from None
            return start()
        finally:
            try:
                _syscall("setns", self._host, _CLONE_NEWNS)
                os.fchdir(cwd)
            except OSError as exc:
                raise ExecError(f"cannot go back to the node's mount namespace: {exc.strerror or exc}") from None
            finally:
                os.close(cwd)


_here: tuple[Namespaces | None, str | None] | None = None
_here_lock = threading.Lock()


def namespaces_here() -> tuple[Namespaces | None, str | None]:
    """:meth:`Namespaces.for_this_node`, tried once per process (what it depends on, the
    node's uid and the machine, does not change while it runs)."""
    global _here
    with _here_lock:
        if _here is None:
            _here = Namespaces.for_this_node()
        return _here
