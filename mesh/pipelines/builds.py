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
job to its end, counts it in ``/metrics`` (mesh.pipelines.buildmetrics), sends the
notifications its pipeline's ``notify`` asks for (mesh.pipelines.notify: retried, and those
that finally fail recorded on the build, whose state they never change) and notes when it
finished; on start it watches the builds a restart left unfinished (their notifications
are sent then, once the job has ended).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, Protocol
from urllib.parse import urlsplit

import trio

from mesh import codec
from mesh.errors import JobNotFound, MeshError, ProjectRefused, describe
from mesh.pipelines.badge import badge
from mesh.pipelines.buildmetrics import BuildMetrics
from mesh.pipelines.notify import EVENTS, BuildEnd, Email, Notifier, Status, Target, Webhook
from mesh.pipelines.projects import TRIGGERS, Build, Project, ProjectStore, Trigger, build_page, check_name
from mesh.sched.events import JobEvents
from mesh.sched.jobs import JobSpec

log = logging.getLogger("mesh.builds")

#: Longest commit id taken (a SHA-256 git object id is 64 hex digits).
MAX_COMMIT = 100
#: Most notify entries a build takes.
MAX_TARGETS = 64
#: Seconds between looks at a job whose live event log the node no longer holds.
POLL = 1.0


class JobsIntake(Protocol):
    """What builds need of the node's jobs (mesh.cluster.intake.JobIntake)."""

    async def submit(self, spec: JobSpec) -> str: ...

    def status(self, job_id: str) -> dict[str, Any]: ...

    def cancel(self, job_id: str) -> None: ...

    def rerun_spec(self, job_id: str, task: str | None, *, no_cache: bool = False) -> JobSpec: ...

    async def rerun(self, job_id: str, task: str | None, *, no_cache: bool = False) -> str: ...

    def events(self, job_id: str) -> JobEvents | None: ...


class Builds:
    """Projects and their builds on one node."""

    def __init__(
        self,
        store: ProjectStore,
        jobs: JobsIntake,
        metrics: BuildMetrics,
        notifier: Notifier,
        base_url: Callable[[], str],
    ) -> None:
        self.store = store
        self.jobs = jobs
        self.metrics = metrics
        self.notifier = notifier
        self.base_url = base_url  # the node's URL, for the build's page in its notifications
        # Unbounded: a build recorded must be watched, and each is taken off at once by run().
        self._send, self._receive = trio.open_memory_channel[Build](math.inf)

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

    async def start(
        self,
        name: str,
        spec: JobSpec,
        commit: str | None,
        trigger: str,
        *,
        branch: str | None = None,
        notify: list[Any] | None = None,
        rerun_of: int | None = None,
    ) -> dict[str, Any]:
        """Run ``spec`` as ``name``'s next build: its number, job id and path. ``notify``: the
        pipeline's notify entries (``{"webhook"|"email": ..., "on": [...]}``), sent at its end."""
        self.project(name)
        kind = _trigger(trigger)
        if commit is not None and not 1 <= len(commit) <= MAX_COMMIT:
            raise ProjectRefused(f"a commit id is 1 to {MAX_COMMIT} characters")
        if branch is not None and not 1 <= len(branch) <= MAX_COMMIT:
            raise ProjectRefused(f"a branch name is 1 to {MAX_COMMIT} characters")
        wire = notify or []
        targets(wire)  # refused before anything runs
        job_id = await self.jobs.submit(spec)
        try:
            build = self.store.record(name, job_id, commit, kind, branch=branch, notify=wire, rerun_of=rerun_of)
        except MeshError:
            self.jobs.cancel(job_id)  # nothing runs without a number
            raise
        self._send.send_nowait(build)
        return build.to_wire()

    async def rerun(self, name: str, number: int, task: str | None, *, no_cache: bool = False) -> dict[str, Any]:
        """Build ``number`` of ``name`` again as its next build, trigger ``rerun``: the same commit,
        branch and notifications; every step (those that succeeded answered from the action
        cache unless ``no_cache``), or ``task`` and what depends on it (mesh.sched.rerun)."""
        earlier = self.store.build(check_name(name), number)
        spec = self.jobs.rerun_spec(earlier.job, task, no_cache=no_cache)
        return await self.start(
            name, spec, earlier.commit, "rerun", branch=earlier.branch, notify=earlier.notify, rerun_of=number
        )

    async def rerun_job(self, job_id: str, task: str | None, *, no_cache: bool = False) -> dict[str, Any]:
        """Job ``job_id`` again (mesh.sched.rerun): ``{"job": NEW, "build": ...}``. A job that ran a
        build is re-run as its project's next build (every run of a project has a number), the
        others as a job alone (``build`` None)."""
        earlier = self.store.build_of(job_id)
        if earlier is None:
            return {"job": await self.jobs.rerun(job_id, task, no_cache=no_cache), "build": None}
        build = await self.rerun(earlier.project, earlier.number, task, no_cache=no_cache)
        return {"job": build["job"], "build": build}

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
            duration = max(0.0, finished - build.created_at)
            self.metrics.observe(build.project, job["state"], duration)
            failures = await self.notifier.send_all(self._end(build, job["state"], duration), targets(build.notify))
            self.store.finished(build.project, build.number, finished, [asdict(failure) for failure in failures])
        except MeshError as exc:
            log.error("build %d of %s: its end could not be noted: %s", build.number, build.project, describe(exc))

    def _end(self, build: Build, state: Status, duration: float) -> BuildEnd:
        """What the notifications of ``build``'s end say (mesh.pipelines.notify)."""
        earlier = self.store.builds(build.project, limit=1, before=build.number)
        previous = self._job(earlier[0]).get("state") if earlier else None
        return BuildEnd(
            project=build.project,
            number=build.number,
            status=state,
            previous=previous if previous in ("succeeded", "failed", "cancelled") else None,
            commit=build.commit or "",
            branch=build.branch or "",
            duration=duration,
            url=self.base_url() + build_page(build.project, build.number),
        )


def targets(wire: list[Any]) -> list[Target]:
    """The notification targets of a build's ``notify`` entries (ProjectRefused for a bad one)."""
    found: list[Target] = []
    if not isinstance(wire, list) or len(wire) > MAX_TARGETS:
        raise ProjectRefused(f"a build's notify is a list of at most {MAX_TARGETS} entries")
    for index, entry in enumerate(wire):
        fields = codec.Fields(entry, f"notify[{index}]")
        on = fields.texts("on")
        webhook, email = fields.text("webhook", None), fields.text("email", None)
        fields.done()
        if not on or any(event not in EVENTS for event in on):
            raise ProjectRefused(f"notify[{index}].on names events among {', '.join(EVENTS)}")
        wanted = frozenset(event for event in EVENTS if event in on)
        if webhook is not None and email is None and urlsplit(webhook).scheme in ("http", "https"):
            found.append(Webhook(url=webhook, on=wanted))
        elif email is not None and webhook is None and "@" in email:
            found.append(Email(address=email, on=wanted))
        else:
            raise ProjectRefused(f"notify[{index}] is one http(s) webhook URL or one email address")
    return found


def _trigger(text: str) -> Trigger:
    for trigger in TRIGGERS:
        if trigger == text:
            return trigger
    raise ProjectRefused(f"a build's trigger is one of {', '.join(TRIGGERS)}, not {text!r}")
