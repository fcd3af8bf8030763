"""Recording the scheduler's own steps in the state database, and going on when it takes no commit.

A step of the scheduler's (a task started or ended, a job ended, a job resumed or given up)
is recorded in one commit (:meth:`Recorder.step`). **A database that takes no commit** (its
disk is full) does not stop the node. A request whose change must be recorded before it is
answered, a submission or a cancel, is refused (StateFull: HTTP 507 naming the database and
its free space) and changes nothing; that is the scheduler's. The scheduler's own steps
happened already and cannot be refused: each stands in memory, and its writes wait in the
state database (mesh.sched.statedb), tried again every RECORD_RETRY seconds by
:meth:`Recorder.run`, with one log line when that begins and one when they go in. Until then
a job's status says ``recorded: false``, and the database holds an earlier state of the job,
whole, which is what a node restarted meanwhile resumes: tasks whose end was not recorded run
again (at least once, as after a crash). Failing the task instead was not chosen: the failure
could not be recorded either, and the task did run.

The same loop commits running marks (StateDB.mark_running) that no other commit took along
within MARK_DELAY seconds.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import trio

from mesh.errors import StateError, describe
from mesh.sched.jobs import TaskRecord
from mesh.sched.statedb import StateDB

log = logging.getLogger("mesh.sched")

#: Seconds a task's running mark may wait for another commit to take it along (StateDB.mark_running).
MARK_DELAY = 0.1
#: Seconds between tries to commit the writes that a failed commit (a full disk) left waiting.
#: A try on a disk still full costs one failed commit; space freed is used within a second.
RECORD_RETRY = 1.0


class Recorder:
    """Commits the scheduler's steps to ``db``; retries, in :meth:`run`, what could not be."""

    def __init__(self, db: StateDB) -> None:
        self.db = db
        self._unwritten = trio.Event()  # set (and replaced) when writes wait for a commit
        self._failing: StateError | None = None  # why the state database takes no commit, while it does not

    async def run(self) -> None:
        """Commit the writes that wait in the state database: running marks that no other commit
        took along within MARK_DELAY seconds of being made, and the writes that a failed commit
        left, tried again every RECORD_RETRY seconds until they go in. Runs until cancelled."""
        while True:
            await self._unwritten.wait()
            self._unwritten = trio.Event()
            await trio.sleep(MARK_DELAY if self._failing is None else RECORD_RETRY)
            try:
                self.db.flush()
            except Exception as exc:  # a full disk (StateFull), or a bug: tried again, the node goes on
                self._not_recorded(exc)
                continue
            if self._failing is not None and self.db.failure is None:
                self._failing = None
                log.warning("the state database takes commits again: the changes that waited are recorded")

    @contextlib.contextmanager
    def step(self) -> Iterator[None]:
        """One step of the scheduler's own: its writes in one commit. If the commit fails (a full
        disk), the step stands in memory and its writes wait in the state database, retried by
        :meth:`run`; nothing raises. (What the block raises goes on, its statements undone.)"""
        with self.db.batch(raising=False):
            yield
        if self.db.failure is not None:
            self._not_recorded(self.db.failure)

    def mark_running(self, task: TaskRecord) -> None:
        """Note that ``task`` started: committed with the next commit, or by :meth:`run`."""
        self.db.mark_running(task)
        self._unwritten.set()

    def _not_recorded(self, exc: Exception) -> None:
        """A commit failed: say so once (until one goes in again), and try again later."""
        if self._failing is None:
            log.error(
                "cannot record the state of jobs: %s; the node goes on, and the %d change(s) waiting are"
                " tried again every %g s (a node restarted before they are recorded runs their tasks again)",
                describe(exc),
                self.db.waiting,
                RECORD_RETRY,
            )
        self._failing = exc if isinstance(exc, StateError) else StateError(describe(exc))
        self._unwritten.set()
