"""What the HTTP handlers call: the node's services, each a narrow interface.

A handler translates a request into a call on one of these and the answer back into
HTTP; the logic behind them lives in the layers below (mesh.cluster.intake for jobs,
the store and its space for blobs) and the node (mesh.node) composes them. The app
finds them with :func:`services`. Because the handlers depend on these interfaces and
not on the node, ``mesh.api`` does not import ``mesh.node`` (the layers in
pyproject.toml), and a test can serve the app over anything that has them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from prometheus_client import CollectorRegistry
from starlette.requests import Request

from mesh.api.sessions import Sessions
from mesh.cas.access import BlobAccess
from mesh.cas.blobio import BlobReader
from mesh.cas.digest import Digest
from mesh.cas.space import StoreSpace
from mesh.sched.events import JobEvents
from mesh.sched.jobevents import JobEvent
from mesh.sched.jobs import JobSpec, JobState
from mesh.wire.auth import Verifier


class Jobs(Protocol):
    """Jobs: submitted by clients, offered by peers, listed, followed, cancelled, stolen."""

    @property
    def default_executor(self) -> str:
        """The executor of a task that names none."""
        ...

    async def submit(self, spec: JobSpec) -> str:
        """Accept a job: its id (InputMissing when an input is nowhere in the mesh)."""
        ...

    async def take_offer(self, spec: JobSpec, source: str | None) -> str:
        """Accept a task a peer offers (NoFreeSlot when no slot is free): its job's id."""
        ...

    def status(self, job_id: str) -> dict[str, Any]:
        """A job with its tasks, states and results (JobNotFound)."""
        ...

    def page(self, limit: int, before: int | None, state: JobState | None) -> tuple[list[dict[str, Any]], int | None]:
        """Jobs newest first, and where the next page begins (None on the last)."""
        ...

    def cancel(self, job_id: str) -> None:
        """Cancel a job, killing its running tasks (JobNotFound)."""
        ...

    def events(self, job_id: str) -> JobEvents | None:
        """The job's live event log, or None once the node no longer holds it."""
        ...

    def summary(self, job_id: str) -> list[JobEvent]:
        """How the job and its tasks ended, as events, once its live log is gone."""
        ...

    def give(self, thief: str, slots: int) -> int:
        """Offer up to ``slots`` queued tasks to an idle peer: how many went."""
        ...


class Blobs(Protocol):
    """The node's store, the room under its cap, and the peers behind it."""

    @property
    def store(self) -> BlobAccess:
        """The node's blob store."""
        ...

    @property
    def space(self) -> StoreSpace:
        """Room under the store's cap (MESH_STORE_MAX), evicting what nothing pins."""
        ...

    async def open(self, digest: Digest, *, ask_peers: bool) -> BlobReader:
        """A verifying stream of the blob, copied here first from a live peer that has it when
        the store lacks it and ``ask_peers`` (BlobNotFound when no one has it; BlobDamaged
        for a file of the wrong size)."""
        ...


class Cache(Protocol):
    """The node's part in the mesh-wide action cache (mesh.cluster.actioncache, .inflight)."""

    def answer_lookup(self, message: Any) -> Any:
        """Which of the keys a peer asks for this node's own cache holds, with their results."""
        ...

    async def answer_claim(self, message: Any) -> Any:
        """A peer's claim of a key this node owns: granted, or whom to wait for."""
        ...

    def answer_release(self, message: Any) -> Any:
        """The holder of a claim ran its action: the claim ends."""
        ...


class Projects(Protocol):
    """Projects and their builds (mesh.pipelines.builds.Builds)."""

    def add(self, name: str, url: str, branch: str, secret: bytes | None) -> dict[str, Any]:
        """Add a project (ProjectRefused: 400, ProjectExists: 409); what the API shows of it."""
        ...

    def all(self) -> list[dict[str, Any]]:
        """The projects, by name, without their secrets."""
        ...

    def remove(self, name: str) -> None:
        """Remove a project and its builds (ProjectNotFound: 404)."""
        ...

    async def start(
        self,
        name: str,
        spec: JobSpec,
        commit: str | None,
        trigger: str,
        *,
        branch: str | None = None,
        notify: list[Any] | None = None,
    ) -> dict[str, Any]:
        """Submit ``spec`` as the project's next build: its number, job id and path; ``notify``:
        the pipeline's notify entries, sent when it ends."""
        ...

    async def rerun(self, name: str, number: int, task: str | None, *, no_cache: bool = False) -> dict[str, Any]:
        """Build ``number`` again as the project's next build (every step, or ``task`` and what
        depends on it): the new build's number, job id and path (ProjectNotFound, RerunRefused)."""
        ...

    async def rerun_job(self, job_id: str, task: str | None, *, no_cache: bool = False) -> dict[str, Any]:
        """Run a job again as a new one (every task, or ``task`` and what depends on it), as its
        project's next build when it ran one: ``{"job": ID, "build": BUILD | None}``
        (JobNotFound, RerunRefused)."""
        ...

    def page(self, name: str, limit: int, before: int | None) -> tuple[list[dict[str, Any]], int | None]:
        """The project's builds newest first, and where the next page begins (None on the last)."""
        ...

    def build(self, name: str, number: int) -> dict[str, Any]:
        """One build: number, commit, trigger, state and steps (ProjectNotFound: 404)."""
        ...

    def badge(self, name: str) -> str:
        """The SVG badge of the project's latest build."""
        ...


class HookAnswer(Protocol):
    """What a forge is answered (mesh.pipelines.hookintake.HookAnswer)."""

    @property
    def status(self) -> int: ...

    @property
    def body(self) -> dict[str, Any]: ...


class Hooks(Protocol):
    """Webhook deliveries of forges (mesh.pipelines.hookintake.HookIntake)."""

    async def receive(self, name: str, headers: Mapping[str, str], body: bytes) -> HookAnswer:
        """Take one delivery for project ``name`` (ProjectNotFound: 404, HookUnauthorized: 401,
        InvalidHook: 400, HookTooLarge: 413, PipelineError: 422); the status and JSON to answer."""
        ...


class WatchService(Protocol):
    """Watchers of this node and the files of the mesh's watchers (mesh.watch.service.Watches)."""

    def register(self, directory: str, host: str, pid: int) -> dict[str, Any]:
        """A new watcher (WatchConflict: 409): its id and how often it must beat."""
        ...

    def beat(self, watcher_id: str, snapshot: Digest | None) -> dict[str, Any]:
        """A watcher's beat with its new snapshot, if any (WatchNotFound: 404; SnapshotError: 422)."""
        ...

    def remove(self, watcher_id: str) -> None:
        """A watcher stops (WatchNotFound: 404)."""
        ...

    async def files(self) -> list[dict[str, Any]]:
        """The files of every healthy watcher of the mesh, sorted."""
        ...


class NodeServices(Protocol):
    """Everything the app serves, as the node (mesh.node.Node) provides it."""

    @property
    def jobs(self) -> Jobs: ...

    @property
    def blobs(self) -> Blobs: ...

    @property
    def cache(self) -> Cache: ...

    @property
    def projects(self) -> Projects: ...

    @property
    def hooks(self) -> Hooks: ...

    @property
    def watches(self) -> WatchService: ...

    @property
    def verifier(self) -> Verifier:
        """Checks the signatures of requests (mesh.wire.auth), for mesh.api.http.authenticate."""
        ...

    @property
    def sessions(self) -> Sessions:
        """People's sessions in the UI (mesh.api.sessions): their login tokens and cookies."""
        ...

    def health(self) -> dict[str, Any]:
        """What ``/health`` says; ``ok`` False when the node cannot work (503)."""
        ...

    def status(self, *, detailed: bool = False) -> dict[str, Any]:
        """What ``/status`` says: counts and facts; ``detailed`` (signed) adds recent jobs."""
        ...

    @property
    def metrics(self) -> CollectorRegistry:
        """What ``/metrics`` exposes: the node's own registry (mesh.api.metrics.node_registry)."""
        ...

    def gossip(self, message: Any) -> Any:
        """Merge a peer's membership table; our table, to answer it with."""
        ...


def services(request: Request) -> NodeServices:
    """The services of the node serving ``request`` (set by mesh.api.app.create_app)."""
    node: NodeServices = request.app.state.services
    return node
