"""The ``process`` executor, and the Executor protocol every executor follows.

An executor runs one command in a directory the runner prepared and reports how
it ended (:class:`ExitStatus`); the runner does everything else (workdir, CAS,
limits, outputs). Executors differ in how they isolate the task and therefore in
the checkout mode they need: ``process`` runs the task as the node's own user,
or on a root node as a task uid that owns its copy of the input
(:mod:`mesh.exec.taskusers`); either could chmod and rewrite a hardlinked blob it
owned, so its inputs are copies; the ``sandbox`` runs under a uid that owns none
of the store's files, and may link.

An executor runs on a worker thread, with blocking calls: the runner does a
task's whole life (prepare, run, capture, remove) in one hop to a thread, since
per-task overhead (thread hops, trio tasks and wakeups, GIL contention between
them) is what limits how many small tasks a node runs per second. It learns of
a cancellation through a :class:`Cancel` it can poll with its own descriptors.

The process executor starts argv in its own session and process group
(``start_new_session``), stdin the runner's read-only descriptor of the action's stdin
(``/dev/null`` when it has none), stdout and stderr on two pipes, in a mount namespace of
its own where its task directory is at ``/run/mesh`` (workdir ``/run/mesh/work``, HOME and
TMPDIR ``/run/mesh/tmp``), the same path on every run and node, where the node can make
one (:mod:`mesh.exec.paths`, which says how and what it costs; elsewhere at its host path,
and the node says so at start).
One ``poll`` loop watches both pipes, the leader's exit (a pidfd, which does not
reap) and the cancellation, and hands output to a callback chunk by chunk as it
comes. The group, not just the main process, is the unit of killing:

* at the timeout the group gets SIGKILL and the status says ``timed_out``;
* when the output callback returns False (an output limit), the group gets SIGKILL;
* when the run is cancelled (or the output callback raises), the group gets
  SIGTERM, a short grace, then SIGKILL, like trio's ``run_process`` deliver_cancel,
  and :class:`RunCancelled` (the callback's exception) propagates;
* when the main process exits by itself, whatever is left of its group gets
  SIGKILL, so no process outlives its task, and the pipes are drained to their end
  (with a bounded grace, in case a process that left the group holds one open:
  then only what is already in the pipes is read).

Starting the child is one replaceable step (``_spawn``): the sandbox executor
(:mod:`mesh.exec.sandbox`) starts bubblewrap around the command there and reuses
the supervision unchanged.

The group is signalled only while its leader is an unreaped zombie or alive (its
exit is watched through the pidfd; only the thread that runs the command reaps
and signals), so its id can never have been reused by an unrelated group. A task
that makes a new session or process group of its own escapes the kill; the
sandbox executor's pid namespace closes that gap, and on a root node so does the
task uid, every process of which the runner kills once the command is done
(:mod:`mesh.exec.leftovers`). Needs Linux 5.3 or later (``pidfd_open``).
"""

from __future__ import annotations

import errno
import math
import os
import re
import select
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol, Self

from mesh.cas.checkout import Mode
from mesh.errors import ExecError, SpawnFailed
from mesh.exec.hop import Cancel, RunCancelled
from mesh.exec.paths import Namespaces, namespaces_here

if TYPE_CHECKING:
    from mesh.exec.taskusers import TaskUsers

__all__ = [
    "Cancel",
    "Command",
    "Executor",
    "ExitStatus",
    "LaunchWatch",
    "NoCancel",
    "OutputSink",
    "ProcessExecutor",
    "RunCancelled",
    "setpriv_command",
]

OutputSink = Callable[[str, bytes], bool]
"""``on_output(stream, chunk)`` with stream ``"stdout"`` or ``"stderr"``: False asks to kill the command."""

#: Bytes asked of a pipe per read: the default pipe capacity on Linux.
READ_CHUNK = 1 << 16
#: Seconds between SIGTERM and SIGKILL when a run is cancelled.
TERM_GRACE = 2.0
#: Seconds the pipes may stay open after the process group is gone (held by a
#: process that left the group); waiting stops then and the output is cut there.
DRAIN_GRACE = 2.0
#: Seconds of the longest single poll (its timeout is an int of milliseconds).
_LONGEST_POLL = 86400.0


class NoCancel:
    """A :class:`Cancel` that never fires: for running an executor outside the runner
    (a trial run, a benchmark). A context manager that owns its descriptor."""

    cancelled = False

    def __init__(self) -> None:
        self._fd = os.eventfd(0, os.EFD_CLOEXEC)

    def fileno(self) -> int:
        return self._fd

    def __enter__(self) -> NoCancel:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self._fd)


@dataclass(frozen=True, slots=True)
class ExitStatus:
    """How a command ended. ``exit_code`` is shell-style: the status, or 128 + N for signal N.
    ``hint`` is a line for the person when the executor knows why a failure may have come
    about (the sandbox: no network)."""

    exit_code: int
    signal: int | None = None
    timed_out: bool = False
    hint: str | None = None  # why it may have failed, for the person (mesh.exec.hints)

    @classmethod
    def from_returncode(cls, returncode: int, *, timed_out: bool = False) -> ExitStatus:
        """From a :class:`subprocess.Popen` returncode (negative: killed by that signal)."""
        if returncode < 0:
            return cls(128 - returncode, -returncode, timed_out)
        return cls(returncode, None, timed_out)


@dataclass(frozen=True, slots=True, kw_only=True)
class Command:
    """One command as the runner hands it to an executor.

    ``workdir`` is the host path of the checked-out input root and ``cwd`` a
    directory relative to it ("" for the root); ``home`` and ``tmpdir`` are the
    task's own directories (already in ``env`` as HOME and TMPDIR, given apart so
    a container executor can mount them). ``env`` is the complete environment.
    """

    argv: tuple[str, ...]
    workdir: str
    cwd: str
    env: Mapping[str, str]
    home: str
    tmpdir: str
    timeout: float
    network: bool = False
    image: str | None = None
    limits: tuple[tuple[str, int], ...] = ()  # the action's own resource limits (the sandbox applies them)
    user: int | None = None  # the task uid (and gid) to run as (mesh.exec.taskusers); None: the node's own
    stdin: int | None = None  # a descriptor (read-only, the runner's) the task reads as stdin; None: /dev/null


class Executor(Protocol):
    """Runs commands in one kind of isolation; the runner owns everything around it."""

    @property
    def name(self) -> str:
        """The executor's name in actions: ``process``, ``sandbox``, ``docker``."""
        ...

    @property
    def users(self) -> TaskUsers | None:
        """The task uids each task runs as one of (the runner leases one per task and hands
        it the task's directories), or None: the executor decides who the task runs as."""
        ...

    @property
    def checkout_mode(self) -> Mode:
        """How the runner must check inputs out for it: ``copy`` unless the task's uid
        can neither write nor chmod the store's files, then ``link`` may be used."""
        ...

    @property
    def checkout_owner(self) -> tuple[int, int] | None:
        """Whom a copy-mode checkout belongs to (uid, gid): the uid the executor runs its
        tasks as (the sandbox of a root node), or None: the node's, or the leased task
        uid's when the executor has ``users``."""
        ...

    def run(self, command: Command, on_output: OutputSink, cancel: Cancel) -> ExitStatus:
        """Run ``command`` to its end on the calling (worker) thread, passing its output to ``on_output``.

        Kills everything the command started at the timeout (then ``timed_out``)
        and when ``on_output`` returns False. When ``cancel`` fires, kills it and
        raises RunCancelled; if ``on_output`` raises, kills it and re-raises.
        Raises SpawnFailed when the command cannot be started.
        """
        ...

    # An executor may also have ``prepare(command: Command) -> None``, which the
    # runner calls on the worker thread after the checkout and before ``run``
    # (the sandbox hands the task's directories to the uid the task runs as). It is
    # not part of the Protocol because most executors need nothing of the kind.


class ProcessExecutor:
    """The ``process`` executor: a subprocess in its own process group.

    With ``users`` (a root node's task uids), each command runs as the task uid the
    runner leased for it (``Command.user``), through util-linux ``setpriv``: no
    supplementary groups, no capabilities (inheritable, ambient and bounding sets
    emptied; the uid switch clears the others), ``no_new_privs``, and then a shell
    that looks the command up as the task uid (:data:`EXEC_AS_TASK`). Without, it runs as
    the node's own user. ``term_grace`` is the time between SIGTERM and SIGKILL on
    cancellation and ``drain_grace`` how long pipes held open by an escaped process
    are still waited for.

    Why setpriv, whose exec costs ~1.2 ms per task here: the alternative, subprocess's
    own ``user``/``group``/``extra_groups``, makes CPython fork instead of vfork, whose
    cost grows with the node's memory (measured: +1.1 ms for a 50 MB process, +1.7 ms
    for 100 MB), and sets neither no_new_privs nor the bounding set. A preexec_fn is
    not safe in a threaded node.
    """

    name = "process"
    checkout_mode: Mode = "copy"

    def __init__(
        self,
        *,
        users: TaskUsers | None = None,
        term_grace: float = TERM_GRACE,
        drain_grace: float = DRAIN_GRACE,
        stable_paths: bool = True,
    ) -> None:
        self.users = users
        self.term_grace = term_grace
        self.drain_grace = drain_grace
        self._setpriv: str | None = None
        if users is not None:
            self._setpriv = shutil.which("setpriv")
            if self._setpriv is None:
                raise ExecError("the process executor runs tasks as task uids through setpriv (util-linux), not found")
        self.namespaces: Namespaces | None = None
        self.paths_unavailable: str | None = None
        if stable_paths:
            self.namespaces, self.paths_unavailable = namespaces_here()

    @property
    def checkout_owner(self) -> tuple[int, int] | None:
        """None: the node's; with ``users``, the runner gives the checkout to the leased task uid."""
        return None

    def __repr__(self) -> str:
        return (
            f"ProcessExecutor(users={self.users!r}, term_grace={self.term_grace}, drain_grace={self.drain_grace}, "
            f"namespaces={self.namespaces!r})"
        )

    @property
    def work_path(self) -> str | None:
        """Where tasks see their workdir (mesh.exec.paths), or None: at its host path."""
        return None if self.namespaces is None else self.namespaces.view.work

    def run(self, command: Command, on_output: OutputSink, cancel: Cancel) -> ExitStatus:
        """See :meth:`Executor.run`."""
        launcher: Launcher | None = None
        if command.user is not None:
            launcher = "shell"
        elif self.namespaces is not None and self.namespaces.bwrap is not None:
            launcher = "bwrap"
        if launcher is None:
            return self._run(command, on_output, cancel)
        watch = LaunchWatch(on_output)
        status = self._run(command, watch, cancel)
        failure = watch.failure(status, command.argv[0], launcher)
        if failure is not None:
            raise failure
        return status

    def _run(self, command: Command, on_output: OutputSink, cancel: Cancel) -> ExitStatus:
        if cancel.cancelled:
            raise RunCancelled
        child = self._spawn(command)
        try:
            return self._supervise(child, command.timeout, on_output, cancel)
        except BaseException:
            # Cancelled, or the callback failed: the group gets a chance to stop cleanly.
            self._terminate(child)
            raise
        finally:
            child.close()

    def _spawn(self, command: Command) -> _Child:
        """Start the command itself in ``workdir/cwd`` (as ``command.user`` if set). Raises SpawnFailed.

        The one step a wrapping executor replaces (the sandbox starts bubblewrap,
        which runs the command); the supervision below is the same for every child.
        """
        argv: list[str] = list(command.argv)
        if command.user is not None:
            if self._setpriv is None:
                raise ExecError("this process executor has no task uids to run a command as another user")
            argv = [*setpriv_command(self._setpriv, command.user, command.user), *EXEC_AS_TASK, *argv]
        namespaces = self.namespaces
        if namespaces is None:
            cwd = os.path.join(command.workdir, command.cwd) if command.cwd else command.workdir
            env = {**command.env, "PWD": cwd}
        else:
            argv, cwd, env = namespaces.wrap(command, argv)
        try:
            if namespaces is None:
                return _Child.start(argv, cwd=cwd, env=env, stdin=command.stdin)
            return namespaces.within(command, lambda: _Child.start(argv, cwd=cwd, env=env, stdin=command.stdin))
        except OSError as exc:
            if (command.user is not None or argv[0] != command.argv[0]) and exc.filename != cwd:
                raise ExecError(f"cannot start {argv[0]}: {exc.strerror or exc}") from None
            raise _spawn_failed(command.argv[0], cwd, exc) from None

    def _supervise(self, child: _Child, timeout: float, on_output: OutputSink, cancel: Cancel) -> ExitStatus:
        """Read both pipes while waiting for the leader; kill, reap and drain as the module says."""
        poller = select.poll()
        pipes = dict(child.pipes)  # the pipes not at their end yet
        for fd in pipes:
            poller.register(fd, select.POLLIN)
        poller.register(child.pidfd, select.POLLIN)
        cancel_fd = cancel.fileno()
        poller.register(cancel_fd, select.POLLIN)
        # While the leader runs: its timeout; once it is reaped: the end of the drain grace.
        deadline = time.monotonic() + timeout
        returncode: int | None = None
        timed_out = killed = False
        while returncode is None or pipes:
            wait = deadline - time.monotonic()
            if wait <= 0:
                if returncode is not None:  # pipes held open past the drain grace
                    self._sweep(pipes, on_output)
                    break
                timed_out = True
                child.signal_group(signal.SIGKILL)
                deadline = math.inf
                continue
            for fd, _ in poller.poll(None if wait == math.inf else math.ceil(min(wait, _LONGEST_POLL) * 1000)):
                if fd == child.pidfd:
                    poller.unregister(fd)
                    child.signal_group(signal.SIGKILL)  # what is left of the group
                    returncode = child.reap()
                    deadline = time.monotonic() + self.drain_grace
                elif fd == cancel_fd:
                    raise RunCancelled
                else:
                    chunk = os.read(fd, READ_CHUNK)
                    if not chunk:
                        poller.unregister(fd)
                        del pipes[fd]
                    elif not on_output(pipes[fd], chunk) and not killed:
                        killed = True
                        child.signal_group(signal.SIGKILL)
        assert returncode is not None
        return ExitStatus.from_returncode(returncode, timed_out=timed_out)

    @staticmethod
    def _sweep(pipes: dict[int, str], on_output: OutputSink) -> None:
        """Pass on what is in the pipes already, without waiting for more (a slow ``on_output``
        makes the drain grace run out, but never loses output that had come)."""
        for fd, stream in pipes.items():
            os.set_blocking(fd, False)
            try:
                chunk = os.read(fd, READ_CHUNK)
            except BlockingIOError:
                continue
            if chunk:
                on_output(stream, chunk)

    def _terminate(self, child: _Child) -> None:
        """SIGTERM the group, wait up to the grace for the leader, SIGKILL the rest, reap."""
        if child.reaped:
            return
        child.signal_group(signal.SIGTERM)
        child.wait(self.term_grace)
        child.signal_group(signal.SIGKILL)
        child.wait(None)
        child.reap()


class _Child:
    """A started process: its Popen, a pidfd to watch its exit, and its two pipes.

    Owns all three; :meth:`close` releases them (killing and reaping first if the
    supervision never got that far).
    """

    def __init__(self, popen: subprocess.Popen[bytes], stdout_fd: int, stderr_fd: int) -> None:
        self.popen = popen
        self.pid = popen.pid
        self.reaped = False
        self.pidfd = os.pidfd_open(self.pid)  # first: if it fails, the caller owns the fds
        self.pipes = {stdout_fd: "stdout", stderr_fd: "stderr"}

    @classmethod
    def start(
        cls,
        argv: Sequence[str],
        *,
        cwd: str,
        env: Mapping[str, str],
        pass_fds: Sequence[int] = (),
        umask: int = -1,
        stdin: int | None = None,
    ) -> Self:
        """Start ``argv`` in its own session (blocking until it has exec'd), stdin ``stdin`` (a
        descriptor) or /dev/null.

        ``pass_fds`` stay open in the child (all others are closed); ``umask`` -1 keeps
        the node's. Raises the OSError of a failed start (ExecError if the started
        process cannot be watched), having released everything.
        """
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        try:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL if stdin is None else stdin,
                stdout=out_w,
                stderr=err_w,
                cwd=cwd,
                env=dict(env),
                start_new_session=True,
                close_fds=True,
                pass_fds=tuple(pass_fds),
                umask=umask,
            )
        except OSError:
            os.close(out_r)
            os.close(err_r)
            raise
        finally:
            os.close(out_w)
            os.close(err_w)
        try:
            return cls(popen, out_r, err_r)
        except BaseException as exc:
            _kill_and_reap(popen)
            os.close(out_r)
            os.close(err_r)
            if isinstance(exc, OSError):  # pidfd_open: not the command's fault
                raise ExecError(f"cannot watch the started process: {exc.strerror or exc}") from None
            raise

    def wait(self, timeout: float | None) -> bool:
        """Wait up to ``timeout`` seconds (None: no limit) for the leader to exit, without reaping it."""
        poller = select.poll()
        poller.register(self.pidfd, select.POLLIN)
        return bool(poller.poll(None if timeout is None else math.ceil(timeout * 1000)))

    def signal_group(self, sig: int) -> None:
        """Send ``sig`` to the whole process group, unless the leader is reaped already."""
        if self.reaped:
            return
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass

    def reap(self) -> int:
        """Collect the exited leader's status (Popen's returncode). Call once it has exited."""
        returncode = self.popen.wait()
        self.reaped = True
        return returncode

    def close(self) -> None:
        """Release the pipes and the pidfd; SIGKILL and reap the group if still unreaped."""
        if not self.reaped:
            self.signal_group(signal.SIGKILL)
            self.popen.wait()  # prompt after SIGKILL
            self.reaped = True
        os.close(self.pidfd)
        for fd in self.pipes:
            os.close(fd)


def setpriv_command(setpriv: str, uid: int, gid: int) -> list[str]:
    """util-linux ``setpriv`` becoming ``uid``:``gid`` with no groups, no capabilities and
    ``no_new_privs``, then executing what follows (the list ends with ``--``)."""
    return [
        setpriv,
        f"--reuid={uid}",
        f"--regid={gid}",
        "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--no-new-privs",
        "--",
    ]


#: What setpriv runs the command through. setpriv gives up its capabilities only in its
#: execve (the kernel drops them there for a uid that is not 0), so the path lookup of
#: that execve, and of a script's interpreter, still has root's CAP_DAC_READ_SEARCH: a task
#: could run a program in a directory its uid cannot search (found on 2026-12-04: a binary
#: in a 0700 directory of root's ran). A shell started by setpriv holds no capability, and
#: its ``exec`` looks the command up as the task uid, on the task's PATH as execvp would.
#: It costs ~0.9 ms a task (measured: 300 setpriv starts 0.74 s, 1.02 s through sh).
EXEC_AS_TASK = ("/bin/sh", "-c", 'exec "$0" "$@"')
#: Who exec's the command: setpriv itself (the sandbox, where bwrap dropped the
#: capabilities before), the shell of EXEC_AS_TASK, or bwrap.
Launcher = Literal["setpriv", "shell", "bwrap"]
#: Bytes of stderr kept to recognise a launcher's failed exec.
_LAUNCH_MESSAGE_MAX = 1024
#: The one line of a launcher's failed exec of the command, by launcher.
_LAUNCH_FAILED = {
    "setpriv": re.compile(rb"setpriv: failed to execute (.+): ([^\n]+)\n"),
    "bwrap": re.compile(rb"bwrap: execvp (.+): ([^\n]+)\n"),
    # dash: "PROG: 1: exec: PROG: not found"; bash: "PROG: line 1: exec: PROG: not found"
    "shell": re.compile(rb".*?: (?:line )?1: exec: (.+): ([^\n]+)\n"),
}


class LaunchWatch:
    """Passes output on, keeping the start of stderr and whether there was stdout, to tell
    a launcher's failed exec (the only output then) from the command's own failure."""

    def __init__(self, on_output: OutputSink) -> None:
        self.on_output = on_output
        self.stderr_head = b""
        self.stderr_long = False
        self.stdout = False

    def __call__(self, stream: str, chunk: bytes) -> bool:
        if stream == "stdout":
            self.stdout = True
        elif not self.stderr_long:
            self.stderr_head += chunk
            if len(self.stderr_head) > _LAUNCH_MESSAGE_MAX:
                self.stderr_long = True
                self.stderr_head = b""
        return self.on_output(stream, chunk)

    def failure(
        self, status: ExitStatus, program: str, launcher: Launcher, where: str = "", hint: str = ""
    ) -> SpawnFailed | None:
        """The SpawnFailed that ``status`` and the output mean, or None if the command ran.

        ``launcher`` exec'd the command: setpriv or the shell (exit 127 or 126) or bwrap (exit 1).
        ``where`` and ``hint`` are said in the message ("in the sandbox", say).
        """
        codes = (1,) if launcher == "bwrap" else (126, 127)
        if status.exit_code not in codes or status.timed_out or self.stdout or self.stderr_long:
            return None
        match = _LAUNCH_FAILED[launcher].fullmatch(self.stderr_head)
        if match is None:
            return None
        why = match.group(2).decode(errors="replace")
        not_found = why == os.strerror(errno.ENOENT) if launcher == "bwrap" else status.exit_code == 127
        if not_found:
            return SpawnFailed(
                f"command not found{where}: {program!r} (argv[0] is looked up on the action's PATH, "
                f"or relative to its cwd when it contains a '/'{hint})",
                127,
            )
        if why == os.strerror(errno.EAGAIN):
            why += " (the task uid has as many processes as its limit allows)"
        return SpawnFailed(f"cannot execute {program!r}{where}: {why}", 126)


def _kill_and_reap(popen: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(popen.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    popen.wait()


def _spawn_failed(program: str, cwd: str, exc: OSError) -> SpawnFailed:
    """The shell's answer to a command it cannot start: 127 not found, 126 not executable."""
    reason = exc.strerror or str(exc)
    if exc.filename == cwd:
        return SpawnFailed(f"cannot enter the working directory {cwd}: {reason}", 126)
    if exc.errno == errno.ENOENT:
        return SpawnFailed(
            f"command not found: {program!r} (argv[0] is looked up on the action's PATH, "
            "or relative to its cwd when it contains a '/')",
            127,
        )
    return SpawnFailed(f"cannot execute {program!r}: {reason}", 126)
