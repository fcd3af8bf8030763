"""The scheduler with a fake runner: slots, the cache, reactions, cancel, resuming after a crash."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import trio

from mesh.cas.digest import Digest
from mesh.exec.action import Action, ActionResult
from mesh.sched.jobs import parse_job
from mesh.sched.scheduler import Scheduler
from mesh.sched.statedb import StateDB

SNAP = Digest.of(b"input")
EMPTY = Digest.of(b"")


class FakeRunner:
    """Runs nothing: each action's argv[0] says how it ends; ``gate`` holds tasks while set up."""

    executors = {"process": object()}

    def __init__(self) -> None:
        self.ran: list[tuple[str, ...]] = []
        self.running = 0
        self.most_at_once = 0
        self.release = trio.Event()
        self.hold = False

    async def run(self, action: Action, *, on_output: Any = None) -> ActionResult:
        self.ran.append(action.argv)
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            if self.hold or action.argv[0] == "hang":
                await self.release.wait()
            if on_output is not None:
                await on_output("stdout", b"out")
            await trio.sleep(0)
        finally:
            self.running -= 1
        code = 1 if action.argv[0] == "fail" else 0
        now = time.time()
        return ActionResult(
            exit_code=code,
            stdout=EMPTY,
            stderr=EMPTY,
            output=Digest.of(b"out" + action.argv[-1].encode()),
            started_at=now,
            finished_at=now,
            node="fake",
        )


class AllPresent:
    def has(self, digest: Digest) -> bool:
        return True


def job(*tasks: dict[str, Any], no_cache: bool = False) -> Any:
    return parse_job({"tasks": list(tasks), "no_cache": no_cache})


def t(name: str, argv: list[str], **extra: Any) -> dict[str, Any]:
    if "input_task" not in extra:
        extra["input"] = str(SNAP)
    return {"name": name, "argv": argv, **extra}


async def wait_state(scheduler: Scheduler, job_id: str, state: str) -> dict[str, Any]:
    with trio.fail_after(10):
        while True:
            status = scheduler.job_status(job_id)
            if status["state"] == state:
                return status
            await trio.sleep(0.001)


async def test_slots_cache_and_reactions(tmp_path: Path) -> None:
    db = StateDB(str(tmp_path / "state.db"))
    runner = FakeRunner()
    scheduler = Scheduler(db, runner, AllPresent(), node_id="n", slots=2)
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        runner.hold = True
        wide = scheduler.submit(job(*(t(f"w{i}", ["ok", str(i)]) for i in range(6))))
        with trio.fail_after(5):
            while runner.running < 2:
                await trio.sleep(0.001)
        assert scheduler.statistics().busy == 2 and scheduler.statistics().queued == 4
        runner.hold = False
        runner.release.set()
        await wait_state(scheduler, wide, "succeeded")
        assert runner.most_at_once == 2

        # The same actions again are cache hits: finished on return, nothing run.
        ran = len(runner.ran)
        again = scheduler.submit(job(*(t(f"w{i}", ["ok", str(i)]) for i in range(6))))
        assert scheduler.job_status(again)["state"] == "succeeded"
        assert len(runner.ran) == ran
        assert all(task["result"]["cached"] for task in scheduler.job_status(again)["tasks"])

        dag = scheduler.submit(
            job(
                t("a", ["fail", "a"]),
                t("b", ["ok", "b"], after=["a"], when="failure"),
                t("c", ["ok", "c"], after=["a"]),
                t("d", ["ok", "d"], input_task="b", when="always"),
            )
        )
        status = await wait_state(scheduler, dag, "failed")
        assert {x["name"]: x["state"] for x in status["tasks"]} == {
            "a": "failed",
            "b": "succeeded",
            "c": "skipped",
            "d": "succeeded",
        }
        nursery.cancel_scope.cancel()


async def test_cancel_kills_running_and_drops_waiting(tmp_path: Path) -> None:
    db = StateDB(str(tmp_path / "state.db"))
    runner = FakeRunner()
    scheduler = Scheduler(db, runner, AllPresent(), node_id="n", slots=1)
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        job_id = scheduler.submit(job(t("a", ["hang", "a"]), t("b", ["ok", "b"]), t("c", ["ok", "c"], after=["a"])))
        with trio.fail_after(5):
            while runner.running < 1:
                await trio.sleep(0.001)
        scheduler.cancel(job_id)
        status = await wait_state(scheduler, job_id, "cancelled")
        assert {x["name"]: x["state"] for x in status["tasks"]} == {
            "a": "cancelled",
            "b": "cancelled",
            "c": "cancelled",
        }
        assert runner.running == 0
        assert db.job(job_id).state == "cancelled"
        nursery.cancel_scope.cancel()


async def test_a_restarted_scheduler_resumes_interrupted_work(tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")
    runner = FakeRunner()
    scheduler = Scheduler(StateDB(path), runner, AllPresent(), node_id="n", slots=1)
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        job_id = scheduler.submit(
            job(t("a", ["ok", "a"]), t("b", ["hang", "b"], after=["a"]), t("c", ["ok", "c"], after=["b"]))
        )
        with trio.fail_after(5):
            while scheduler.job_status(job_id)["tasks"][1]["state"] != "running":
                await trio.sleep(0.001)
        nursery.cancel_scope.cancel()  # the node dies: b stays "running" in the database

    fresh = FakeRunner()
    fresh.release.set()
    resumed = Scheduler(StateDB(path), fresh, AllPresent(), node_id="n", slots=1)
    async with trio.open_nursery() as nursery:
        await nursery.start(resumed.run)
        status = await wait_state(resumed, job_id, "succeeded")
        tasks = {x["name"]: x for x in status["tasks"]}
        assert [argv[-1] for argv in fresh.ran] == ["b", "c"]  # a's result was kept, b ran again
        assert tasks["b"]["attempts"] == 2 and tasks["a"]["attempts"] == 1
        nursery.cancel_scope.cancel()
