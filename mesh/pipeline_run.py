"""``mesh run``: run the pipeline of a directory (its ``.mesh.yml``) as one job, live.

The file is parsed first (mesh.pipelines.pipefile): a malformed one is a PipelineError
naming its line, and nothing is snapshotted or submitted. Then the directory is
snapshotted as ``mesh exec`` does (mesh.execute.snapshot_for: .meshignore, .git left out,
a times manifest), the pipeline is compiled into one job (mesh.pipelines.compile) and
followed with mesh.follow's JobFollower, which prefixes each line with its task's name and
reconnects to a node that went away. At the end a table gives each task's step, node,
whether it was cached, its time and its status.

With ``--project NAME`` the job is submitted as the project's next build instead
(mesh.project_cli.start, with the directory's git HEAD as its commit): the node gives it its
number, which is printed with the URL of the build's page at the start and after the table;
the node sends the pipeline's ``notify`` entries when the build ends.

Exit status: 0 when the job succeeded (every step that ran succeeded; a failure reaction
that was skipped is fine), 1 when it failed (the failing step is ``failed`` in the table),
130 when it was cancelled, 128+N after signal N, 255 when the node stayed away.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from mesh import project_cli
from mesh.cas.digest import Digest
from mesh.config import Settings
from mesh.exec.action import ActionResult
from mesh.execute import EXIT_CANCELLED, Stopped, follow_job_with, snapshot_for
from mesh.follow import Followed, JobFollower
from mesh.pipelines.compile import CompiledJob, compile_job
from mesh.pipelines.pipefile import FILENAME, Pipeline, load
from mesh.sched.jobs import TaskState
from mesh.wire.client import NodeClient


@dataclass(kw_only=True)
class RunRequest:
    """What ``mesh run`` was asked to do."""

    directory: str
    steps: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    project: str | None = None  # record the run as this project's next build


def read_pipeline(directory: str) -> Pipeline:
    """The pipeline file of ``directory``, validated (PipelineError: nothing is submitted)."""
    return load(os.path.join(directory, FILENAME), FILENAME)


def current_branch(directory: str) -> str | None:
    """The branch checked out in ``directory`` (its ``.git/HEAD``; a worktree's ``.git`` file names
    the directory that holds it), or None (no git, a detached HEAD)."""
    git = os.path.join(directory, ".git")
    try:
        if os.path.isfile(git):
            with open(git, encoding="utf-8", errors="replace") as f:
                pointer = f.read().strip()
            if not pointer.startswith("gitdir: "):
                return None
            git = os.path.join(directory, pointer[len("gitdir: ") :])
        with open(os.path.join(git, "HEAD"), encoding="utf-8", errors="replace") as f:
            head = f.read().strip()
    except OSError:
        return None
    prefix = "ref: refs/heads/"
    return head[len(prefix) :] if head.startswith(prefix) else None


def run(client: NodeClient, settings: Settings, request: RunRequest, *, window: float) -> int:
    """Run the pipeline of ``request.directory`` on the node; the exit status (module docstring)."""
    pipeline = read_pipeline(request.directory)
    branch = current_branch(request.directory)
    # Compiled against a placeholder first, so that a bad selection fails before the snapshot.
    compile_job(pipeline, input=Digest.of(b""), only=request.steps, env=request.env, branch=branch)
    snapshot, times = snapshot_for(client, settings, request.directory, progress=sys.stderr.isatty())
    return run_on(client, request, pipeline, snapshot, times, window=window)


def run_on(
    client: NodeClient,
    request: RunRequest,
    pipeline: Pipeline,
    snapshot: Digest,
    times: Digest | None,
    *,
    window: float,
    on_follow: Callable[[JobFollower], None] | None = None,
) -> int:
    """Run ``pipeline`` on ``snapshot`` of ``request.directory`` (its blobs on the node already:
    ``mesh watch`` snapshots as it watches); the exit status. ``on_follow`` is given the
    follower before the job is submitted (its ``job_id`` is set once the node took it)."""
    branch = current_branch(request.directory)
    job = compile_job(
        pipeline,
        input=snapshot,
        times=times,
        only=request.steps,
        env=request.env,
        branch=branch,
        label=f"mesh run {os.path.basename(request.directory.rstrip('/')) or '/'}",
    )
    follower = JobFollower(
        client, sys.stdout.buffer, sys.stderr.buffer, tasks=[name for name, _ in job.tasks], prefix=True
    )
    if on_follow is not None:
        on_follow(follower)
    announced = ""
    if request.project is not None:
        commit = project_cli.head_commit(request.directory)
        build = project_cli.start(
            client, request.project, job.wire, commit=commit, branch=branch, notify=pipeline.notify, trigger="run"
        )
        follower.job_id = build["job"]
        announced = f"build #{build['number']} of {request.project}: {client.url}{build['page']}"
        print(announced, file=sys.stderr, flush=True)
    followed = follow_job_with(follower, None if announced else job.wire, window=window)
    sys.stdout.flush()
    print(summary(job, followed), file=sys.stderr, flush=True)
    if announced:
        print(announced, file=sys.stderr, flush=True)
    return {"succeeded": 0, "cancelled": EXIT_CANCELLED}.get(followed.state, 1)


def summary(job: CompiledJob, followed: Followed) -> str:
    """The table printed at the end: one row per task (step, node, cached, time, status)."""
    rows = [("STEP", "NODE", "CACHED", "TIME", "STATUS")]
    for name, _ in job.tasks:
        result = followed.results.get(name)
        rows.append((name, *_cells(result), _status(followed.states.get(name), result, followed.reasons.get(name))))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.append(f"pipeline {followed.state} (job {followed.job_id})")
    return "\n".join(lines)


def _cells(result: ActionResult | None) -> tuple[str, str, str]:
    if result is None:
        return "-", "-", "-"
    seconds = max(0.0, result.finished_at - result.started_at)
    return result.node[:12] or "-", "yes" if result.cached else "no", f"{seconds:.1f}s"


def _status(state: TaskState | None, result: ActionResult | None, reason: str | None) -> str:
    """A task's end in a few words: its state, and for a failure why (exit N, timed out, the reason)."""
    if state is None:
        return "not finished"
    if state != "failed":
        return state
    if result is None:
        return f"failed ({reason or 'no reason given'})"
    if result.timed_out:
        return "failed (timed out)"
    if result.error:
        return f"failed ({result.error})"
    return f"failed (exit {result.exit_code})"


__all__ = ["RunRequest", "run", "run_on", "read_pipeline", "summary", "current_branch", "Stopped"]
