"""A bounded history: the node forgets its oldest finished jobs, a few at a time.

Without it every job a node ever ran stays in its state database: ``mesh cc`` makes one
job per compile, so a project of 10,000 sources rebuilt daily adds 10,000 jobs a day, and
``mesh jobs``, the UI's recent jobs and any query over ``jobs`` slow down as the file grows
without bound. The node keeps the newest ``keep_jobs`` finished jobs (mesh.config, default
10,000), and every job a project's build refers to (its history needs it); older finished
jobs are deleted with their tasks (mesh.sched.statedb, :meth:`StateDB.prune_jobs`). A job
that runs, or has a task not yet final, is never deleted. Asked for, a deleted job is
unknown (404, "no job ID on this node (finished jobs beyond the newest N are forgotten)").

**Why 10,000.** Measured on the 2-core machine, SQLite 3.40: a finished job of one small
task (60 ``mesh exec -- sh -c 'echo N'`` on a real node, SQLite's dbstat) takes ~1.2 KB of
pages of ``jobs`` and ``tasks`` (its spec ~260 bytes, its task's result ~470); a ``mesh cc``
compile ~2.5 KB (35 compiles of brotli; its spec names the compiler, its arguments and its
inputs). 10,000 jobs are thus 12-25 MB: a day of compiles of a project of 10,000 sources,
weeks of ordinary jobs, enough for ``mesh jobs`` and the UI to look back a day, while a look
for what to delete stays in a few milliseconds (below). The action cache is not affected:
it is keyed by action, bounded by the actions a node runs, not by how often it runs them.

**When.** After every PRUNE_EVERY-th job that ends (every ``keep_jobs // 10``-th, at least
every one, for a small bound: the database holds at most ``keep_jobs`` and a tenth more
finished jobs, besides the builds'), and once when the scheduler starts (so a lowered
setting applies at once), :meth:`Retention.run` deletes what is beyond the bound in steps of at most
PRUNE_JOBS jobs and PRUNE_TASKS tasks, each step one commit, the node's other work running
between steps. SQLite is used from the node's trio thread, as every other write of the state
database is: a worker thread with a connection of its own would make the trio thread's
commits wait (blocking) on its write lock, which is worse than a short step. Measured
(10,000 finished one-task jobs with their results beyond 10,000 kept, the 2-core machine with
other tests running): all deleted in 80-120 ms, in 50 steps of 2-3 ms each (median; the
slowest 8-20 ms, where a commit checkpointed the WAL, as any commit may); the look that
finds nothing to delete, 1.5-3 ms. In the steady state a prune is one step of 100 jobs after
every 100 jobs end: ~0.05 ms a job, not measurable against a job's own commits.

**The file.** SQLite puts the pages it frees on its free list and reuses them for new rows;
the file does not shrink (that takes a VACUUM, which rewrites the whole file and holds the
database while it does: never on the node's path). With a bounded history the file stays at its
high-water mark, which is what it needs again the next day. ``auto_vacuum=INCREMENTAL`` was
not chosen: it can only be switched on for an existing database by a VACUUM, and would only
return pages that the next jobs take back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from mesh.errors import describe
from mesh.sched.statedb import StateDB

log = logging.getLogger("mesh.sched")

#: Jobs that end between two prunes (fewer when ``keep_jobs`` is small: a tenth of it, at least 1).
PRUNE_EVERY = 100
#: The most jobs one step deletes ...
PRUNE_JOBS = 200
#: ... and the most tasks (but for a single job that holds more).
PRUNE_TASKS = 1_000


class Retention:
    """Keeps ``db``'s history of finished jobs bounded; tells ``forgotten`` which jobs it deleted
    (the scheduler drops what it holds of them in memory)."""

    def __init__(self, db: StateDB, forgotten: Callable[[list[str]], None]) -> None:
        self.db = db
        self._forgotten = forgotten
        self._every = max(1, min(PRUNE_EVERY, db.keep_jobs // 10))
        self._ended = 0  # jobs that ended since the last prune
        self._due = trio.Event()  # set when a prune is due
        self._due.set()  # one at start: a lowered keep_jobs applies at once

    def job_ended(self) -> None:
        """A job ended: every PRUNE_EVERY-th one makes a prune due."""
        self._ended += 1
        if self._ended >= self._every:
            self._due.set()

    async def run(self) -> None:
        """Prune whenever one is due, until cancelled. A step that fails (a full disk, or a bug)
        is logged; the next prune tries again."""
        while True:
            await self._due.wait()
            self._due = trio.Event()
            self._ended = 0
            try:
                await self.prune()
            except Exception as exc:  # a full disk (StateFull), or a bug: the node goes on
                log.warning("could not forget old finished jobs: %s; tried again after more jobs end", describe(exc))

    async def prune(self) -> int:
        """Delete the finished jobs beyond the bound, step by step; how many were deleted."""
        deleted = 0
        while True:
            ids = self.db.prune_jobs(most_jobs=PRUNE_JOBS, most_tasks=PRUNE_TASKS)
            if not ids:
                return deleted
            deleted += len(ids)
            self._forgotten(ids)
            await trio.sleep(0)  # the node's other work goes first
