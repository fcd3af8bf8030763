"""The ``sandbox`` executor: each task in a bubblewrap sandbox, as a uid that owns nothing.

Tasks from other machines are untrusted code. Inside the sandbox a task sees:

* the host's filesystem read-only (``--ro-bind / /``), its own ``/dev`` (with a
  private ``/dev/shm``), its own ``/proc`` (of its own pid namespace: no host
  process is visible or can be signalled) and a private, empty, writable ``/tmp``
  (its own tmp directory, on the disk of the task directories: see below);
* of ``/sys``, only the CPU counts glibc reads (:data:`SYS_SHOWN`): the rest of the
  host's devices, kernel settings and cgroups is an empty read-only directory;
* a seccomp filter (:mod:`mesh.exec.seccomp`, compiled once per node) that refuses
  with EPERM what sandboxes commonly deny: keyrings, bpf, perf events, userfaultfd,
  io_uring, kernel modules, mounts and every new namespace, so no user namespace
  (which would make the task root over mounts and networks of its own) can be made:
  in root mode no user namespace exists and the filter is what refuses one; in
  non-root mode bwrap's ``--disable-userns`` does too;
* writable: its workdir, bind-mounted at ``/work`` (the working directory is
  ``/work/<cwd>``, as in a container), and its tmp directory at ``/tmp``, which is
  its HOME and TMPDIR: the same paths on every run and node, so that what tools
  write of them (``cc -g``'s ``DW_AT_comp_dir``) is the same (:mod:`mesh.exec.paths`).
  What the host has at ``/work`` is not shown; where it has nothing there, the new
  root is laid out afresh (the host's top-level entries bound into a tmpfs,
  :func:`mesh.exec.paths.mount_points`: ~1 ms more per task) to make the mount point.
  The two are two mounts: a hard link or rename between them fails with EXDEV, as
  between file systems;
* hidden: the node's home (key, store, ``state.db``) and every other path given
  in ``hide`` (a mesh key kept elsewhere, an engine's socket). A directory becomes
  an empty read-only one (reading in it: ENOENT, writing: EROFS), a file becomes
  ``/dev/null`` on a ``nodev`` mount (opening it: EACCES). The directory that
  holds the task directories is emptied the same way, so no task sees another's
  (their workdirs belong to the same uid). ``/run`` is emptied too unless the task
  has the network: its unix sockets (D-Bus, systemd, container engines) are the
  one way out of a network-less sandbox that permissions alone would guard;
* its own network namespace with only a loopback interface, unless the action
  sets ``network`` (``--share-net``: then also the host's abstract unix sockets);
  its own ipc, uts and cgroup namespaces; a new session (no terminal to inject
  input into); and it dies with the thread that supervises it (``--die-with-parent``);
* rlimits (:class:`SandboxLimits`): address space, processes, file size and open
  files, and no core dumps (a crash would leave a core file among the outputs).

Two modes, by the node's uid:

* **The node runs as root** (the intended set-up). bwrap starts as root in the
  host's user namespace, so bind sources are resolved as root and nothing on the
  host needs to be made world-traversable. bwrap as real root *keeps every
  capability* unless told otherwise (measured: CapEff full, also with
  ``--unshare-all``, whose user namespace maps root to root), so it is told
  ``--cap-drop ALL --cap-add CAP_SETUID,CAP_SETGID,CAP_SETPCAP``, and ``setpriv``
  then switches to the task's uid and gid (default 65534:65534) with no
  supplementary groups, clears the inheritable, ambient and bounding sets (the
  uid switch clears the permitted and effective ones) and sets no_new_privs: the
  command runs with CapEff, CapPrm, CapBnd and CapAmb all 0. No user namespace is
  made in this mode: bwrap's maps the sandbox uid onto root, which would make the
  task the owner of the store's files. The task uid owns nothing in the store.
  Its input is checked out as *copies owned by the task uid* (``inputs="copy"``, the
  default: ``checkout_mode`` is ``copy``, ``checkout_owner`` the task's uid and gid),
  so the task may do with its input whatever a local command may: write, append to,
  chmod and ``touch`` a file, or let GNU ``ar`` rewrite an existing archive in place
  (which it does when the archive has other hard links). The copies cost a read
  and a write of the input per task: nothing that shows for a small input (129 against
  128 trivial tasks/s with links, ``bench/exec.py``), 2.7 s against 1.7 s for a task's
  checkout of 50,724 files, 823 MB (``bench/snapshot.py``; README, "Settings"). The operator may
  choose ``inputs="link"`` instead (the node's ``sandbox_inputs``): files are
  hardlinks to the store's (or its timed copies'), root's and read-only, so the task
  cannot write or chmod them, which makes link mode safe and fast, but a build that
  changes an input file in place fails. :meth:`SandboxExecutor.prepare` hands the
  *directories* of the workdir and of HOME/TMPDIR to the task uid before the run
  (never the files: in link mode they are the store's; in copy mode the checkout
  already made them the task uid's). A copy owned by the task uid is reachable by
  no other task: the task directories are in the runner's workroot (root's, 0700)
  and the sandbox hides the directory that holds them. The runner, as root, takes
  the task directory back (:mod:`mesh.exec.takeback`: every directory becomes
  root's, in both modes) once the sandbox is gone, reads the outputs and removes
  the task directory whatever the task left in it.
* **The node is not root.** bwrap runs unprivileged in a user namespace of its
  own (unprivileged user namespaces must be enabled), the task keeps the node's
  uid and no capability, and because that uid owns the store's files and could
  chmod a hardlinked blob, checkouts are copies (``checkout_mode`` is ``copy``, of
  the node's uid; ``inputs="link"`` is ignored, with a log line).

How the rlimits are set: not with ``preexec_fn`` (unsafe in a threaded node) and not
with a wrapper such as util-linux ``prlimit``, whose exec cost ~4 ms per task here
(a third of bwrap's own ~12 ms). bwrap is started with ``--info-fd`` and ``--block-fd``:
it reports the pid of the sandbox's first process once that exists, which then waits,
namespaces and mounts set up, before it starts anything; the executor sets the limits
on that process with ``prlimit(2)`` and lets it go. Everything the sandbox starts
inherits them. (The first process is still root in root mode, which the process limit
does not stop; ``setpriv``'s switch to the task uid marks the task as over the limit
if that uid has too many processes already, and its exec of the command then fails.)
If the limits cannot be set, bwrap is killed before the sandbox was let go.

Killing: bwrap is started in a process group of its own, as the process executor
starts its commands, and the supervision is the process executor's. When bwrap
dies (SIGTERM on cancellation, SIGKILL at the timeout or an output limit), the
kernel SIGKILLs the sandbox's pid 1 (``--die-with-parent``), and with it every
process of the pid namespace. When the command exits, bwrap's pid 1 exits and the
same happens: no process outlives its task, and ``run`` returns (or raises) only
once the sandbox's first process is gone, so none is still running while the
runner reads the outputs. There is no grace for the task on cancellation: it
dies at once with its sandbox.

Exit codes are shell-style and the same as with the process executor: bwrap
passes a death of the command by signal N on as exit status 128 + N, as a shell
does. Which of the two it was is lost on the way (a shell that exits 137 because
its child was killed looks the same), so ``signal`` is set only when the executor
itself killed the sandbox (timeout, output limit), as with the docker executor.
A command that cannot be started (not found, not
executable) makes the last launcher fail its ``exec`` with a one-line message on
stderr and nothing else: ``setpriv`` (root mode; exit 127 or 126) or bwrap itself
(exit 1). That is raised as SpawnFailed with the shell's 127 or 126, like the
process executor's (if the action's locale translates the message, it stays a
plain failure with that exit code; a task that prints exactly such a line and
exits so is taken for one, which only changes its own result).
:func:`sandbox_unavailable` tells the node whether this machine can run sandboxes.

RLIMIT_NPROC counts processes per real uid, in the user namespace: in root mode
every sandboxed task of the node runs as the same uid in the host's namespace, so
the limit bounds all of them together (plus any other process of that uid on the
machine); with many slots, raise it. In non-root mode each sandbox's user
namespace counts its own processes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import select
import shutil
import signal
import stat
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, fields, replace
from typing import Literal

from mesh.cas.checkout import Mode
from mesh.errors import ExecError, SpawnFailed
from mesh.exec.action import BASE_ENV
from mesh.exec.hints import StderrTail, find_program, hidden_program, unsearchable
from mesh.exec.paths import SANDBOX_VIEW, mount_points
from mesh.exec.process import (
    DRAIN_GRACE,
    TERM_GRACE,
    Cancel,
    Command,
    ExitStatus,
    LaunchWatch,
    NoCancel,
    OutputSink,
    ProcessExecutor,
    _Child,
    setpriv_command,
)
from mesh.exec.seccomp import filter_pipe, seccomp_unavailable

__all__ = ["NOBODY", "NOGROUP", "SandboxExecutor", "SandboxLimits", "sandbox_unavailable"]

log = logging.getLogger("mesh.exec")

#: Default uid and gid of sandboxed tasks (when the node runs as root): Debian's nobody:nogroup.
NOBODY = 65534
NOGROUP = 65534
#: The umask the sandbox starts with: bwrap's mount points must be traversable by the
#: task's uid, and the task gets a usual umask whatever the node's is.
UMASK = 0o022
#: Capabilities bwrap keeps (root mode) so that setpriv can switch uid and gid and
#: empty the bounding set; setpriv then drops them too.
_SETPRIV_CAPS = ("CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP")
#: What the task sees of /sys (all else of it is an empty directory): the CPU counts that
#: glibc's get_nprocs and get_nprocs_conf read (``nproc``, ``getconf``, ``os.cpu_count``
#: also fall back to /proc/stat without them, but some runtimes read these files).
SYS_SHOWN = ("/sys/devices/system/cpu/online", "/sys/devices/system/cpu/possible", "/sys/devices/system/cpu/present")
#: Bytes of bwrap's --info-fd report read at most (a small JSON object).
_INFO_MAX = 1 << 16
#: Seconds the sandbox's first process may take to die after bwrap (it is SIGKILLed by
#: the kernel then, so this is only a backstop) before the executor SIGKILLs it itself.
SANDBOX_GRACE = 5.0


@dataclass(frozen=True, slots=True)
class SandboxLimits:
    """The rlimits of a sandboxed task (soft and hard alike); None leaves the node's own.

    * ``address_space`` (RLIMIT_AS, bytes; default 16 GiB): allocations past it fail
      with ENOMEM. Runtimes that reserve large virtual ranges up front (V8 with
      WebAssembly, sanitizers) need more, or None.
    * ``processes`` (RLIMIT_NPROC; default 4096, threads count): fork and clone fail
      with EAGAIN past it; in root mode it counts every process of the task uid
      (see the module docstring).
    * ``file_size`` (RLIMIT_FSIZE, bytes; default 8 GiB): a write past it raises
      SIGXFSZ, which kills the writer (exit 153), or fails with EFBIG if the signal
      is ignored.
    * ``open_files`` (RLIMIT_NOFILE; default 4096).

    The executor lowers each to the node's own hard limit when that is lower: the
    task cannot be given more than the node has. An action may set its own
    (``limits`` in the task: any of these names with a whole number), each at most
    the executor's; asking for more fails the task with a reason.
    """

    address_space: int | None = 16 << 30
    processes: int | None = 4096
    file_size: int | None = 8 << 30
    open_files: int | None = 4096

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and value < 1:
                raise ValueError(f"SandboxLimits.{f.name} must be at least 1 or None, not {value}")

    def within_node(self) -> SandboxLimits:
        """These limits, each lowered to this process's hard limit where that is lower."""
        lowered = {}
        for name, rlimit in _RLIMITS.items():
            value = getattr(self, name)
            hard = resource.getrlimit(rlimit)[1]
            if value is not None and hard != resource.RLIM_INFINITY and value > hard:
                lowered[name] = hard
        return replace(self, **lowered)

    def rlimits(self) -> list[tuple[int, int]]:
        """(resource, value) of every limit to set, core dumps (0) included."""
        chosen = [(rlimit, getattr(self, name)) for name, rlimit in _RLIMITS.items()]
        return [(resource.RLIMIT_CORE, 0)] + [(rlimit, value) for rlimit, value in chosen if value is not None]


_RLIMITS = {
    "address_space": resource.RLIMIT_AS,
    "processes": resource.RLIMIT_NPROC,
    "file_size": resource.RLIMIT_FSIZE,
    "open_files": resource.RLIMIT_NOFILE,
}

DEFAULT_LIMITS = SandboxLimits()


def _tools(privileged: bool) -> dict[str, str | None]:
    """The programs the sandbox needs, by name: their paths on PATH, or None if missing."""
    names = ("bwrap", "setpriv") if privileged else ("bwrap",)
    return {name: shutil.which(name) for name in names}


class SandboxExecutor(ProcessExecutor):
    """The ``sandbox`` executor (see the module docstring).

    ``home`` is the node's home and ``hide`` more paths to hide from tasks (a mesh
    key kept elsewhere, say); both may name paths that do not exist yet (looked at
    on every run). ``uid`` and ``gid`` are what tasks run as when the node is root
    (neither may be 0); otherwise tasks keep the node's uid and checkouts are copies.
    ``inputs`` is how a root node checks inputs out: ``copy`` (copies of the task's uid)
    or ``link`` (the store's read-only files; see the module docstring); a node that is
    not root always copies, and logs that it ignores ``link``.
    ``limits`` are the tasks' rlimits. ``term_grace`` and ``drain_grace`` are the
    process executor's. Raises ExecError when a program it needs is not installed
    (:func:`sandbox_unavailable` says whether the sandbox works here at all).
    """

    name = "sandbox"

    def __init__(
        self,
        *,
        home: str | os.PathLike[str] | None = None,
        hide: Iterable[str | os.PathLike[str]] = (),
        uid: int = NOBODY,
        gid: int = NOGROUP,
        limits: SandboxLimits = DEFAULT_LIMITS,
        inputs: Mode = "copy",
        term_grace: float = TERM_GRACE,
        drain_grace: float = DRAIN_GRACE,
    ) -> None:
        super().__init__(term_grace=term_grace, drain_grace=drain_grace, stable_paths=False)
        if inputs not in ("copy", "link"):
            raise ValueError(f"the sandbox's inputs are checked out as 'copy' or 'link', not {inputs!r}")
        self.privileged = os.geteuid() == 0
        if self.privileged:
            if uid <= 0 or gid <= 0:
                raise ValueError(f"sandboxed tasks must not run as root: uid {uid}, gid {gid}")
            self.uid, self.gid = uid, gid
        else:
            self.uid, self.gid = os.getuid(), os.getgid()
            if inputs == "link":
                log.warning(
                    "sandbox inputs are copies: this node is not root, so its sandboxed tasks run as its own "
                    "uid %d, which owns the store's files and could change a linked one (link ignored)",
                    self.uid,
                )
        self.checkout_mode: Mode = inputs if self.privileged else "copy"
        self.home = None if home is None else os.path.abspath(os.fspath(home))
        paths = ([home] if home is not None else []) + list(hide)
        self.hidden = tuple(dict.fromkeys(os.path.abspath(os.fspath(p)) for p in paths))
        self.limits = limits.within_node()
        tools = _tools(self.privileged)
        missing = [name for name, path in tools.items() if path is None]
        if missing:
            raise ExecError(f"the sandbox executor needs {' and '.join(missing)}, not found on PATH")
        self._bwrap = str(tools["bwrap"])
        self._setpriv = tools.get("setpriv")
        why_not = seccomp_unavailable()  # compiles the filter now, once for every task
        if why_not is not None:
            raise ExecError(f"the sandbox executor needs its seccomp filter: {why_not}")

    def __repr__(self) -> str:
        who = (
            f"uid={self.uid}, gid={self.gid}"
            if self.privileged
            else f"the node's uid {self.uid} (not root: no uid switch)"
        )
        return (
            f"SandboxExecutor({who}, checkout_mode={self.checkout_mode!r}, hide={list(self.hidden)}, "
            f"{self.limits}, term_grace={self.term_grace}, drain_grace={self.drain_grace})"
        )

    @property
    def checkout_owner(self) -> tuple[int, int] | None:
        """Who a copy-mode checkout's entries belong to: the task's uid and gid on a root
        node (the task may change its copies as a local command may), else the node's
        (None). Follows ``checkout_mode``: a link checkout's files are the store's."""
        return (self.uid, self.gid) if self.privileged and self.checkout_mode == "copy" else None

    @property
    def work_path(self) -> str:
        """Where tasks see their workdir (mesh.exec.paths)."""
        return SANDBOX_VIEW.work

    # -- the runner's hook ----------------------------------------------------------

    def prepare(self, command: Command) -> None:
        """Give the task's directories (workdir and its subdirectories, HOME, TMPDIR) to the task uid.

        Called by the runner after the checkout, on the task's thread. Only
        directories change owner, never a file: in a link-mode checkout the files
        are the store's own (a copy-mode checkout's are the task uid's already:
        :attr:`checkout_owner`). Nothing to do when the node is not root. Raises
        ExecError when a directory cannot be given away.
        """
        if not self.privileged:
            return
        try:
            for top in dict.fromkeys((command.workdir, command.home, command.tmpdir)):
                _chown_directories(top, self.uid, self.gid)
        except OSError as exc:
            raise ExecError(
                f"cannot give {exc.filename} to uid {self.uid} for the sandbox: {exc.strerror or exc}"
            ) from None

    # -- the command line -------------------------------------------------------------

    def command_line(
        self,
        command: Command,
        *,
        info_fd: int | None = None,
        block_fd: int | None = None,
        seccomp_fd: int | None = None,
    ) -> list[str]:
        """The whole argv: bwrap with the sandbox's options, setpriv in root mode, the command.

        ``info_fd`` and ``block_fd`` are bwrap's ``--info-fd`` and ``--block-fd``, through
        which the rlimits are set (see the module docstring); without them the command
        runs with the node's limits. ``seccomp_fd`` holds the seccomp filter
        (:func:`mesh.exec.seccomp.filter_pipe`); without it the command runs unfiltered.
        """
        sync: list[str] = []
        if info_fd is not None:
            sync += ["--info-fd", str(info_fd)]
        if block_fd is not None:
            sync += ["--block-fd", str(block_fd)]
        if seccomp_fd is not None:
            sync += ["--seccomp", str(seccomp_fd)]
        launcher: list[str] = []
        if self.privileged:
            assert self._setpriv is not None
            launcher = setpriv_command(self._setpriv, self.uid, self.gid)
        isolation = self.isolation(command)
        return [*isolation[:-1], *sync, "--", *launcher, *command.argv]

    def isolation(self, command: Command) -> list[str]:
        """bwrap and its options for ``command``, up to and including ``--``: what the sandbox is.

        The task's workdir is bound at ``/work`` and its tmp directory at ``/tmp``
        (:data:`mesh.exec.paths.SANDBOX_VIEW`); what the host has there is not shown.
        Raises ExecError when the task's directories are not inside one task directory
        below another (the runner's layout), whose holder is emptied.
        """
        view = SANDBOX_VIEW
        own = list(dict.fromkeys(os.path.realpath(p) for p in (command.workdir, command.tmpdir)))
        task_root = os.path.commonpath(own)
        holder = os.path.dirname(task_root)
        if holder == task_root or holder == "/":
            raise ExecError(f"the sandbox needs the task's directories inside one task directory below another: {own}")
        hidden_dirs: list[str] = []
        hidden_files: list[str] = []
        for path in self.hidden:
            real = os.path.realpath(path)
            try:
                is_dir = stat.S_ISDIR(os.stat(real).st_mode)
            except FileNotFoundError:
                continue
            (hidden_dirs if is_dir else hidden_files).append(real)
        empty = [*hidden_dirs, holder, "/sys"]
        if not command.network:
            empty.append("/run")

        binds = view.mounts(command)
        layout, laid = mount_points([target for _, target in binds], "--ro-bind")
        args = [self._bwrap, *layout, "--dev", "/dev", "--perms", "1777", "--tmpfs", "/dev/shm", "--proc", "/proc"]
        covered = ["/dev", "/proc", *(target for _, target in binds)]  # the host's is not shown there
        emptied: list[str] = []
        for path in sorted(set(empty), key=lambda p: p.count("/")):  # parents before children
            if not _inside_any(path, covered):
                args += ["--tmpfs", path]
                covered.append(path)
                emptied.append(path)
        for path in hidden_files:
            if not _inside_any(path, covered):
                args += ["--ro-bind", "/dev/null", path]
        for source, target in binds:
            args += ["--bind", source, target]
        shown = [path for path in SYS_SHOWN if os.path.exists(path)]
        for parent in dict.fromkeys(os.path.dirname(p) for p in shown):
            args += ["--perms", "0755", "--dir", parent]  # else made 0700 (root mode)
        for path in shown:
            args += ["--ro-bind", path, path]
        for path in [*laid, *emptied]:
            args += ["--remount-ro", path]
        if self.privileged:
            args += ["--unshare-ipc", "--unshare-pid", "--unshare-uts", "--unshare-cgroup-try"]
            if not command.network:
                args.append("--unshare-net")
            args += ["--cap-drop", "ALL"]
            for cap in _SETPRIV_CAPS:
                args += ["--cap-add", cap]
        else:
            args += ["--unshare-all", "--unshare-user", "--disable-userns"]
            if command.network:
                args.append("--share-net")
        args += ["--die-with-parent", "--new-session", "--chdir", view.cwd(command), "--"]
        return args

    # -- running -----------------------------------------------------------------------

    def run(self, command: Command, on_output: OutputSink, cancel: Cancel) -> ExitStatus:
        """See :meth:`mesh.exec.process.Executor.run`; raises SpawnFailed when the command cannot be started."""
        tail = StderrTail(on_output)
        watch = LaunchWatch(tail)
        status = super().run(command, watch, cancel)
        launcher: Literal["setpriv", "bwrap"] = "setpriv" if self.privileged else "bwrap"
        failure = watch.failure(status, command.argv[0], launcher, " in the sandbox", "; the node's home is hidden")
        if failure is not None:
            raise self._explained(failure, command)
        if not command.network:
            return replace(status, hint=tail.network_hint(status.exit_code))
        return status

    def _explained(self, failure: SpawnFailed, command: Command) -> SpawnFailed:
        """``failure`` said better when the program is somewhere the sandbox hides (mesh.exec.hints)."""
        own = os.path.commonpath([os.path.realpath(p) for p in (command.workdir, command.home, command.tmpdir)])
        candidates = [
            path
            for path in find_program(command.argv[0], command.env, os.path.join(command.workdir, command.cwd))
            if os.path.commonpath([own, os.path.realpath(path)]) != own  # the task's own files it sees
        ]
        places = [(os.path.realpath(p), "the node keeps it from tasks") for p in self.hidden]
        if self.home is not None:
            places.insert(0, (os.path.realpath(self.home), "the node's home: its key, store and state"))
        places += [
            ("/tmp", "each task has a /tmp of its own, empty at the start"),
            ("/dev/shm", "each task has a /dev/shm of its own"),
            (os.path.dirname(own), "the task directories of other tasks"),
            ("/sys", "of /sys, tasks see only the CPU counts"),
            (SANDBOX_VIEW.work, f"the task's own workdir is mounted at {SANDBOX_VIEW.work}"),
        ]
        if not command.network:
            places.append(("/run", "without the network, /run is empty: its sockets lead out of the sandbox"))
        why = hidden_program(candidates, places, self._unsearchable(candidates))
        if why is None:
            return failure
        return SpawnFailed(
            f"cannot run {command.argv[0]!r} in the sandbox: {why}; put it where tasks see it "
            "(in the input, or under /usr/local or /opt)",
            failure.exit_code,
        )

    def _unsearchable(self, candidates: list[str]) -> str | None:
        """Why the task uid cannot reach a candidate (mesh.exec.hints.unsearchable); None when the
        node is not root (its tasks keep its uid)."""
        return unsearchable(candidates, self.uid, self.gid) if self.privileged else None

    def limits_for(self, command: Command) -> SandboxLimits:
        """The node's limits with the action's own laid over them; an action may ask for less
        than the node allows, never more (SpawnFailed, exit 126, saying which)."""
        asked = dict(command.limits)
        for name, value in asked.items():
            allowed = getattr(self.limits, name)
            if allowed is not None and value > allowed:
                raise SpawnFailed(
                    f"the action asks for the limit {name}={value}, more than this node allows ({allowed}); "
                    "ask for less, or give the node's sandbox higher limits",
                    126,
                )
        return replace(self.limits, **asked) if asked else self.limits

    def _spawn(self, command: Command) -> _Bwrap:
        """Start bwrap; set the rlimits on the sandbox's first process while it waits; let it go."""
        limits = self.limits_for(command)
        seccomp_r = info_r = info_w = block_r = block_w = -1  # made inside the try: none leaks if one fails
        try:
            seccomp_r = filter_pipe()
            info_r, info_w = os.pipe2(os.O_CLOEXEC)
            block_r, block_w = os.pipe2(os.O_CLOEXEC)
            argv = self.command_line(command, info_fd=info_w, block_fd=block_r, seccomp_fd=seccomp_r)
            passed = (info_w, block_r, seccomp_r)
            env = SANDBOX_VIEW.environment(command)
            child = _Bwrap.start(argv, cwd="/", env=env, pass_fds=passed, umask=UMASK, stdin=command.stdin)
        except BaseException as exc:
            _close(info_r, block_w)
            if isinstance(exc, OSError):
                raise ExecError(f"cannot start bubblewrap ({self._bwrap}): {exc.strerror or exc}") from None
            raise
        finally:
            _close(info_w, block_r, seccomp_r)
        try:
            try:
                pid = _sandbox_pid(info_r)
            finally:
                os.close(info_r)
            if pid is not None:
                child.sandbox = os.pidfd_open(pid)
                for rlimit, value in limits.rlimits():
                    resource.prlimit(pid, rlimit, (value, value))
        except BaseException as exc:
            child.close()  # kills bwrap, and with it the sandbox, before it was let go
            os.close(block_w)
            if isinstance(exc, OSError):
                raise ExecError(f"cannot set the limits of the sandbox: {exc.strerror or exc}") from None
            raise
        try:
            os.write(block_w, b"go")
        except BrokenPipeError:
            pass  # bwrap failed before the sandbox started: its status and stderr say why
        finally:
            os.close(block_w)
        return child


class _Bwrap(_Child):
    """bwrap as the supervision's child, with a pidfd of the sandbox's first process.

    :meth:`close` (after the run, however it ended) returns only once that process is
    gone: when the first process of a pid namespace exits, the kernel has killed and
    waited for every other process in it, so nothing of the task is still running
    while the runner reads its outputs and removes its directory.
    """

    sandbox: int | None = None

    def close(self) -> None:
        try:
            super().close()  # bwrap reaped (killed first if need be): its sandbox dies with it
        finally:
            if self.sandbox is not None:
                _wait_gone(self.sandbox)
                os.close(self.sandbox)
                self.sandbox = None


def _wait_gone(pidfd: int, grace: float = SANDBOX_GRACE) -> None:
    """Wait for the process of ``pidfd`` to exit; SIGKILL it if it outlives ``grace``."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    if not poller.poll(math.ceil(grace * 1000)):
        try:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        except ProcessLookupError:
            pass
        poller.poll()


def _close(*fds: int) -> None:
    """Close the descriptors that were made (-1: not made)."""
    for fd in fds:
        if fd >= 0:
            os.close(fd)


def _sandbox_pid(info: int) -> int | None:
    """The pid in bwrap's ``--info-fd`` report (read to its end), or None if bwrap wrote none
    (it failed before making the sandbox). Raises ExecError for a report it cannot read."""
    data = b""
    while chunk := os.read(info, _INFO_MAX):
        data += chunk
        if len(data) > _INFO_MAX:
            raise ExecError("bwrap's --info-fd report is too long")
    if not data:
        return None
    try:
        pid = json.loads(data)["child-pid"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ExecError(f"cannot read bwrap's --info-fd report {data[:200]!r}: {exc}") from None
    if not isinstance(pid, int) or pid <= 0:
        raise ExecError(f"bwrap's --info-fd report names no process: {data[:200]!r}")
    return pid


def _chown_directories(top: str, uid: int, gid: int) -> None:
    """``lchown`` ``top`` and every directory below it (no symlink followed, no file touched)."""
    os.chown(top, uid, gid, follow_symlinks=False)
    stack = [top]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    os.chown(entry.path, uid, gid, follow_symlinks=False)
                    stack.append(entry.path)


def _inside_any(path: str, tops: Iterable[str]) -> bool:
    return any(path == top or path.startswith(top.rstrip("/") + "/") for top in tops)


# -- can this machine run sandboxes? ---------------------------------------------------


def sandbox_unavailable() -> str | None:
    """Why this machine cannot run the sandbox executor, or None if it can.

    Checks that bwrap (and setpriv, for a root node) are installed, that unprivileged
    user namespaces are enabled when the node is not root, and then runs ``true``
    in a sandbox exactly as a task would be run (a throwaway task directory handed
    to the task uid), which catches what else may be in the way (a kernel or a
    security module that refuses the namespaces, say). Blocking; takes ~20 ms.
    """
    privileged = os.geteuid() == 0
    missing = [name for name, path in _tools(privileged).items() if path is None]
    if missing:
        packages = "bubblewrap" if missing == ["bwrap"] else "bubblewrap and util-linux"
        return f"{' and '.join(missing)} not found on PATH (install {packages})"
    if not privileged:
        reason = _user_namespaces_disabled()
        if reason is not None:
            return reason
    reason = seccomp_unavailable()
    if reason is not None:
        return reason
    try:
        return _trial()
    except (OSError, ExecError) as exc:
        return f"a trial sandbox could not be run: {exc}"


def _user_namespaces_disabled() -> str | None:
    for path, why in (
        ("/proc/sys/kernel/unprivileged_userns_clone", "unprivileged user namespaces are disabled"),
        ("/proc/sys/user/max_user_namespaces", "user namespaces are disabled"),
    ):
        try:
            with open(path, encoding="ascii") as f:
                if f.read().strip() == "0":
                    return f"{why} ({path} is 0) and the node is not root"
        except OSError:
            continue
    return None


def _trial() -> str | None:
    """Run ``true`` as a task runs (prepare, then run); why it failed, or None."""
    top = tempfile.mkdtemp(prefix="mesh-sandbox-trial-")
    said = bytearray()

    def keep(stream: str, chunk: bytes) -> bool:
        said.extend(chunk[: 4096 - len(said)])
        return True

    try:
        task = os.path.join(top, "task")
        work, tmp = os.path.join(task, "work"), os.path.join(task, "tmp")
        os.makedirs(work)
        os.mkdir(tmp, 0o700)
        env = {**BASE_ENV, "HOME": tmp, "TMPDIR": tmp}
        executor = SandboxExecutor(term_grace=1.0, drain_grace=1.0)
        command = Command(argv=("true",), workdir=work, cwd="", env=env, home=tmp, tmpdir=tmp, timeout=30)
        executor.prepare(command)
        with NoCancel() as cancel:
            status = executor.run(command, keep, cancel)
    except SpawnFailed as exc:
        return f"a trial sandbox could not start `true`: {exc}"
    finally:
        shutil.rmtree(top, ignore_errors=True)
    if status.exit_code != 0:
        text = said.decode(errors="replace").strip()[-500:] or "no message"
        return f"a trial sandbox failed with exit status {status.exit_code}: {text}"
    return None
