"""``mesh rerun``: run an earlier job, or a project's build, again, and follow it as ``mesh run`` does.

``mesh rerun NAME N`` builds build N of project NAME again as the project's next number (the
same commit, branch and notifications); ``mesh rerun JOB`` runs a job again as a new job (a
job that ran a build, as that build: the project's next number).
With ``--task T`` only task T runs again, with the inputs it had, and what depends on it
(mesh.sched.rerun, on the node). The new job is followed like ``mesh run``'s: each line
prefixed with its task, a table at the end, the same exit statuses; ``--detach`` prints the
new job (or build) and returns at once.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from mesh.errors import CodecError, UsageError
from mesh.execute import EXIT_CANCELLED, follow_job_with
from mesh.follow import JobFollower
from mesh.pipeline_run import summary
from mesh.pipelines.compile import CompiledJob
from mesh.sched.jobs import check_job_id
from mesh.wire.client import NodeClient


@dataclass(frozen=True, kw_only=True)
class RerunRequest:
    """What ``mesh rerun`` was asked to do: a build (``number`` given) or a job."""

    target: str  # a project's name, or a job id
    number: int | None = None
    task: str | None = None
    no_cache: bool = False
    detach: bool = False


def start(client: NodeClient, request: RerunRequest) -> tuple[str, str]:
    """Ask the node for the re-run: the new job's id, and how to announce it."""
    body: dict[str, Any] = {"no_cache": request.no_cache}
    if request.task is not None:
        body["task"] = request.task
    if request.number is None:
        try:
            job_id = check_job_id(request.target)
        except CodecError:
            raise UsageError(
                f"{request.target!r} is not a job id (20 hex digits): to re-run a project's build, give its"
                f" number too (mesh rerun {request.target} N)"
            ) from None
        answer = client.request("POST", f"/v1/jobs/{job_id}/rerun", body=body)
        what = f" of task {request.task}" if request.task else ""
        build = answer.get("build")
        if build is not None:  # the job ran a build: so does its re-run
            return answer["job"], _announce(client, build) + f", job {answer['job']}"
        return answer["job"], f"job {answer['job']}: re-run{what} of job {job_id}"
    path = f"/v1/projects/{quote(request.target, safe='')}/builds/{request.number}/rerun"
    build = client.request("POST", path, body=body)
    return build["job"], _announce(client, build)


def _announce(client: NodeClient, build: dict[str, Any]) -> str:
    earlier = build.get("rerun_of")
    return f"build #{build['number']} of {build['project']} (re-run of #{earlier}): {client.url}{build['page']}"


def rerun(client: NodeClient, request: RerunRequest, *, window: float) -> int:
    """Re-run on the node and follow the new job: the exit status of ``mesh run``."""
    job_id, announced = start(client, request)
    print(announced, file=sys.stderr, flush=True)
    if request.detach:
        print(job_id)
        return 0
    names = [task["name"] for task in client.request("GET", f"/v1/jobs/{job_id}")["tasks"]]
    follower = JobFollower(client, sys.stdout.buffer, sys.stderr.buffer, tasks=names, prefix=True)
    follower.job_id = job_id
    followed = follow_job_with(follower, None, window=window)
    sys.stdout.flush()
    print(summary(CompiledJob(wire={}, tasks=tuple((name, name) for name in names)), followed), file=sys.stderr)
    print(announced, file=sys.stderr, flush=True)
    return {"succeeded": 0, "cancelled": EXIT_CANCELLED}.get(followed.state, 1)
