"""A forge's webhook delivery in, a project's build out: what ``POST /v1/hooks/NAME`` does.

:meth:`HookIntake.receive` takes a delivery as it arrived (headers and raw body) for a
project, and answers with a status and a JSON body for the forge:

1. The project (ProjectNotFound: 404), and the delivery checked and read with its webhook
   secret (mesh.pipelines.hooks.parse: HookUnauthorized 401, InvalidHook 400, HookTooLarge
   413). A ping is answered 200 ``{"pong": true}``; an ignored event, or a push to a branch
   outside the project's ``--branch`` glob, 202 with the reason.
2. The delivery id remembered (mesh.pipelines.deliveries): one taken before is answered 202
   "already taken", and starts nothing. It is remembered only after the signature is
   checked, so nobody without the secret can fill the log.
3. The pushed commit fetched into the mirror under ``$MESH_HOME/git`` from the **project's**
   URL, its ``.mesh.yml`` read and parsed, its tree snapshotted (mesh.pipelines.gitsnap),
   the pipeline compiled for the pushed branch and started as the project's next build with
   trigger ``hook`` (mesh.pipelines.builds): 201 with the build's number and path.

If anything in step 3 fails (no or a malformed ``.mesh.yml``: PipelineError, 422; a fetch
that fails: GitError), no build is started and the delivery is forgotten, so that the
forge's redelivery, once the pipeline file or the repository is fixed, is taken.

The work runs in the node's nursery (:meth:`HookIntake.run`), and the request waits for it
at most ``wait`` seconds (the node's ``hook_wait``, 4 s by default: a forge waits a while for
its answer, Gitea and Forgejo 5 s by default, GitHub and GitLab 10 s). A fetch of a commit the
mirror lacks is one ``git fetch`` of what changed, and a snapshot of a commit reads only the
blobs that changed (mesh.pipelines.gitsnap measures 30 ms for a commit changing a few files of
2,261), so a push is answered 201 with its number well within that. The first delivery of a
large repository (a whole clone) can take longer: it is answered 202 ``{"accepted": ...}`` once
the wait is over, and the build starts when the fetch is done, with the next number then (a
number is given only to a build that starts). If that later work fails, the node logs why and
forgets the delivery, so that a redelivery is taken; a redelivery while it goes on is answered
"already taken". A forge that hangs up first changes nothing: the work goes on.

The blocking git and store work runs in worker threads (``trio.to_thread.run_sync``), so
the node's event loop goes on serving while a repository is fetched.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import trio

from mesh.cas.digest import Digest
from mesh.cas.store import LocalStore
from mesh.config import DEFAULT_HOOK_WAIT
from mesh.errors import PipelineError, describe
from mesh.pipelines import gitsnap, hooks
from mesh.pipelines.builds import Builds
from mesh.pipelines.compile import compile_job
from mesh.pipelines.deliveries import DeliveryLog
from mesh.pipelines.pipefile import FILENAME, parse
from mesh.pipelines.projects import Project
from mesh.sched.jobs import parse_job

log = logging.getLogger("mesh.hooks")


@dataclass(frozen=True)
class HookAnswer:
    """What the forge is answered: an HTTP status and a JSON object."""

    status: int
    body: dict[str, Any] = field(default_factory=dict)


class HookIntake:
    """Webhook deliveries of the projects of one node (module docstring)."""

    def __init__(
        self,
        builds: Builds,
        store: LocalStore,
        cache_dir: str,
        deliveries: DeliveryLog,
        default_executor: Callable[[], str],
        *,
        wait: float = DEFAULT_HOOK_WAIT,
    ) -> None:
        self.builds = builds
        self.store = store
        self.cache_dir = cache_dir  # the git mirrors: $MESH_HOME/git
        self.deliveries = deliveries
        self.default_executor = default_executor
        self.wait = wait  # seconds a delivery waits for its build to start (module docstring)
        self._nursery: trio.Nursery | None = None  # the node's, for builds that outlast their request

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the nursery that builds from deliveries run in (a task of the node's nursery)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    async def receive(self, name: str, headers: Mapping[str, str], body: bytes) -> HookAnswer:
        """Take one delivery for project ``name``: the answer for the forge (module docstring)."""
        project = self.builds.project(name)
        event = hooks.within_branches(hooks.parse(headers, body, project.secret or b""), project.branch)
        if isinstance(event, hooks.Ping):
            return HookAnswer(200, {"pong": True})
        if isinstance(event, hooks.Ignored):
            log.info("project %s: delivery %s ignored: %s", name, event.delivery, event.reason)
            return HookAnswer(202, {"ignored": event.reason})
        if event.delivery is not None and not self.deliveries.remember(name, event.delivery):
            return HookAnswer(202, {"ignored": f"delivery {event.delivery} was already taken: it starts nothing"})
        assert self._nursery is not None, "HookIntake.run is started before the node serves"
        late = trio.Event()  # set when the request stopped waiting
        outcome: list[dict[str, Any] | Exception] = []
        done = trio.Event()

        async def work() -> None:
            try:
                outcome.append(await self._started(project, event, late=late))
            except Exception as exc:
                outcome.append(exc)
            finally:
                done.set()

        self._nursery.start_soon(work)
        try:
            with trio.move_on_after(self.wait):
                await done.wait()
        finally:
            late.set()
        if not outcome:
            log.info(
                "project %s: delivery %s accepted; its build starts once %s is fetched",
                name,
                event.delivery,
                event.after,
            )
            accepted = f"the build of {event.after} starts once the repository is fetched"
            return HookAnswer(202, {"accepted": accepted, "commit": event.after})
        if isinstance(outcome[0], Exception):
            raise outcome[0]
        return _started(outcome[0])

    async def _started(self, project: Project, push: hooks.Push, *, late: trio.Event) -> dict[str, Any]:
        """:meth:`_build`, the delivery forgotten if it fails (a fixed redelivery is then taken);
        logged when the request answered already (``late`` set)."""
        try:
            build = await self._build(project, push)
        except BaseException as exc:
            if push.delivery is not None:
                self.deliveries.forget(project.name, push.delivery)
            if late.is_set() and isinstance(exc, Exception):
                log.error("project %s: the build of %s could not start: %s", project.name, push.after, describe(exc))
            raise
        number, branch = build["number"], push.branch
        log.info("project %s: build %d of %s at %s (%s)", project.name, number, branch, push.after, push.forge)
        return build

    async def _build(self, project: Project, push: hooks.Push) -> dict[str, Any]:
        """Fetch, read, snapshot, compile and start the build of ``push``; the build as Builds answers it."""
        # The project's URL, not the payload's clone_urls: the payload is the forge's word (and
        # anyone holding the secret could name any repository in it), the project's URL is the
        # operator's, who registered it with `mesh project add`.
        fetch = partial(gitsnap.fetch, project.url, push.after, self.cache_dir, ref=push.ref)
        mirror = await trio.to_thread.run_sync(fetch)
        text = await trio.to_thread.run_sync(gitsnap.read_file, mirror, push.after, FILENAME)
        if text is None:
            raise PipelineError(f"commit {push.after} of {project.url} has no {FILENAME}: no build was started")
        pipeline = parse(text, f"{FILENAME}@{push.after[:12]}")  # .mesh.yml@0a16153cc5e1:LINE: ...
        # Compiled against a placeholder first, so that a pipeline with no step for this branch
        # fails before its tree is stored.
        compile_job(pipeline, input=Digest.of(b""), branch=push.branch)
        snapshot, times = await trio.to_thread.run_sync(gitsnap.snapshot_commit, self.store, mirror, push.after)
        job = compile_job(
            pipeline,
            input=snapshot,
            times=times,
            branch=push.branch,
            label=f"{project.name} {push.branch} {push.after[:12]}",
        )
        spec = parse_job(job.wire, default_executor=self.default_executor())
        notify = [entry.to_wire() for entry in pipeline.notify]
        return await self.builds.start(project.name, spec, push.after, "hook", branch=push.branch, notify=notify)


def _started(build: dict[str, Any]) -> HookAnswer:
    answer = {key: build[key] for key in ("number", "path", "page", "commit")}
    return HookAnswer(201, answer)
