"""One run for identical work in flight: on one node (mesh.sched.inflight), across nodes (mesh.cluster.inflight)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from mesh.cas.digest import Digest
from mesh.cluster import inflight
from mesh.cluster.inflight import CLAIM_PATH, RELEASE_PATH, ClaimTable, MeshClaims, owner
from mesh.errors import CodecError, NodeUnreachable
from mesh.exec.action import ActionResult
from mesh.sched.inflight import ClaimAnswer, InFlight
from mesh.sched.scheduler import Scheduler
from mesh.sched.statedb import StateDB
from tests.test_scheduler import AllPresent, FakeRunner, job, t, wait_state

KEY = Digest.of(b"a cache key")


def test_in_flight_keeps_one_leader_per_key_and_hands_over_its_waiters() -> None:
    flight: InFlight[str] = InFlight()
    assert flight.lead_or_wait(KEY, "a") is None
    assert flight.lead_or_wait(KEY, "a") is None  # the leader again
    assert flight.lead_or_wait(KEY, "b") == "a" and flight.lead_or_wait(KEY, "c") == "a"
    assert flight.end(KEY, "b") == []  # not its leader
    assert flight.end(KEY, "a") == ["b", "c"] and len(flight) == 0
    assert flight.lead_or_wait(KEY, "b") is None
    flight.lead_or_wait(KEY, "c")
    flight.forget(lambda item: item != "b")
    assert len(flight) == 0 and flight.lead_or_wait(KEY, "c") is None


# -- on one node ----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def running(tmp_path: Path, runner: FakeRunner, **extra: Any) -> AsyncIterator[Scheduler]:
    """A scheduler of 2 slots over ``runner``, running (its tasks held until released)."""
    scheduler = Scheduler(StateDB(str(tmp_path / "state.db")), runner, AllPresent(), node_id="n", slots=2, **extra)
    runner.hold = True
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        yield scheduler
        nursery.cancel_scope.cancel()


async def test_identical_tasks_in_flight_on_one_node_run_once(tmp_path: Path) -> None:
    runner = FakeRunner()
    async with running(tmp_path, runner) as scheduler:
        first = scheduler.submit(job(t("a", ["ok", "same"])))
        second = scheduler.submit(job(t("b", ["ok", "same"])))  # the same action, another job
        both = scheduler.submit(job(t("c", ["ok", "same"]), t("d", ["ok", "same"])))  # and twice in one
        with trio.fail_after(5):
            while not runner.ran:
                await trio.sleep(0.001)
        await trio.testing.wait_all_tasks_blocked()
        assert runner.ran == [("ok", "same")] and scheduler.statistics().busy == 1
        runner.hold = False
        runner.release.set()
        await wait_state(scheduler, first, "succeeded")
        for job_id in (second, both):
            status = await wait_state(scheduler, job_id, "succeeded")
            for task in status["tasks"]:
                assert task["result"]["cached"]
                assert (
                    task["result"]["cache_note"] == f"waited for task a of job {first}, which ran it at the same time"
                )
        assert runner.ran == [("ok", "same")]


async def test_a_failed_or_cancelled_leader_passes_the_run_to_a_waiter(tmp_path: Path) -> None:
    runner = FakeRunner()
    async with running(tmp_path, runner) as scheduler:
        failing = [scheduler.submit(job(t("f", ["fail", "x"]))) for _ in range(2)]
        leader = scheduler.submit(job(t("a", ["ok", "y"])))
        waiters = [scheduler.submit(job(t("b", ["ok", "y"]))) for _ in range(2)]
        with trio.fail_after(5):
            while len(runner.ran) < 2:
                await trio.sleep(0.001)
        scheduler.cancel(waiters[0])  # a waiter cancelled: nothing else changes
        scheduler.cancel(leader)  # the leader cancelled: the next waiter runs it
        runner.hold = False
        runner.release.set()
        for job_id in failing:  # a failure is not shared: each ran, one after the other
            assert (await wait_state(scheduler, job_id, "failed"))["tasks"][0]["result"]["cached"] is False
        await wait_state(scheduler, waiters[0], "cancelled")
        status = await wait_state(scheduler, waiters[1], "succeeded")
        assert not status["tasks"][0]["result"]["cached"]
        assert sorted(runner.ran) == [("fail", "x"), ("fail", "x"), ("ok", "y"), ("ok", "y")]


class Claims:
    """Claims as the mesh answers them, scripted: ``holder`` holds every key until ``done``."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.asked: list[tuple[Digest, bool]] = []
        self.released: list[tuple[Digest, bool]] = []

    def enabled(self) -> bool:
        return True

    async def claim(self, key: Digest, ttl: float, *, wait: bool) -> ClaimAnswer:
        self.asked.append((key, wait))
        if wait:
            await self.done.wait()
            return ClaimAnswer(False, holder="http://holder:1", done=True)
        return ClaimAnswer(False, holder="http://holder:1")

    async def release(self, key: Digest, *, succeeded: bool) -> None:
        self.released.append((key, succeeded))


class PeerCache:
    """A cache whose peers hold ``found`` once it is set."""

    def __init__(self, local: Any) -> None:
        self.local = local
        self.found: dict[Digest, ActionResult] = {}

    def get(self, key: Digest) -> ActionResult | None:
        return self.local.get(key)

    def put(self, key: Digest, result: ActionResult) -> None:
        self.local.put(key, result)

    def asks_further(self) -> bool:
        return True

    async def get_further(self, key: Digest) -> ActionResult | None:
        return self.found.get(key)


async def test_a_task_whose_key_another_node_holds_waits_for_its_result(tmp_path: Path) -> None:
    runner = FakeRunner()
    claims = Claims()
    async with running(tmp_path, runner, claims=claims) as scheduler:
        scheduler.lookup.cache = cache = PeerCache(scheduler.lookup.cache)
        waiting = scheduler.submit(job(t("a", ["ok", "a"])))
        with trio.fail_after(5):
            while len(claims.asked) < 2:
                await trio.sleep(0.001)
        key = claims.asked[0][0]
        assert scheduler.job_status(waiting)["tasks"][0]["state"] == "queued" and runner.ran == []
        now = time.time()
        made = ActionResult(exit_code=0, stdout=KEY, stderr=KEY, output=None, started_at=now, finished_at=now, node="x")
        cache.found[key] = ActionResult.from_wire({**made.to_wire(), "cached": True, "cache_note": "from there"})
        claims.done.set()
        status = await wait_state(scheduler, waiting, "succeeded")
        note = status["tasks"][0]["result"]["cache_note"]
        assert note == "waited for http://holder:1, which ran it at the same time; from there"
        assert runner.ran == [] and claims.released == []  # it held no claim


# -- across nodes: the claim table and the claimant ----------------------------------------


async def test_the_owner_grants_one_claim_and_tells_the_others_to_wait() -> None:
    alive = {"http://a:1", "http://b:1"}
    table = ClaimTable(alive.__contains__)
    assert await table.claim(KEY, "http://a:1", 60) == ClaimAnswer(True)
    assert await table.claim(KEY, "http://a:1", 60) == ClaimAnswer(True)  # its holder again
    assert await table.claim(KEY, "http://b:1", 60) == ClaimAnswer(False, holder="http://a:1")
    answers: list[ClaimAnswer] = []

    async def wait_for_it() -> None:
        answers.append(await table.claim(KEY, "http://b:1", 60, wait=5))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait_for_it)
        await trio.testing.wait_all_tasks_blocked()
        table.release(KEY, "http://b:1", succeeded=True)  # not its holder: ignored
        await trio.testing.wait_all_tasks_blocked()
        assert answers == []
        table.release(KEY, "http://a:1", succeeded=True)
    assert answers == [ClaimAnswer(False, holder="http://a:1", done=True)]
    other = Digest.of(b"another key")
    await table.claim(other, "http://a:1", 60)
    table.release(other, "http://a:1", succeeded=False)  # a failure frees it: the next claim runs
    assert await table.claim(other, "http://b:1", 60) == ClaimAnswer(True)


async def test_a_claim_lapses_with_its_ttl_or_its_holders_death(autojump_clock: trio.testing.MockClock) -> None:
    alive = {"http://a:1", "http://b:1"}
    table = ClaimTable(alive.__contains__)
    await table.claim(KEY, "http://a:1", 10)
    await trio.sleep(11)
    assert await table.claim(KEY, "http://b:1", 10) == ClaimAnswer(True)
    alive.discard("http://b:1")
    assert await table.claim(KEY, "http://a:1", 10) == ClaimAnswer(True)
    started = trio.current_time()
    other = Digest.of(b"held")
    await table.claim(other, "http://a:1", 100)
    assert not (await table.claim(other, "http://c:1", 100, wait=3)).granted  # waits, then says so
    assert trio.current_time() - started == pytest.approx(3)


async def test_an_owner_keeps_at_most_max_claims_and_grants_the_rest_unkept(monkeypatch: pytest.MonkeyPatch) -> None:
    """Claims a signed peer makes by the million (of live holders, so no sweep frees them)
    cannot take the node's memory: past MAX_CLAIMS a claim is granted and not kept, as an
    owner's silence grants it."""
    monkeypatch.setattr(inflight, "MAX_CLAIMS", 50)
    monkeypatch.setattr(inflight, "SWEEP_AT", 40)
    table = ClaimTable(lambda url: True)
    for n in range(200):
        assert (await table.claim(Digest.of(b"%d" % n), "http://a:1", 100)).granted
    assert len(table) == 50
    unkept = Digest.of(b"199")
    assert (await table.claim(unkept, "http://b:1", 100)).granted  # not held by a: it was not kept
    assert not (await table.claim(Digest.of(b"0"), "http://b:1", 100)).granted  # kept, held by a


async def test_the_wire_forms_of_claims_are_checked() -> None:
    table = ClaimTable(lambda url: True)
    good = {"key": str(KEY), "holder": "http://a:1", "ttl": 60.0}
    assert await table.answer_claim(good) == {"granted": True, "holder": None, "done": False}
    assert (await table.answer_claim({**good, "holder": "http://b:1"}))["holder"] == "http://a:1"
    assert table.answer_release({"key": str(KEY), "holder": "http://a:1", "succeeded": True}) == {}
    for bad in (
        {**good, "key": "nope"},
        {**good, "holder": "ftp://x"},
        {**good, "ttl": 0},
        {**good, "ttl": 1e12},
        {**good, "wait": 60},
        {**good, "extra": 1},
        [1],
    ):
        with pytest.raises(CodecError):
            await table.answer_claim(bad)
    with pytest.raises(CodecError):
        table.answer_release({"key": str(KEY), "holder": "http://a:1"})


def test_the_owner_of_a_key_is_the_same_for_every_view_of_the_same_nodes() -> None:
    urls = [f"http://10.0.0.{i}:7474" for i in range(1, 6)]
    keys = [Digest.of(str(i).encode()) for i in range(500)]
    owners = [owner(k, urls) for k in keys]
    assert owners == [owner(k, list(reversed(urls))) for k in keys]
    assert all(100 - 40 < owners.count(url) < 100 + 40 for url in urls)  # spread over the nodes
    fewer = urls[:-1]
    moved = sum(1 for k, o in zip(keys, owners, strict=True) if owner(k, fewer) != o)
    assert moved == owners.count(urls[-1])  # only the keys of the node that left move


class Peers:
    """Peers whose owner side is a real ClaimTable each; ``down`` ones do not answer."""

    def __init__(self, tables: dict[str, ClaimTable]) -> None:
        self.tables = tables
        self.down: set[str] = set()
        self.calls: list[tuple[str, str]] = []

    def alive_urls(self) -> list[str]:
        return sorted(self.tables)

    async def call(self, url: str, path: str, body: Any, *, timeout: float) -> Any:
        self.calls.append((url, path))
        if url in self.down:
            raise NodeUnreachable(f"peer {url} does not answer")
        if path == CLAIM_PATH:
            return await self.tables[url].answer_claim(body)
        assert path == RELEASE_PATH
        return self.tables[url].answer_release(body)


async def test_claims_go_to_the_keys_owner_and_an_owner_that_does_not_answer_lets_the_task_run() -> None:
    me, a, b = "http://me:1", "http://a:1", "http://b:1"
    peers = Peers({a: ClaimTable(lambda url: True), b: ClaimTable(lambda url: True)})
    mine = ClaimTable(lambda url: True)
    claims = MeshClaims(mine, peers, lambda: me)
    assert claims.enabled()
    keys = [Digest.of(str(i).encode()) for i in range(30)]
    for key in keys:
        at = owner(key, [me, a, b])
        answer = await claims.claim(key, 60, wait=False)
        assert answer == ClaimAnswer(True, by=at)
        table = mine if at == me else peers.tables[at]
        assert len(table) > 0
        await claims.release(key, succeeded=False)
    assert len(mine) == len(peers.tables[a]) == len(peers.tables[b]) == 0
    assert {url for url, _ in peers.calls} == {a, b} and len(peers.calls) < 2 * len(keys)  # some were mine
    remote = next(k for k in keys if owner(k, [me, a, b]) == a)
    peers.down.add(a)
    assert await claims.claim(remote, 60, wait=False) == ClaimAnswer(True)  # unclaimed: no one to release to
    await claims.release(remote, succeeded=True)  # never raises
    assert claims.unanswered == 1
    assert not MeshClaims(mine, Peers({}), lambda: me).enabled()
