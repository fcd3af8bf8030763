"""The local scheduler: accepts jobs, answers from the action cache, runs ready tasks in slots.

The node that accepts a job coordinates it: the job and its tasks are persisted
before the submission is acknowledged; ready tasks are first looked up in the
action cache (a hit finishes the task at once, without a slot), the rest wait
in a FIFO queue for one of ``slots`` slots and run through the :class:`Runner`.
Every state change is written to the state database before it is announced,
so a node killed at any moment resumes where it was: finished results are
kept, queued and interrupted tasks run again (their attempt count says so).

With peers (mesh.cluster.peering), a ready task goes to the best node placement finds
(mesh.sched.placement): this node, or a peer offered the task. A task no node
has room for waits in the queue. Two things move it on: this node's own slots
and offers ending, and **work stealing**: a node with free slots and nothing
queued of its own asks the peer whose gossiped queue is longest to hand over
queued, not yet started tasks (``POST /v1/steal``). The victim picks the ones
whose requirements the thief meets and offers them to it at once through the
ordinary offer path, so the job's coordinator keeps its record, its events and
the failover of every task it gave away. An idle node thus gets work as soon as
it is idle, not a gossip round later, when its peers learn of its free slots.

**A database that takes no commit** (its disk is full) does not stop the node: a submission
or a cancel is refused (StateFull: HTTP 507) and changes nothing, while the scheduler's own
steps stand in memory and their writes wait, retried until they go in (mesh.sched.recording).

**One item fails alone.** An unexpected error (a bug, ours or a library's) while placing
or running one task fails that task with the error as its reason; one met while moving its
job on gives that job up (failed, with the reason); one while looking for tasks to steal
ends that look. Each is one log line, and the node goes on with the rest.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, Protocol

import trio

from mesh.cas.digest import Digest
from mesh.cas.overlay import Blobs
from mesh.errors import (
    BlobNotFound,
    CodecError,
    InvalidJob,
    JobNotFound,
    MeshError,
    NodeError,
    OverlayConflict,
    PeerDeclined,
    StateError,
    StoreError,
    describe,
)
from mesh.exec.action import Action, ActionResult
from mesh.exec.toolchain import Toolchain
from mesh.sched import overlays, rerun
from mesh.sched.actioncache import ActionCache, LocalActionCache, MissReasons
from mesh.sched.events import EventLogs, JobEvents
from mesh.sched.inflight import Claims, InFlight
from mesh.sched.jobevents import (
    JobEvent,
    JobFinished,
    JobSubmitted,
    Output,
    TaskFinished,
    TaskRequeued,
    TaskStarted,
    stream_named,
)
from mesh.sched.jobs import FINAL_TASK_STATES, JobSpec, JobState, TaskRecord, TaskState, decide, job_state
from mesh.sched.lookup import CacheLookup, Found, Runs
from mesh.sched.placement import NodeView, Unplaceable, rank, unmet
from mesh.sched.recording import Recorder
from mesh.sched.retention import Retention
from mesh.sched.statedb import JobRow, StateDB
from mesh.text import encodable

log = logging.getLogger("mesh.sched")

OutputSink = Callable[[str, bytes], Any]
#: Times a task is started (here or on peers) before a lost peer fails it instead of retrying.
MAX_ATTEMPTS = 3
#: Seconds a peer that declined an offer is not offered another.
DECLINE_COOLDOWN = 0.25
#: Seconds after our last offer to a peer (or its end) during which our count of its busy slots
#: is trusted over the gossiped one.
OWN_COUNT_WINDOW = 2.0
#: Seconds a peer lost mid-task gets no offers (longer than gossip takes to declare it dead).
LOST_COOLDOWN = 10.0
#: Finished jobs kept in memory, so status requests right after the end need no database read ...
RECENT_JOBS = 256
#: ... and the most tasks they may hold together: a job of 10,000 tasks holds ~20 MB in memory
#: (measured: 30 such jobs grew a node by 660 MB), so a count of jobs alone bounds nothing.
#: Older jobs are read from the database, as after a restart.
RECENT_TASKS = 20_000
#: Seconds between an idle node's looks for a peer with queued tasks to steal from.
STEAL_INTERVAL = 0.2
#: Seconds a peer that had nothing to give is not asked again.
STEAL_BACKOFF = 1.0
#: Seconds the slots promised to a victim's offers stay reserved while the offers arrive.
STEAL_HOLD = 2.0
#: Tasks a peer takes beyond its free slots, to start the moment a slot frees, while the
#: coordinator's queue holds more than twice the slots of the whole mesh. Without it each
#: remote task waits for its predecessor's result to reach the coordinator and a new
#: offer to come back: 12-16 ms median between tasks in a peer's slot, 4-7 ms with it,
#: against 3-4 ms in a local slot (bench/mesh.py part b). Only while the queue is long:
#: near the end of a job a task held by a busy peer would wait while another node idles.
#: Measured (bench/mesh.py part b, 3 x 4 slots, medians of 5 rounds, alternating): with
#: 1 held task 2.216-2.218 s, with 2 2.199-2.200 s; 4 was no better than 2. (Before task
#: directories were reused, when a peer's tasks cost it more CPU, 2 and 4 were slower than 1.)
PREFETCH = 2


class TaskRunner(Runs, Protocol):
    """What the scheduler needs of a runner (mesh.exec.runner.Runner): its run (mesh.sched.lookup.Runs)."""

    @property
    def executors(self) -> Mapping[str, object]:
        """The executors this node has, by the name actions use."""


class Remote(Protocol):
    """Running tasks on peers (mesh.cluster.peering): who may take one, and running it there."""

    def candidates(self) -> list[NodeView]:
        """The live peers, with their capabilities and load as last heard."""

    def is_complete(self, root: Digest, store: Any) -> bool:
        """Whether ``store`` holds all of snapshot ``root`` (no fetch of it under way or cut short)."""

    async def fetch_tree(self, source: str | None, root: Digest, store: Any) -> None:
        """Fetch what ``store`` lacks of snapshot ``root`` from peers."""

    async def fetch_blobs(self, source: str | None, digests: list[Digest], store: Any) -> None:
        """Fetch what ``store`` lacks of ``digests`` (plain blobs: a times manifest, a stdin) from peers."""

    async def locality(self, root: Digest, store: Any) -> dict[str, int]:
        """Bytes of snapshot ``root`` each peer (by URL) and this node (by id) already hold."""

    async def run_on(
        self,
        url: str,
        task_key: str,
        action: Action,
        on_output: OutputSink,
        on_cancel: Callable[[ActionResult], None] | None = None,
        *,
        no_cache: bool = False,
    ) -> ActionResult:
        """Offer the task to the peer at ``url`` and follow it to its result; cancelled, the
        task is cancelled there and what it wrote until then goes to ``on_cancel``.
        ``no_cache``: the peer neither answers it from its action cache nor records it there.

        Raises PeerDeclined when the peer has no room, NodeError/NodeUnreachable when it
        is lost; both leave the task to be placed again.
        """

    async def steal(self, url: str, slots: int) -> int:
        """Ask the peer at ``url`` to offer this node up to ``slots`` of its queued tasks;
        returns how many it is offering. Raises NodeError when the peer cannot be asked."""


class BlobCheck(Blobs, Protocol):
    """What the scheduler needs of the store: whether it holds a blob (the overlays of task
    outputs also read and put blobs: mesh.sched.overlays)."""

    def has(self, digest: Digest) -> bool: ...


@dataclass(frozen=True)
class SchedulerStatistics:
    slots: int
    busy: int
    queued: int
    running_jobs: int
    tasks_run: int
    cache_hits: int
    tasks_stolen: int = 0
    tasks_given: int = 0


@dataclass(eq=False)
class LiveJob:
    """A job the node is coordinating: its spec, task records and event log."""

    row: JobRow
    spec: JobSpec
    tasks: dict[str, TaskRecord]
    events: JobEvents
    scopes: dict[str, trio.CancelScope] = field(default_factory=dict)
    dependents: dict[str, list[str]] = field(default_factory=dict)
    #: Per task, its dependencies not yet final: a waiting task is decided when it reaches 0, so
    #: a task behind 10,000 others is looked at once, not once per dependency that finishes.
    pending: dict[str, int] = field(default_factory=dict)

    open_tasks: int = 0  # tasks not yet in a final state: the job ends when it reaches 0

    def __post_init__(self) -> None:
        self.open_tasks = sum(1 for t in self.tasks.values() if t.state not in FINAL_TASK_STATES)
        for task in self.spec.tasks:
            self.pending[task.name] = 0
            for dep in task.depends_on:
                self.dependents.setdefault(dep, []).append(task.name)
                if self.tasks[dep].state not in FINAL_TASK_STATES:
                    self.pending[task.name] += 1

    def uncached(self, task: TaskRecord) -> bool:
        """Whether ``task`` runs without the action cache: its job's ``no_cache``, or its own."""
        return self.spec.no_cache or task.spec.no_cache


def new_job_id() -> str:
    """20 hex digits: milliseconds since the epoch, then randomness (sortable, unguessable enough)."""
    return f"{int(time.time() * 1000):011x}{os.urandom(5).hex()[:9]}"


class Scheduler:
    """Slots, the ready queue and the life of every task of the jobs this node accepted."""

    def __init__(
        self,
        db: StateDB,
        runner: TaskRunner,
        store: BlobCheck,
        *,
        node_id: str,
        slots: int,
        capabilities: Mapping[str, str] | None = None,
        remote: Remote | None = None,
        holds_tree: Callable[[Digest], bool] | None = None,
        cache: ActionCache | None = None,
        toolchain: Toolchain | None = None,
        claims: Claims | None = None,
    ) -> None:
        if slots < 1:
            raise ValueError("a node needs at least one slot")
        self.db = db
        self.runner = runner
        self.store = store
        #: Whether a snapshot is whole in the store (a cache hit's output may have lost blobs
        #: to eviction; mesh.cas.space): by default, whether its root is.
        self.holds_tree = store.has if holds_tree is None else holds_tree
        self.node_id = node_id
        #: The action cache (by default this node's alone), what makes its keys, and the claims
        #: of keys across the mesh (None: a node alone), as a task's way through them.
        self.lookup = CacheLookup(
            cache or LocalActionCache(db, node_id=node_id, has=store.has, holds_tree=self.holds_tree),
            toolchain or Toolchain(),
            MissReasons(db),
            claims,
        )
        self._looking = 0  # tasks whose lookup waits for the engine or for peers
        self._lookups: dict[tuple[str, str], trio.CancelScope] = {}  # (job, task) -> its lookup, to cancel
        self._inflight: InFlight[tuple[str, str]] = InFlight()  # (job, task) by cache key
        self.slots = slots
        self.logs = EventLogs()
        self._live: dict[str, LiveJob] = {}
        self._recent: OrderedDict[str, LiveJob] = OrderedDict()  # finished: answers status without SQLite
        self._recent_tasks = 0  # tasks of the jobs in _recent
        self._ready: deque[tuple[str, str]] = deque()
        self._changed = trio.Event()
        self._busy = 0
        self._tasks_run = 0
        self._cache_hits = 0
        self.capabilities = dict(capabilities or {})
        self.capabilities.update({f"executor.{name}": "1" for name in runner.executors})
        self.remote = remote
        self._offered: dict[str, int] = {}  # peer url -> tasks offered and not yet finished
        self._declined: dict[str, float] = {}  # peer url -> until when it gets no offers
        self._offer_changed: dict[str, float] = {}  # peer url -> when an offer to it started or ended
        self._draining = False
        self._task_done = trio.Event()  # set (and replaced) whenever a running task ends
        self._recorder = Recorder(db)
        self._retention = Retention(db, self._forgotten)  # the finished jobs the database keeps
        self._nursery: trio.Nursery | None = None
        self._promised = 0  # offers stolen tasks are on their way here as
        self._promised_until = 0.0  # ... until this time (monotonic), when the promise lapses
        self._steal_backoff: dict[str, float] = {}  # victim url -> until when it is not asked
        self._tasks_stolen = 0  # tasks this node took from peers' queues
        self._tasks_given = 0  # tasks of this node's queue that peers took

    # -- service ------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Resume unfinished jobs, then dispatch ready tasks to slots until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._resume()
            nursery.start_soon(self._recorder.run)
            nursery.start_soon(self._retention.run)
            if self.remote is not None:
                nursery.start_soon(self._steal_loop)
            task_status.started()
            while True:
                while self._ready and not self._draining:
                    head = self._ready[0]
                    try:
                        if not await self._dispatch_head(nursery):
                            break  # nowhere has room: wait for a slot here or news of a peer
                    except Exception as exc:  # a bug placing one task fails that task, not the node
                        self._cannot_dispatch(head, exc)
                with trio.move_on_after(DECLINE_COOLDOWN if self._ready and self.remote else math.inf):
                    await self._changed.wait()
                self._changed = trio.Event()

    async def drain(self) -> None:
        """Stop starting tasks and wait until the running ones have finished (for shutdown)."""
        self._draining = True
        while self._busy:
            await self._task_done.wait()

    async def _dispatch_head(self, nursery: trio.Nursery) -> bool:
        """Start the task at the head of the queue where placement puts it (here, or offered to
        a peer); False when no node has room for it now."""
        job_id, name = self._ready[0]
        live = self._live.get(job_id)
        if live is None or live.tasks[name].state != "queued":
            self._ready.popleft()  # cancelled while it waited
            return True
        task = live.tasks[name]
        local: dict[str, int] = {}
        if self.remote is not None and not live.spec.pinned and task.action is not None:
            if self.remote.candidates():
                local = await self.remote.locality(task.action.input, self.store)
                if not self._ready or self._ready[0] != (job_id, name) or task.state != "queued":
                    return True  # the queue changed while we asked
        try:
            placed, where = self._place(task, pinned=live.spec.pinned, local=local)
        except Unplaceable as exc:
            self._ready.popleft()
            with self._recorder.step():
                self._finish(live, task, "failed", reason=str(exc))
            return True
        if not placed:
            return False
        self._ready.popleft()
        if where is None:
            self._busy += 1
        else:
            self._offered[where] = self._offered.get(where, 0) + 1
            self._offer_changed[where] = time.monotonic()
        nursery.start_soon(self._run_task, live, task, where)
        return True

    def _cannot_dispatch(self, head: tuple[str, str], exc: Exception) -> None:
        """A bug met placing the task ``head`` (job, name): the task fails with it, in one log
        line; if the bug struck while its end was being recorded, its job is given up."""
        if self._ready and self._ready[0] == head:
            self._ready.popleft()
        live = self._live.get(head[0])
        if live is None:
            return
        task = live.tasks[head[1]]
        if task.state != "queued":
            self._give_up(live, exc)
            return
        reason = f"the node could not place the task: {describe(exc)}"
        log.error("task %s of job %s failed: %s", task.name, live.row.id, reason)
        try:
            with self._recorder.step():
                self._finish(live, task, "failed", reason=reason)
        except Exception as again:
            self._give_up(live, again)

    def _wake(self) -> None:
        self._changed.set()

    def _resume(self) -> None:
        """Load the jobs a previous run of this node left unfinished and carry on with them.

        A job that cannot be resumed (a spec this version no longer reads, a damaged row,
        a bug) is failed in the database with the reason and logged in one line, and the
        others go on: the node starts and serves whatever its state holds, and never dies
        again on the next start over the same job. A database that takes no commit (a full
        disk) does not stop the start either: the resumed jobs go on, and their writes wait
        (mesh.sched.recording), the failure of a job that could not be resumed with them; a node
        restarted before they are recorded tries that job again.
        """
        with self._recorder.step():
            for job_id in self.db.unfinished_job_ids():
                try:
                    with self.db.savepoint():  # undoes this job's writes, and only them, if it raises
                        self._resume_job(self.db.job(job_id))  # its row is read here: it may be damaged
                except Exception as exc:
                    self._forget(job_id)
                    reason = f"the node could not resume this job: {describe(exc)}"
                    self.db.fail_job(job_id, reason)
                    log.error("job %s failed: %s", job_id, reason)

    def _resume_job(self, row: JobRow) -> None:
        spec = self.db.job_spec(row.id)
        records = self.db.tasks(row.id, spec)
        live = LiveJob(row, spec, {t.name: t for t in records}, self.logs.open(row.id))
        self._live[row.id] = live
        interrupted = [t for t in records if t.state == "running"]
        for task in interrupted:
            task.state, task.started_at = "queued", None
            task.reason = f"interrupted by a node restart (attempt {task.attempts})"
        self.db.set_task_states(interrupted)
        if row.cancelled:
            self._cancel_live(live)
            return
        self._advance_all(live, _as_they_are(records))

    # -- submission -------------------------------------------------------------

    def submit(self, spec: JobSpec) -> str:
        """Persist a validated job and start what is ready; returns the job id.

        Tasks whose every dependency is met are looked up in the action cache
        straight away, so a job that is all cache hits is finished on return.
        All or nothing: when anything raises on the way, the job's writes are rolled
        back and nothing of it stays in memory either, so no job lives here without
        its row (the exception goes on to the caller).
        """
        job_id = new_job_id()
        cache_hits = self._cache_hits
        try:
            with self.db.batch():  # one commit for the job, its tasks and any cache hits
                self._submit(job_id, spec)
        except BaseException:
            self._forget(job_id)
            self._cache_hits = cache_hits
            raise
        return job_id

    def _submit(self, job_id: str, spec: JobSpec) -> None:
        initial: dict[str, TaskState] = {t.name: ("waiting" if t.depends_on else "queued") for t in spec.tasks}
        row = self.db.add_job(job_id, spec, initial)
        records = {
            t.name: TaskRecord(job=job_id, name=t.name, index=i, spec=t, state=initial[t.name])
            for i, t in enumerate(spec.tasks)
        }
        live = LiveJob(row, spec, records, self.logs.open(job_id))
        self._live[job_id] = live
        live.events.emit(JobSubmitted(job=job_id, tasks=tuple(t.name for t in spec.tasks)))
        self._advance_all(live, _as_they_are(records.values()))

    def _forget(self, job_id: str) -> None:
        """Drop every trace of a job from memory (when its database writes were rolled back),
        and its writes that wait for a commit."""
        self.db.forget(job_id)
        self._live.pop(job_id, None)
        recent = self._recent.pop(job_id, None)
        if recent is not None:
            self._recent_tasks -= len(recent.tasks)
        self.logs.forget(job_id)
        self._ready = deque(key for key in self._ready if key[0] != job_id)
        self._inflight.forget(lambda item: item[0] != job_id)

    def _make_ready(self, live: LiveJob, task: TaskRecord, *, fetched: bool = False) -> bool:
        """A task whose dependencies are met: answer it from the cache or queue it for a slot.

        Returns True when that settled it (a cache hit, or a task that cannot run here):
        its dependents are then the caller's to move on (_advance_all). A task that overlays
        outputs this node lacks fetches them first (:meth:`_fetch_layers`), queued meanwhile.
        """
        try:
            action = self._action(live, task)
            if task.spec.overlay:
                laid = overlays.layers(task, live.tasks)
                if not fetched and self._fetch_first(live, task, action, laid):
                    return False
                action = overlays.overlaid(self.store, action, laid)
        except (InvalidJob, CodecError, OverlayConflict, BlobNotFound) as exc:
            self._finish(live, task, "failed", reason=str(exc), move_on=False)
            return True
        if action.executor not in self.runner.executors and (self.remote is None or live.spec.pinned):
            have = ", ".join(sorted(self.runner.executors)) or "none"
            reason = f"this node has no {action.executor!r} executor (it has: {have})"
            self._finish(live, task, "failed", reason=reason, move_on=False)
            return True
        task.action = action
        found = Found(note="not looked up: the job asked for no cache")
        if not live.uncached(task):
            found = self.lookup.here(action, pinned=live.spec.pinned)
            if found.hit is not None:
                self._cache_hits += 1
                self._finish(live, task, "succeeded", result=found.hit, move_on=False)
                return True
        task.cache_note = found.note
        if task.state != "queued":
            task.state = "queued"
            self.db.set_task_state(task)
        if found.further and self._nursery is not None:
            self._looking += 1
            self._nursery.start_soon(self._look_further, live, task, action, found)
            return False
        if found.key is not None and not self._lead(live, task, found.key):
            return False  # it waits for the task that runs the same action
        self._ready.append((live.row.id, task.name))
        self._wake()
        return False

    def _fetch_first(self, live: LiveJob, task: TaskRecord, action: Action, laid: list[tuple[str, Digest]]) -> bool:
        """Start fetching what the overlay of ``task`` needs and this node lacks, from peers
        (True: the task is queued meanwhile; :meth:`_fetch_layers` makes it ready after)."""
        if self.remote is None or self._nursery is None:
            return False
        remote = self.remote
        trees = [tree for tree in overlays.trees(action, laid) if not remote.is_complete(tree, self.store)]
        blobs = [blob for blob in (action.times,) if blob is not None and not self.store.has(blob)]
        if not trees and not blobs:
            return False
        if task.state != "queued":
            task.state = "queued"
            self.db.set_task_state(task)
        self._nursery.start_soon(self._fetch_layers, live, task, trees, blobs)
        return True

    async def _fetch_layers(self, live: LiveJob, task: TaskRecord, trees: list[Digest], blobs: list[Digest]) -> None:
        """Fetch the snapshots (and times manifest) a task's overlay needs from peers, then make
        it ready; a fetch that fails fails the task, saying which."""
        assert self.remote is not None
        failure = None
        try:
            for tree in trees:
                await self.remote.fetch_tree(None, tree, self.store)
            if blobs:
                await self.remote.fetch_blobs(None, blobs, self.store)
        except MeshError as exc:
            failure = f"fetching the snapshots to overlay from peers failed: {exc}"
        if live.row.id not in self._live or task.state != "queued":
            return  # cancelled meanwhile
        try:
            with self._recorder.step():
                if failure is not None:
                    self._finish(live, task, "failed", reason=failure)
                elif self._make_ready(live, task, fetched=True):
                    self._advance_all(live, self._unblocked(live, task))
        except Exception as exc:  # a bug recording it: its job is given up, not the node
            self._give_up(live, exc)

    def _action(self, live: LiveJob, task: TaskRecord) -> Action:
        source = task.spec.input_task
        if source is None:
            return task.spec.action()
        upstream = live.tasks[source]
        if upstream.result is None or upstream.result.output is None:
            raise InvalidJob(f"input task {source!r} produced no output snapshot")
        return task.spec.action(upstream.result.output)

    # -- the action cache (mesh.sched.lookup) ----------------------------------------

    async def _look_further(self, live: LiveJob, task: TaskRecord, action: Action, found: Found) -> None:
        """The rest of a queued task's lookup, in its own trio task (others go on meanwhile):
        the engine and the peers (CacheLookup.further); on a miss, the lead of its key here
        (or a wait for the task leading it) and the mesh's claim of it. A hit finishes the
        task; a miss puts it in the ready queue. A cancel meanwhile ends the lookup at once.
        A bug looking it up is logged and the task runs."""
        hit = None
        with trio.CancelScope() as scope:
            self._lookups[(live.row.id, task.name)] = scope
            try:
                found = await self.lookup.further(action, found, pinned=live.spec.pinned)
                task.cache_note = found.note or task.cache_note
                hit = found.hit
                if hit is None and found.key is not None:
                    if not self._lead(live, task, found.key):
                        return  # it waits for the task here that runs the same action
                    hit, task.claimed_by = await self.lookup.claim(action, found.key, pinned=live.spec.pinned)
            except Exception as exc:
                log.error("looking task %s of job %s up failed: %s", task.name, live.row.id, describe(exc))
            finally:
                self._looking -= 1
                self._lookups.pop((live.row.id, task.name), None)
        if live.row.id not in self._live or task.state != "queued":
            return  # cancelled (or its job given up) while it was looked up
        try:
            with self._recorder.step():
                if hit is None:
                    self._ready.append((live.row.id, task.name))
                    self._wake()
                else:
                    self._cache_hits += 1
                    self._finish(live, task, "succeeded", result=hit)
        except Exception as exc:  # a bug recording it: its job is given up, not the node
            self._give_up(live, exc)

    # -- one run for identical work in flight (mesh.sched.inflight) ------------------------

    def _lead(self, live: LiveJob, task: TaskRecord, key: Digest) -> bool:
        """Make ``task`` the one that runs ``key`` here (True), or, when another task runs it
        already, one that waits for its result (False; :meth:`_lead_ended` settles it)."""
        if self._inflight.lead_or_wait(key, (live.row.id, task.name)) is None:
            task.leads = key
            return True
        return False

    def _lead_ended(self, live: LiveJob, task: TaskRecord, state: str, result: ActionResult | None) -> None:
        """A task that led its cache key ended: the mesh's claim of it is released, and the
        tasks waiting here take its result when it succeeded (else the first of them runs)."""
        key, task.leads = task.leads, None
        if key is None:
            return
        waiters = self._inflight.end(key, (live.row.id, task.name))
        succeeded = state == "succeeded" and result is not None
        if self._nursery is None:
            return
        if task.claimed_by is not None:
            task.claimed_by = None
            self._nursery.start_soon(partial(self.lookup.release, key, succeeded=succeeded))
        if waiters:
            shared = None
            if succeeded and result is not None:
                note = f"waited for task {task.name} of job {live.row.id}, which ran it at the same time"
                shared = replace(result, cached=True, cache_note=note)
            self._nursery.start_soon(self._settle_waiters, key, waiters, shared)

    async def _settle_waiters(self, key: Digest, waiters: list[tuple[str, str]], result: ActionResult | None) -> None:
        """The tasks that waited for ``key``'s leader take its ``result``; or, without one,
        the first that is still queued leads (and queues), and the rest wait for it."""
        for job_id, name in waiters:
            live = self._live.get(job_id)
            task = None if live is None else live.tasks[name]
            if live is None or task is None or task.state != "queued":
                continue  # cancelled (or its job ended) while it waited
            try:
                with self._recorder.step():
                    if result is not None:
                        self._cache_hits += 1
                        self._finish(live, task, "succeeded", result=result)
                    elif self._lead(live, task, key):
                        self._ready.append((live.row.id, task.name))
                        self._wake()
            except Exception as exc:  # a bug recording it: that job is given up, not the node
                self._give_up(live, exc)

    # -- running ------------------------------------------------------------------

    def _place(
        self, task: TaskRecord, *, pinned: bool = False, local: dict[str, int] | None = None
    ) -> tuple[bool, str | None]:
        """Where the task runs: (True, None) here, (True, URL) on that peer, (False, None) when
        nowhere has room now.

        Raises Unplaceable when no live node meets its requirements.
        """
        views = [
            NodeView(
                node=self.node_id,
                capabilities=self.capabilities,
                slots=self.slots,
                busy=self._busy,
                queued=len(self._ready),
            )
        ]
        now = time.monotonic()
        peers = self.remote.candidates() if self.remote and not pinned else []
        prefetch = PREFETCH if len(self._ready) > 2 * (self.slots + sum(p.slots for p in peers)) else 0
        for peer in peers:
            url = peer.node  # candidates() name peers by URL
            if self._declined.get(url, 0) > now:
                # Not offered anything for now, but still a node the task may wait for.
                views.append(replace(peer, busy=max(peer.slots, peer.busy)))
                continue
            # Gossip reports a peer's load up to a round late. While we are feeding it tasks
            # our own count of them is the fresher figure (a peer that other coordinators
            # filled declines, and is skipped for DECLINE_COOLDOWN).
            ours = self._offered.get(url, 0)
            recent = now - self._offer_changed.get(url, -math.inf) < OWN_COUNT_WINDOW
            busy = ours if recent else max(peer.busy, ours)
            views.append(replace(peer, slots=peer.slots + prefetch, busy=busy))
        requirements = requirements_of(task.action) if task.action else {}
        image = image_key(task.action) if task.action else None
        if image is not None and any(v.capabilities.get(image) == "1" for v in views):
            requirements[image] = "1"  # where some node holds the image, only those run it
        best = rank(requirements, views, local)[0]
        if best.free <= 0:
            return False, None
        return True, None if best.node == self.node_id else best.node

    # -- work stealing -------------------------------------------------------------

    def give(self, thief: str, slots: int) -> int:
        """A peer (the live peer at URL ``thief``) with ``slots`` free slots asks for queued
        tasks: offer it up to that many whose requirements it meets, oldest first; returns
        how many. Pinned jobs, and everything while draining, stay here; so does everything
        while this node is feeding the thief itself (an offer to it started or ended within
        OWN_COUNT_WINDOW)."""
        if self._draining or self._nursery is None or self.remote is None or slots < 1:
            return 0
        view = next((p for p in self.remote.candidates() if p.node == thief), None)
        if view is None:
            return 0  # not a live peer as far as this node knows
        if time.monotonic() - self._offer_changed.get(thief, -math.inf) < OWN_COUNT_WINDOW:
            # This node is feeding the thief already and hears of its free slots first-hand (an
            # offer ending): its own dispatch fills them, and giving too would overbook the thief.
            return 0
        given: list[tuple[LiveJob, TaskRecord]] = []
        kept: deque[tuple[str, str]] = deque()
        for key in self._ready:
            live = self._live.get(key[0])
            task = None if live is None else live.tasks[key[1]]
            if live is None or task is None or task.state != "queued":
                continue  # cancelled while it waited
            if (
                len(given) < slots
                and not live.spec.pinned
                and task.action is not None
                and not unmet(requirements_of(task.action), view.capabilities)
                and view.capabilities.get(image_key(task.action) or "", "1") == "1"
            ):
                given.append((live, task))
            else:
                kept.append(key)
        if not given:
            return 0
        self._ready = kept
        self._offered[thief] = self._offered.get(thief, 0) + len(given)
        self._offer_changed[thief] = time.monotonic()
        self._tasks_given += len(given)
        for live, task in given:
            self._nursery.start_soon(self._run_task, live, task, thief, True)
        return len(given)

    def _room_to_steal(self) -> int:
        """Slots free here that nothing queued or promised will take."""
        if time.monotonic() > self._promised_until:
            self._promised = 0
        return self.slots - self._busy - len(self._ready) - self._promised

    async def _steal_loop(self) -> None:
        """While this node has free slots and an empty queue, take queued tasks from the peer
        with the longest queue (as gossip says), one peer at a time. A look that fails on a
        bug is logged in one line and the next one is made as usual."""
        while True:
            with trio.move_on_after(STEAL_INTERVAL):
                await self._task_done.wait()
            try:
                await self._steal()
            except Exception as exc:
                log.error("looking for tasks to steal failed: %s", describe(exc))

    async def _steal(self) -> None:
        assert self.remote is not None
        room = self._room_to_steal()
        if room <= 0 or self._draining:
            return
        now = time.monotonic()
        victims = sorted(
            (p for p in self.remote.candidates() if p.queued > 0 and self._steal_backoff.get(p.node, 0) <= now),
            key=lambda p: (-p.queued, p.node),
        )
        for victim in victims:
            try:
                got = await self.remote.steal(victim.node, room)
            except MeshError:
                got = 0
            if got <= 0:
                self._steal_backoff[victim.node] = time.monotonic() + STEAL_BACKOFF
                continue
            self._tasks_stolen += got
            self._promised += got
            self._promised_until = time.monotonic() + STEAL_HOLD
            break

    def offer_arrived(self) -> None:
        """An offered task was accepted here: one promised slot is taken by it."""
        self._promised = max(0, self._promised - 1)

    async def _run_task(self, live: LiveJob, task: TaskRecord, where: str | None = None, stolen: bool = False) -> None:
        """Run one queued task in a slot here (``where`` None) or on the peer at ``where``
        (``stolen``: that peer asked for it), and record how it ended.

        A task no longer queued when this begins does not run: it was cancelled after its
        dispatch and before this began (the same tick), and is recorded so already. An
        unexpected error running the task fails it with that reason (logged in one line); one
        met while recording it gives its job up (:meth:`_give_up`). The node goes on.
        """
        try:
            if task.state != "queued":
                return  # the slot (or the offer) it was dispatched with is released below
            task.state, task.started_at, task.reason = "running", time.time(), None
            task.attempts += 1
            self._recorder.mark_running(task)
            live.events.emit(
                TaskStarted(task=task.name, node=where or self.node_id, attempt=task.attempts, stolen=stolen)
            )

            offsets = {"stdout": 0, "stderr": 0}

            async def on_output(stream: str, data: bytes) -> None:
                live.events.emit(Output(task=task.name, stream=stream_named(stream), data=data, offset=offsets[stream]))
                offsets[stream] += len(data)

            result: ActionResult | None = None
            reason: str | None = None
            requeue = False
            killed: list[ActionResult] = []  # what a cancelled task wrote until the kill (the runner's)
            with trio.CancelScope() as scope:
                live.scopes[task.name] = scope
                try:
                    action = task.action or self._action(live, task)
                    if where is None:
                        result = await self._run_here(
                            action, on_output, cache=not live.uncached(task), on_cancel=killed.append
                        )
                    else:
                        assert self.remote is not None
                        key = f"{live.row.id}/{task.name}/{task.attempts}"
                        result = await self.remote.run_on(
                            where, key, action, on_output, killed.append, no_cache=live.uncached(task)
                        )
                except PeerDeclined:
                    self._declined[where or ""] = time.monotonic() + DECLINE_COOLDOWN
                    task.attempts -= 1
                    requeue = True
                except NodeError as exc:
                    if where is not None:
                        self._declined[where] = time.monotonic() + LOST_COOLDOWN
                    if where is not None and task.attempts < MAX_ATTEMPTS:
                        requeue, reason = True, f"peer {where} was lost ({exc}); placing it again"
                    else:
                        reason = str(exc)
                except MeshError as exc:
                    reason = str(exc)
                except OSError as exc:
                    reason = f"the node could not run the task: {exc}"
                except Exception as exc:  # a bug, ours or a library's: this task fails, not the node
                    reason = f"the node could not run the task: {describe(exc)}"
                    log.error("task %s of job %s failed: %s", task.name, live.row.id, reason)
            live.scopes.pop(task.name, None)
            if task.state != "running":
                return  # its job was given up meanwhile
            with self._recorder.step():
                if requeue and not scope.cancelled_caught:
                    self._requeue(live, task, reason)
                    return
                self._tasks_run += 1
                if scope.cancelled_caught:  # its output until the kill is kept, as a timed-out task's
                    partial = replace(killed[0], cache_note=task.cache_note) if killed else None
                    self._finish(live, task, "cancelled", reason="cancelled", result=partial)
                elif result is None:
                    self._finish(live, task, "failed", reason=reason)
                else:
                    if not result.cached:
                        result = replace(result, cache_note=task.cache_note)
                    if result.success and not live.uncached(task) and result.cache_key is not None:
                        self.lookup.cache.put(result.cache_key, result)  # under the key of the node that ran it
                    self._finish(
                        live, task, "succeeded" if result.success else "failed", result=result, reason=_why(result)
                    )
        except Exception as exc:  # a bug recording the task: its job is given up, not the node
            self._give_up(live, exc)
        finally:
            if where is None:
                self._busy -= 1
            else:
                self._offered[where] -= 1
                self._offer_changed[where] = time.monotonic()
            self._task_done.set()
            self._task_done = trio.Event()
            self._wake()

    async def _run_here(
        self,
        action: Action,
        on_output: OutputSink,
        *,
        cache: bool,
        on_cancel: Callable[[ActionResult], None] | None = None,
    ) -> ActionResult:
        """Run ``action`` in a slot of this node, its input made complete from peers first
        (through the cache's lookup, which keys the result: mesh.sched.lookup).

        An input blob that the runner finds missing or damaged before the task starts (the
        store quarantines a damaged one: mesh.cas.store, mesh.cas.verified) is fetched again
        from the peers that hold it, once, and the task started again; without peers, or
        when none has it, the task fails with the runner's reason, which names the blob.
        """
        if self.remote is not None and not self.remote.is_complete(action.input, self.store):
            await self.remote.fetch_tree(None, action.input, self.store)
        if self.remote is not None:  # they travel with the input
            wanted = [blob for blob in (action.times, action.stdin) if blob is not None]
            if wanted:
                await self.remote.fetch_blobs(None, wanted, self.store)
        try:
            return await self.lookup.run(self.runner, action, on_output, cache=cache, on_cancel=on_cancel)
        except BlobNotFound as exc:
            if self.remote is None:
                raise
            log.info("fetching input %s again from peers: %s", action.input, exc)
            try:
                await self.remote.fetch_tree(None, action.input, self.store)
            except BlobNotFound as lost:
                raise StoreError(f"{exc}; no live peer holds {lost.digest}") from None
            except MeshError as fetch_error:
                raise StoreError(f"{exc}; it could not be fetched again from peers: {fetch_error}") from None
        return await self.lookup.run(self.runner, action, on_output, cache=cache, on_cancel=on_cancel)

    def _requeue(self, live: LiveJob, task: TaskRecord, reason: str | None) -> None:
        """Put a task that did not run to the end back at the head of the queue."""
        task.state, task.reason, task.started_at = "queued", reason, None
        self.db.set_task_state(task)
        if reason:
            live.events.emit(TaskRequeued(task=task.name, reason=reason))
        self._ready.appendleft((live.row.id, task.name))

    def _finish(
        self,
        live: LiveJob,
        task: TaskRecord,
        state: TaskState,
        *,
        result: ActionResult | None = None,
        reason: str | None = None,
        move_on: bool = True,
    ) -> None:
        """Record a task's final state, announce it, and move on what waited for it; without
        ``move_on`` that is the caller's (_advance_all), who is already moving tasks on.

        Its reason and its result's error are made encodable (mesh.text): they may name a file
        the task made, in bytes that are not UTF-8, and are stored and sent as they are kept."""
        reason = None if reason is None else encodable(reason)
        if result is not None and result.error is not None:
            result = replace(result, error=encodable(result.error))
        if task.state not in FINAL_TASK_STATES:
            live.open_tasks -= 1
            for name in live.dependents.get(task.name, ()):
                live.pending[name] -= 1
        task.state, task.result, task.reason = state, result, reason
        task.finished_at = time.time()
        self.db.set_task_state(task)
        lookup = self._lookups.pop((live.row.id, task.name), None)
        if lookup is not None:
            lookup.cancel()  # a cancel ends its lookup (or its wait for a claim) at once
        self._lead_ended(live, task, state, result)
        live.events.emit(TaskFinished(task=task.name, state=state, reason=reason, result=result))
        if move_on:
            self._advance_all(live, self._unblocked(live, task))

    def _advance_all(self, live: LiveJob, tasks: Iterable[TaskRecord]) -> None:
        """Move ``tasks`` on (:meth:`_advance`), and the dependents of each one that this
        settles, depth first, before the next of ``tasks``; then end the job if nothing of it
        is left open.

        A loop over a stack of iterators, one entry per settled task whose dependents are
        being moved on, not recursion: a failed head skips a whole chain at once, and a
        chain of cache hits finishes at once, so a chain of MAX_TASKS tasks is that deep.
        As recursion (two or three Python frames per task) it overflowed the interpreter's
        stack at a few hundred tasks and took the node down, at submit or at every restart.
        Depth first, so tasks settle and their events come in the order the recursion made.
        """
        stack: list[Iterator[TaskRecord]] = [iter(tasks)]
        while stack:
            task = next(stack[-1], None)
            if task is None:
                stack.pop()
            elif self._advance(live, task):
                stack.append(self._unblocked(live, task))
        self._maybe_finish(live)

    def _advance(self, live: LiveJob, task: TaskRecord) -> bool:
        """A queued task is made ready; a waiting one whose dependencies are all final is made
        ready or skipped, as its ``when`` says. True when that settled the task."""
        if task.state == "waiting":
            if live.pending[task.name]:
                return False
            verdict = decide(task.spec.when, [live.tasks[d].state for d in task.spec.depends_on])
            if verdict == "skipped":
                self._finish(live, task, "skipped", reason=f"'when: {task.spec.when}' does not hold", move_on=False)
                return True
        elif task.state != "queued":
            return False
        return self._make_ready(live, task)

    def _unblocked(self, live: LiveJob, task: TaskRecord) -> Iterator[TaskRecord]:
        """The dependents of a settled ``task`` that wait for nothing more, each looked at when
        its turn comes (an earlier one's dependents may have settled it meanwhile)."""
        for name in live.dependents.get(task.name, ()):
            dependent = live.tasks[name]
            if dependent.state == "waiting" and not live.pending[name]:
                yield dependent

    def _maybe_finish(self, live: LiveJob) -> None:
        if live.open_tasks or live.row.id not in self._live:
            return
        state = job_state([t.state for t in live.tasks.values()], live.row.cancelled)
        self._retire(live, state, self.db.finish_job(live.row.id, state))

    def _retire(self, live: LiveJob, state: JobState, finished_at: float, reason: str | None = None) -> None:
        """A job ended: from the live jobs to the recent ones, and its followers are told."""
        self._live.pop(live.row.id, None)
        live.row = replace(live.row, state=state, finished_at=finished_at, reason=reason)
        self._recent[live.row.id] = live
        self._recent_tasks += len(live.tasks)
        while len(self._recent) > 1 and (len(self._recent) > RECENT_JOBS or self._recent_tasks > RECENT_TASKS):
            oldest = next(iter(self._recent))
            if self.db.unrecorded(oldest):
                break  # its writes wait (a full disk): the database cannot answer for it yet
            self._recent_tasks -= len(self._recent.pop(oldest).tasks)
        live.events.emit(JobFinished(job=live.row.id, state=state, reason=reason or None))
        self.logs.finish(live.row.id)
        self._retention.job_ended()

    def _forgotten(self, job_ids: list[str]) -> None:
        """Jobs deleted from the database (mesh.sched.retention): what memory holds of them goes
        too, so that they are unknown here as there (a node keeping fewer than RECENT_JOBS)."""
        for job_id in job_ids:
            recent = self._recent.pop(job_id, None)
            if recent is not None:
                self._recent_tasks -= len(recent.tasks)
            self.logs.forget(job_id)

    def _give_up(self, live: LiveJob, exc: Exception) -> None:
        """A bug met moving a job on, whose state in memory may now be half moved: the job fails
        with it as the reason (in memory, in one log line, and in the database in a commit of
        its own, with each task as it stands), its running tasks are stopped, and nothing more
        of it is decided. The node and the other jobs go on. Should that commit fail too, its
        writes wait like any others, and a node restarted meanwhile resumes the job."""
        reason = f"the node failed while moving this job on: {describe(exc)}"
        if live.row.id not in self._live:
            log.error("job %s, which had ended, met a failure: %s", live.row.id, reason)
            return
        log.error("job %s failed: %s", live.row.id, reason)
        now = time.time()
        for scope in live.scopes.values():
            scope.cancel()
        for task in live.tasks.values():
            if task.state not in FINAL_TASK_STATES:
                task.state, task.reason, task.finished_at = "failed", reason, now
            self._lead_ended(live, task, "failed", None)
        live.open_tasks = 0
        self._ready = deque(key for key in self._ready if key[0] != live.row.id)
        self._retire(live, "failed", now, reason)
        with self._recorder.step():
            self.db.fail_job(live.row.id, reason)
            self.db.set_task_states(live.tasks.values())  # each task as it stands here

    # -- cancel and queries -------------------------------------------------------

    def cancel(self, job_id: str) -> None:
        """Cancel a job: unstarted tasks are cancelled, running ones killed. Idempotent.

        Raises JobNotFound, and StateError (StateFull) when the cancel cannot be recorded:
        then nothing is cancelled."""
        live = self._live.get(job_id)
        if live is None:
            self.db.job(job_id)  # raises JobNotFound for an unknown id; a finished job stays as it is
            return
        self.db.mark_cancelled(job_id)  # its own commit first: a cancel that cannot be recorded (507) does nothing
        with self._recorder.step():
            self._cancel_live(live)

    def _cancel_live(self, live: LiveJob) -> None:
        live.row = replace(live.row, cancelled=True)
        for task in live.tasks.values():
            if task.state in ("waiting", "queued"):
                self._finish(live, task, "cancelled", reason="cancelled", move_on=False)  # so are its dependents
            elif task.state == "running" and task.name in live.scopes:
                live.scopes[task.name].cancel()  # _run_task records "cancelled" once the runner cleaned up
        self._maybe_finish(live)

    def rerun_wire(self, job_id: str, task: str | None, *, no_cache: bool = False) -> dict[str, Any]:
        """The wire form of a job that runs job ``job_id`` again: every task, or ``task`` and what
        depends on it with the inputs it had (mesh.sched.rerun). JobNotFound, RerunRefused."""
        live = self._live.get(job_id) or self._recent.get(job_id)
        spec = live.spec if live is not None else self.db.job_spec(job_id)
        if task is None:
            return rerun.rerun_job(job_id, spec, no_cache=no_cache)
        _, tasks = self._job(job_id)
        return rerun.rerun_task(job_id, spec, tasks, task, no_cache=no_cache)

    def job_status(self, job_id: str) -> dict[str, Any]:
        """The job and its tasks, as the API returns them."""
        row, tasks = self._job(job_id)
        status = row.to_wire()
        status["recorded"] = not self.db.unrecorded(job_id)
        status["tasks"] = [t.to_wire() for t in tasks]
        return status

    def summary(self, job_id: str) -> list[JobEvent]:
        """The events that tell how a job ended, for a follower that comes after its live log
        is gone: each task's end, then the job's, marked as a summary."""
        row, tasks = self._job(job_id)
        events: list[JobEvent] = [
            TaskFinished(seq=seq, task=t.name, state=t.state, reason=t.reason, result=t.result, summary=True)
            for seq, t in enumerate(tasks)
        ]
        events.append(JobFinished(seq=len(tasks), job=job_id, state=row.state, reason=row.reason, summary=True))
        return events

    def _job(self, job_id: str) -> tuple[JobRow, list[TaskRecord]]:
        """A job's row and its tasks in their order: from memory while the node holds it, else
        from the database (JobNotFound, or StateError for one it cannot read)."""
        live = self._live.get(job_id) or self._recent.get(job_id)
        if live is not None:
            return live.row, sorted(live.tasks.values(), key=lambda t: t.index)
        row = self.db.job(job_id)
        try:
            return row, self.db.tasks(job_id, self.db.job_spec(job_id))
        except StateError:
            if row.reason is None:
                raise
            return row, []  # the node failed the job because it could not read them: its reason says so

    def events(self, job_id: str) -> JobEvents | None:
        """The live (or recently finished) event log of a job, or None when the node has forgotten it."""
        return self.logs.get(job_id)

    def live_blobs(self) -> tuple[set[Digest], set[Digest]]:
        """What the live jobs need kept in the store, for eviction (mesh.cas.space): the
        snapshots their tasks read and made, their inputs' times manifests, and their tasks'
        output streams."""
        trees: set[Digest] = set()
        blobs: set[Digest] = set()
        for live in self._live.values():
            for task in live.tasks.values():
                if task.spec.input is not None:
                    trees.add(task.spec.input)
                if task.spec.stdin is not None:
                    blobs.add(task.spec.stdin)
                if task.action is not None:
                    trees.add(task.action.input)
                    if task.action.times is not None:
                        blobs.add(task.action.times)
                elif task.spec.parsed is not None and task.spec.parsed.times is not None:
                    blobs.add(task.spec.parsed.times)
                if task.result is not None:
                    blobs.update((task.result.stdout, task.result.stderr))
                    if task.result.output is not None:
                        trees.add(task.result.output)
        return trees, blobs

    def takes_offer(self) -> bool:
        """Whether a peer's offered task may be taken now: a slot is free, or the task can
        wait here as one of the PREFETCH tasks held to start as soon as a slot frees."""
        waiting = 0
        for job_id, _ in self._ready:
            live = self._live.get(job_id)
            if live is not None and live.spec.pinned:  # offers are pinned jobs
                waiting += 1
        return not self._draining and self._busy + waiting < self.slots + PREFETCH

    def statistics(self) -> SchedulerStatistics:
        queued = sum(1 for j in self._live.values() for t in j.tasks.values() if t.state == "queued")
        return SchedulerStatistics(
            slots=self.slots,
            busy=self._busy,
            queued=queued,
            running_jobs=len(self._live),
            tasks_run=self._tasks_run,
            cache_hits=self._cache_hits,
            tasks_stolen=self._tasks_stolen,
            tasks_given=self._tasks_given,
        )


def image_key(action: Action) -> str | None:
    """The capability of a node that holds ``action``'s container image (mesh.cluster.peering.capabilities)."""
    return None if action.image is None else f"image.{action.image}"


def requirements_of(action: Action) -> dict[str, str]:
    """What a node must offer to run ``action``: its own requirements and its executor."""
    requirements = dict(action.requirements)
    requirements[f"executor.{action.executor}"] = "1"
    return requirements


def _as_they_are(tasks: Iterable[TaskRecord]) -> Iterator[TaskRecord]:
    """``tasks`` one by one, leaving out each whose state changed since this call: moving an
    earlier one on may make it ready or settle it, and it must not be made ready twice."""
    states = [(task, task.state) for task in tasks]
    return (task for task, state in states if task.state == state)


def _why(result: ActionResult) -> str | None:
    if result.error:
        return result.error
    if result.timed_out:
        return "timed out"
    if result.signal:
        return f"killed by signal {result.signal}"
    if result.exit_code:
        return f"exit code {result.exit_code}"
    return None


__all__ = ["Scheduler", "SchedulerStatistics", "JobNotFound", "FINAL_TASK_STATES"]
