"""The ``process`` executor, and the Executor protocol every executor follows.

An executor runs one command in a directory the runner prepared and reports how
it ended (:class:`ExitStatus`); the runner does everything else (workdir, CAS,
limits, outputs). Executors differ in how they isolate the task and therefore in
the checkout mode they need: ``process`` runs the task as the node's own user,
who could chmod and rewrite a hardlinked blob, so its inputs are copies;
``sandbox`` and ``docker`` (issue 5) run under a uid that cannot, and may link.

The process executor starts argv in its own session and process group
(``start_new_session``), stdin ``/dev/null``, stdout and stderr on two pipes
that are read concurrently, chunk by chunk, and handed to a callback as they
come. The group, not just the main process, is the unit of killing:

* at the timeout the group gets SIGKILL and the status says ``timed_out``;
* when the caller's ``stop`` event is set (an output limit), the group gets SIGKILL;
* when the run is cancelled (or the output callback raises), the group gets
  SIGTERM, a short grace, then SIGKILL, like trio's ``run_process`` deliver_cancel,
  and the exception propagates;
* when the main process exits by itself, whatever is left of its group gets
  SIGKILL, so no process outlives its task, and the pipes are drained to their end
  (with a bounded grace, in case a process that left the group holds one open).

The group is signalled only while its leader is an unreaped zombie or alive (the
exit is watched through a pidfd, without reaping), so its id can never have been
reused by an unrelated group. A task that makes a new session or process group
of its own escapes the kill; the sandbox executor's pid namespace closes that gap.
Needs Linux 5.3 or later (``pidfd_open``).
"""

from __future__ import annotations

import errno
import math
import os
import signal
import subprocess
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import trio

from mesh.cas.checkout import Mode
from mesh.errors import SpawnFailed

OutputCallback = Callable[[str, bytes], Awaitable[None]]
"""``await on_output(stream, chunk)`` with stream ``"stdout"`` or ``"stderr"``."""

#: Bytes asked of a pipe per read: the default pipe capacity on Linux.
READ_CHUNK = 1 << 16
#: Seconds between SIGTERM and SIGKILL when a run is cancelled.
TERM_GRACE = 2.0
#: Seconds the pipes may stay open after the process group is gone (held by a
#: process that left the group); reading stops then and the output is cut there.
DRAIN_GRACE = 2.0


@dataclass(frozen=True, slots=True)
class ExitStatus:
    """How a command ended. ``exit_code`` is shell-style: the status, or 128 + N for signal N."""

    exit_code: int
    signal: int | None = None
    timed_out: bool = False

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


class Executor(Protocol):
    """Runs commands in one kind of isolation; the runner owns everything around it."""

    @property
    def name(self) -> str:
        """The executor's name in actions: ``process``, ``sandbox``, ``docker``."""
        ...

    @property
    def checkout_mode(self) -> Mode:
        """How the runner must check inputs out for it: ``copy`` unless the task's uid
        can neither write nor chmod the store's files, then ``link`` may be used."""
        ...

    async def run(self, command: Command, on_output: OutputCallback, *, stop: trio.Event | None = None) -> ExitStatus:
        """Run ``command`` to its end, passing its output to ``on_output`` as it comes.

        Kills everything the command started at the timeout (then ``timed_out``)
        and when ``stop`` is set. If cancelled, or if ``on_output`` raises, kills
        it and re-raises. Raises SpawnFailed when the command cannot be started.
        """
        ...


class ProcessExecutor:
    """The ``process`` executor: a subprocess of the node's user in its own process group.

    ``term_grace`` is the time between SIGTERM and SIGKILL on cancellation and
    ``drain_grace`` how long pipes held open by an escaped process are still read.
    """

    name = "process"
    checkout_mode: Mode = "copy"

    def __init__(self, *, term_grace: float = TERM_GRACE, drain_grace: float = DRAIN_GRACE) -> None:
        self.term_grace = term_grace
        self.drain_grace = drain_grace

    def __repr__(self) -> str:
        return f"ProcessExecutor(term_grace={self.term_grace}, drain_grace={self.drain_grace})"

    async def run(self, command: Command, on_output: OutputCallback, *, stop: trio.Event | None = None) -> ExitStatus:
        """See :meth:`Executor.run`."""
        # Popen returns once the child has exec'd, which takes a millisecond or more on
        # a busy machine: on a worker thread, as trio's run_process does, so concurrent
        # tasks spawn in parallel (measured: ~1.9x the tasks/s of spawning on the event
        # loop with 4 tasks at a time, the same with one).
        child = await trio.to_thread.run_sync(_Child.spawn, command)
        try:
            return await self._supervise(child, command.timeout, on_output, stop)
        except BaseExceptionGroup as group:
            # The nursery inside wraps a single failure (the callback's, a Cancelled):
            # callers get it as itself.
            raise _single(group) from None
        finally:
            child.close()

    async def _supervise(
        self, child: _Child, timeout: float, on_output: OutputCallback, stop: trio.Event | None
    ) -> ExitStatus:
        """Pump both pipes while waiting for the leader; kill, reap and drain as the module says."""
        async with trio.open_nursery() as nursery:
            for pipe in child.pipes:
                nursery.start_soon(pipe.pump, on_output)
            watch = trio.CancelScope()
            if stop is not None:
                nursery.start_soon(_kill_on, stop, child, watch)
            try:
                with trio.move_on_after(timeout) as deadline:
                    await child.exited()
                if deadline.cancelled_caught:
                    child.signal_group(signal.SIGKILL)
                    await child.exited()
            except BaseException:
                # Cancelled, or a pump's callback failed (the nursery cancelled us).
                with trio.CancelScope(shield=True):
                    await self._terminate(child)
                raise
            watch.cancel()
            child.signal_group(signal.SIGKILL)  # what is left of the group
            returncode = child.reap()
            # The group is gone, so the pipes reach their end at once unless a process
            # that left the group holds one: stop waiting for more after the grace then.
            # (Only the waits are bounded: a slow on_output never loses output.)
            for pipe in child.pipes:
                pipe.stop_waiting_at(trio.current_time() + self.drain_grace)
        return ExitStatus.from_returncode(returncode, timed_out=deadline.cancelled_caught)

    async def _terminate(self, child: _Child) -> None:
        """SIGTERM the group, wait up to the grace for the leader, SIGKILL the rest, reap."""
        child.signal_group(signal.SIGTERM)
        with trio.move_on_after(self.term_grace):
            await child.exited()
        child.signal_group(signal.SIGKILL)
        await child.exited()
        child.reap()


def _single(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one exception inside nested single-member groups, or the group itself."""
    inner: BaseException = group
    while isinstance(inner, BaseExceptionGroup) and len(inner.exceptions) == 1:
        inner = inner.exceptions[0]
    return inner


async def _kill_on(stop: trio.Event, child: _Child, scope: trio.CancelScope) -> None:
    """SIGKILL the group when ``stop`` is set (until ``scope`` is cancelled)."""
    with scope:
        await stop.wait()
        child.signal_group(signal.SIGKILL)


class _Pipe:
    """The read end of one output pipe, pumped chunk by chunk into ``on_output``."""

    def __init__(self, name: str, fd: int) -> None:
        self.name = name
        self.stream = trio.lowlevel.FdStream(fd)
        self._deadline = math.inf
        self._wait = trio.CancelScope()

    async def pump(self, on_output: OutputCallback) -> None:
        """Pass every chunk to ``on_output`` until the end of the pipe or the wait deadline."""
        while True:
            self._wait = trio.CancelScope(deadline=self._deadline)
            with self._wait:
                chunk = await self.stream.receive_some(READ_CHUNK)
            if self._wait.cancelled_caught or not chunk:
                return
            await on_output(self.name, chunk)

    def stop_waiting_at(self, deadline: float) -> None:
        """Give up waiting for more bytes at ``deadline`` (trio time)."""
        self._deadline = deadline
        self._wait.deadline = deadline


class _Child:
    """A started process: its Popen, a pidfd to watch its exit, and its two pipes.

    Owns all three; :meth:`close` releases them (killing and reaping first if the
    supervision never got that far).
    """

    def __init__(self, popen: subprocess.Popen[bytes], stdout_fd: int, stderr_fd: int) -> None:
        self.popen = popen
        self.pid = popen.pid
        self.reaped = False
        self.pidfd: int | None = os.pidfd_open(self.pid)  # first: if it fails, the caller owns the fds
        self.pipes = (_Pipe("stdout", stdout_fd), _Pipe("stderr", stderr_fd))

    @classmethod
    def spawn(cls, command: Command) -> _Child:
        """Start the command (blocking until it has exec'd). Raises SpawnFailed."""
        cwd = os.path.join(command.workdir, command.cwd) if command.cwd else command.workdir
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        try:
            popen = subprocess.Popen(
                command.argv,
                stdin=subprocess.DEVNULL,
                stdout=out_w,
                stderr=err_w,
                cwd=cwd,
                env=dict(command.env),
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            os.close(out_r)
            os.close(err_r)
            raise _spawn_failed(command.argv[0], cwd, exc) from None
        finally:
            os.close(out_w)
            os.close(err_w)
        try:
            return cls(popen, out_r, err_r)
        except BaseException:
            _kill_and_reap(popen)
            os.close(out_r)
            os.close(err_r)
            raise

    async def exited(self) -> None:
        """Return once the leader has exited; it stays an unreaped zombie until :meth:`reap`."""
        if self.pidfd is not None:
            await trio.lowlevel.wait_readable(self.pidfd)

    def signal_group(self, sig: int) -> None:
        """Send ``sig`` to the whole process group, unless the leader is reaped already."""
        if self.reaped:
            return
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass

    def reap(self) -> int:
        """Collect the exited leader's status (Popen's returncode). Call after :meth:`exited`."""
        returncode = self.popen.wait()
        self.reaped = True
        self._close_pidfd()
        return returncode

    def _close_pidfd(self) -> None:
        if self.pidfd is not None:
            trio.lowlevel.notify_closing(self.pidfd)
            os.close(self.pidfd)
            self.pidfd = None

    def close(self) -> None:
        """Release the pipes and the pidfd; SIGKILL and reap the group if still unreaped."""
        if not self.reaped:
            self.signal_group(signal.SIGKILL)
            self.popen.wait()  # prompt after SIGKILL
            self.reaped = True
        self._close_pidfd()
        for pipe in self.pipes:
            pipe.stream.close()


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
