"""The scheduler moves jobs of any shape and size on without recursion, keeps submissions all
or nothing, and fails a job it cannot resume instead of dying on it (fake runner)."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import trio

from mesh import codec
from mesh.errors import JobNotFound, StateError
from mesh.sched import events as events_module
from mesh.sched import scheduler as scheduler_module
from mesh.sched.jobevents import to_wire
from mesh.sched.jobs import MAX_TASKS, JobSpec, decide
from mesh.sched.scheduler import Scheduler
from mesh.sched.statedb import StateDB
from tests.test_disk_full_e2e import fill
from tests.test_scheduler import AllPresent, FakeRunner, job, t


def chain(n: int, head: list[str], argv: list[str], **link: Any) -> JobSpec:
    """``n`` tasks t0..t{n-1}, each after the one before (or, with ``input_task=True``, on its output)."""
    tasks = [t("t0", head)]
    for i in range(1, n):
        behind = {"input_task": f"t{i - 1}"} if link.get("input_task") else {"after": [f"t{i - 1}"]}
        tasks.append(t(f"t{i}", argv, **behind))
    spec: JobSpec = job(*tasks)
    return spec


async def finished(scheduler: Scheduler, job_id: str) -> dict[str, Any]:
    """Follow the job's events until it ends (no polling of a 10,000-task status); its status."""
    log = scheduler.events(job_id)
    assert log is not None
    with trio.fail_after(60):
        async for _ in log.follow():
            pass
    return scheduler.job_status(job_id)


def states(status: dict[str, Any]) -> dict[str, str]:
    return {task["name"]: task["state"] for task in status["tasks"]}


def finish_order(scheduler: Scheduler, job_id: str) -> list[tuple[str, str]]:
    log = scheduler.events(job_id)
    assert log is not None
    return [(e["task"], e["state"]) for e in map(to_wire, log.events) if e["type"] == "task_finished"]


class CountingDecide:
    """Counts the scheduler's calls of jobs.decide: one per waiting task is linear, more is not."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0

        def counting(when: str, dep_states: list[str]) -> str | None:
            self.calls += 1
            return decide(when, dep_states)

        monkeypatch.setattr(scheduler_module, "decide", counting)


async def test_a_failing_head_skips_a_chain_of_max_tasks_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    decide = CountingDecide(monkeypatch)
    db = StateDB(str(tmp_path / "state.db"))
    scheduler = Scheduler(db, FakeRunner(), AllPresent(), node_id="n", slots=2)
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        job_id = scheduler.submit(chain(MAX_TASKS, ["fail", "head"], ["ok", "link"]))
        status = await finished(scheduler, job_id)
        assert status["state"] == "failed"
        assert finish_order(scheduler, job_id) == [("t0", "failed")] + [
            (f"t{i}", "skipped") for i in range(1, MAX_TASKS)
        ]
        assert {task["reason"] for task in status["tasks"][1:]} == {"'when: success' does not hold"}
        assert decide.calls == MAX_TASKS - 1  # each waiting task decided once
        assert db.job(job_id).state == "failed"
        assert [x.state for x in db.tasks(job_id, db.job_spec(job_id))][-1] == "skipped"

        # The node goes on: the next job runs.
        after = scheduler.submit(job(t("a", ["ok", "after"])))
        assert (await finished(scheduler, after))["state"] == "succeeded"
        nursery.cancel_scope.cancel()


async def test_chains_of_max_tasks_of_cache_hits_finish_at_submit(tmp_path: Path) -> None:
    """Every link the same action (``after``), or the same action on the output of the one
    before (``input_task``: the fake runner's output depends on argv only): one run fills
    the cache, then the whole chain is answered from it inside submit."""
    runner = FakeRunner()
    scheduler = Scheduler(StateDB(str(tmp_path / "state.db")), runner, AllPresent(), node_id="n", slots=2)
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        fill = scheduler.submit(chain(2, ["ok", "x"], ["ok", "x"], input_task=True))
        assert (await finished(scheduler, fill))["state"] == "succeeded"
        ran = len(runner.ran)
        for link in ({}, {"input_task": True}):
            job_id = scheduler.submit(chain(MAX_TASKS, ["ok", "x"], ["ok", "x"], **link))
            status = scheduler.job_status(job_id)  # finished on return
            assert status["state"] == "succeeded", link
            assert all(task["result"]["cached"] for task in status["tasks"])
            assert finish_order(scheduler, job_id) == [(f"t{i}", "succeeded") for i in range(MAX_TASKS)]
            assert scheduler.db.job(job_id).state == "succeeded"
        assert len(runner.ran) == ran
        assert scheduler.statistics().running_jobs == 0
        nursery.cancel_scope.cancel()


async def test_wide_fans_and_a_task_behind_thousands_are_decided_once_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failing head with MAX_TASKS - 2 reactions fanning out, and a last task after all of them:
    every reaction runs, the task behind them is looked at once (not once per reaction that
    finishes: that was quadratic in the width)."""
    decide = CountingDecide(monkeypatch)
    width = MAX_TASKS - 2
    fan = [t(f"r{i}", ["ok", f"r{i}"], after=["head"], when="failure") for i in range(width)]
    spec = job(
        t("head", ["fail", "head"]),
        *fan,
        t("last", ["ok", "last"], after=[f"r{i}" for i in range(width)], when="always"),
    )
    runner = FakeRunner()
    scheduler = Scheduler(StateDB(str(tmp_path / "state.db")), runner, AllPresent(), node_id="n", slots=4)
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        status = await finished(scheduler, scheduler.submit(spec))
        nursery.cancel_scope.cancel()
    assert status["state"] == "failed"
    assert set(states(status).values()) == {"failed", "succeeded"}
    assert len(runner.ran) == MAX_TASKS
    assert decide.calls == width + 1


async def test_reactions_and_diamonds_settle_depth_first_as_before(tmp_path: Path) -> None:
    """The order of a small DAG's events is the one the recursive scheduler gave (checked on
    cec0609): a task that settles at once moves its own dependents on before its siblings."""
    runner = FakeRunner()
    scheduler = Scheduler(StateDB(str(tmp_path / "state.db")), runner, AllPresent(), node_id="n", slots=1)
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        await finished(scheduler, scheduler.submit(job(t("x", ["ok", "x"]))))  # x is a cache hit from now on
        job_id = scheduler.submit(
            job(
                t("a", ["fail", "a"]),
                t("x", ["ok", "x"], after=["a"], when="always"),
                t("b", ["ok", "b"], after=["a"], when="failure"),
                t("c", ["ok", "c"], after=["a"]),
                t("d", ["ok", "d"], input_task="b", when="always"),
                t("e", ["ok", "e"], after=["c", "d"], when="always"),
                t("f", ["ok", "f"], after=["c"], when="failure"),
                t("g", ["ok", "x"], after=["x", "c"], when="always"),
            )
        )
        status = await finished(scheduler, job_id)
        nursery.cancel_scope.cancel()
    log = scheduler.events(job_id)
    assert log is not None
    assert [(e["type"], e.get("task"), e.get("state")) for e in map(to_wire, log.events) if e["type"] != "output"] == [
        ("job_submitted", None, None),
        ("task_started", "a", None),
        ("task_finished", "a", "failed"),
        ("task_finished", "x", "succeeded"),
        ("task_finished", "c", "skipped"),
        ("task_finished", "f", "skipped"),
        ("task_finished", "g", "succeeded"),
        ("task_started", "b", None),
        ("task_finished", "b", "succeeded"),
        ("task_started", "d", None),
        ("task_finished", "d", "succeeded"),
        ("task_started", "e", None),
        ("task_finished", "e", "succeeded"),
        ("job_finished", None, "failed"),
    ]
    assert status["state"] == "failed"
    assert [argv[-1] for argv in runner.ran] == ["x", "a", "b", "d", "e"]


async def test_a_task_made_ready_behind_a_cache_hit_at_submit_runs_once(tmp_path: Path) -> None:
    """b becomes ready while submit moves a (a cache hit) on; submit used to make it ready a
    second time when it came to b itself, and with two free slots b ran twice."""
    runner = FakeRunner()
    scheduler = Scheduler(StateDB(str(tmp_path / "state.db")), runner, AllPresent(), node_id="n", slots=2)
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        await finished(scheduler, scheduler.submit(job(t("a", ["ok", "a"]))))
        job_id = scheduler.submit(job(t("a", ["ok", "a"]), t("b", ["ok", "b"], after=["a"])))
        status = await finished(scheduler, job_id)
        nursery.cancel_scope.cancel()
    assert status["state"] == "succeeded"
    assert runner.ran == [("ok", "a"), ("ok", "b")]
    assert status["tasks"][1]["attempts"] == 1


class BrokenStore:
    """A store whose ``has`` raises on its ``fails_at``-th call: a bug met halfway through a submit."""

    def __init__(self, fails_at: int) -> None:
        self.calls = 0
        self.fails_at = fails_at

    def has(self, digest: Any) -> bool:
        self.calls += 1
        if self.calls == self.fails_at:
            raise RuntimeError("the store broke")
        return True


async def test_a_submit_that_fails_halfway_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = BrokenStore(fails_at=3 * 50 + 1)  # 50 cache hits in (3 blobs checked per hit), then it breaks
    db = StateDB(str(tmp_path / "state.db"))
    scheduler = Scheduler(db, FakeRunner(), store, node_id="n", slots=1)
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        fill = scheduler.submit(job(t("x", ["ok", "x"])))  # a miss: no blob is checked
        assert (await finished(scheduler, fill))["state"] == "succeeded"
        monkeypatch.setattr(scheduler_module, "new_job_id", lambda: "0" * 20)
        with pytest.raises(RuntimeError, match="the store broke"):
            scheduler.submit(chain(100, ["ok", "x"], ["ok", "x"]))
        assert scheduler.events("0" * 20) is None
        with pytest.raises(JobNotFound):
            scheduler.job_status("0" * 20)
        assert [row.id for row in db.jobs(limit=10)] == [fill]
        stats = scheduler.statistics()
        assert (stats.running_jobs, stats.queued, stats.cache_hits) == (0, 0, 0)

        monkeypatch.setattr(scheduler_module, "new_job_id", lambda: "1" * 20)
        assert (await finished(scheduler, scheduler.submit(job(t("a", ["ok", "a"])))))["state"] == "succeeded"
        assert [row.id for row in db.jobs(limit=10)] == ["1" * 20, fill]
        nursery.cancel_scope.cancel()


def write_job(db: StateDB, job_id: str, spec: JobSpec, states: dict[str, str]) -> None:
    db.add_job(job_id, spec, {task.name: states.get(task.name, "waiting") for task in spec.tasks})
    for record in db.tasks(job_id, spec):
        if record.state == "failed":
            record.reason = "exit code 1"
            db.set_task_state(record)


async def test_resuming_a_chain_of_max_tasks_behind_a_failed_head_ends_it(tmp_path: Path) -> None:
    """The node died after the head failed (on cec0609 it died of the skipping itself, and again
    at every start): resuming skips the rest and the job ends failed."""
    path = str(tmp_path / "state.db")
    spec = chain(MAX_TASKS, ["fail", "head"], ["ok", "link"])
    write_job(StateDB(path), "a" * 20, spec, {"t0": "failed"})
    scheduler = Scheduler(StateDB(path), FakeRunner(), AllPresent(), node_id="n", slots=1)
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        status = scheduler.job_status("a" * 20)
        nursery.cancel_scope.cancel()
    assert status["state"] == "failed"
    assert list(states(status).values()) == ["failed"] + ["skipped"] * (MAX_TASKS - 1)


async def test_a_job_that_cannot_be_resumed_is_failed_and_the_others_go_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One job's spec no longer parses, another's stored result is damaged, a third resumes
    raising a bug: each is failed with the reason, in one log line each, and the healthy job
    between them runs."""
    path = str(tmp_path / "state.db")
    db = StateDB(path)
    spec = job(t("a", ["ok", "a"]), t("b", ["ok", "b"], after=["a"]))
    for job_id in ("1" * 20, "2" * 20, "3" * 20, "4" * 20):
        write_job(db, job_id, spec, {"a": "queued"})
    raw = sqlite3.connect(path)
    with raw:
        retired = {"tasks": [{"name": "a", "argv": ["ok"], "input": spec.tasks[0].wire["input"], "retired": 1}]}
        raw.execute("UPDATE jobs SET spec = ? WHERE id = ?", (codec.encode(retired), "1" * 20))
        raw.execute(
            "UPDATE tasks SET state = 'succeeded', result = ? WHERE job = ? AND name = 'a'", (b"\xff", "2" * 20)
        )
        raw.execute("UPDATE tasks SET name = 'renamed' WHERE job = ? AND name = 'b'", ("4" * 20,))
    raw.close()

    runner = FakeRunner()
    scheduler = Scheduler(StateDB(path), runner, AllPresent(), node_id="n", slots=1)
    with caplog.at_level(logging.ERROR, logger="mesh.sched"):
        async with trio.open_nursery() as nursery:
            await nursery.start(scheduler.run)
            healthy = await finished(scheduler, "3" * 20)
            nursery.cancel_scope.cancel()
    assert healthy["state"] == "succeeded"
    assert [argv[-1] for argv in runner.ran] == ["a", "b"]

    why = {
        "1" * 20: "unknown field(s): 'retired'",
        "2" * 20: "a stored result cannot be read",
        "4" * 20: "has a task 'renamed' that its spec does not name",
    }
    for job_id, words in why.items():
        status = scheduler.job_status(job_id)
        assert status["state"] == "failed", status
        assert status["reason"].startswith("the node could not resume this job: ")
        assert words in status["reason"], status["reason"]
        assert status["finished_at"] is not None
    assert [len(scheduler.job_status(j)["tasks"]) for j in why] == [0, 0, 0]  # their rows cannot be read
    states_left = sqlite3.connect(path).execute("SELECT job, state FROM tasks WHERE job != ?", ("3" * 20,)).fetchall()
    assert {state for _, state in states_left} == {"failed", "succeeded"}  # none of them is left waiting
    lines = [r.getMessage() for r in caplog.records if r.name == "mesh.sched"]
    assert len(lines) == 3 and all("could not resume" in line for line in lines)
    assert StateDB(path).count_jobs() == {"failed": 3, "succeeded": 1}


async def test_a_damaged_job_row_is_failed_and_the_node_starts(tmp_path: Path) -> None:
    """A running job's created_at holds text (SQLite keeps it in a REAL column). Before, every
    unfinished row was converted before the per-job guard: the ValueError left the start, and
    the node failed to start, every time. Now the job is failed with the reason, the others run."""
    path = str(tmp_path / "state.db")
    db = StateDB(path)
    spec = job(t("a", ["ok", "a"]), t("b", ["ok", "b"], after=["a"]))
    for job_id in ("1" * 20, "2" * 20):
        write_job(db, job_id, spec, {"a": "queued"})
    with contextlib.closing(sqlite3.connect(path)) as raw, raw:
        raw.execute("UPDATE jobs SET created_at = 'yesterday' WHERE id = ?", ("1" * 20,))

    scheduler = Scheduler(StateDB(path), FakeRunner(), AllPresent(), node_id="n", slots=1)
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        healthy = await finished(scheduler, "2" * 20)
        nursery.cancel_scope.cancel()
    assert healthy["state"] == "succeeded"
    with contextlib.closing(sqlite3.connect(path)) as raw:
        [(state, reason)] = raw.execute("SELECT state, reason FROM jobs WHERE id = ?", ("1" * 20,)).fetchall()
        tasks = raw.execute("SELECT state, reason FROM tasks WHERE job = ?", ("1" * 20,)).fetchall()
    assert state == "failed", state
    assert reason.startswith(f"the node could not resume this job: job {'1' * 20} in {path} is damaged: ")
    assert "'yesterday'" in reason and tasks == [("failed", reason), ("failed", reason)]
    with pytest.raises(StateError, match="is damaged"):  # what reading it says, where the API asks
        scheduler.job_status("1" * 20)


async def test_a_bug_while_resuming_a_job_fails_that_job_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "state.db")
    db = StateDB(path)
    spec = job(t("a", ["ok", "a"]), t("b", ["ok", "b"], after=["a"]))
    write_job(db, "1" * 20, spec, {"a": "succeeded"})
    write_job(db, "2" * 20, job(t("a", ["ok", "other"])), {"a": "queued"})

    def buggy(when: str, dep_states: list[str]) -> str | None:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(scheduler_module, "decide", buggy)
    scheduler = Scheduler(StateDB(path), FakeRunner(), AllPresent(), node_id="n", slots=1)
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        monkeypatch.setattr(scheduler_module, "decide", decide)
        other = await finished(scheduler, "2" * 20)
        nursery.cancel_scope.cancel()
    assert other["state"] == "succeeded"
    failed = scheduler.job_status("1" * 20)
    assert failed["state"] == "failed"
    assert failed["reason"] == "the node could not resume this job: ZeroDivisionError: a bug"
    assert states(failed) == {"a": "succeeded", "b": "failed"}  # the savepoint undid nothing it should keep


def test_a_database_made_before_job_reasons_gains_the_column(tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")
    StateDB(path).add_job("1" * 20, job(t("a", ["ok", "a"])), {"a": "queued"})
    raw = sqlite3.connect(path)
    raw.execute("ALTER TABLE jobs DROP COLUMN reason")  # as version 1 made it
    raw.close()
    db = StateDB(path)
    assert db.job("1" * 20).reason is None
    db.fail_job("1" * 20, "why")
    assert db.job("1" * 20).reason == "why"
    assert db.job("1" * 20).state == "failed"


class BuggyRunner(FakeRunner):
    """A runner with a bug that a task whose argv[0] is "bug" meets."""

    async def run(self, action: Any, *, on_output: Any = None, on_cancel: Any = None) -> Any:
        if action.argv[0] == "bug":
            raise RuntimeError("a bug in the runner")
        return await super().run(action, on_output=on_output)


async def test_a_bug_running_one_task_fails_that_task_only(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """On cec0609 the error left the scheduler's nursery, and with it the node."""
    scheduler = Scheduler(StateDB(str(tmp_path / "state.db")), BuggyRunner(), AllPresent(), node_id="n", slots=1)
    with caplog.at_level(logging.ERROR, logger="mesh.sched"):
        async with trio.open_nursery() as nursery:
            await nursery.start(scheduler.run)
            broken = scheduler.submit(job(t("x", ["bug", "x"]), t("y", ["ok", "y"], after=["x"])))
            fine = scheduler.submit(job(t("z", ["ok", "z"])))
            assert (await finished(scheduler, fine))["state"] == "succeeded"
            status = await finished(scheduler, broken)
            nursery.cancel_scope.cancel()
    assert states(status) == {"x": "failed", "y": "skipped"}
    reason = "the node could not run the task: RuntimeError: a bug in the runner"
    assert status["tasks"][0]["reason"] == reason
    assert [r.getMessage() for r in caplog.records] == [f"task x of job {broken} failed: {reason}"]


async def test_a_bug_moving_a_job_on_gives_that_job_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bug strikes after a task ended, while its dependents are decided: the job fails
    with the reason, in memory and in the database alike, and the node goes on."""
    path = str(tmp_path / "state.db")
    scheduler = Scheduler(StateDB(path), FakeRunner(), AllPresent(), node_id="n", slots=1)
    spec = job(t("a", ["ok", "a"]), t("b", ["ok", "b"], after=["a"]))

    def buggy(when: str, dep_states: list[str]) -> str | None:
        raise ZeroDivisionError("a bug")

    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        monkeypatch.setattr(scheduler_module, "decide", buggy)
        given_up = scheduler.submit(spec)
        status = await finished(scheduler, given_up)
        monkeypatch.setattr(scheduler_module, "decide", decide)
        after = await finished(scheduler, scheduler.submit(job(t("c", ["ok", "c"]), t("d", ["ok", "d"], after=["c"]))))
        nursery.cancel_scope.cancel()
    assert after["state"] == "succeeded"
    reason = "the node failed while moving this job on: ZeroDivisionError: a bug"
    assert status["state"] == "failed" and status["reason"] == reason and status["recorded"]
    assert states(status) == {"a": "succeeded", "b": "failed"}
    db = StateDB(path)
    assert db.job(given_up).state == "failed" and db.job(given_up).reason == reason
    assert [(task.state, task.reason) for task in db.tasks(given_up, spec)] == [("succeeded", None), ("failed", reason)]


async def test_a_job_given_up_while_the_disk_is_full_is_recorded_failed_once_it_frees(
    small_fs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bug strikes while nothing can be committed (the state database's disk is full): once
    space is freed, the retried commit records the job failed with its reason, not only its
    tasks. Before, the job's row was a direct statement that the failed commit undid, while
    only the task writes waited: the job stayed "running" in the database for good."""
    path = str(small_fs / "state.db")
    runner = FakeRunner()
    runner.hold = True
    scheduler = Scheduler(StateDB(path), runner, AllPresent(), node_id="n", slots=1)
    spec = job(t("a", ["ok", "a"]), t("b", ["ok", "b"], after=["a"]))

    def buggy(when: str, dep_states: list[str]) -> str | None:
        raise ZeroDivisionError("a bug")

    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        given_up = scheduler.submit(spec)
        with trio.fail_after(10):
            while not runner.running or scheduler.db.waiting:  # a's running mark is committed
                await trio.sleep(0.001)
        filler = fill(small_fs)
        monkeypatch.setattr(scheduler_module, "decide", buggy)
        runner.release.set()
        status = await finished(scheduler, given_up)
        assert status["state"] == "failed" and not status["recorded"], status
        filler.unlink()
        with trio.fail_after(10):
            while scheduler.db.unrecorded(given_up):  # retried every RECORD_RETRY seconds (mesh.sched.recording)
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    reason = "the node failed while moving this job on: ZeroDivisionError: a bug"
    db = StateDB(path)
    assert (db.job(given_up).state, db.job(given_up).reason) == ("failed", reason)
    assert [(task.state, task.reason) for task in db.tasks(given_up, spec)] == [("succeeded", None), ("failed", reason)]
    assert db.count_jobs() == {"failed": 1}


async def test_finished_jobs_in_memory_are_bounded_by_their_tasks_and_events(tmp_path: Path) -> None:
    """Finished jobs stay in memory for quick answers, bounded by tasks and events, not only by
    count: 30 jobs of 10,000 tasks grew a node by 660 MB when only their number was bounded.
    The jobs let go are answered from the database, and their followers get a summary."""
    db = StateDB(str(tmp_path / "state.db"))
    scheduler = Scheduler(db, FakeRunner(), AllPresent(), node_id="n", slots=2)
    size = 4_000
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        ids = []
        for _ in range(16):  # 64,000 tasks and events in 16 jobs: far fewer than RECENT_JOBS
            ids.append(scheduler.submit(chain(size, ["fail", "head"], ["ok", "link"])))
            await finished(scheduler, ids[-1])
        held = [job_id for job_id in ids if job_id in scheduler._recent]
        assert ids[-1] in held and len(held) * size <= scheduler_module.RECENT_TASKS
        logs = [scheduler.events(job_id) for job_id in ids]
        kept = [log for log in logs if log is not None]
        assert logs[-1] is not None and sum(len(log.events) for log in kept) <= events_module.RETAINED_FINISHED_EVENTS
        assert scheduler.events(ids[0]) is None  # let go: the API summarises it from the database
        status = scheduler.job_status(ids[0])  # from the database
        assert status["state"] == "failed" and len(status["tasks"]) == size
        nursery.cancel_scope.cancel()
