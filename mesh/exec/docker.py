"""The ``docker`` executor: each task in a fresh container, through the Docker Engine API.

Docker and Podman both serve the API on a unix socket (``DOCKER_HOST``, default
``/var/run/docker.sock``); :mod:`mesh.exec.engine` speaks it with httpx on trio.
One task, one container:

* **create**, named ``mesh-<random>`` and labelled ``mesh.owner=<owner>``, from the
  action's image (pulled when the engine lacks it: an image that cannot be pulled,
  offline say, ends the task with exit code 125 and an ``error`` naming it). The
  checked-out workdir is bind-mounted at ``/work`` (working directory
  ``/work/<cwd>``), the task's tmp directory at ``/tmp`` and its home at
  ``/home/mesh`` (HOME and TMPDIR in the environment say so). It runs as the node's
  uid:gid, so what it writes is the node's to capture and remove, with every
  capability dropped and ``no-new-privileges``; network ``none`` unless the action
  asks for the network (then ``network_mode``); memory (no swap beyond it), CPU
  and process-count limits. argv[0] is the entrypoint, so argv means the same as
  with the other executors whatever entrypoint the image declares. As with
  ``docker run`` (no ``--init``), the command is PID 1 of the container: it ignores
  signals it has no handler for, so ``kill -9 $$`` does nothing there. (The
  engine's init, ``Init``, was tried: under Podman it hides "command not found"
  behind its own exit status 1 and made kills fail now and then.)
* **attach** to its stdout and stderr, then **start** it (as ``docker run`` does,
  so no output is missed; see :class:`mesh.exec.engine.Attachment` for why not
  ``/logs?follow=1``): the multiplexed stream is split into stdout and stderr and
  handed to the runner piece by piece as it comes (per stream in order; the
  engine does not keep the order *between* the two streams). When the runner's
  callback returns False (an output limit) the container is killed and its output
  read no further.
* its **stdin** is empty, unless the action names one: then it is written to the
  container on an attachment of its own, from a thread of its own
  (:mod:`mesh.exec.stdinfeed`), while the output is read.
* at the action's **timeout** it gets SIGKILL and the status says ``timed_out``
  (exit code 137); its output up to then is kept. The exit code is read from the
  container's state once its output ends (Podman's ``/wait`` answers only on a
  250 ms poll).
* it is **removed** in every case: success, failure, timeout, output limit, a
  failing callback, cancellation (node shutdown cancels its tasks the same way),
  inside a shielded cancel scope with a deadline. A node that died mid-task leaves
  its containers behind: :meth:`DockerExecutor.remove_leftovers` at the next start
  removes every container labelled with its owner.

Threads: :meth:`DockerExecutor.run` runs on the task's worker thread (like every
executor) and makes each API call in the awaiting trio task through the hop
(:meth:`mesh.exec.hop.Hop.call`), step by step, so that the runner's output
callback (which writes to the store and itself calls back into trio for a
follower) runs on the thread between steps. A cancellation of the task reaches
the step in progress (or the next one) as trio's Cancelled; the container is then
killed and removed and :class:`~mesh.exec.hop.RunCancelled` raised on the thread.

The engine must run on this machine (bind mounts name host paths); with Docker's
user-namespace remapping or rootless Docker, the node's uid inside the container
is not the node's uid outside, and the task cannot write its workdir. Checkouts
are copies: the task runs as the node's uid, which could write hardlinked blobs.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol, cast

import trio

from mesh.cas.checkout import Mode
from mesh.errors import DockerError, SpawnFailed
from mesh.exec.engine import Attachment, DockerStatus, Engine, docker_status, socket_path, valid_reference
from mesh.exec.hop import RunCancelled
from mesh.exec.paths import DOCKER_VIEW
from mesh.exec.process import Cancel, Command, ExitStatus, OutputSink
from mesh.exec.stdinfeed import StdinFeed

if TYPE_CHECKING:
    from mesh.exec.taskusers import TaskUsers

__all__ = ["DockerExecutor", "DockerStatus", "docker_status"]

log = logging.getLogger("mesh.exec")

#: The label that marks a container as a mesh task's; its value is the executor's owner.
OWNER_LABEL = "mesh.owner"
#: Where the task's workdir, tmp directory and home are mounted in the container (mesh.exec.paths).
WORK_PATH = DOCKER_VIEW.work
TMP_PATH = DOCKER_VIEW.tmp
HOME_PATH = DOCKER_VIEW.home
#: Exit code of a task whose container could not be made or started ("docker run" says 125).
ENGINE_FAILED = 125

#: Defaults of the limits (see DockerExecutor).
MEMORY = 4 << 30
CPUS = 1.0
PIDS = 4096
#: Seconds the output may go on after a kill before it is cut off.
DRAIN_GRACE = 5.0
#: Seconds the removal of a container may take (killed, cancelled or not) before it is left to remove_leftovers.
CLEANUP_TIMEOUT = 30.0
#: Seconds a pull may take.
PULL_TIMEOUT = 600.0
#: States of a container whose exit code is known ("stopped": Podman's, before its clean-up).
_ENDED = ("exited", "stopped")


class Bridge(Cancel, Protocol):
    """What :meth:`DockerExecutor.run` needs of its ``cancel``: a :class:`mesh.exec.hop.Hop`."""

    def call(self, afn: Callable[..., Awaitable[object]], *args: object) -> None:
        """Run ``await afn(*args)`` in the awaiting trio task, blocking this thread until done."""
        ...


class DockerExecutor:
    """The ``docker`` executor (see the module docstring).

    ``host``: a ``DOCKER_HOST`` value (``unix:///path``); None reads ``DOCKER_HOST``
    now, falling back to ``/var/run/docker.sock``.
    ``owner``: the value of the ``mesh.owner`` label on this executor's containers,
    what :meth:`remove_leftovers` looks for. Nodes sharing one engine must each have
    their own (their node id), or one removes the other's running tasks.
    ``memory``: bytes of memory per container, swap included (default 4 GiB).
    ``cpus``: cores' worth of CPU time per container (default 1.0: a slot is a core).
    ``pids``: most processes and threads per container (default 4096).
    Each limit None: none set.
    ``network_mode``: the network of an action that asks for one ("bridge": the
    engine's default network; "host" shares the node's).
    ``drain_grace``, ``cleanup_timeout``, ``pull_timeout``, ``api_timeout``: seconds
    (see the constants of this module).
    """

    name = "docker"
    checkout_mode: Mode = "copy"
    checkout_owner: tuple[int, int] | None = None
    users: TaskUsers | None = None  # the task runs as the node's uid, in the container's namespaces
    work_path = WORK_PATH  # where tasks see their workdir

    def __init__(
        self,
        host: str | None = None,
        *,
        owner: str = "mesh",
        memory: int | None = MEMORY,
        cpus: float | None = CPUS,
        pids: int | None = PIDS,
        network_mode: str = "bridge",
        drain_grace: float = DRAIN_GRACE,
        cleanup_timeout: float = CLEANUP_TIMEOUT,
        pull_timeout: float = PULL_TIMEOUT,
        api_timeout: float = 60.0,
    ) -> None:
        self.socket = socket_path(host)
        self.owner = owner
        self.memory = memory
        self.cpus = cpus
        self.pids = pids
        self.network_mode = network_mode
        self.drain_grace = drain_grace
        self.cleanup_timeout = cleanup_timeout
        self.pull_timeout = pull_timeout
        self.api_timeout = api_timeout
        self.user = f"{os.getuid()}:{os.getgid()}"

    def __repr__(self) -> str:
        return (
            f"DockerExecutor({self.socket!r}, owner={self.owner!r}, memory={self.memory}, cpus={self.cpus}, "
            f"pids={self.pids}, network_mode={self.network_mode!r})"
        )

    def engine(self) -> Engine:
        """A fresh connection pool to this executor's engine (for the current trio run)."""
        return Engine(self.socket, timeout=self.api_timeout)

    async def status(self) -> DockerStatus:
        """:func:`docker_status` of this executor's engine."""
        return await docker_status(f"unix://{self.socket}")

    async def image_id(self, image: str) -> str | None:
        """The ID of ``image`` in this executor's engine (the toolchain identity of its tasks,
        mesh.exec.toolchain); None when the engine lacks it or cannot be asked."""
        if not valid_reference(image):
            return None
        try:
            async with self.engine() as engine:
                return await engine.image_id(image)
        except (DockerError, ValueError, KeyError) as exc:
            log.warning("the Docker engine could not say which image %s is: %s", image, exc)
            return None

    async def remove_leftovers(self) -> int:
        """Remove every container of this owner (left by a node that died mid-task); returns how many.

        Call at the node's start, before the first task: it also removes the
        containers of tasks running now. Raises DockerError if the engine fails.
        """
        async with self.engine() as engine:
            removed = 0
            for container in await engine.containers({OWNER_LABEL: self.owner}):
                removed += await engine.remove(container)
        return removed

    def run(self, command: Command, on_output: OutputSink, cancel: Cancel) -> ExitStatus:
        """See :meth:`mesh.exec.process.Executor.run`; ``cancel`` must be the task's Hop.

        Raises SpawnFailed (exit code 125, or 127 / 126 for a command that is not
        found / not executable in the image) when the container cannot be made or
        started for a reason of the action's, DockerError when the engine fails.
        """
        if not callable(getattr(cancel, "call", None)):
            raise TypeError("the docker executor runs in a hop (mesh.exec.hop.run_sync): its cancel must have call()")
        call = cast(Bridge, cancel).call
        if not command.image:
            raise SpawnFailed("the docker executor needs an image", ENGINE_FAILED)
        if cancel.cancelled:
            raise RunCancelled
        task = _Container(self, command)
        feed: StdinFeed | None = None
        try:
            call(task.begin)
            if command.stdin is not None:
                feed = StdinFeed(self.socket, task.name, command.stdin, timeout=self.api_timeout)
                feed.start()
            while not task.ended:
                call(task.read)
                for stream, chunk in task.pieces:
                    if not on_output(stream, chunk):
                        call(task.kill)  # and stop reading: the rest is past the limit
                        break
            call(task.finish)
            return task.status()
        except trio.Cancelled:
            raise RunCancelled from None  # after the finally below: the container is gone
        finally:
            try:
                if feed is not None:
                    feed.close()
            finally:
                call(task.close)

    def config(self, command: Command) -> dict[str, Any]:
        """The body of ``POST /containers/create`` for ``command`` (see the module docstring)."""
        env = DOCKER_VIEW.environment(command)  # HOME, TMPDIR and PWD as the container shows them
        mounts = [
            {"Type": "bind", "Source": source, "Target": target, "ReadOnly": False}
            for source, target in DOCKER_VIEW.mounts(command)
        ]
        host: dict[str, Any] = {
            "Mounts": mounts,
            "NetworkMode": self.network_mode if command.network else "none",
            "CapDrop": ["ALL"],
            "SecurityOpt": ["no-new-privileges"],
        }
        if self.memory is not None:
            host["Memory"] = host["MemorySwap"] = self.memory
        if self.cpus is not None:
            host["NanoCpus"] = int(self.cpus * 1e9)
        if self.pids is not None:
            host["PidsLimit"] = self.pids
        return {
            "Image": command.image,
            "Entrypoint": [command.argv[0]],
            "Cmd": list(command.argv[1:]),
            "Env": [f"{key}={value}" for key, value in env.items()],
            "WorkingDir": DOCKER_VIEW.cwd(command),
            "User": self.user,
            "Labels": {OWNER_LABEL: self.owner, "mesh.task": command.workdir},
            "Tty": False,
            "OpenStdin": command.stdin is not None,  # then written by a StdinFeed (mesh.exec.stdinfeed)
            "StdinOnce": command.stdin is not None,
            "AttachStdin": command.stdin is not None,
            "AttachStdout": True,
            "AttachStderr": True,
            "HostConfig": host,
        }


class _Container:
    """One task's container; its steps are async functions the worker thread calls through the hop.

    A step leaves its result in attributes (``pieces``, ``ended``), since
    :meth:`~mesh.exec.hop.Hop.call` returns nothing.
    """

    def __init__(self, executor: DockerExecutor, command: Command) -> None:
        self.executor = executor
        self.command = command
        self.name = f"mesh-{uuid.uuid4().hex}"
        self.engine: Engine | None = None
        self.output: Attachment | None = None
        self.made = False  # a create was sent: the container may exist
        self.deadline = math.inf  # of the command, set when it starts
        self.cutoff = math.inf  # of the output: the end of the drain grace after a kill
        self.timed_out = False
        self.killed = False
        self.ended = False
        self.pieces: list[tuple[str, bytes]] = []
        self.exit_code: int | None = None
        self.oom = False

    # -- steps, in the trio task ---------------------------------------------------------

    async def begin(self) -> None:
        """Create the container (pulling its image if needed), attach to its output, start it."""
        self.engine = engine = self.executor.engine()
        image = self.command.image
        assert image is not None
        if not valid_reference(image):
            raise SpawnFailed(f"{image!r} is not an image reference ([registry/]name[:tag][@digest])", ENGINE_FAILED)
        config = self.executor.config(self.command)
        try:
            await self._create(config)
        except DockerError as exc:
            if exc.status != 404:
                raise _refused("create a container", image, exc) from None
            await self._pull(image)
            try:
                await self._create(config)
            except DockerError as again:
                raise _refused("create a container", image, again) from None
        try:
            self.output = await engine.attach(self.name)  # Podman creates the process here already
            await engine.start(self.name)
        except DockerError as exc:
            raise _not_started(self.command.argv[0], image, exc) from None
        self.deadline = trio.current_time() + self.command.timeout

    async def _create(self, config: dict[str, Any]) -> None:
        """Create the container, shielded: a create cancelled half-way could make the container
        after close() looked for it (by name) and leave it behind."""
        assert self.engine is not None
        self.made = True
        with trio.CancelScope(shield=True):
            await self.engine.create(self.name, config)

    async def _pull(self, image: str) -> None:
        assert self.engine is not None
        timeout = self.executor.pull_timeout
        with trio.move_on_after(timeout) as scope:
            try:
                await self.engine.pull(image)
            except DockerError as exc:
                if exc.status is None:  # no answer: the engine's trouble, not the image's
                    raise
                raise SpawnFailed(
                    f"the image {image!r} is not on this node and could not be pulled: {exc.reason}", ENGINE_FAILED
                ) from None
        if scope.cancelled_caught:
            raise SpawnFailed(
                f"the image {image!r} is not on this node and pulling it took more than {timeout} s", ENGINE_FAILED
            )

    async def read(self) -> None:
        """The next output into ``pieces``; ``ended`` at its end. Kills at the deadline.

        At the deadline the container is killed and reading goes on: the output ends
        with the container, and what it wrote before is kept. Only output that goes
        on past the drain grace after a kill is cut off.
        """
        assert self.output is not None
        self.pieces = []
        with trio.move_on_at(self.cutoff if self.killed else self.deadline) as scope:
            self.pieces = await self.output.read()
        if not scope.cancelled_caught:
            self.ended = self.output.ended
        elif not self.killed:
            self.timed_out = await self._kill()
        else:
            log.warning(
                "container %s: output went on %.1f s after SIGKILL; cut off", self.name, self.executor.drain_grace
            )
            self.ended = True

    async def kill(self) -> None:
        """SIGKILL the container (the runner's output limit) and read its output no further.

        Unlike after a timeout, the output is not drained: what is under way may be far
        more than the limit (``yes`` writes GB/s), all to be discarded.
        """
        await self._kill()
        self.ended = True

    async def _kill(self) -> bool:
        assert self.engine is not None
        self.killed = True
        self.cutoff = trio.current_time() + self.executor.drain_grace
        return await self.engine.kill(self.name)

    async def finish(self) -> None:
        """The exit code, from the container's state; waits (up to the deadline, then kills) if it still runs."""
        assert self.engine is not None
        state = await self.engine.inspect(self.name)
        if state.get("Status") not in _ENDED:
            with trio.move_on_at(self.deadline):
                await self.engine.wait(self.name)
            if trio.current_time() >= self.deadline and not self.killed:
                self.timed_out = await self._kill()
            if self.killed:
                with trio.move_on_after(self.executor.cleanup_timeout) as scope:
                    await self.engine.wait(self.name)
                if scope.cancelled_caught:
                    raise DockerError(
                        f"container {self.name} did not stop within {self.executor.cleanup_timeout} s of SIGKILL"
                    )
            state = await self.engine.inspect(self.name)
        self.exit_code = int(state.get("ExitCode", -1))
        if self.exit_code < 0 and self.killed and state.get("Status") in _ENDED:
            # Podman (4.3 here) reports a container it stopped after our SIGKILL as "stopped"
            # with ExitCode -1 when conmon could not record the exit in time: 11 runs of 12 of
            # test_output_limit_kills_the_container with two busy loops on the 2 cores, ~5 s
            # between StartedAt and FinishedAt each time. The process died of that SIGKILL.
            self.exit_code = 128 + signal.SIGKILL
        self.oom = bool(state.get("OOMKilled"))

    async def close(self) -> None:
        """Remove the container and close the connections, shielded, within the cleanup timeout."""
        engine, output = self.engine, self.output
        if engine is None:
            return
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + self.executor.cleanup_timeout
            try:
                if output is not None:
                    await output.aclose()
                if self.made:
                    await engine.remove(self.name)
            except DockerError as exc:
                log.warning("container %s could not be removed (remove_leftovers will): %s", self.name, exc)
            finally:
                await engine.aclose()
        if scope.cancelled_caught:
            log.warning("container %s was not removed within %.0f s", self.name, self.executor.cleanup_timeout)

    # -- on the thread -------------------------------------------------------------------

    def status(self) -> ExitStatus:
        """How the command ended. The API tells only a status: 128 + N is taken as signal N
        only when mesh killed the container (SIGKILL) or the kernel did (out of memory)."""
        assert self.exit_code is not None
        if self.exit_code < 0:
            raise DockerError(f"the Docker engine reports no exit code for container {self.name}")
        killed = (self.killed or self.oom) and self.exit_code == 128 + signal.SIGKILL
        return ExitStatus(self.exit_code, signal.SIGKILL if killed else None, self.timed_out)


def _refused(what: str, image: str, exc: DockerError) -> Exception:
    """A failed create: the action's fault (SpawnFailed 125) for a 4xx, the engine's (DockerError) otherwise."""
    if exc.status is not None and 400 <= exc.status < 500:
        return SpawnFailed(f"the Docker engine could not {what} from the image {image!r}: {exc.reason}", ENGINE_FAILED)
    return exc


def _not_started(program: str, image: str, exc: DockerError) -> Exception:
    """A failed start: like a shell, 127 for a command not in the image, 126 for one not executable."""
    reason = exc.reason
    lowered = reason.lower()
    execing = 'exec: "' in reason or "executable file" in lowered  # the runtime's words (runc, crun)
    if "command that was not found" in lowered or execing and ("not found" in lowered or "no such file" in lowered):
        return SpawnFailed(f"command not found in the image {image!r}: {program!r} ({reason})", 127)
    if "oci permission denied" in lowered or execing and "permission denied" in lowered or "exec format" in lowered:
        return SpawnFailed(f"cannot execute {program!r} in the image {image!r}: {reason}", 126)
    return _refused("start the container", image, exc)
