"""Taking jobs in: a client's submission, or a task a peer offers, made ready to schedule.

The HTTP handlers (mesh.api.app) translate a request into a JobSpec and call this; what
it takes to accept a job lives here, not in the handler:

- **A submission** names input snapshots. Each must be on this node, or on a live peer:
  then its root node is copied here (enough to accept the job; the rest of the tree comes
  when a task runs here, mesh.cluster.peering.Peering.fetch_tree), else InputMissing (400).
  The same holds for the blob a task reads as stdin, which is copied here whole.
- **An offer** is a pinned job of one task from a peer that places work (mesh.cluster.peer
  TaskOffers). It is taken only with a free slot (else NoFreeSlot, 409: the peer offers
  it to another node), after copying what the store lacks of its input (and its stdin)
  from the offering node, so the task starts as soon as a slot runs it. Its ``no_cache``
  (set when the task runs without the cache on the offering node) holds here too: the
  task is neither answered from this node's action cache nor recorded in it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mesh.cas.digest import Digest
from mesh.cas.store import LocalStore
from mesh.cluster.peering import Peering
from mesh.errors import InputMissing, InvalidJob, InvalidUrl, NoFreeSlot
from mesh.sched.events import JobEvents
from mesh.sched.jobevents import JobEvent
from mesh.sched.jobs import JobSpec, JobState, parse_job
from mesh.sched.scheduler import Scheduler
from mesh.urls import peer_url


class JobIntake:
    """The job service of a node: submissions, offers, and the jobs' state (mesh.api.services.Jobs)."""

    def __init__(
        self, scheduler: Scheduler, store: LocalStore, peering: Peering, default_executor: Callable[[], str]
    ) -> None:
        self.scheduler = scheduler
        self.store = store
        self.peering = peering
        self._default_executor = default_executor

    @property
    def default_executor(self) -> str:
        """The executor of a task that names none (the node's: sandbox where it has it)."""
        return self._default_executor()

    async def submit(self, spec: JobSpec) -> str:
        """Accept a client's job: its id. InputMissing when an input is nowhere in the mesh."""
        inputs = {task.input for task in spec.tasks if task.input is not None}  # often one for the whole job
        for root in sorted(inputs, key=str):
            if not self.store.has(root) and not await self.peering.fetch_root(root, self.store):
                raise InputMissing(str(root))
        stdins = {task.stdin for task in spec.tasks if task.stdin is not None}
        blobs = [(d, "stdin blob") for d in sorted(stdins, key=str)]
        blobs += [(d, "times manifest") for d in sorted(_times_of(spec), key=str)]  # they travel with the input
        for digest, what in blobs:
            if not self.store.has(digest) and not await self.peering.fetch_from_peers(digest, self.store):
                raise InputMissing(str(digest), what)
        return self.scheduler.submit(spec)

    async def take_offer(self, spec: JobSpec, source: str | None) -> str:
        """Accept a task offered by the peer whose URL is ``source``."""
        if not spec.pinned or len(spec.tasks) != 1:
            raise InvalidJob("an offer is a pinned job of one task")
        if not self.scheduler.takes_offer():
            raise NoFreeSlot("no free slot: offer the task to another node")
        if source is None:
            raise InvalidJob("an offer names the offering node's URL in 'source'")
        try:
            source = peer_url(source)
        except InvalidUrl as exc:
            raise InvalidJob(f"an offer names the offering node's URL in 'source': {exc}") from None
        root: Digest | None = spec.tasks[0].input
        if root is not None and not self.peering.is_complete(root, self.store):
            await self.peering.fetch_tree(source, root, self.store)
        await self.peering.fetch_blobs(source, sorted(_blobs_of(spec), key=str), self.store)
        self.scheduler.offer_arrived()  # submitted next: the task is in the queue from now on
        return self.scheduler.submit(spec)

    async def rerun(self, job_id: str, task: str | None, *, no_cache: bool = False) -> str:
        """Run job ``job_id`` again as a new job (every task, or ``task`` and what depends on it:
        mesh.sched.rerun): the new job's id. JobNotFound, RerunRefused, InputMissing."""
        return await self.submit(self.rerun_spec(job_id, task, no_cache=no_cache))

    def rerun_spec(self, job_id: str, task: str | None, *, no_cache: bool = False) -> JobSpec:
        """The job that re-runs job ``job_id`` (not submitted: a project's build submits it)."""
        wire = self.scheduler.rerun_wire(job_id, task, no_cache=no_cache)
        return parse_job(wire, default_executor=self.default_executor)

    def status(self, job_id: str) -> dict[str, Any]:
        """A job with its tasks, states and results (JobNotFound: 404)."""
        return self.scheduler.job_status(job_id)

    def page(self, limit: int, before: int | None, state: JobState | None) -> tuple[list[dict[str, Any]], int | None]:
        """Jobs newest first, and the ``before`` of the next page (None on the last)."""
        rows = self.scheduler.db.jobs(limit=limit, before=before, state=state)
        jobs = [row.to_wire() for row in rows]  # a job's row says "running" until it has finished
        return jobs, rows[-1].seq if len(rows) == limit else None

    def cancel(self, job_id: str) -> None:
        self.scheduler.cancel(job_id)

    def events(self, job_id: str) -> JobEvents | None:
        """The job's live event log, or None once the node no longer holds it."""
        return self.scheduler.events(job_id)

    def summary(self, job_id: str) -> list[JobEvent]:
        """How the job and its tasks ended, as events, once its live log is gone."""
        return self.scheduler.summary(job_id)

    def give(self, thief: str, slots: int) -> int:
        """Offer up to ``slots`` queued tasks to the idle peer at ``thief``: how many went."""
        return self.scheduler.give(thief, slots)


def _times_of(spec: JobSpec) -> set[Digest]:
    """The times manifests (mesh.cas.times) the job's tasks name."""
    return {task.parsed.times for task in spec.tasks if task.parsed is not None and task.parsed.times is not None}


def _blobs_of(spec: JobSpec) -> set[Digest]:
    """The plain blobs that travel with the job's inputs: times manifests and stdins."""
    return _times_of(spec) | {task.stdin for task in spec.tasks if task.stdin is not None}
