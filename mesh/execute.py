"""``mesh exec``: run a command on a node as if it ran here.

The tree becomes a snapshot (into the node's store directly when the node
shares this machine's store, else hashed here and only the blobs the node
misses uploaded straight from the files), a one-task job is submitted and
followed, the command's stdout and stderr are written to ours as they come,
and the exit status is the command's. Output events the node no longer holds
(it keeps a bounded amount) and cached results are filled in from the
stdout/stderr blobs, so nothing printed is ever lost (mesh.follow).

It ends like the command would here: a terminating signal (SIGINT, SIGTERM, SIGHUP,
SIGQUIT, and SIGPIPE when its output cannot be written) cancels the job on the node,
waits until the node has ended it, and exits 128 + the signal's number. A connection
that breaks while the job runs is made again (mesh.follow); a node that stays away
past the reconnect window leaves the job running there, and ``mesh exec`` says how to
follow it and exits 255.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
from dataclasses import dataclass, field
from typing import Any

from mesh.cas.digest import Digest
from mesh.config import Settings
from mesh.errors import MeshError
from mesh.exec.action import ActionResult
from mesh.follow import EXIT_NODE_LOST, Followed, Interrupted, Interrupts, JobFollower, NodeGone, say
from mesh.sched.jobs import JobState
from mesh.wire.client import NodeClient

#: Exit status when the task timed out (as GNU timeout(1)) or its job was cancelled by someone
#: else (``mesh cancel``; a signal to ``mesh exec`` itself exits 128 + its number).
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
    outputs: list[str] | None = None  # the paths to capture (relative to the directory); None: the whole workdir

    def job(self, input: Digest, times: Digest | None = None, stdin: Digest | None = None) -> dict[str, Any]:
        task: dict[str, Any] = {"name": "exec", "argv": self.argv, "input": str(input), "env": self.env}
        if times is not None:
            task["times"] = str(times)
        if stdin is not None:
            task["stdin"] = str(stdin)
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
        if self.outputs is not None:
            task["outputs"] = self.outputs
        return {"tasks": [task], "label": "mesh exec " + shlex.join(self.argv), "no_cache": self.no_cache}


@dataclass
class ExecOutcome:
    job_id: str
    state: JobState
    result: ActionResult | None
    reason: str | None

    @classmethod
    def of(cls, followed: Followed) -> ExecOutcome:
        """How a followed one-task job ended."""
        (result,) = followed.results.values() or (None,)
        (reason,) = followed.reasons.values() or (followed.reason,)
        return cls(followed.job_id, followed.state, result, reason)


def snapshot_for(client: NodeClient, settings: Settings, directory: str, *, progress: bool) -> tuple[Digest, Digest]:
    """The snapshot id of ``directory`` and the digest of its times manifest (mesh.cas.times:
    the mtimes the task will see), with every blob of both present on the node.

    Honours ``.meshignore`` and leaves ``.git`` and ``$MESH_HOME`` out.
    """
    from mesh.cas.statcache import StatCache
    from mesh.cas.store import LocalStore
    from mesh.ignore import tree_rules

    rules = tree_rules(directory, home=settings.home)
    ignore = rules.ignore

    node_store = client.health(cached=True).get("store")
    with LocalStore(settings.store_dir) as store:
        if store.shared_with(node_store):
            from mesh.cas.snapshot import ingest_timed

            cache = StatCache.for_tree(settings.home, directory, store.root, store.epoch(), variant=rules.variant)
            root, times = ingest_timed(store, directory, cache=cache, ignore=ignore)
            return root, store.put(times.encode())
    from mesh.cas.plan import plan_cache, plan_tree
    from mesh.errors import TreeChanged
    from mesh.wire.upload import put_blob, upload

    for attempt in range(3):
        cache = plan_cache(settings.home, directory, rules.variant)
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


class Stopped(Exception):
    """``mesh exec`` ends with ``status`` without the command's own (a signal, a node that stayed
    away); what happened was said on stderr."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def follow_job(client: NodeClient, job: dict[str, Any], *, window: float) -> ExecOutcome:
    """Submit a one-task job and write its output here as it comes (mesh.follow), to its end.

    A terminating signal, or a write of output that fails (SIGPIPE), cancels the job, waits
    until the node has ended it (writing what the task wrote until then) and raises Stopped
    with 128 + the signal's number; a node that stays away past ``window`` raises Stopped
    with EXIT_NODE_LOST, having said how to follow the job.
    """
    follower = JobFollower(client, sys.stdout.buffer, sys.stderr.buffer)
    return ExecOutcome.of(follow_job_with(follower, job, window=window))


def follow_job_with(follower: JobFollower, job: dict[str, Any] | None, *, window: float) -> Followed:
    """Submit ``job`` and follow it with ``follower`` to its end, as :func:`follow_job` does
    (``mesh run`` passes a follower that prefixes each task's lines); ``job`` None: follow the
    job submitted already, ``follower.job_id`` (a project's build)."""
    client = follower.client
    try:
        try:
            return follower.follow(None if job is None else client.submit_and_follow(job), window=window)
        except BrokenPipeError:
            raise Interrupted(signal.SIGPIPE) from None
    except Interrupted as stop:
        raise Stopped(cancel(follower, stop.signum, window=window)) from None
    except NodeGone as gone:
        say(f"{gone}; it goes on there: follow it with `mesh logs -f {gone.job_id} --node {client.url}`")
        raise Stopped(EXIT_NODE_LOST) from None


def cancel(follower: JobFollower, signum: int, *, window: float) -> int:
    """Cancel the followed job after signal ``signum`` and follow it until the node ended it;
    the exit status for the signal (a second signal meanwhile ends this at once)."""
    name = signal.Signals(signum).name
    status = 128 + signum
    job_id = follower.job_id
    if not job_id:
        say(f"{name}: stopped before the job was submitted")
        return status
    if signum == signal.SIGPIPE:  # nowhere to write: what the task wrote until the cancel is dropped
        _discard_stdout()
        follower.sinks["stdout"] = open(os.devnull, "wb")  # noqa: SIM115  (closed with the process)
    try:
        follower.client.cancel(job_id)
        ended = follower.follow(window=window)
    except Interrupted:
        say(f"{name}: job {job_id} was asked to cancel; see `mesh job {job_id}`")
        return status
    except (MeshError, OSError) as exc:
        say(f"{name}: job {job_id} may still run (the cancel failed: {exc}); `mesh cancel {job_id}` stops it")
        return status
    say(f"{name}: job {job_id} " + ("cancelled" if ended.state == "cancelled" else f"had ended: {ended.state}"))
    return status


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush of it does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


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


def followed_status(followed: Followed, tasks: list[str]) -> int:
    """The exit status of ``mesh logs -f``: ``mesh exec``'s for one task, else the job's (0 if it
    succeeded, EXIT_CANCELLED if it was cancelled, 1 if it failed)."""
    if len(tasks) == 1:
        (task,) = tasks
        outcome = ExecOutcome(followed.job_id, followed.state, followed.results.get(task), None)
        if followed.state != "cancelled" and outcome.result is not None:
            outcome.state = "succeeded"  # the task's own end, whatever became of the job's others
        return exit_status(outcome)
    return {"succeeded": 0, "cancelled": EXIT_CANCELLED}.get(followed.state, 1)


def explain(outcome: ExecOutcome) -> str | None:
    """A line for stderr when the task did not end by itself or its executor has a hint, else None."""
    result = outcome.result
    if outcome.state == "cancelled":
        return f"job {outcome.job_id} was cancelled"
    if result is None:
        return f"the task could not run: {outcome.reason or 'no reason given'}"
    if result.error:
        return result.error
    if result.timed_out:
        return "the command timed out and was killed"
    return result.hint  # the executor's word on why it failed (no network ...), if any


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


def checkout_output(
    client: NodeClient, settings: Settings, input: Digest, output: Digest, target: str, outputs: list[str] | None
) -> None:
    """Write into ``target`` what the task produced or changed (mesh.cas.writeout's rules): the
    entries of ``output`` that differ from ``input``, of the declared ``outputs`` only when
    given; what the local store misses of them is fetched from the node, and nothing else.

    Measured with bench/out.py (a 100,000-file tree, a cache hit of a task that changes one
    file; 2 cores shared with other work): ``--out`` adds 0.01-0.07 s to the 1.0 s of the
    run, where checking the whole output snapshot out into an empty directory added 4.9 s.
    """
    from mesh.cas.store import LocalStore
    from mesh.cas.writeout import write_changes
    from mesh.wire.remote import NodeBackedStore

    with LocalStore(settings.store_dir) as store:
        report = write_changes(NodeBackedStore(store, client), input, output, target, only=outputs)
    if report.deleted:
        first = os.fsdecode(report.deleted[0])
        more = f" and {len(report.deleted) - 1} more" if len(report.deleted) > 1 else ""
        say(f"the task deleted {first}{more}; --out deletes nothing, so {target} keeps them")


__all__ = [
    "ExecRequest",
    "snapshot_for",
    "follow_job",
    "follow_job_with",
    "Stopped",
    "Interrupts",
    "Interrupted",
    "say",
    "exit_status",
    "explain",
    "verbose_line",
    "checkout_output",
    "MeshError",
]
