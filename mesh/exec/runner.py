"""The task runner: input snapshot -> workdir -> executor -> outputs in the CAS -> ActionResult.

For each action the runner makes a private task directory (0700) under its
workroot::

    task-XXXXXXXX/
        work/   the input snapshot, checked out in the executor's mode, each entry
                with the mtime of the action's times manifest (mesh.cas.times), or
                1980-01-01 for every entry when it names none
        tmp/    HOME and TMPDIR of the task (one directory: each costs a
                mkdir and a removal, and those are slow on some disks)
        out/    declared outputs, gathered here to be snapshotted (made only if one exists)

lets the executor prepare them if it has a ``prepare(command)`` hook (the
sandbox gives the directories to the uid its task runs as; the files of a
copy-mode checkout are that uid's as they are written, the executor's
``checkout_owner``, and those of a link-mode one stay the store's),
or, for an executor with task uids (the ``process`` executor of a root node,
:mod:`mesh.exec.taskusers`), leases the task a uid of its own, makes the task
directory in the task uids' directory and gives it, checkout and all, to that
uid (the uid is freed only when the runner is done with the directory);
then runs the command through the executor with ``env = BASE_ENV + HOME +
TMPDIR + action.env`` in ``work/<action.cwd>`` (which each executor shows the task
at a path of its own, the same on every run and node: :mod:`mesh.exec.paths`), its stdin
a read-only descriptor of a verified copy of the action's stdin blob (whose name is gone
before the command starts; ``/dev/null`` when it has none), writes stdout and stderr into
the CAS as they come (and passes them to a follower); once the command is done
and nothing of the task runs (every process of a task uid killed), takes the task
directory back from the uid the task ran as (:mod:`mesh.exec.takeback`: no other
uid can change it while the node reads it), snapshots the outputs, and removes
the whole task directory: also when the task made parts of it
read-only, when it failed, and when the run was cancelled. The one exception:
a copy-mode checkout the task left intact (what it added aside) is kept for the
next task with the same input, which then skips the checkout
(:mod:`mesh.exec.workpool`); ``close()`` removes those.

What the *task* did wrong ends in the result's ``error`` (a cwd that is not a
directory, a command that cannot be started, an output over its limit);
what went wrong on this *node* is raised (an input blob that is missing or
damaged, a full disk), because a result is recorded and cached and such a
failure says nothing about the action.

**No task runs on damaged bytes, and so no result is cached from them.** Every file
of a task's input is checked before the command starts: a copy checkout hashes what
it copies, a link checkout trusts a file only while the store's record says it was
hashed and is unchanged since (mesh.cas.verified), and hashes it otherwise; a damaged
blob raises BlobDamaged here (quarantined, the task directory removed) and the
scheduler fetches it again from a peer or fails the task. That suffices for the
result too: once checked, a task's copy is its own (the node's blob is not what it
reads; a copy of a task uid or of the sandbox's uid is in a task directory no other
uid can reach), and a linked file is the store's, 0444 and root's, which the task's uid can
neither write nor chmod (mesh.exec.sandbox), so what the task read is what was
checked. What it does not cover: the store's owner changing a blob file while a
task that linked it runs (the next checkout finds it). A kept copy-mode directory
(mesh.exec.workpool) is used again only while it is as it was checked out.

The whole life of a task (prepare the directory, run the command, capture the
outputs, remove the directory) runs on one worker thread, in one hop
(:mod:`mesh.exec.hop`), with blocking calls: stdout and stderr go into the CAS
from that thread, and only a follower's share of them crosses back to the event
loop, chunk by chunk, when there is output. A cancellation reaches the thread at
once (the executor kills the command) and the run raises Cancelled when the
thread is done. Per-task overhead (thread hops, trio tasks and wakeups, GIL
contention between them) is what limits how many small tasks a node runs per
second. Measured on 2 cores, a node in-process with 2 slots: ~430 instead of
~300 trivial tasks/s, and 2.9 instead of 4.1 ms of the node's CPU per task, against
three hops with a nursery of two pipe pumps and a pidfd wait per process. (Moving
the removal of task directories to a background sweeper did not help: it saves
the task's slot ~1 ms of wall time but not the CPU, which is the limit then.)
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import signal
import stat
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace

from mesh.cas.blobio import BlobWriter
from mesh.cas.checkout import checkout, set_dir_times
from mesh.cas.digest import Digest
from mesh.cas.snapshot import ingest, resolve
from mesh.cas.space import StoreSpace
from mesh.cas.store import LocalStore
from mesh.cas.times import FIXED_MTIME_NS, Times
from mesh.cas.times import decode as decode_times
from mesh.cas.tree import Kind, encode_node
from mesh.errors import (
    ExecError,
    InvalidTimes,
    MeshError,
    PathNotFound,
    SnapshotError,
    SpawnFailed,
    UnknownExecutor,
)
from mesh.exec import hop
from mesh.exec.action import BASE_ENV, Action, ActionResult
from mesh.exec.leftovers import MARKER, kill_processes, marked_below
from mesh.exec.process import Command, Executor, ExitStatus
from mesh.exec.removal import remove_tree as remove_tree  # also known as the runner's
from mesh.exec.takeback import take_back
from mesh.exec.taskusers import Lease
from mesh.exec.workpool import Manifest, PoolStatistics, Verdict, WorkdirPool

log = logging.getLogger("mesh.exec")

OutputFollower = Callable[[str, bytes], Awaitable[None]]
"""``await on_output(stream, chunk)``: live output for whoever follows the task."""
CancelledResult = Callable[[ActionResult], None]
"""``on_cancel(result)``: what a cancelled task wrote until it was killed (called on the task's thread)."""

#: Exit code and signal recorded for a task killed by a cancel: the executors send SIGTERM (then
#: SIGKILL after a grace; a container gets SIGKILL at once).
CANCELLED_SIGNAL = signal.SIGTERM

#: Exit code of a task the runner could not start (a shell's "command not found").
NOT_STARTED = 127
#: The error of a cancelled task's result.
CANCELLED = "cancelled: the command was killed; its stdout and stderr are what it wrote until then"
_TASK_PREFIX = "task-"


@dataclass(frozen=True, kw_only=True)
class Limits:
    """What one task may produce; passing a limit fails the task with a clear ``error``.

    ``stream_bytes``: bytes kept of stdout, and of stderr, each (default 64 MiB).
    The task is killed when a stream passes it; the stream is kept up to the limit.
    ``output_bytes``: total size of the files captured as outputs (default 4 GiB);
    over it, nothing is captured. Both protect the store's disk from a runaway task.
    """

    stream_bytes: int = 64 << 20
    output_bytes: int = 4 << 30

    def __post_init__(self) -> None:
        if self.stream_bytes < 0 or self.output_bytes < 0:
            raise ValueError(f"limits must not be negative: {self!r}")


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True, slots=True)
class RunnerStatistics:
    """Counters of one Runner (for /status and /metrics)."""

    running: int
    finished: int
    workdirs: PoolStatistics  # task directories kept and reused (mesh.exec.workpool)


@dataclass(frozen=True, slots=True)
class _TaskDir:
    """The paths of one task directory (see the module docstring)."""

    root: str
    work: str
    home: str
    tmp: str
    out: str
    manifest: Manifest | None = None  # set when the directory may be kept for reuse

    @classmethod
    def at(cls, root: str, manifest: Manifest | None = None) -> _TaskDir:
        join = os.path.join
        return cls(
            root,
            join(root, "work"),
            home=join(root, "tmp"),
            tmp=join(root, "tmp"),
            out=join(root, "out"),
            manifest=manifest,
        )


class Runner:
    """Runs actions on this node. Owns its workroot: every ``task-*`` in it is a task's.

    ``executors`` maps an action's executor name to the executor that serves it;
    ``workdirs`` keeps finished tasks' directories for the next task with the same
    input (:mod:`mesh.exec.workpool`; ``WorkdirPool(dirs=0)`` keeps none). Under a cap
    on the store (``space``, mesh.cas.space), what a task wrote is kept through evictions
    until its outputs are captured, and each new blob of them asks for room.
    """

    def __init__(
        self,
        store: LocalStore,
        *,
        workroot: str | os.PathLike[str],
        node_id: str,
        executors: Mapping[str, Executor],
        limits: Limits = DEFAULT_LIMITS,
        workdirs: WorkdirPool | None = None,
        space: StoreSpace | None = None,
    ) -> None:
        self.store = store
        self.space = space
        self.workroot = os.path.abspath(os.fspath(workroot))
        self.node_id = node_id
        self.executors = dict(executors)
        self.limits = limits
        self.workdirs = WorkdirPool() if workdirs is None else workdirs
        os.makedirs(self.workroot, mode=0o700, exist_ok=True)
        self._empty = store.put(b"")
        self._running = 0
        self._finished = 0

    def __repr__(self) -> str:
        return f"Runner({self.workroot!r}, node_id={self.node_id!r}, executors={sorted(self.executors)}, {self.limits})"

    def statistics(self) -> RunnerStatistics:
        """Tasks running now and finished so far (whatever their outcome)."""
        return RunnerStatistics(self._running, self._finished, self.workdirs.statistics())

    def close(self) -> None:
        """Remove the task directories kept for reuse (blocking); call when no task runs."""
        for root in self.workdirs.drain():
            remove_tree(root)

    def remove_leftovers(self) -> int:
        """Kill what tasks of a node that died mid-task left running (mesh.exec.leftovers), and
        remove their task directories; returns how many directories.

        Call before the first run (blocking); never while tasks run.
        """
        try:
            killed = kill_processes(marked_below(self.workroot + "/"))
        except OSError as exc:  # one outlived its SIGKILL: the directories go all the same
            log.warning("processes left running by tasks of a previous run are not all gone: %s", exc)
        else:
            if killed:
                log.warning("killed %d process(es) left running by tasks of a previous run", killed)
        removed = 0
        for name in os.listdir(self.workroot):
            if name.startswith(_TASK_PREFIX):
                remove_tree(os.path.join(self.workroot, name))
                removed += 1
        return removed

    async def run(
        self,
        action: Action,
        *,
        on_output: OutputFollower | None = None,
        on_cancel: CancelledResult | None = None,
    ) -> ActionResult:
        """Run ``action`` and return its result; its output streams go live to ``on_output``.

        Raises UnknownExecutor for an executor this node lacks, BlobNotFound when the
        input snapshot is not in the store (BlobDamaged, quarantined, if not intact),
        StoreFull when the store has no room for the task's output streams or outputs
        (the task is killed then, and nothing partial is kept), and whatever
        ``on_output`` raises (the task is killed then). Cancellation kills the task and,
        if it had started, hands ``on_cancel`` a result whose stdout and stderr are what it
        wrote until then (stored like a timed-out task's; no output snapshot, an ``error``
        saying it was cancelled) before Cancelled is raised.
        In every case the task directory is gone when this returns.
        """
        executor = self.executors.get(action.executor)
        if executor is None:
            have = ", ".join(sorted(self.executors)) or "none"
            raise UnknownExecutor(f"this node has no {action.executor!r} executor (it has: {have})")
        self._running += 1
        try:
            return await hop.run_sync(functools.partial(self._run_task, action, executor, on_output, on_cancel))
        finally:
            self._running -= 1
            self._finished += 1

    def _run_task(
        self,
        action: Action,
        executor: Executor,
        follower: OutputFollower | None,
        on_cancel: CancelledResult | None,
        line: hop.Hop,
    ) -> ActionResult:
        """The whole task, on a worker thread; ``line`` carries the follower's output and the cancellation."""
        started_at = time.time()
        written_before = self.store.statistics().blobs_written
        forward = None if follower is None else functools.partial(line.call, follower)
        streams = _Streams(self.store, self.limits.stream_bytes, forward)
        task: _TaskDir | None = None
        keep: Verdict | None = None
        users = executor.users
        lease: Lease | None = None
        taken_back = False  # the task is over and its directory is the node's alone
        stdin: int | None = None
        try:
            if users is not None:
                lease = users.lease(prefer=self.workdirs.owners(action.input, action.times), cancel=line)
            prepared = self._prepare(action, executor, lease)
            if isinstance(prepared, str):
                return self._result(ExitStatus(NOT_STARTED), streams.commit(self._empty), None, started_at, prepared)
            task = prepared
            if action.stdin is not None:
                stdin = self._stdin(action.stdin, task)
            command = Command(
                argv=action.argv,
                workdir=task.work,
                cwd=action.cwd,
                env=_environment(action, task),
                home=task.home,
                tmpdir=task.tmp,
                timeout=action.timeout,
                network=action.network,
                image=action.image,
                limits=action.limits,
                user=None if lease is None else lease.uid,
                stdin=stdin,
            )
            prepare = getattr(executor, "prepare", None)
            if prepare is not None:  # e.g. the sandbox hands the directories to its task's uid
                prepare(command)
            try:
                status = executor.run(command, streams.write, line)
            except SpawnFailed as exc:
                digests = streams.commit(self._empty)
                return self._result(ExitStatus(exc.exit_code), digests, None, started_at, str(exc))
            except hop.RunCancelled:
                if on_cancel is not None:  # what it wrote is kept, as a timed-out task's is
                    self._keep_streams(streams, started_at, on_cancel)
                raise
            finally:
                self._end(executor, lease, task)
                taken_back = True
            digests = streams.commit(self._empty)
            with self._kept_since(started_at):
                keep, output, capture_error = self._capture(action, task)
            if self.store.statistics().blobs_written != written_before:
                self.store.sync()
            return self._result(status, digests, output, started_at, streams.error or capture_error)
        finally:
            streams.abort()
            if stdin is not None:
                os.close(stdin)
            try:
                if task is not None and (keep is None or not self._keep(task, keep)):
                    if taken_back and executor.checkout_mode == "link":
                        # Unlinking a blob's name moves its ctime: the store's record follows it,
                        # so that the next task's link checkout need not hash the blob again.
                        self.store.verified.release(task.work)
                    remove_tree(task.root)
            finally:
                if users is not None and lease is not None:
                    users.end(lease)  # kills what runs of it (if the task never ran), frees the uid

    def _stdin(self, digest: Digest, task: _TaskDir) -> int:
        """A read-only descriptor of a verified copy of the stdin blob, whose name is gone already.

        A copy, not the store's file: a task that runs as the store's owner (a node that is
        not root) could chmod the blob through its descriptor and reopen it for writing
        through /proc. Costs a read and a write of it (at most MAX_STDIN). Raises BlobNotFound
        (BlobDamaged) like the input's checkout.
        """
        path = os.path.join(task.root, "stdin")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o400)
        try:
            os.unlink(path)
            self.store.copy_to(digest, fd)
            return os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
        finally:
            os.close(fd)

    def _keep_streams(self, streams: _Streams, started_at: float, on_cancel: CancelledResult) -> None:
        """Store a cancelled task's streams and hand on its result; a store that cannot keep
        them (full) loses them, and the cancel goes on."""
        try:
            digests = streams.commit(self._empty)
        except (MeshError, OSError) as exc:
            log.warning("the output of a cancelled task could not be kept: %s", exc)
            return
        killed = ExitStatus(128 + CANCELLED_SIGNAL, CANCELLED_SIGNAL)
        on_cancel(self._result(killed, digests, None, started_at, CANCELLED))

    def _kept_since(self, started_at: float) -> contextlib.AbstractContextManager[object]:
        """While the outputs are captured, what the task wrote since it started (its output
        streams, its outputs) is kept through evictions for other writers."""
        if self.space is None:
            return contextlib.nullcontext()
        return self.space.protecting(since_ns=int(started_at * 1e9))

    @staticmethod
    def _end(executor: Executor, lease: Lease | None, task: _TaskDir) -> None:
        """The command is done: once nothing of the task runs, its directory is taken back.

        A task uid's processes (a daemon that left the task's process group too) are
        killed and gone, and none starts until the runner frees the uid once done with
        the directory; then the directory is the node's (mesh.exec.takeback), with the
        checkout's directories left to the uid, and no other uid can change anything in it
        while the node reads it. A sandbox's processes are gone with its pid namespace;
        its uid is shared by every sandboxed task, so all its directories become the node's.
        Raises ExecError if the task uid's processes cannot be killed.
        """
        users = executor.users
        if users is not None and lease is not None:
            users.kill(lease)
            owner: int | None = lease.uid
        elif hasattr(executor, "prepare"):
            owner = None
        else:
            return  # the node's own user ran it: nothing to take back
        try:
            take_back(task.root, owner)
        except OSError as exc:
            raise ExecError(f"cannot take the task directory {task.root} back: {exc.strerror or exc}") from None

    def _capture(self, action: Action, task: _TaskDir) -> tuple[Verdict | None, Digest | None, str | None]:
        """Snapshot the outputs; also whether the task directory may be kept (a Verdict) or not (None).

        A whole-workdir capture of a checkout the task left intact is the input
        snapshot itself, and is not walked twice, unless the store removed blobs since
        the snapshot was last known to be whole in it (then the walk stores them again).
        """
        manifest = task.manifest
        limit = self.limits.output_bytes
        if manifest is None:
            return None, *capture_outputs(self.store, task.work, task.out, action.outputs, limit)
        if action.outputs is None:
            verdict = manifest.verify(task.work)
            if verdict is None:
                return None, *capture_outputs(self.store, task.work, task.out, None, limit)
            epoch = self.store.epoch()
            if not verdict.extras and manifest.bytes <= limit and epoch == manifest.epoch:
                return verdict, action.input, None
            output, error = capture_outputs(self.store, task.work, task.out, None, limit)
            if output == action.input:  # walked and stored afresh: the input is whole in the store again
                verdict = replace(verdict, manifest=replace(verdict.manifest, epoch=epoch))
            return verdict, output, error
        output, error = capture_outputs(self.store, task.work, task.out, action.outputs, limit)
        return manifest.verify(task.work), output, error

    def _keep(self, task: _TaskDir, verdict: Verdict) -> bool:
        """Put the task directory back in the pool, its checkout as it was made; False if it cannot be.

        Removes what the task added to the workdir, the staged outputs and what it left in
        its HOME / TMPDIR, and checks that nothing else of the directory changed.
        """
        base = os.fsencode(task.work)
        try:
            for rel in verdict.extras:
                path = os.fsdecode(base + b"/" + rel)
                if stat.S_ISDIR(os.lstat(path).st_mode):
                    remove_tree(path)
                else:
                    os.unlink(path)
            remove_tree(task.out)
            owner = verdict.manifest.owner  # the task uid's, or the node's
            home = os.lstat(task.tmp)
            if not _private_dir(home, owner) or os.listdir(task.tmp):
                remove_tree(task.tmp)
                os.mkdir(task.tmp, 0o700)
                os.chown(task.tmp, owner, owner if owner != os.geteuid() else os.getegid())
            if not _private_dir(os.lstat(task.root), os.geteuid()) or sorted(os.listdir(task.root)) != ["tmp", "work"]:
                return False
        except OSError:
            return False
        for root in self.workdirs.keep(task.root, verdict.manifest):
            remove_tree(root)
        return True

    @staticmethod
    def _still_intact(root: str, manifest: Manifest) -> Manifest | None:
        """A kept task directory about to be reused, looked at again: its manifest as of now,
        or None (and the directory removed) if it changed while idle.

        What was checked when it was kept may have changed since: a later task of the same
        uid, given a descriptor of the directory by a task of another uid, could write in
        it, and a file may have been opened for writing (by the task, then passed on to a
        process of another uid that writes later, while the next task runs on it). So the
        checkout must be as recorded, nothing added, no file of it open for writing
        anywhere (:meth:`Manifest.unchanged`), and the task directory and its HOME as
        :meth:`_keep` left them. Once it is handed over, none of that can change: no
        process of the uid runs before the new task's, and the files and directories
        are writable by their owner only. Costs a walk of the checkout and a read lease
        per file, measured in process here: 1.8 ms for 200 files (1.2 of them the walk),
        0.18 ms for 20, against 12.8 and 1.9 ms to check them out again; through a runner
        with a task uid, a trivial task with 200 input files took 6.8 ms reusing its
        directory with this check and 17 ms never reusing one (20 files: 3.6 and 4.8 ms).
        """
        task = _TaskDir.at(root, manifest)
        checked = None
        try:
            if (
                _private_dir(os.lstat(root), os.geteuid())
                and sorted(os.listdir(root)) == ["tmp", "work"]
                and _private_dir(os.lstat(task.tmp), manifest.owner)
                and not os.listdir(task.tmp)
            ):
                checked = manifest.unchanged(task.work)
        except OSError:
            pass
        if checked is None:
            log.warning("a kept task directory changed while idle, or a file of it is open for writing: %s", root)
            remove_tree(root)
        return checked

    def _result(
        self,
        status: ExitStatus,
        streams: tuple[Digest, Digest],
        output: Digest | None,
        started_at: float,
        error: str | None,
    ) -> ActionResult:
        return ActionResult(
            exit_code=status.exit_code,
            signal=status.signal,
            timed_out=status.timed_out,
            error=error,
            hint=status.hint,
            stdout=streams[0],
            stderr=streams[1],
            output=output,
            started_at=started_at,
            finished_at=time.time(),
            node=self.node_id,
        )

    # -- blocking filesystem work (on the task's worker thread) -------------------

    def _prepare(self, action: Action, executor: Executor, lease: Lease | None) -> _TaskDir | str:
        """A task directory with the input checked out; or why the task cannot start.

        A directory kept from an earlier task with the same input is taken when there
        is one (made for the same task uid, with ``lease``). The checkout runs on the
        calling thread (``workers=1``): a task's input is written by one thread, so the
        store's pool stays free for other tasks. With ``lease``, the task directory is
        in the task uids' directory and everything in it belongs to the leased uid.
        """
        error = _check_cwd(self.store, action)
        if error is not None:
            return error
        try:
            times = input_times(self.store, action)
        except InvalidTimes as exc:
            return f"the task's times manifest {action.times} cannot be used: {exc}"
        mode = executor.checkout_mode
        reusable = mode == "copy" and not hasattr(executor, "prepare")
        owner = None if lease is None else (lease.uid, lease.gid)
        files_owner = executor.checkout_owner if owner is None else owner  # a root node's sandbox: its uid
        if reusable:
            kept = self.workdirs.take(
                action.input, None if lease is None else lease.uid, self._still_intact, action.times
            )
            if kept is not None:
                task = _TaskDir.at(*kept)
                _reset_dir_times(task.work, times)  # the last task's extras, made and removed, moved them
                if owner is not None:
                    os.chown(task.root, *owner)
                return task
        workroot = self.workroot if executor.users is None else executor.users.workroot
        task = _TaskDir.at(tempfile.mkdtemp(prefix=_TASK_PREFIX, dir=workroot))  # 0700
        try:
            os.mkdir(task.tmp, 0o700)
            if owner is not None:
                os.chown(task.tmp, *owner)
            epoch = self.store.epoch() if reusable else ""
            try:
                checked_out = checkout(
                    self.store, action.input, task.work, mode=mode, workers=1, owner=files_owner, times=times
                )
            except InvalidTimes as exc:
                remove_tree(task.root)
                return f"the task's times manifest {action.times} does not fit its input: {exc}"
            if reusable and self.workdirs.fits(checked_out.bytes):
                manifest = Manifest.record(self.store, action.input, task.work, epoch=epoch, times=action.times)
                task = replace(task, manifest=manifest)
            if owner is not None:
                os.chown(task.root, *owner)
        except BaseException:
            remove_tree(task.root)
            raise
        return task


def input_times(store: LocalStore, action: Action) -> Times | int:
    """The mtimes a task's input entries get: its times manifest (read and validated; raises
    InvalidTimes, BlobNotFound), or one fixed time for every entry when it names none."""
    if action.times is None:
        return FIXED_MTIME_NS
    return decode_times(store.get(action.times))


def _reset_dir_times(work: str, times: Times | int) -> None:
    fd = os.open(work, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        set_dir_times(fd, times)
    finally:
        os.close(fd)


def _private_dir(st: os.stat_result, uid: int) -> bool:
    """A directory of ``uid``, mode 0700: what a task directory and its HOME are made as."""
    return stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == uid


def _environment(action: Action, task: _TaskDir) -> dict[str, str]:
    env = dict(BASE_ENV)
    env["HOME"] = task.home
    env["TMPDIR"] = task.tmp
    env.update(action.env)
    env[MARKER] = task.root  # lets a restarted node find processes this task left (mesh.exec.leftovers)
    return env


def _check_cwd(store: LocalStore, action: Action) -> str | None:
    """Why ``action.cwd`` cannot be the task's working directory, or None if it can."""
    if not action.cwd:
        return None
    try:
        entry = resolve(store, action.input, action.cwd)
    except PathNotFound:
        return f"cwd {action.cwd!r} does not exist in the input snapshot {action.input}"
    if entry.kind != Kind.DIRECTORY:
        return f"cwd {action.cwd!r} is not a directory in the input snapshot {action.input}"
    return None


class _Streams:
    """stdout and stderr of one task: into the CAS as they come, up to the stream limit.

    Called on the task's thread. A writer is only opened for a stream that has
    bytes; an empty stream is the empty blob. ``forward`` passes what is kept on
    to the follower (through the event loop).
    """

    def __init__(self, store: LocalStore, limit: int, forward: Callable[[str, bytes], None] | None) -> None:
        self.store = store
        self.limit = limit
        self.forward = forward
        self.writers: dict[str, BlobWriter] = {}
        self.sizes = {"stdout": 0, "stderr": 0}
        self.error: str | None = None

    def write(self, stream: str, chunk: bytes) -> bool:
        """Keep ``chunk`` (up to the limit); False once the stream passed its limit (kill the task)."""
        room = self.limit - self.sizes[stream]
        over = len(chunk) > room
        if over:
            chunk = chunk[: max(room, 0)]
        if chunk:
            writer = self.writers.get(stream)
            if writer is None:
                writer = self.writers[stream] = self.store.writer()
            writer.write(chunk)
            self.sizes[stream] += len(chunk)
            if self.forward is not None:
                self.forward(stream, chunk)
        if over and self.error is None:
            self.error = (
                f"{stream} passed its limit of {self.limit} bytes, so the task was killed and {stream} "
                "was cut at the limit; write large output to a file among the outputs instead"
            )
        return not over

    def commit(self, empty: Digest) -> tuple[Digest, Digest]:
        """Publish both streams: (stdout, stderr)."""
        stdout, stderr = (self.writers.pop(name).commit() if name in self.writers else empty for name in self.sizes)
        return stdout, stderr

    def abort(self) -> None:
        """Discard streams not committed (the run failed)."""
        for writer in self.writers.values():
            writer.abort()
        self.writers.clear()


# -- outputs ----------------------------------------------------------------------


def capture_outputs(
    store: LocalStore, workdir: str, staging: str, outputs: tuple[str, ...] | None, limit: int
) -> tuple[Digest | None, str | None]:
    """Snapshot the task's outputs: (snapshot id, None) or (None, why not).

    ``outputs`` None captures the whole workdir, if it is still a directory (a task
    may have replaced it with a symlink to somewhere it cannot read, for the node to
    snapshot). Else each listed path (file, symlink or directory) that exists is
    moved, never following a symlink on the way, to the same relative place under
    ``staging`` (which must not exist; it is made when first needed), and ``staging``
    is snapshotted; missing paths are simply absent. Nothing is stored when the files
    add up to more than ``limit`` bytes. Does not sync the store. The tree must not
    change meanwhile (mesh.exec.takeback): the snapshot walks it by paths.
    """
    root = workdir
    try:
        if outputs is not None:
            with _Stager(workdir, staging) as stager:
                for path in outputs:
                    stager.move(path)
            if not stager.moved:
                return store.put(encode_node([])), None
            root = staging
        elif not stat.S_ISDIR(os.lstat(workdir).st_mode):
            return None, "cannot capture the outputs: the task replaced its working directory with a non-directory"
        size = _tree_bytes(root, limit)
    except OSError as exc:  # the task left its outputs unreadable, say
        return None, f"cannot capture the outputs: {exc.strerror or exc} ({exc.filename or root})"
    if size > limit:
        return None, (
            f"the outputs add up to more than the limit of {limit} bytes, so none were captured; "
            "declare fewer outputs or raise Limits.output_bytes"
        )
    try:
        return ingest(store, root, workers=1, sync=False), None
    except SnapshotError as exc:
        return None, f"cannot capture the outputs: {exc}"


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class _Stager:
    """Moves declared outputs from the workdir to a staging tree, by directory descriptors.

    No symlink is followed on either side: a path whose parent is a symlink or not
    a directory counts as absent, and the staging tree is made fresh (``mkdir``
    fails if anything is already there) and holds only what this object made.
    """

    def __init__(self, workdir: str, staging: str) -> None:
        self.staging = staging
        self.moved = 0
        self._workdir = os.open(workdir, _DIR_FLAGS)
        self._staging: int | None = None

    def __enter__(self) -> _Stager:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self._workdir)
        if self._staging is not None:
            os.close(self._staging)

    def move(self, path: str) -> None:
        """Move ``path`` if it exists."""
        *parents, name = path.split("/")
        src = self._descend(self._workdir, parents, make=False)
        if src is None:
            return
        try:
            try:
                os.lstat(name, dir_fd=src)
            except FileNotFoundError:
                return
            if self._staging is None:
                os.mkdir(self.staging, 0o700)
                self._staging = os.open(self.staging, _DIR_FLAGS)
            dst = self._descend(self._staging, parents, make=True)
            assert dst is not None
            try:
                os.rename(name, name, src_dir_fd=src, dst_dir_fd=dst)
            finally:
                os.close(dst)
            self.moved += 1
        finally:
            os.close(src)

    @staticmethod
    def _descend(top: int, parts: list[str], *, make: bool) -> int | None:
        """A new descriptor of ``top/parts``, making directories if ``make``; None if unreachable."""
        fd = os.dup(top)
        try:
            for part in parts:
                if make:
                    try:
                        os.mkdir(part, 0o755, dir_fd=fd)
                    except FileExistsError:
                        pass  # made for an earlier output
                try:
                    below = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if not make and exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                        os.close(fd)
                        return None
                    raise
                os.close(fd)
                fd = below
        except BaseException:
            os.close(fd)
            raise
        return fd


def _tree_bytes(root: str, limit: int) -> int:
    """Total size of the regular files under ``root`` (no symlinks followed); stops past ``limit``."""
    total = 0
    stack = [root]
    while stack and total <= limit:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
    return total
