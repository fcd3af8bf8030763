"""The node's state in SQLite: jobs, tasks, results and the action cache.

One file, ``$MESH_HOME/state.db``, in WAL mode with ``synchronous=NORMAL``: a
commit survives the process being killed (it is in the WAL before the call
returns), which is what resuming after SIGKILL needs; power loss may lose the
last commits, never consistency. Every stored message is canonical CBOR.

Only the node's trio thread uses the connection; each call is a short local
transaction, so calls are made directly rather than through a worker thread.

That a task started is not worth a commit of its own: :meth:`StateDB.mark_running`
keeps the mark, and the next commit writes it along (the scheduler commits what
nothing took along within a tenth of a second). Half as many commits per task;
at worst, a task that started just before a crash resumes as "queued" rather
than "running" (it runs again either way).

A job's ``reason`` (why the node failed the job itself: it could not resume it) is a
column that schema version 1 gained later: opening a database made before adds it, and
versions that do not know it still read and write the rest (they name their columns),
so the schema version stays 1.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from mesh import codec
from mesh.errors import CodecError, JobNotFound, MeshError
from mesh.exec.action import ActionResult
from mesh.sched.jobs import FINAL_TASK_STATES, JobSpec, TaskRecord, parse_job

SCHEMA_VERSION = 1

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
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
"""


class StateError(MeshError):
    """The state database cannot be opened or holds something this version cannot read."""


@dataclass(frozen=True, kw_only=True)
class JobRow:
    """A job's own row (without its tasks)."""

    seq: int
    id: str
    label: str
    state: str
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

    def __init__(self, path: str) -> None:
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.executescript(_SCHEMA)
            row = self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if row is None:
                self._db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            elif row[0] != str(SCHEMA_VERSION):
                raise StateError(f"{path} has schema version {row[0]}; this mesh reads version {SCHEMA_VERSION}")
            if "reason" not in {column[1] for column in self._db.execute("PRAGMA table_info(jobs)")}:
                self._db.execute("ALTER TABLE jobs ADD COLUMN reason TEXT")  # made by an earlier version
        except sqlite3.Error as exc:
            raise StateError(f"cannot open the state database {path}: {exc}") from None
        self.path = path
        self._marks: dict[tuple[str, str], TaskRecord] = {}  # running marks waiting for a commit

    def close(self) -> None:
        self.flush()
        self._db.close()

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Group the writes inside the ``with`` block into one commit (nesting joins the outer one).

        Outside a batch every write commits on its own. Running marks that wait
        (:meth:`mark_running`) are written with the commit.
        """
        if self._db.in_transaction:
            yield
            return
        self._db.execute("BEGIN")
        try:
            yield
            self._write_marks()
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:  # also when COMMIT failed: no later batch may join this one
                self._db.execute("ROLLBACK")
            raise

    @contextlib.contextmanager
    def savepoint(self) -> Iterator[None]:
        """Undo the writes inside the ``with`` block, and only them, when it raises; inside a
        batch, the rest of the batch still commits."""
        self._db.execute("SAVEPOINT part")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK TO part")
            raise
        finally:
            self._db.execute("RELEASE part")

    def mark_running(self, task: TaskRecord) -> None:
        """Note that ``task`` started: written with the next commit, or by :meth:`flush`."""
        self._marks[(task.job, task.name)] = task

    @property
    def marks_waiting(self) -> bool:
        """Whether running marks wait for a commit."""
        return bool(self._marks)

    def flush(self) -> None:
        """Commit the running marks that wait (nothing to do if none)."""
        if self._marks:
            with self.batch():
                pass

    def _write_marks(self) -> None:
        marks, self._marks = self._marks, {}
        for task in marks.values():
            if task.state == "running":  # not since requeued or finished (those wrote their state)
                self._write_task(task)

    # -- jobs ---------------------------------------------------------------------

    def add_job(self, job_id: str, spec: JobSpec, states: dict[str, str]) -> JobRow:
        """Persist a new job and its tasks in the given initial states, in one commit."""
        now = time.time()
        with self.batch():
            cur = self._db.execute(
                "INSERT INTO jobs (id, label, state, created_at, spec) VALUES (?, ?, 'running', ?, ?)",
                (job_id, spec.label, now, codec.encode(spec.to_wire())),
            )
            self._db.executemany(
                "INSERT INTO tasks (job, name, idx, state) VALUES (?, ?, ?, ?)",
                [(job_id, t.name, i, states[t.name]) for i, t in enumerate(spec.tasks)],
            )
        seq = cur.lastrowid
        assert seq is not None
        return JobRow(
            seq=seq, id=job_id, label=spec.label, state="running", cancelled=False, created_at=now, finished_at=None
        )

    def job(self, job_id: str) -> JobRow:
        row = self._db.execute(
            "SELECT seq, id, label, state, cancelled, created_at, finished_at, reason FROM jobs WHERE id = ?", (job_id,)
        ).fetchone()
        if row is None:
            raise JobNotFound(job_id)
        return _job_row(row)

    def job_spec(self, job_id: str) -> JobSpec:
        row = self._db.execute("SELECT spec FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFound(job_id)
        try:
            return parse_job(codec.decode(row[0]))
        except (CodecError, ValueError) as exc:
            raise StateError(f"job {job_id} in {self.path} cannot be read: {exc}") from None

    def jobs(self, *, limit: int, before: int | None = None, state: str | None = None) -> list[JobRow]:
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
        return [_job_row(r) for r in self._db.execute(query, (*args, limit))]

    def unfinished_jobs(self) -> list[JobRow]:
        rows = self._db.execute(
            "SELECT seq, id, label, state, cancelled, created_at, finished_at, reason FROM jobs"
            " WHERE state = 'running' ORDER BY seq"
        )
        return [_job_row(r) for r in rows]

    def count_jobs(self) -> dict[str, int]:
        return dict(self._db.execute("SELECT state, count(*) FROM jobs GROUP BY state").fetchall())

    def finish_job(self, job_id: str, state: str) -> float:
        """Record a job's final state; returns the time it finished."""
        now = time.time()
        self._db.execute("UPDATE jobs SET state = ?, finished_at = ? WHERE id = ?", (state, now, job_id))
        return now

    def fail_job(self, job_id: str, reason: str) -> None:
        """Fail a job for ``reason``, with each of its tasks not yet final (none of them will run)."""
        now = time.time()
        final = tuple(sorted(FINAL_TASK_STATES))
        with self.batch():
            self._db.execute(
                f"UPDATE tasks SET state = 'failed', reason = ?, finished_at = ?"
                f" WHERE job = ? AND state NOT IN ({', '.join('?' * len(final))})",
                (reason, now, job_id, *final),
            )
            self._db.execute(
                "UPDATE jobs SET state = 'failed', finished_at = ?, reason = ? WHERE id = ?", (now, reason, job_id)
            )

    def mark_cancelled(self, job_id: str) -> None:
        self._db.execute("UPDATE jobs SET cancelled = 1 WHERE id = ?", (job_id,))

    # -- tasks --------------------------------------------------------------------

    def tasks(self, job_id: str, spec: JobSpec) -> list[TaskRecord]:
        rows = self._db.execute(
            "SELECT name, idx, state, result, reason, attempts, started_at, finished_at"
            " FROM tasks WHERE job = ? ORDER BY idx",
            (job_id,),
        ).fetchall()
        records = []
        for name, idx, state, result, reason, attempts, started_at, finished_at in rows:
            if name not in spec.by_name:
                raise StateError(f"job {job_id} in {self.path} has a task {name!r} that its spec does not name")
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
        """Write a task's state, result, reason, attempts and times."""
        self._marks.pop((task.job, task.name), None)  # this write says more
        self._write_task(task)

    def _write_task(self, task: TaskRecord) -> None:
        self._db.execute(
            "UPDATE tasks SET state = ?, result = ?, reason = ?, attempts = ?, started_at = ?, finished_at = ?"
            " WHERE job = ? AND name = ?",
            (
                task.state,
                None if task.result is None else codec.encode(task.result.to_wire()),
                task.reason,
                task.attempts,
                task.started_at,
                task.finished_at,
                task.job,
                task.name,
            ),
        )

    def set_task_states(self, tasks: Iterable[TaskRecord]) -> None:
        with self.batch():
            for task in tasks:
                self.set_task_state(task)

    # -- action cache ---------------------------------------------------------------

    def cached_result(self, key: str) -> ActionResult | None:
        row = self._db.execute("SELECT result FROM action_cache WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        try:
            return _result(row[0])
        except StateError:
            self._db.execute("DELETE FROM action_cache WHERE key = ?", (key,))
            return None

    def cache_result(self, key: str, result: ActionResult) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO action_cache (key, result, created_at) VALUES (?, ?, ?)",
            (key, codec.encode(result.to_wire()), time.time()),
        )

    def forget_cached(self, key: str) -> None:
        self._db.execute("DELETE FROM action_cache WHERE key = ?", (key,))

    def cache_size(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM action_cache").fetchone()[0])


def _job_row(row: tuple[object, ...]) -> JobRow:
    seq, id_, label, state, cancelled, created_at, finished_at, reason = row
    return JobRow(
        seq=int(seq),  # type: ignore[call-overload]
        id=str(id_),
        label=str(label),
        state=str(state),
        cancelled=bool(cancelled),
        created_at=float(created_at),  # type: ignore[arg-type]
        finished_at=None if finished_at is None else float(finished_at),  # type: ignore[arg-type]
        reason=None if reason is None else str(reason),
    )


def _result(blob: bytes) -> ActionResult:
    try:
        return ActionResult.from_wire(codec.decode(blob))
    except (CodecError, ValueError) as exc:
        raise StateError(f"a stored result cannot be read: {exc}") from None


def state_path(home: str) -> str:
    return os.path.join(home, "state.db")
