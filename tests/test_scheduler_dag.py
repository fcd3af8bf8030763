"""The scheduler moves jobs of any shape and size on without recursion and keeps submissions
all or nothing (fake runner)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from mesh.errors import JobNotFound
from mesh.sched import scheduler as scheduler_module
from mesh.sched.jobs import MAX_TASKS, JobSpec, decide
from mesh.sched.scheduler import Scheduler
from mesh.sched.statedb import StateDB
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
    return [(e["task"], e["state"]) for e in log.events if e["type"] == "task_finished"]


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
    assert [(e["type"], e.get("task"), e.get("state")) for e in log.events if e["type"] != "output"] == [
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
