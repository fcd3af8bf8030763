"""The scheduler with a fake runner: slots, the cache, reactions, cancel, resuming after a crash."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from mesh.cas.digest import Digest
from mesh.errors import PeerDeclined
from mesh.exec.action import Action, ActionResult
from mesh.sched import scheduler as scheduler_module
from mesh.sched.jobevents import to_wire
from mesh.sched.jobs import parse_job
from mesh.sched.placement import NodeView
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

    async def run(self, action: Action, *, on_output: Any = None, on_cancel: Any = None) -> ActionResult:
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


async def run_restarted(path: str, job_id: str) -> tuple[dict[str, Any], list[tuple[str, ...]]]:
    """Restart a scheduler on the database at ``path`` (tasks run at once); wait until the job
    succeeds. Returns its status and the argv of every task the restarted one ran."""
    fresh = FakeRunner()
    fresh.release.set()
    resumed = Scheduler(StateDB(path), fresh, AllPresent(), node_id="n", slots=1)
    async with trio.open_nursery() as nursery:
        await nursery.start(resumed.run)
        status = await wait_state(resumed, job_id, "succeeded")
        nursery.cancel_scope.cancel()
    return status, fresh.ran


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
            while scheduler.job_status(job_id)["tasks"][1]["state"] != "running" or scheduler.db.waiting:
                await trio.sleep(0.001)
        nursery.cancel_scope.cancel()  # the node dies: b stays "running" in the database

    status, ran = await run_restarted(path, job_id)
    tasks = {x["name"]: x for x in status["tasks"]}
    assert [argv[-1] for argv in ran] == ["b", "c"]  # a's result was kept, b ran again
    assert tasks["b"]["attempts"] == 2 and tasks["a"]["attempts"] == 1


async def test_a_task_that_started_just_before_a_crash_runs_again(tmp_path: Path) -> None:
    """A running mark younger than MARK_DELAY may be lost with the node: the task then resumes
    as queued, with the attempt not counted, and runs again like an interrupted one."""
    path = str(tmp_path / "state.db")
    scheduler = Scheduler(StateDB(path), FakeRunner(), AllPresent(), node_id="n", slots=1)
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        job_id = scheduler.submit(job(t("a", ["hang", "a"])))
        with trio.fail_after(5):
            while scheduler.job_status(job_id)["tasks"][0]["state"] != "running":
                await trio.sleep(0.001)
        assert scheduler.db.waiting
        nursery.cancel_scope.cancel()  # dies within MARK_DELAY: the mark was never committed
    status, ran = await run_restarted(path, job_id)
    assert ran == [("hang", "a")]
    assert status["tasks"][0]["attempts"] == 1


def test_running_marks_are_written_by_the_next_commit_or_a_flush(tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")
    db = StateDB(path)
    spec = job(t("a", ["ok", "a"]), t("b", ["ok", "b"]), t("c", ["ok", "c"]))
    db.add_job("j", spec, {"a": "queued", "b": "queued", "c": "queued"})
    a, b, c = db.tasks("j", spec)
    for task in (a, b, c):
        task.state, task.attempts = "running", 1
        db.mark_running(task)
    assert db.waiting == 3
    assert [x.state for x in StateDB(path).tasks("j", spec)] == ["queued", "queued", "queued"]  # not yet
    c.state = "succeeded"
    db.set_task_state(c)  # a later write of the same task replaces its mark; its commit takes the marks along
    assert [x.state for x in StateDB(path).tasks("j", spec)] == ["running", "running", "succeeded"]
    assert not db.waiting
    b.attempts = 2  # b started again
    db.mark_running(b)
    assert db.waiting
    db.flush()  # what the scheduler does when no other commit came within MARK_DELAY
    assert not db.waiting
    assert [x.attempts for x in StateDB(path).tasks("j", spec)] == [1, 2, 1]


class FakeRemote:
    """Peers as a scheduler sees them: fixed views; run_on and steal record their calls."""

    def __init__(self, *peers: NodeView, give: int = 0) -> None:
        self.peers = list(peers)
        self.give = give
        self.ran_on: list[tuple[str, tuple[str, ...]]] = []
        self.uncached: set[tuple[str, ...]] = set()  # the argv of tasks offered with no_cache
        self.steals: list[tuple[str, int]] = []
        self.release = trio.Event()

    def candidates(self) -> list[NodeView]:
        return self.peers

    def is_complete(self, root: Digest, store: Any) -> bool:
        return True

    async def fetch_tree(self, source: str | None, root: Digest, store: Any) -> None:
        raise AssertionError("nothing is fetched here")

    async def locality(self, root: Digest, store: Any) -> dict[str, int]:
        return {}

    async def run_on(
        self, url: str, task_key: str, action: Action, on_output: Any, on_cancel: Any = None, *, no_cache: bool = False
    ) -> ActionResult:
        self.ran_on.append((url, action.argv))
        if no_cache:
            self.uncached.add(action.argv)
        await self.release.wait()
        now = time.time()
        return ActionResult(
            exit_code=0, stdout=EMPTY, stderr=EMPTY, output=None, started_at=now, finished_at=now, node=url
        )

    async def steal(self, url: str, slots: int) -> int:
        self.steals.append((url, slots))
        return min(self.give, slots)


THIEF = "http://thief:1"


async def test_a_peer_that_asks_is_given_queued_tasks_it_can_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The thief looks full (gossip is late), so placement alone would never use it.
    caps = {"executor.process": "1", "label.a": "1"}
    remote = FakeRemote(NodeView(node=THIEF, capabilities=caps, slots=2, busy=2))
    runner = FakeRunner()
    db = StateDB(str(tmp_path / "state.db"))
    mine = {"label.b": "1"}
    scheduler = Scheduler(db, runner, AllPresent(), node_id="n", slots=1, capabilities=mine, remote=remote)
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        runner.hold = True
        wants_b = t("needs-b", ["ok", "b"], requirements={"label.b": "1"})
        first = scheduler.submit(job(t("t0", ["ok", "0"]), wants_b, *(t(f"t{i}", ["ok", str(i)]) for i in (1, 2, 3))))
        pinned = scheduler.submit(parse_job({"tasks": [t("p", ["ok", "p"])], "pinned": True}))
        with trio.fail_after(5):
            while runner.running < 1:
                await trio.sleep(0.001)
        assert scheduler.statistics().queued == 5

        assert scheduler.give("http://stranger:1", 3) == 0  # not a live peer
        assert scheduler.give(THIEF, 2) == 2  # the two oldest it can run: not needs-b
        with trio.fail_after(5):
            while len(remote.ran_on) < 2:
                await trio.sleep(0.001)
        assert sorted(argv for _, argv in remote.ran_on) == [("ok", "1"), ("ok", "2")]
        assert {url for url, _ in remote.ran_on} == {THIEF}
        # Offers to the thief under way: this node feeds it itself, so it gives nothing more now.
        assert scheduler.give(THIEF, 5) == 0
        monkeypatch.setattr(scheduler_module, "OWN_COUNT_WINDOW", 0.0)
        assert scheduler.give(THIEF, 5) == 1  # t3; never needs-b (label.b), never the pinned job
        assert scheduler.statistics().tasks_given == 3
        with trio.fail_after(5):
            while len(remote.ran_on) < 3:
                await trio.sleep(0.001)
        log = scheduler.events(first)
        assert log is not None
        events = [e for e in map(to_wire, log.events) if e["type"] == "task_started"]
        assert {e["task"] for e in events if e.get("stolen")} == {"t1", "t2", "t3"}

        remote.release.set()
        runner.hold = False
        runner.release.set()
        status = await wait_state(scheduler, first, "succeeded")
        where = {task["name"]: task["result"]["node"] for task in status["tasks"]}
        assert where == {"t0": "fake", "needs-b": "fake", "t1": THIEF, "t2": THIEF, "t3": THIEF}
        await wait_state(scheduler, pinned, "succeeded")
        nursery.cancel_scope.cancel()


async def test_an_idle_node_steals_from_the_peer_with_the_longest_queue(tmp_path: Path) -> None:
    remote = FakeRemote(
        NodeView(node="http://short:1", slots=1, busy=1, queued=2),
        NodeView(node="http://long:1", slots=1, busy=1, queued=9),
        NodeView(node="http://idle:1", slots=1, busy=0, queued=0),
        give=2,
    )
    scheduler = Scheduler(
        StateDB(str(tmp_path / "state.db")), FakeRunner(), AllPresent(), node_id="n", slots=3, remote=remote
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        with trio.fail_after(5):
            while not remote.steals:
                await trio.sleep(0.001)
        assert remote.steals[0] == ("http://long:1", 3)
        assert scheduler.statistics().tasks_stolen == 2
        # The two promised offers hold their slots: the next look asks for the one left.
        with trio.fail_after(5):
            while len(remote.steals) < 2:
                await trio.sleep(0.001)
        assert remote.steals[1] == ("http://long:1", 1)
        scheduler.offer_arrived()
        nursery.cancel_scope.cancel()


async def test_a_task_only_a_declining_peer_can_run_waits_for_it(tmp_path: Path) -> None:
    """A peer that declined an offer gets none for a moment, but a task that only it can run
    waits for it instead of failing as unplaceable."""

    class DecliningOnce(FakeRemote):
        async def run_on(
            self,
            url: str,
            task_key: str,
            action: Action,
            on_output: Any,
            on_cancel: Any = None,
            *,
            no_cache: bool = False,
        ) -> ActionResult:
            if not self.ran_on:
                self.ran_on.append(("declined", action.argv))
                raise PeerDeclined("no free slot")
            self.release.set()
            return await super().run_on(url, task_key, action, on_output)

    remote = DecliningOnce(NodeView(node=THIEF, capabilities={"executor.process": "1", "label.gpu": "1"}, slots=1))
    db = StateDB(str(tmp_path / "state.db"))
    scheduler = Scheduler(db, FakeRunner(), AllPresent(), node_id="n", slots=1, remote=remote)
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        job_id = scheduler.submit(job(t("gpu", ["ok", "g"], requirements={"label.gpu": "1"})))
        status = await wait_state(scheduler, job_id, "succeeded")
        assert status["tasks"][0]["result"]["node"] == THIEF
        assert remote.ran_on[0][0] == "declined"
        nursery.cancel_scope.cancel()


async def test_a_container_task_goes_to_a_node_holding_its_image(tmp_path: Path) -> None:
    docker = {"executor.docker": "1"}
    holder = NodeView(node="http://holder:1", capabilities={**docker, "image.tools": "1"}, slots=1)
    other = NodeView(node="http://other:1", capabilities=docker, slots=4)
    remote = FakeRemote(other, holder)
    remote.release.set()
    db = StateDB(str(tmp_path / "state.db"))
    scheduler = Scheduler(db, FakeRunner(), AllPresent(), node_id="n", slots=1, remote=remote)
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        box = {"executor": "docker"}
        job_id = scheduler.submit(
            job(
                t("held", ["ok", "1"], image="tools", **box),
                t("anywhere", ["ok", "2"], image="fresh", **box),
                t("nowhere", ["ok", "3"], executor="sandbox"),
            )
        )
        status = await wait_state(scheduler, job_id, "failed")
        tasks = {task["name"]: task for task in status["tasks"]}
        assert tasks["held"]["result"]["node"] == "http://holder:1"  # though "other" has more room
        assert tasks["anywhere"]["state"] == "succeeded"  # no node holds it: any docker node pulls it
        assert "executor.sandbox=1" in tasks["nowhere"]["reason"]
        nursery.cancel_scope.cancel()


async def test_a_long_queue_gives_a_peer_one_task_beyond_its_free_slots(tmp_path: Path) -> None:
    """While more tasks wait than twice the mesh's slots, a peer is offered PREFETCH more than
    its free slots (to start as its slots free); with a short queue, only its free slots."""
    peer = NodeView(node="http://peer:1", capabilities={"executor.process": "1"}, slots=2)
    for tasks, offered in ((12, 2 + scheduler_module.PREFETCH), (4, 2)):
        remote = FakeRemote(peer)
        runner = FakeRunner()
        runner.hold = True
        db = StateDB(str(tmp_path / f"state-{tasks}.db"))
        scheduler = Scheduler(db, runner, AllPresent(), node_id="n", slots=1, remote=remote)
        async with trio.open_nursery() as nursery:
            await nursery.start(scheduler.run)
            scheduler.submit(job(*(t(f"t{i}", ["ok", str(i)]) for i in range(tasks))))
            with trio.fail_after(5):
                while runner.running < 1 or len(remote.ran_on) < offered:
                    await trio.sleep(0.001)
            await trio.testing.wait_all_tasks_blocked()
            assert len(remote.ran_on) == offered and runner.running == 1, tasks
            nursery.cancel_scope.cancel()


async def test_an_offer_is_taken_with_a_free_slot_or_room_in_the_prefetch(tmp_path: Path) -> None:
    runner = FakeRunner()
    runner.hold = True
    scheduler = Scheduler(StateDB(str(tmp_path / "state.db")), runner, AllPresent(), node_id="n", slots=1)
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        assert scheduler.takes_offer()
        offers = []
        for i in range(1 + scheduler_module.PREFETCH):
            offers.append(scheduler.submit(parse_job({"tasks": [t("p", ["ok", str(i)])], "pinned": True})))
            await trio.testing.wait_all_tasks_blocked()
        assert runner.running == 1
        assert not scheduler.takes_offer()  # the slot is busy and the prefetch is full
        runner.hold = False
        runner.release.set()
        for job_id in offers:
            await wait_state(scheduler, job_id, "succeeded")
        assert scheduler.takes_offer()
        nursery.cancel_scope.cancel()


class CancelsOnDispatch(FakeRemote):
    """No peers; once a slot is taken (the first task dispatched, not yet begun), the next
    look at the peers cancels the job: a cancel landing in the same tick as a dispatch."""

    def __init__(self) -> None:
        super().__init__()
        self.scheduler: Scheduler | None = None
        self.job_id = ""

    def candidates(self) -> list[NodeView]:
        assert self.scheduler is not None
        if self.job_id and self.scheduler.statistics().busy:
            self.scheduler.cancel(self.job_id)
            self.job_id = ""
        return []


async def test_a_task_cancelled_between_its_dispatch_and_its_start_never_runs(tmp_path: Path) -> None:
    """On cec0609 the dispatched tasks ran after their job was recorded cancelled, overwrote
    their rows with results, and drove the job's count of open tasks below zero."""
    remote = CancelsOnDispatch()
    runner = FakeRunner()
    db = StateDB(str(tmp_path / "state.db"))
    scheduler = Scheduler(db, runner, AllPresent(), node_id="n", slots=2, remote=remote)
    remote.scheduler = scheduler
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        spec = job(t("a", ["ok", "a"]), t("b", ["ok", "b"]), no_cache=True)
        job_id = scheduler.submit(spec)
        remote.job_id = job_id  # no checkpoint since the submit: the run loop has not looked yet
        await wait_state(scheduler, job_id, "cancelled")
        await trio.testing.wait_all_tasks_blocked()
        assert remote.job_id == ""  # the cancel came while the first task was dispatched
        assert runner.ran == []
        status = scheduler.job_status(job_id)
        assert [task["state"] for task in status["tasks"]] == ["cancelled", "cancelled"]
        assert [task["attempts"] for task in status["tasks"]] == [0, 0]
        assert scheduler.statistics().busy == 0
        nursery.cancel_scope.cancel()
    assert db.job(job_id).state == "cancelled"
    assert [task.state for task in StateDB(str(tmp_path / "state.db")).tasks(job_id, spec)] == ["cancelled"] * 2


async def start_busy(
    tmp_path: Path, nursery: trio.Nursery, thief_slots: int
) -> tuple[FakeRemote, FakeRunner, Scheduler, str]:
    """A one-slot scheduler whose slot a held job ("busy") fills, and a full THIEF of
    ``thief_slots`` slots: what is submitted next waits in the queue, to be given away."""
    remote = FakeRemote(
        NodeView(node=THIEF, capabilities={"executor.process": "1"}, slots=thief_slots, busy=thief_slots)
    )
    runner = FakeRunner()
    runner.hold = True
    scheduler = Scheduler(
        StateDB(str(tmp_path / "state.db")), runner, AllPresent(), node_id="n", slots=1, remote=remote
    )
    await nursery.start(scheduler.run)
    busy = scheduler.submit(job(t("busy", ["ok", "busy"])))
    with trio.fail_after(5):
        while runner.running < 1:
            await trio.sleep(0.001)
    return remote, runner, scheduler, busy


async def test_a_stolen_task_keeps_its_jobs_and_its_own_no_cache(tmp_path: Path) -> None:
    """A task given to a thief is offered with no_cache when its job or the task itself has it
    (a pipeline step's ``cache: false``), so the thief neither answers nor records it."""
    async with trio.open_nursery() as nursery:
        remote, runner, scheduler, busy = await start_busy(tmp_path, nursery, 3)
        whole = scheduler.submit(job(t("w", ["ok", "w"]), no_cache=True))
        mixed = scheduler.submit(job(t("own", ["ok", "own"], no_cache=True), t("cached", ["ok", "cached"])))
        await trio.testing.wait_all_tasks_blocked()
        assert scheduler.give(THIEF, 3) == 3
        with trio.fail_after(5):
            while len(remote.ran_on) < 3:
                await trio.sleep(0.001)
        assert remote.uncached == {("ok", "w"), ("ok", "own")}
        remote.release.set()
        runner.hold = False
        runner.release.set()
        for job_id in (busy, whole, mixed):
            await wait_state(scheduler, job_id, "succeeded")
        nursery.cancel_scope.cancel()


async def test_a_stolen_task_cancelled_before_its_offer_begins_is_not_offered(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        remote, runner, scheduler, busy = await start_busy(tmp_path, nursery, 2)
        queued = scheduler.submit(job(t("q", ["ok", "q"])))
        await trio.testing.wait_all_tasks_blocked()
        assert scheduler.give(THIEF, 1) == 1
        scheduler.cancel(queued)  # the same tick: its offer to the thief has not begun
        await trio.testing.wait_all_tasks_blocked()
        assert remote.ran_on == []
        assert [task["state"] for task in scheduler.job_status(queued)["tasks"]] == ["cancelled"]
        assert scheduler.job_status(queued)["state"] == "cancelled"
        runner.hold = False
        runner.release.set()
        await wait_state(scheduler, busy, "succeeded")
        nursery.cancel_scope.cancel()
