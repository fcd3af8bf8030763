"""``mesh exec``: run a command on a node as if it ran here.

The tree becomes a snapshot (into the node's store directly when the node
shares this machine's store, else hashed here and only the blobs the node
misses uploaded straight from the files), a one-task job is submitted and
followed, the command's stdout and stderr are written to ours as they come,
and the exit status is the command's. Output events the node no longer holds
(it keeps a bounded amount) and cached results are filled in from the
stdout/stderr blobs, so nothing printed is ever lost.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from mesh.cas.digest import Digest
from mesh.config import Settings
from mesh.errors import CodecError, MeshError, NodeError
from mesh.exec.action import ActionResult
from mesh.sched.jobevents import JobEvent, JobFinished, JobSubmitted, Output, TaskFinished, from_wire
from mesh.sched.jobs import JobState
from mesh.wire.client import NodeClient

#: Exit status when the task timed out (as GNU timeout(1)) or was cancelled (as after SIGINT).
EXIT_TIMEOUT = 124
EXIT_CANCELLED = 130


@dataclass(kw_only=True)
class ExecRequest:
    """What ``mesh exec`` was asked to do."""

    argv: list[str]
    directory: str
    env: dict[str, str] = field(default_factory=dict)
    timeout: float | None = None
    no_cache: bool = False
    out: str | None = None
    executor: str | None = None  # None: docker with an image, else the node's default
    image: str | None = None
    network: bool = False
    requirements: dict[str, str] = field(default_factory=dict)
    limits: dict[str, int] = field(default_factory=dict)
    tools: list[str] = field(default_factory=list)  # files on the executing node whose content joins the cache key

    def job(self, input: Digest, times: Digest | None = None) -> dict[str, Any]:
        task: dict[str, Any] = {"name": "exec", "argv": self.argv, "input": str(input), "env": self.env}
        if times is not None:
            task["times"] = str(times)
        if self.requirements:
            task["requirements"] = self.requirements
        if self.timeout is not None:
            task["timeout"] = self.timeout
        if self.executor is not None:
            task["executor"] = self.executor
        if self.image is not None:
            task["image"] = self.image
        if self.network:
            task["network"] = True
        if self.limits:
            task["limits"] = self.limits
        if self.tools:
            task["tools"] = self.tools
        return {"tasks": [task], "label": "mesh exec " + shlex.join(self.argv), "no_cache": self.no_cache}


@dataclass
class ExecOutcome:
    job_id: str
    state: JobState
    result: ActionResult | None
    reason: str | None


def snapshot_for(client: NodeClient, settings: Settings, directory: str, *, progress: bool) -> tuple[Digest, Digest]:
    """The snapshot id of ``directory`` and the digest of its times manifest (mesh.cas.times:
    the mtimes the task will see), with every blob of both present on the node.

    Honours ``.meshignore`` and leaves ``.git`` and ``$MESH_HOME`` out.
    """
    from mesh.cas.snapshot import excluding
    from mesh.cas.statcache import StatCache
    from mesh.cas.store import LocalStore
    from mesh.ignore import IgnoreRules

    rules = IgnoreRules.load(directory)
    home_rule = excluding(directory, settings.home)

    def ignore(rel: bytes, is_dir: bool) -> bool:
        return rules.matches(rel, is_dir) or (home_rule is not None and home_rule(rel, is_dir))

    node_store = client.health(cached=True).get("store")
    with LocalStore(settings.store_dir) as store:
        if node_store == store.store_id():
            from mesh.cas.snapshot import ingest_timed

            cache = StatCache.for_tree(settings.home, directory, store.root, store.epoch(), variant=rules.fingerprint)
            root, times = ingest_timed(store, directory, cache=cache, ignore=ignore)
            return root, store.put(times.encode())
    from mesh.cas.plan import plan_cache, plan_tree
    from mesh.errors import TreeChanged
    from mesh.wire.upload import put_blob, upload

    for attempt in range(3):
        cache = plan_cache(settings.home, directory, rules.fingerprint)
        planned = plan_tree(directory, cache=cache, ignore=ignore)
        try:
            upload(client.http, planned, show_progress=None if progress else False)
        except TreeChanged:
            if attempt == 2:
                raise
            say("files changed while they were uploaded; snapshotting again")
            continue
        break
    return planned.root, put_blob(client.http, planned.times)


class Follower:
    """Writes a one-task job's output as its events come and learns how the job ended.

    ``job_id`` is known from the first event on, so an interrupted follower can
    still cancel the job.
    """

    def __init__(self, client: NodeClient, stdout: IO[bytes], stderr: IO[bytes]) -> None:
        self.client = client
        self.sinks = {"stdout": stdout, "stderr": stderr}
        self.written = {"stdout": 0, "stderr": 0}
        self.job_id = ""

    def run(self, events: Iterator[dict[str, Any]]) -> ExecOutcome:
        result: ActionResult | None = None
        reason: str | None = None
        for wire in events:
            event = decode_event(wire)
            if isinstance(event, JobSubmitted):
                self.job_id = event.job
            elif isinstance(event, Output):
                self._output(event)
            elif isinstance(event, TaskFinished):
                result, reason = event.result, event.reason
                if result is not None:
                    self._fill_in(result.stdout, "stdout")
                    self._fill_in(result.stderr, "stderr")
            elif isinstance(event, JobFinished):
                return ExecOutcome(self.job_id or event.job, event.state, result, reason)
        raise NodeError("the node ended the job's event stream before the job finished")

    def _output(self, event: Output) -> None:
        """Write a chunk if it continues the stream exactly (dropped chunks leave a gap for later)."""
        if event.dropped or event.offset != self.written[event.stream]:
            return
        self.sinks[event.stream].write(event.data)
        self.sinks[event.stream].flush()
        self.written[event.stream] += len(event.data)

    def _fill_in(self, digest: Digest, stream: str) -> None:
        """Write what the events did not carry of a stream (a cached result, dropped chunks)."""
        if self.written[stream] >= digest.size:
            return
        sink = self.sinks[stream]
        for chunk in self.client.read_blob(digest, offset=self.written[stream]):
            sink.write(chunk)
        sink.flush()
        self.written[stream] = digest.size


def decode_event(wire: object) -> JobEvent | None:
    """An event of the node's stream (None for a kind this version does not know)."""
    try:
        return from_wire(wire)
    except CodecError as exc:
        raise NodeError(f"the node sent a malformed job event: {exc}") from None


def exit_status(outcome: ExecOutcome) -> int:
    """The exit status of ``mesh exec`` for how its task ended."""
    result = outcome.result
    if outcome.state == "cancelled":
        return EXIT_CANCELLED
    if result is None:
        return 1
    if result.timed_out:
        return EXIT_TIMEOUT
    if result.error and result.exit_code == 0:
        return 1
    return result.exit_code


def explain(outcome: ExecOutcome) -> str | None:
    """A line for stderr when the task did not end by itself, else None."""
    result = outcome.result
    if outcome.state == "cancelled":
        return f"job {outcome.job_id} was cancelled"
    if result is None:
        return f"the task could not run: {outcome.reason or 'no reason given'}"
    if result.error:
        return result.error
    if result.timed_out:
        return "the command timed out and was killed"
    return None


def verbose_line(outcome: ExecOutcome) -> str:
    """What ``mesh exec -v`` says of the job: its id and end, and what the action cache said:
    where a hit came from, or why the task was not one (and where it ran)."""
    result = outcome.result
    line = f"job {outcome.job_id} {outcome.state}"
    if result is None:
        return line
    if result.cached:
        line += " (cached)"
    if result.cache_note:
        line += f": {result.cache_note}"
    if not result.cached:
        line += f"; ran on node {result.node}"
    return line


def checkout_output(client: NodeClient, settings: Settings, output: Digest, target: str) -> None:
    """Write the output snapshot into ``target``, fetching what the local store misses from the node."""
    from mesh.cas.checkout import checkout
    from mesh.cas.snapshot import missing_levels
    from mesh.cas.store import LocalStore

    with LocalStore(settings.store_dir) as store:
        for missing in missing_levels(store, output):
            for digest in missing:
                with store.writer(expected=digest) as writer:
                    for chunk in client.stream_blob(digest):  # the writer verifies
                        writer.write(chunk)
                    writer.commit()
        checkout(store, output, target)


def say(message: str) -> None:
    print(f"mesh: {message}", file=sys.stderr, flush=True)


__all__ = [
    "ExecRequest",
    "snapshot_for",
    "Follower",
    "exit_status",
    "explain",
    "verbose_line",
    "checkout_output",
    "MeshError",
]
