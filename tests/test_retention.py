"""A node's history of finished jobs is bounded (mesh.sched.retention, StateDB.prune_jobs): the
oldest finished jobs beyond ``keep_jobs`` go with their tasks, never a running job nor a build's."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest
import trio

from mesh.errors import JobNotFound
from mesh.pipelines.projects import ProjectStore
from mesh.sched.jobs import JobSpec
from mesh.sched.scheduler import Scheduler
from mesh.sched.statedb import StateDB
from tests.test_scheduler import AllPresent, FakeRunner, job, t, wait_state

ONE = job(t("a", ["ok"]))
TWO = job(t("a", ["ok"]), t("b", ["ok"]))


def add(db: StateDB, n: int, spec: JobSpec = ONE, *, state: str = "succeeded", first: int = 0) -> list[str]:
    """``n`` jobs of ``spec`` whose tasks ended, in order of submission, ended as ``state``
    ("running": not ended); their ids."""
    ids = [f"{first + i:020d}" for i in range(n)]
    for job_id in ids:
        db.add_job(job_id, spec, {task.name: "succeeded" for task in spec.tasks})
        if state != "running":
            db.finish_job(job_id, state)  # type: ignore[arg-type]
    return ids


def stored(path: Path) -> tuple[list[str], set[str]]:
    """The jobs in the database (oldest first), and the jobs its tasks belong to."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        jobs = [row[0] for row in db.execute("SELECT id FROM jobs ORDER BY seq")]
        return jobs, {row[0] for row in db.execute("SELECT DISTINCT job FROM tasks")}


def prune_all(db: StateDB, *, most_jobs: int = 200, most_tasks: int = 1000) -> list[str]:
    deleted: list[str] = []
    while ids := db.prune_jobs(most_jobs=most_jobs, most_tasks=most_tasks):
        deleted += ids
    return deleted


def test_finished_jobs_beyond_the_bound_are_deleted_oldest_first_with_their_tasks(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    db = StateDB(str(path), keep_jobs=3)
    ids = add(db, 4, TWO, state="failed") + add(db, 3, first=4, state="cancelled") + add(db, 3, first=7)
    assert db.prune_jobs(most_jobs=2, most_tasks=1000) == ids[:2]  # at most two jobs a step
    assert db.prune_jobs(most_jobs=10, most_tasks=3) == ids[2:3]  # a job of two tasks and no more
    assert prune_all(db) == ids[3:7]
    assert stored(path) == (ids[7:], set(ids[7:]))
    assert prune_all(db) == []
    with pytest.raises(JobNotFound, match=f"no job {ids[0]} on this node .finished jobs beyond the newest 3 are"):
        db.job(ids[0])
    with pytest.raises(JobNotFound, match="beyond the newest 3 are forgotten"):
        db.job_spec(ids[0])  # what `mesh rerun` reads
    assert [row.id for row in db.jobs(limit=100)] == ids[:6:-1]


def test_a_job_that_runs_or_has_a_task_not_final_is_never_deleted(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    db = StateDB(str(path), keep_jobs=1)
    running = add(db, 2, state="running")
    unfinished = add(db, 1, first=2)
    db.execute("UPDATE tasks SET state = 'queued' WHERE job = ?", unfinished)  # damaged, or a bug: kept
    ended = add(db, 3, first=3)
    assert prune_all(db) == ended[:2]
    assert stored(path)[0] == running + unfinished + ended[2:]


def test_a_job_that_a_build_refers_to_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    db = StateDB(str(path), keep_jobs=2)
    projects = ProjectStore(db)
    projects.add("web", "https://example.com/web.git", "main", None)
    ids = add(db, 6)
    projects.record("web", ids[1], None, "run")
    assert prune_all(db) == [ids[0], *ids[2:4]]
    assert stored(path)[0] == [ids[1], *ids[4:]]
    assert db.job(ids[1]).state == "succeeded"


async def test_a_lowered_bound_applies_when_the_scheduler_starts_and_memory_forgets_what_went(tmp_path: Path) -> None:
    """The scheduler prunes at start and after jobs end, and what it keeps in memory of finished
    jobs (RECENT_JOBS of them) goes too: a deleted job is unknown, not answered from memory."""
    path = str(tmp_path / "state.db")
    add(StateDB(path), 30)
    db = StateDB(path, keep_jobs=4)
    scheduler = Scheduler(db, FakeRunner(), AllPresent(), node_id="n", slots=1)
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        with trio.fail_after(10):
            while len(db.jobs(limit=100)) > 4:
                await trio.sleep(0.01)
        ran = []
        for _ in range(6):
            ran.append(scheduler.submit(ONE))
            await wait_state(scheduler, ran[-1], "succeeded")
        with trio.fail_after(10):
            while [row.id for row in db.jobs(limit=100)] != ran[:1:-1]:
                await trio.sleep(0.01)
        for job_id in ran[:2]:
            with pytest.raises(JobNotFound, match="beyond the newest 4 are forgotten"):
                scheduler.job_status(job_id)
            assert scheduler.events(job_id) is None
        assert scheduler.job_status(ran[-1])["state"] == "succeeded"
        nursery.cancel_scope.cancel()
