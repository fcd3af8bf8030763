"""Following a job from the command line: each byte of its output written once, across lost
connections, and how it ended.

``mesh exec`` and ``mesh logs`` read a job's events (mesh.sched.jobevents) from the node.
Output events carry their offset in their task's stream, so a :class:`JobFollower` keeps,
per task and stream, how many bytes it has written and writes only what comes after:
events seen twice (after a reconnect, which reads the job's events again from the start)
are skipped, and bytes the events lack (chunks a long log dropped, a cached result, output
written before the follower came) are read from the stream's blob when the task finishes.

When the connection breaks while a job runs (the node restarted, the network failed), the
follower connects again, first after 0.1 s and then doubling up to 2 s, until the node has
been away for the reconnect window (:data:`RECONNECT_WINDOW`, ``MESH_RECONNECT`` or
``--reconnect``); then it raises :class:`NodeGone`. The events are read again from the
start on every reconnect rather than from the last one seen: a node that restarted numbers
the events of a resumed job afresh, and the offsets make the replay harmless. A task that a
restart interrupted runs again from its start; its output is written from where the
follower was, so a command that prints the same on each run is printed exactly once.

A job of one task is written as it comes, stdout to stdout and stderr to stderr; with more
tasks, each line is prefixed with its task's name, as ``docker compose logs`` does, since
the tasks' lines interleave as they run.
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from mesh.cas.digest import Digest
from mesh.errors import CodecError, MeshError, NodeError, NodeLost, NodeUnreachable, UsageError
from mesh.exec.action import ActionResult
from mesh.sched.jobevents import JobEvent, JobFinished, JobSubmitted, Output, TaskFinished, from_wire
from mesh.sched.jobs import JobState, TaskState
from mesh.wire.client import NodeClient

#: Seconds the node may stay away while a job is followed before the follower gives up.
RECONNECT_WINDOW = 60.0
#: Exit status of ``mesh exec`` and ``mesh logs -f`` when the node stayed away past the window
#: (as ssh's when the connection is lost).
EXIT_NODE_LOST = 255
#: First and longest wait between two reconnects, in seconds.
FIRST_BACKOFF = 0.1
LONGEST_BACKOFF = 2.0


class NodeGone(MeshError):
    """The node stayed away past the reconnect window while a job was followed."""

    def __init__(self, job_id: str, url: str, window: float) -> None:
        super().__init__(f"the node at {url} did not come back within {window:g} s while job {job_id} ran")
        self.job_id = job_id


def reconnect_window(flag: float | None, environ: dict[str, str] | None = None) -> float:
    """The reconnect window: ``--reconnect``, else ``MESH_RECONNECT``, else RECONNECT_WINDOW."""
    if flag is not None:
        value, where = flag, "--reconnect"
    else:
        text = (environ if environ is not None else _environ()).get("MESH_RECONNECT")
        if text is None:
            return RECONNECT_WINDOW
        where = "MESH_RECONNECT"
        try:
            value = float(text)
        except ValueError:
            raise UsageError(f"{where}={text!r}: give a number of seconds") from None
    if not 0 <= value <= 86400:
        raise UsageError(f"{where} must be between 0 and 86400 seconds, not {value:g}")
    return value


def _environ() -> dict[str, str]:
    import os

    return dict(os.environ)


@dataclass
class Followed:
    """How a followed job ended: its state, and each task's result and reason (as far as seen)."""

    job_id: str
    state: JobState
    reason: str | None
    results: dict[str, ActionResult | None] = field(default_factory=dict)
    reasons: dict[str, str | None] = field(default_factory=dict)
    states: dict[str, TaskState] = field(default_factory=dict)  # each finished task's final state


class _Lines:
    """A sink that prefixes every line with ``prefix`` (a line cut between chunks waits for its end)."""

    def __init__(self, sink: IO[bytes], prefix: bytes) -> None:
        self.sink = sink
        self.prefix = prefix
        self.pending = b""

    def write(self, data: bytes) -> None:
        lines = (self.pending + data).split(b"\n")
        self.pending = lines.pop()
        if lines:
            self.sink.write(b"".join(self.prefix + line + b"\n" for line in lines))

    def end(self) -> None:
        """The stream ended: its last line, if it had no newline, gets one."""
        if self.pending:
            self.sink.write(self.prefix + self.pending + b"\n")
            self.pending = b""


class JobFollower:
    """Writes a job's output as its events come (see the module docstring) and learns how it ended.

    ``tasks``: the names of the tasks to write (None: all); ``prefix``: prefix each line with
    its task's name (for a job of more than one task); ``done``: tasks (finished ones) whose
    output the caller writes from their results (:meth:`write_result`: from the blobs,
    verified), whose events are then skipped.
    ``job_id`` is known from the first event of a submission on, so that an interrupted
    follower can cancel the job.
    """

    def __init__(
        self,
        client: NodeClient,
        stdout: IO[bytes],
        stderr: IO[bytes],
        *,
        job_id: str = "",
        tasks: list[str] | None = None,
        prefix: bool = False,
        done: frozenset[str] = frozenset(),
    ) -> None:
        self.client = client
        self.sinks = {"stdout": stdout, "stderr": stderr}
        self.job_id = job_id
        self.tasks = tasks
        self.width = max((len(name) for name in tasks or ()), default=0)
        self.prefix = prefix
        self.done = done  # tasks written from their results already (write_result): their events are skipped
        self._lost_at: float | None = None
        self._backoff = FIRST_BACKOFF
        self.written: dict[tuple[str, str], int] = {}
        self._lines: dict[tuple[str, str], _Lines] = {}
        self._results: dict[str, ActionResult | None] = {}
        self._reasons: dict[str, str | None] = {}
        self._states: dict[str, TaskState] = {}

    # -- reading events --------------------------------------------------------------

    def follow(self, first: Iterator[dict[str, Any]] | None = None, *, window: float, wait: bool = True) -> Followed:
        """Read the job's events to its end: from ``first`` (a submission's stream), else from the
        node; reconnecting as the module docstring says. Raises NodeGone past ``window``.
        Without ``wait``, only the events the node holds now (a running job: state ``running``)."""
        events = first if first is not None else self._open(wait)
        self._back()
        while True:
            try:
                ended = self.consume(events)
                if ended is not None:
                    return ended
                if not wait:
                    return self._so_far()
                raise NodeLost("the node ended the job's event stream before the job finished")
            except (NodeUnreachable, NodeLost):
                if not self.job_id:
                    raise  # the submission itself was lost: there is no job to follow
                self._pause(window)
                events = self._open(wait)

    def _pause(self, window: float) -> None:
        """Wait before the next reconnect; NodeGone once the node has been away for ``window``."""
        now = time.monotonic()
        if self._lost_at is None:
            self._lost_at = now
        if now - self._lost_at >= window:
            raise NodeGone(self.job_id, self.client.url, window) from None
        time.sleep(min(self._backoff, self._lost_at + window - now))
        self._backoff = min(self._backoff * 2, LONGEST_BACKOFF)

    def _back(self) -> None:
        """The node answered again."""
        self._lost_at, self._backoff = None, FIRST_BACKOFF

    def _so_far(self) -> Followed:
        for task in {task for task, _ in self._lines}:
            self._end_lines(task)
        return Followed(self.job_id, "running", None, self._results, self._reasons, self._states)

    def _open(self, wait: bool) -> Iterator[dict[str, Any]]:
        return self.client.events(self.job_id, 0, wait=wait, on_open=self._back)

    def consume(self, events: Iterator[dict[str, Any]]) -> Followed | None:
        """Handle ``events`` until the job's end (its Followed) or the stream's (None)."""
        for wire in events:
            event = decode_event(wire)
            if isinstance(event, JobSubmitted):
                self.job_id = event.job
            elif isinstance(event, Output):
                if self._wanted(event.task) and not event.dropped and event.task not in self.done:
                    self._write(event.task, event.stream, event.offset, event.data)
            elif isinstance(event, TaskFinished):
                self._results[event.task], self._reasons[event.task] = event.result, event.reason
                self._states[event.task] = event.state
                if event.result is not None and self._wanted(event.task) and event.task not in self.done:
                    self.write_result(event.task, event.result)
            elif isinstance(event, JobFinished):
                for task in list(self._results):
                    self._end_lines(task)
                return Followed(
                    self.job_id or event.job, event.state, event.reason, self._results, self._reasons, self._states
                )
        return None

    # -- writing output -----------------------------------------------------------------

    def _wanted(self, task: str) -> bool:
        return self.tasks is None or task in self.tasks

    def _write(self, task: str, stream: str, offset: int, data: bytes) -> None:
        """Write what of ``data`` (at ``offset`` in its stream) comes after what was written."""
        done = self.written.get((task, stream), 0)
        if offset > done or offset + len(data) <= done:
            return  # a gap (filled in from the blob at the end), or written already
        self._sink(task, stream).write(data[done - offset :])
        self.sinks[stream].flush()
        self.written[(task, stream)] = offset + len(data)

    def write_result(self, task: str, result: ActionResult) -> None:
        """Write what a finished task's stdout and stderr hold beyond what was written of them."""
        self._fill_in(task, "stdout", result.stdout)
        self._fill_in(task, "stderr", result.stderr)
        self._end_lines(task)

    def _fill_in(self, task: str, stream: str, digest: Digest) -> None:
        """Write what the events did not carry of a stream (a cached result, dropped chunks)."""
        done = self.written.get((task, stream), 0)
        if done >= digest.size:
            return
        sink = self._sink(task, stream)
        for chunk in self.client.read_blob(digest, offset=done):
            sink.write(chunk)
        self.sinks[stream].flush()
        self.written[(task, stream)] = digest.size

    def _sink(self, task: str, stream: str) -> IO[bytes] | _Lines:
        if not self.prefix:
            return self.sinks[stream]
        lines = self._lines.get((task, stream))
        if lines is None:
            prefix = f"{task:<{self.width}} | ".encode()
            lines = self._lines[(task, stream)] = _Lines(self.sinks[stream], prefix)
        return lines

    def _end_lines(self, task: str) -> None:
        for stream in ("stdout", "stderr"):
            lines = self._lines.get((task, stream))
            if lines is not None:
                lines.end()
                self.sinks[stream].flush()


def decode_event(wire: object) -> JobEvent | None:
    """An event of the node's stream (None for a kind this version does not know)."""
    try:
        return from_wire(wire)
    except CodecError as exc:
        raise NodeError(f"the node sent a malformed job event: {exc}") from None


# -- signals ---------------------------------------------------------------------------

#: The signals that end ``mesh exec`` and cancel its job (SIGPIPE: a failed write of output).
TERMINATING = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


class Interrupted(BaseException):
    """A terminating signal arrived (a BaseException, like KeyboardInterrupt, so that no
    ``except Exception`` on the way swallows it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def status(self) -> int:
        """The exit status a shell gives a process this signal killed."""
        return 128 + self.signum


class Interrupts:
    """While entered, each of TERMINATING raises :class:`Interrupted` in the main thread;
    the handlers before are put back on exit."""

    def __init__(self) -> None:
        self._before: dict[int, Any] = {}

    def __enter__(self) -> Interrupts:
        for signum in TERMINATING:
            self._before[signum] = signal.signal(signum, self._raise)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._before.items():
            signal.signal(signum, handler)

    @staticmethod
    def _raise(signum: int, frame: object) -> None:
        raise Interrupted(signum)


def say(message: str) -> None:
    """A line on stderr (none when stderr is gone: a closed terminal after SIGHUP)."""
    try:
        print(f"mesh: {message}", file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass
