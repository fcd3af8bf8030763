"""Builds of projects: start one (a job through the node's intake, and its number), read the
history, and see each build's end (its metrics).

:class:`Builds` is what the API calls (mesh.api.services.Projects): handlers translate and
call one method. Starting a build submits its job first and then gives it the project's next
number in one transaction (mesh.pipelines.projects): a job the intake refuses (a missing
input) uses up no number; a build whose recording fails (a full disk) has its job cancelled,
so that nothing runs without a number.

A build's state is its job's state (running, succeeded, failed, cancelled), read from the
job's status, as are its steps (node, cached, timings, exit codes): the job is the one
record of what ran. :meth:`Builds.run` (a task in the node's nursery) watches each build's
job to its end, notes when it finished and counts it in ``/metrics``
(mesh.pipelines.buildmetrics); on start it watches the builds a restart left unfinished.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

import trio

from mesh.errors import JobNotFound, MeshError, ProjectRefused, describe
from mesh.pipelines.badge import badge
from mesh.pipelines.buildmetrics import BuildMetrics
from mesh.pipelines.projects import TRIGGERS, Build, Project, ProjectStore, Trigger, check_name
from mesh.sched.events import JobEvents
from mesh.sched.jobs import JobSpec

log = logging.getLogger("mesh.builds")

#: Longest commit id taken (a SHA-256 git object id is 64 hex digits).
MAX_COMMIT = 100
#: Seconds between looks at a job whose live event log the node no longer holds.
POLL = 1.0


class JobsIntake(Protocol):
    """What builds need of the node's jobs (mesh.cluster.intake.JobIntake)."""

    async def submit(self, spec: JobSpec) -> str: ...

    def status(self, job_id: str) -> dict[str, Any]: ...

    def cancel(self, job_id: str) -> None: ...

    def events(self, job_id: str) -> JobEvents | None: ...


class Builds:
    """Projects and their builds on one node."""

    def __init__(self, store: ProjectStore, jobs: JobsIntake, metrics: BuildMetrics) -> None:
        self.store = store
        self.jobs = jobs
        self.metrics = metrics
        self._send, self._receive = trio.open_memory_channel[Build](1000)

    # -- projects ------------------------------------------------------------------

    def add(self, name: str, url: str, branch: str, secret: bytes | None) -> dict[str, Any]:
        return self.store.add(name, url, branch, secret).to_wire()

    def all(self) -> list[dict[str, Any]]:
        return [project.to_wire() for project in self.store.all()]

    def remove(self, name: str) -> None:
        self.store.remove(check_name(name))

    def project(self, name: str) -> Project:
        return self.store.get(check_name(name))

    # -- builds --------------------------------------------------------------------

    async def start(self, name: str, spec: JobSpec, commit: str | None, trigger: str) -> dict[str, Any]:
        """Run ``spec`` as ``name``'s next build: its number, job id and path."""
        self.project(name)
        kind = _trigger(trigger)
        if commit is not None and not 1 <= len(commit) <= MAX_COMMIT:
            raise ProjectRefused(f"a commit id is 1 to {MAX_COMMIT} characters")
        job_id = await self.jobs.submit(spec)
        try:
            build = self.store.record(name, job_id, commit, kind)
        except MeshError:
            self.jobs.cancel(job_id)  # nothing runs without a number
            raise
        self._send.send_nowait(build)
        return build.to_wire()

    def page(self, name: str, limit: int, before: int | None) -> tuple[list[dict[str, Any]], int | None]:
        """``name``'s builds newest first, with their states; where the next page begins."""
        builds = self.store.builds(check_name(name), limit=limit, before=before)
        page = [{**build.to_wire(), "state": self._job(build).get("state", "unknown")} for build in builds]
        return page, builds[-1].number if len(builds) == limit else None

    def build(self, name: str, number: int) -> dict[str, Any]:
        """Build ``number`` of ``name``: its row, its job's state and the job's tasks as steps."""
        build = self.store.build(check_name(name), number)
        job = self._job(build)
        return {**build.to_wire(), "state": job.get("state", "unknown"), "steps": job.get("tasks", [])}

    def badge(self, name: str) -> str:
        """The SVG badge of ``name``'s latest build (mesh.pipelines.badge)."""
        latest = self.store.builds(check_name(name), limit=1)
        return badge(name, self._job(latest[0]).get("state") if latest else None)

    def _job(self, build: Build) -> dict[str, Any]:
        try:
            return self.jobs.status(build.job)
        except JobNotFound:
            return {}

    # -- the end of builds ------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Watch every build's job to its end (a task of the node's nursery)."""
        async with trio.open_nursery() as nursery:
            for build in self.store.unfinished():
                nursery.start_soon(self._watch, build)
            task_status.started()
            async for build in self._receive:
                nursery.start_soon(self._watch, build)

    async def _watch(self, build: Build) -> None:
        try:
            while True:
                events = self.jobs.events(build.job)
                if events is not None:
                    async for _ in events.follow():
                        pass
                job = self._job(build)
                if not job:  # the node no longer holds the job (its state database was replaced)
                    return
                if job["state"] != "running":
                    break
                await trio.sleep(POLL)
            finished = job.get("finished_at") or time.time()
            self.store.finished(build.project, build.number, finished)
            self.metrics.observe(build.project, job["state"], max(0.0, finished - build.created_at))
        except MeshError as exc:
            log.error("build %d of %s: its end could not be noted: %s", build.number, build.project, describe(exc))


def _trigger(text: str) -> Trigger:
    for trigger in TRIGGERS:
        if trigger == text:
            return trigger
    raise ProjectRefused(f"a build's trigger is one of {', '.join(TRIGGERS)}, not {text!r}")
