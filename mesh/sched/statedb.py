"""The node's state in SQLite: jobs, tasks, results and the action cache.

One file, ``$MESH_HOME/state.db``, in WAL mode with ``synchronous=NORMAL``: a
commit survives the process being killed (it is in the WAL before the call
returns), which is what resuming after SIGKILL needs; power loss may lose the
last commits, never consistency. Every stored message is canonical CBOR.

Only the node's trio thread uses the connection; each call is a short local
transaction, so calls are made directly rather than through a worker thread.

The scheduler's writes wait for a commit. A task's state, a job's end (with its reason when
the node failed the job itself) and an action-cache entry are kept in memory (the latest of
each task, job and key) and written, all of them, just before a commit: at the end of a
:meth:`StateDB.batch`, or at once outside one. So:

- A commit that fails (a full disk: SQLITE_FULL, raised as StateFull) loses none of them:
  they wait, whole, for the next commit, and the database keeps the state of the last
  commit that went in, which is consistent (every commit writes the latest form of every
  row that changed). :meth:`StateDB.unrecorded` says which jobs have changes waiting since
  then; the scheduler retries (mesh.sched.recording).
- A write never raises halfway through the scheduler moving a job on: only a commit does,
  where a step is complete. ``cache_spill`` is off for the same reason: the pages of a
  transaction stay in memory until its commit (a few MiB for a 10,000-task submission)
  instead of spilling into the WAL in the middle of a statement, where a full disk would
  fail the statement and SQLite might roll the transaction back under its caller.

That a task started is not worth a commit of its own: :meth:`StateDB.mark_running`
keeps the mark without committing, and the next commit writes it along (the scheduler
commits what nothing took along within a tenth of a second). Half as many commits per
task; at worst, a task that started just before a crash resumes as "queued" rather
than "running" (it runs again either way).

Every call into SQLite goes through :meth:`StateDB._sql`, which translates sqlite3's errors
into StateError naming the file (StateFull, with the free space, for a full disk); no other
code meets them. SQLite reports a full disk as SQLITE_FULL when a write meets ENOSPC; a
disk quota (EDQUOT) comes back as SQLITE_IOERR_WRITE, a StateError that names it.

No record can keep a commit from going in: what the scheduler's writes hold is made storable
on the way in, text :func:`~mesh.text.encodable` (a task's reason may name a file the task
made, in any bytes), and a result that cannot be encoded even so is left out, the task's
reason saying so. A batch that fails in any way rolls its transaction back: one left open
would be joined by every later batch and never committed.

A job's ``reason`` (why the node failed the job itself: it could not resume it) is a
column that schema version 1 gained later: opening a database made before adds it, and
versions that do not know it still read and write the rest (they name their columns),
so the schema version stays 1. So does the action cache's change to keys that carry the
toolchain identity (mesh.exec.toolchain): ``meta`` notes the form of the keys its
``action_cache`` holds (``cache_keys``), and a database whose entries were made under
another form (before the identity, or by a later version) has them all dropped when it
opens, so that none is ever served. ``action_shapes`` keeps, per action without its
input, the input and identity it was last looked up with: why the next run was not a hit.

**A bounded history.** Finished jobs beyond the newest ``keep_jobs`` are deleted with their
tasks, a few at a time (:meth:`StateDB.prune_jobs`, called by mesh.sched.retention, which says
when and why that many), except the jobs that a table of a layer above refers to
(:meth:`StateDB.keep_referenced`: a project's builds). A deleted job is unknown as any id
never seen is (JobNotFound, which says that finished jobs beyond the bound are forgotten).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from mesh import codec
from mesh.config import DEFAULT_KEEP_JOBS
from mesh.errors import CodecError, JobNotFound, StateError, StateFull, describe
from mesh.exec.action import CACHE_KEY_VERSION, ActionResult
from mesh.sched.jobs import (
    FINAL_TASK_STATES,
    JOB_STATES,
    JobSpec,
    JobState,
    TaskRecord,
    TaskState,
    is_job_state,
    is_task_state,
    parse_job,
)
from mesh.text import encodable

log = logging.getLogger("mesh.state")

SCHEMA_VERSION = 1
#: The final task states as an SQL list (constants of mesh.sched.jobs, not input).
_FINAL = f"({', '.join(repr(state) for state in sorted(FINAL_TASK_STATES))})"
#: The states of a job that ended, as an SQL list: the jobs that :meth:`StateDB.prune_jobs` may delete.
_ENDED = f"({', '.join(repr(state) for state in JOB_STATES if state != 'running')})"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    label TEXT NOT NULL,
    state TEXT NOT NULL,
    cancelled INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    finished_at REAL,
    spec BLOB NOT NULL,
    reason TEXT
);
CREATE INDEX IF NOT EXISTS jobs_unfinished ON jobs(state) WHERE state = 'running';
CREATE TABLE IF NOT EXISTS tasks (
    job TEXT NOT NULL,
    name TEXT NOT NULL,
    idx INTEGER NOT NULL,
    state TEXT NOT NULL,
    result BLOB,
    reason TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    started_at REAL,
    finished_at REAL,
    PRIMARY KEY (job, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS action_cache (
    key TEXT PRIMARY KEY,
    result BLOB NOT NULL,
    created_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS action_shapes (
    shape TEXT PRIMARY KEY,
    input TEXT NOT NULL,
    identity BLOB,
    seen_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
"""


@dataclass(frozen=True, kw_only=True)
class JobRow:
    """A job's own row (without its tasks)."""

    seq: int
    id: str
    label: str
    state: JobState
    cancelled: bool
    created_at: float
    finished_at: float | None
    reason: str | None = None  # why the node failed the job itself (it could not resume it)

    def to_wire(self) -> dict[str, object]:
        return {
            "id": self.id,
            "label": self.label,
            "state": self.state,
            "created_at": self.created_at,
            "finished_at": self.finished_at,
            "reason": self.reason,
        }


class StateDB:
    """Jobs, tasks and the action cache of one node. Not thread-safe: one owner."""

    def __init__(self, path: str, *, keep_jobs: int = DEFAULT_KEEP_JOBS) -> None:
        self.path = path
        #: Finished jobs kept (:meth:`prune_jobs`), besides those a layer above refers to.
        self.keep_jobs = keep_jobs
        self._references: list[tuple[str, str]] = []  # (table, column) naming jobs that are kept
        #: Why the last commit failed, if it did (None once one goes in).
        self.failure: StateError | None = None
        self._tasks: dict[str, dict[str, TaskRecord]] = {}  # job -> name -> task, waiting for a commit
        self._ends: dict[str, tuple[JobState, float, str | None]] = {}  # job -> (final state, when, reason), waiting
        self._cache: dict[str, tuple[ActionResult, float]] = {}  # key -> (result, when), waiting for a commit
        self._shapes: dict[str, tuple[str, bytes | None, float]] = {}  # shape -> (input, identity, when), waiting
        self._batching = False  # inside a batch (whose transaction is open)
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise self._translate(exc, "cannot open it") from None
        self._sql("PRAGMA journal_mode=WAL")
        self._sql("PRAGMA synchronous=NORMAL")
        self._sql("PRAGMA busy_timeout=5000")
        self._sql("PRAGMA cache_spill=OFF")  # a transaction's pages meet the disk at its commit only
        with self.batch():
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self._sql(statement)
            row = self._sql("SELECT value FROM meta WHERE key='schema'")
            if not row:
                self._sql("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            elif row[0][0] != str(SCHEMA_VERSION):
                raise StateError(f"{path} has schema version {row[0][0]}; this mesh reads version {SCHEMA_VERSION}")
            if "reason" not in {column[1] for column in self._sql("PRAGMA table_info(jobs)")}:
                self._sql("ALTER TABLE jobs ADD COLUMN reason TEXT")  # made by an earlier version
            keys = self._sql("SELECT value FROM meta WHERE key='cache_keys'")
            if not keys or keys[0][0] != str(CACHE_KEY_VERSION):
                # Entries keyed without the toolchain identity (made by an earlier version) could
                # answer for another compiler: none of them is served again.
                self._sql("DELETE FROM action_cache")
                self._sql("INSERT OR REPLACE INTO meta VALUES ('cache_keys', ?)", (str(CACHE_KEY_VERSION),))

    def close(self) -> None:
        """Commit what waits and close. What cannot be committed (a full disk) is logged and
        left to the next start, which resumes those jobs from their last recorded state."""
        try:
            self.flush()
        except StateError as exc:
            log.error(
                "%d change(s) of jobs could not be recorded before the node stopped (%s); "
                "the next start runs their tasks again",
                self.waiting,
                exc,
            )
        finally:
            self._db.close()

    def _sql(self, sql: str, args: Iterable[object] = ()) -> list[Any]:
        """Run one statement and fetch its rows: the one place that calls SQLite, so that its
        errors are translated here, once (:meth:`_translate`)."""
        try:
            return self._db.execute(sql, tuple(args)).fetchall()
        except (sqlite3.Error, ValueError, OverflowError) as exc:
            raise self._translate(exc) from None

    def _sql_many(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        try:
            self._db.executemany(sql, rows)
        except (sqlite3.Error, ValueError, OverflowError) as exc:
            raise self._translate(exc) from None

    def _translate(self, exc: Exception, what: str = "failed") -> StateError:
        """The StateError that an error of sqlite3 means: StateFull for a full disk, naming the
        database and its free space; otherwise the error and SQLite's name for it. (sqlite3
        raises UnicodeEncodeError for text it cannot store, OverflowError for an integer.)"""
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None and code & 0xFF == sqlite3.SQLITE_FULL:
            return StateFull(self.path, _free_bytes(self.path))
        if not isinstance(exc, sqlite3.Error):
            return self._failed("cannot store a value", exc)
        name = getattr(exc, "sqlite_errorname", type(exc).__name__)
        return StateError(f"the state database {self.path} {what}: {exc} ({name})")

    def _failed(self, what: str, exc: BaseException) -> StateError:
        return StateError(f"the state database {self.path} {what}: {describe(exc)}")

    @contextlib.contextmanager
    def batch(self, *, raising: bool = True) -> Iterator[None]:
        """Group the writes inside the ``with`` block into one commit (nesting joins the outer one).

        Outside a batch every write commits on its own. The writes that wait (all of the
        scheduler's, and running marks) are written with the commit; if the commit fails,
        :attr:`failure` says why, they wait for the next one, the statements made directly
        inside the block are undone, and the error (StateFull for a full disk) is raised
        unless ``raising`` is False.

        Whatever is raised, in the block or by the commit (a bug included, raised as a
        StateError that names it), the transaction is rolled back before the batch ends: a
        transaction left open would be joined by every later batch and never committed, and
        the node would go on answering while it recorded nothing more.
        """
        if self._batching:
            yield
            return
        if self._db.in_transaction:  # a bug's leftover: joining it would never commit
            log.error("the state database %s had a transaction left open; it is rolled back", self.path)
            self._rollback()
        self._sql("BEGIN")
        self._batching = True
        try:
            yield
            try:
                self._write_waiting()
                self._sql("COMMIT")
            except Exception as exc:
                self.failure = exc if isinstance(exc, StateError) else self._failed("could not commit", exc)
                if raising:
                    raise self.failure from None
                return
        finally:
            self._batching = False
            self._rollback()  # whatever was raised (a COMMIT that went in leaves nothing to undo)
        self._tasks, self._ends, self._cache, self._shapes = {}, {}, {}, {}
        self.failure = None

    def _rollback(self) -> None:
        if self._db.in_transaction:
            self._sql("ROLLBACK")

    def execute(self, sql: str, args: Iterable[object] = ()) -> list[Any]:
        """Run one statement of a table family that a layer above keeps in this database
        (mesh.pipelines.projects: projects and their builds), and fetch its rows; its errors
        are translated as every other's (StateFull for a full disk). Outside a :meth:`batch`
        it commits on its own; inside one it joins the batch's commit."""
        return self._sql(sql, args)

    @contextlib.contextmanager
    def savepoint(self) -> Iterator[None]:
        """Undo the statements made inside the ``with`` block, and only them, when it raises;
        inside a batch, the rest of the batch still commits. (Writes that wait for the commit
        are not statements yet: :meth:`forget` drops a job's.)"""
        self._sql("SAVEPOINT part")
        try:
            yield
        except BaseException:
            self._sql("ROLLBACK TO part")
            raise
        finally:
            self._sql("RELEASE part")

    def mark_running(self, task: TaskRecord) -> None:
        """Note that ``task`` started: written with the next commit, or by :meth:`flush`."""
        self._tasks.setdefault(task.job, {})[task.name] = task

    @property
    def waiting(self) -> int:
        """How many writes wait for a commit (running marks, and what a failed commit left)."""
        waiting = len(self._ends) + len(self._cache) + len(self._shapes)
        return sum(len(tasks) for tasks in self._tasks.values()) + waiting

    def unrecorded(self, job_id: str) -> bool:
        """Whether changes of the job wait since a commit failed: the database holds an earlier
        state of it than the node's (running marks waiting as usual do not count)."""
        return self.failure is not None and (job_id in self._tasks or job_id in self._ends)

    def forget(self, job_id: str) -> None:
        """Drop the writes of a job that wait (its submission or resumption was undone)."""
        self._tasks.pop(job_id, None)
        self._ends.pop(job_id, None)

    def flush(self) -> None:
        """Commit the writes that wait (nothing to do if none). Raises StateError (StateFull)."""
        if self.waiting:
            with self.batch():
                pass

    def _commit_unless_batched(self) -> None:
        if not self._batching:
            self.flush()

    def _write_waiting(self) -> None:
        self._sql_many(
            "UPDATE tasks SET state = ?, result = ?, reason = ?, attempts = ?, started_at = ?, finished_at = ?"
            " WHERE job = ? AND name = ?",
            [_task_row(task) for tasks in self._tasks.values() for task in tasks.values()],
        )
        self._sql_many(  # a job the node failed: its tasks not yet final will not run
            f"UPDATE tasks SET state = 'failed', reason = ?, finished_at = ? WHERE job = ? AND state NOT IN {_FINAL}",
            [(why, at, job_id) for job_id, (_, at, why) in self._ends.items() if why is not None],
        )
        self._sql_many(
            "UPDATE jobs SET state = ?, finished_at = ?, reason = ? WHERE id = ?",
            [(state, at, why, job_id) for job_id, (state, at, why) in self._ends.items()],
        )
        cached = ((key, _result_blob(result), at) for key, (result, at) in self._cache.items())
        self._sql_many(
            "INSERT OR REPLACE INTO action_cache (key, result, created_at) VALUES (?, ?, ?)",
            [row for row in cached if row[1] is not None],  # one that cannot be encoded is not cached
        )
        self._sql_many(
            "INSERT OR REPLACE INTO action_shapes (shape, input, identity, seen_at) VALUES (?, ?, ?, ?)",
            [(shape, input, identity, at) for shape, (input, identity, at) in self._shapes.items()],
        )

    # -- jobs ---------------------------------------------------------------------

    def add_job(self, job_id: str, spec: JobSpec, states: Mapping[str, TaskState]) -> JobRow:
        """Persist a new job and its tasks in the given initial states, in one commit."""
        now = time.time()
        with self.batch():
            self._sql(
                "INSERT INTO jobs (id, label, state, created_at, spec) VALUES (?, ?, 'running', ?, ?)",
                (job_id, spec.label, now, codec.encode(spec.to_wire())),
            )
            seq = int(self._sql("SELECT last_insert_rowid()")[0][0])
            self._sql_many(
                "INSERT INTO tasks (job, name, idx, state) VALUES (?, ?, ?, ?)",
                [(job_id, t.name, i, states[t.name]) for i, t in enumerate(spec.tasks)],
            )
        return JobRow(
            seq=seq, id=job_id, label=spec.label, state="running", cancelled=False, created_at=now, finished_at=None
        )

    def job(self, job_id: str) -> JobRow:
        rows = self._sql(
            "SELECT seq, id, label, state, cancelled, created_at, finished_at, reason FROM jobs WHERE id = ?", (job_id,)
        )
        if not rows:
            raise JobNotFound(job_id, kept=self.keep_jobs)
        return self._job_row(rows[0])

    def job_spec(self, job_id: str) -> JobSpec:
        rows = self._sql("SELECT spec FROM jobs WHERE id = ?", (job_id,))
        if not rows:
            raise JobNotFound(job_id, kept=self.keep_jobs)
        try:
            return parse_job(codec.decode(rows[0][0]))
        except (CodecError, ValueError) as exc:
            raise StateError(f"job {job_id} in {self.path} cannot be read: {exc}") from None

    def jobs(self, *, limit: int, before: int | None = None, state: JobState | None = None) -> list[JobRow]:
        """Jobs newest first; ``before`` is the ``seq`` to page back from."""
        query = "SELECT seq, id, label, state, cancelled, created_at, finished_at, reason FROM jobs"
        clauses: list[str] = []
        args: list[object] = []
        if before is not None:
            clauses.append("seq < ?")
            args.append(before)
        if state is not None:
            clauses.append("state = ?")
            args.append(state)
        if clauses:
            query += " WHERE " + " AND ".join(clauses)
        query += " ORDER BY seq DESC LIMIT ?"
        return [self._job_row(r) for r in self._sql(query, (*args, limit))]

    def unfinished_job_ids(self) -> list[str]:
        """The ids of the jobs not yet ended, oldest first: only the ids, so that a caller reads
        each job (:meth:`job`) where it can deal with that one job being damaged."""
        return [str(row[0]) for row in self._sql("SELECT id FROM jobs WHERE state = 'running' ORDER BY seq")]

    def count_jobs(self) -> dict[str, int]:
        return dict(self._sql("SELECT state, count(*) FROM jobs GROUP BY state"))

    def finish_job(self, job_id: str, state: JobState) -> float:
        """Record a job's final state (a write that waits for the commit); returns the time it finished."""
        now = time.time()
        self._ends[job_id] = (state, now, None)
        self._commit_unless_batched()
        return now

    def fail_job(self, job_id: str, reason: str) -> None:
        """Fail a job for ``reason`` (the node failed it itself), with each of its tasks not yet
        final: none of them will run. A write that waits for the commit, as a job's every end
        is: a commit that fails keeps it, whole, for the next one (its half as direct
        statements would be undone while the rest waited, leaving the job "running" for good).
        Drops the job's writes that wait (a half-done resumption); task writes made after
        this one are written first, and the tasks they leave unfinished are failed."""
        self.forget(job_id)
        self._ends[job_id] = ("failed", time.time(), encodable(reason))
        self._commit_unless_batched()

    def mark_cancelled(self, job_id: str) -> None:
        self._sql("UPDATE jobs SET cancelled = 1 WHERE id = ?", (job_id,))

    # -- retention ----------------------------------------------------------------

    def keep_referenced(self, table: str, column: str) -> None:
        """Never delete a job whose id is in ``column`` of ``table`` (a table that a layer above
        keeps here, made before the call: a project's ``builds``, whose history needs its jobs).
        Names given by code, never by input."""
        self._references.append((table, column))

    def prune_jobs(self, *, most_jobs: int, most_tasks: int) -> list[str]:
        """Delete the oldest of the finished jobs beyond the newest :attr:`keep_jobs`, with their
        tasks, in one commit, and return their ids (none: nothing is left to delete). "Newest"
        is by submission (``seq``). A job that is running, has a task not yet final or is
        referred to (:meth:`keep_referenced`) is never deleted; one whose end waits for a
        commit is still "running" here. One call deletes at most ``most_jobs`` jobs and, but for
        a single job that holds more, ``most_tasks`` tasks, so that it holds the database
        briefly (mesh.sched.retention measures it); call again for the rest. Raises
        StateError (StateFull) when the commit fails, and then deletes nothing."""
        cutoff = self._sql(
            f"SELECT seq FROM jobs WHERE state IN {_ENDED} ORDER BY seq DESC LIMIT 1 OFFSET ?", (self.keep_jobs,)
        )
        if not cutoff:
            return []
        kept = "".join(
            f" AND j.id NOT IN (SELECT {column} FROM {table} WHERE {column} IS NOT NULL)"
            for table, column in self._references
        )
        rows = self._sql(
            "SELECT j.id, (SELECT count(*) FROM tasks WHERE job = j.id) FROM jobs AS j"
            f" WHERE j.seq <= ? AND j.state IN {_ENDED}{kept}"
            f" AND NOT EXISTS (SELECT 1 FROM tasks WHERE job = j.id AND state NOT IN {_FINAL})"
            " ORDER BY j.seq LIMIT ?",
            (cutoff[0][0], most_jobs),
        )
        ids: list[str] = []
        tasks = 0
        for job_id, count in rows:
            if ids and tasks + count > most_tasks:
                break
            ids.append(str(job_id))
            tasks += count
        if ids:
            marks = ", ".join("?" * len(ids))
            with self.batch():
                self._sql(f"DELETE FROM tasks WHERE job IN ({marks})", ids)
                self._sql(f"DELETE FROM jobs WHERE id IN ({marks})", ids)
        return ids

    # -- tasks --------------------------------------------------------------------

    def tasks(self, job_id: str, spec: JobSpec) -> list[TaskRecord]:
        rows = self._sql(
            "SELECT name, idx, state, result, reason, attempts, started_at, finished_at"
            " FROM tasks WHERE job = ? ORDER BY idx",
            (job_id,),
        )
        records = []
        for name, idx, state, result, reason, attempts, started_at, finished_at in rows:
            if name not in spec.by_name:
                raise StateError(f"job {job_id} in {self.path} has a task {name!r} that its spec does not name")
            if not is_task_state(state):
                raise StateError(f"job {job_id} in {self.path} is damaged: task {name!r} is in state {state!r}")
            records.append(
                TaskRecord(
                    job=job_id,
                    name=name,
                    index=idx,
                    spec=spec.by_name[name],
                    state=state,
                    result=None if result is None else _result(result),
                    reason=reason,
                    attempts=attempts,
                    started_at=started_at,
                    finished_at=finished_at,
                )
            )
        return records

    def set_task_state(self, task: TaskRecord) -> None:
        """Write a task's state, result, reason, attempts and times (a write that waits for the
        commit: at once outside a batch)."""
        self._tasks.setdefault(task.job, {})[task.name] = task
        self._commit_unless_batched()

    def set_task_states(self, tasks: Iterable[TaskRecord]) -> None:
        for task in tasks:
            self._tasks.setdefault(task.job, {})[task.name] = task
        self._commit_unless_batched()

    # -- action cache ---------------------------------------------------------------

    def cached_result(self, key: str) -> ActionResult | None:
        waiting = self._cache.get(key)
        if waiting is not None:
            return waiting[0]
        rows = self._sql("SELECT result FROM action_cache WHERE key = ?", (key,))
        if not rows:
            return None
        try:
            return _result(rows[0][0])
        except StateError:
            self._sql("DELETE FROM action_cache WHERE key = ?", (key,))
            return None

    def cache_result(self, key: str, result: ActionResult) -> None:
        """Keep ``result`` for ``key`` (a write that waits for the commit: at once outside a batch)."""
        self._cache[key] = (result, time.time())
        self._commit_unless_batched()

    def forget_cached(self, key: str) -> None:
        self._cache.pop(key, None)
        self._sql("DELETE FROM action_cache WHERE key = ?", (key,))

    def cache_size(self) -> int:
        return int(self._sql("SELECT count(*) FROM action_cache")[0][0])

    def last_seen(self, shape: str) -> tuple[str, bytes | None] | None:
        """The input and toolchain identity (as stored) an action of ``shape`` was last looked up
        with, or None when none was (mesh.sched.actioncache explains a miss with it)."""
        waiting = self._shapes.get(shape)
        if waiting is not None:
            return waiting[0], waiting[1]
        rows = self._sql("SELECT input, identity FROM action_shapes WHERE shape = ?", (shape,))
        if not rows:
            return None
        input, identity = rows[0]
        return str(input), None if identity is None else bytes(identity)

    def remember_seen(self, shape: str, input: str, identity: bytes | None) -> None:
        """Keep the input and identity an action of ``shape`` was looked up with (a write that
        waits for the commit: at once outside a batch)."""
        self._shapes[shape] = (input, identity, time.time())
        self._commit_unless_batched()

    def _job_row(self, row: tuple[object, ...]) -> JobRow:
        """A job's row as read; StateError naming the job when a column is not what it must be
        (the file was changed or damaged outside mesh: SQLite keeps text in a REAL column)."""
        seq, id_, label, state, cancelled, created_at, finished_at, reason = row
        if not is_job_state(state):
            raise StateError(f"job {id_} in {self.path} is damaged: its state is {state!r}")
        try:
            return JobRow(
                seq=int(seq),  # type: ignore[call-overload]
                id=str(id_),
                label=str(label),
                state=state,
                cancelled=bool(cancelled),
                created_at=float(created_at),  # type: ignore[arg-type]
                finished_at=None if finished_at is None else float(finished_at),  # type: ignore[arg-type]
                reason=None if reason is None else str(reason),
            )
        except (TypeError, ValueError) as exc:
            raise StateError(f"job {id_} in {self.path} is damaged: {exc}") from None


def _task_row(task: TaskRecord) -> tuple[object, ...]:
    """The columns of a task's row. Its text is made :func:`~mesh.text.encodable` (a reason may
    name a file the task made, which need not be UTF-8); a result that cannot be encoded even
    so is left out, and the reason says why, so that the task's end is recorded whatever it
    holds and one task never keeps the others' from being committed."""
    reason, blob = task.reason, None
    if task.result is not None:
        blob = _result_blob(task.result)
        if blob is None:
            why = "its result could not be recorded"
            reason = why if reason is None else f"{reason} ({why})"
    return (
        task.state,
        blob,
        None if reason is None else encodable(reason),
        task.attempts,
        task.started_at,
        task.finished_at,
        task.job,
        task.name,
    )


def _result_blob(result: ActionResult) -> bytes | None:
    """A result as stored: canonical CBOR of its wire form, text made encodable; None (logged)
    for one that cannot be encoded even so (a bug: every field is a number, a flag or text)."""
    wire = {key: encodable(value) if isinstance(value, str) else value for key, value in result.to_wire().items()}
    try:
        return codec.encode(wire)
    except CodecError as exc:
        log.error("a task's result cannot be recorded: %s", exc)
        return None


def _result(blob: bytes) -> ActionResult:
    try:
        return ActionResult.from_wire(codec.decode(blob))
    except (CodecError, ValueError) as exc:
        raise StateError(f"a stored result cannot be read: {exc}") from None


def _free_bytes(path: str) -> int | None:
    """Bytes an unprivileged writer may still put on the filesystem of ``path`` (None if unknown)."""
    try:
        st = os.statvfs(os.path.dirname(os.path.abspath(path)))
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def state_path(home: str) -> str:
    return os.path.join(home, "state.db")
