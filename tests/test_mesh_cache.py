"""The mesh-wide action cache (mesh.cluster.actioncache) with fake peers, and the scheduler over it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import trio

from mesh import codec
from mesh.cas.digest import Digest
from mesh.cas.store import LocalStore
from mesh.cas.tree import Entry, Kind, decode_node, encode_node
from mesh.cluster.actioncache import LOOKUP_PATH, MAX_KEYS, MeshActionCache
from mesh.cluster.inline import HIT_BUDGET, ResultBlobs
from mesh.errors import CodecError, NodeUnreachable
from mesh.exec.action import ActionResult
from mesh.sched.actioncache import LocalActionCache
from mesh.sched.scheduler import Scheduler
from mesh.sched.statedb import StateDB
from tests.test_scheduler import AllPresent, FakeRunner, job, t, wait_state

NOW = time.time()
BLOB = Digest.of(b"stdout")


def result(node: str = "r", exit_code: int = 0) -> ActionResult:
    return ActionResult(
        exit_code=exit_code, stdout=BLOB, stderr=BLOB, output=None, started_at=NOW, finished_at=NOW, node=node
    )


class Peers:
    """Fake peers: ``caches`` maps a URL to what its local cache holds; ``silent`` ones never
    answer, ``broken`` ones fail, ``garbage`` ones answer nonsense."""

    def __init__(self, caches: dict[str, dict[Digest, ActionResult]]) -> None:
        self.caches = caches
        self.silent: set[str] = set()
        self.broken: set[str] = set()
        self.garbage: set[str] = set()
        self.calls: list[tuple[str, list[str]]] = []

    def alive_urls(self) -> list[str]:
        return sorted(self.caches)

    async def call(self, url: str, path: str, body: Any, *, timeout: float) -> Any:
        assert path == LOOKUP_PATH
        self.calls.append((url, list(body["keys"])))
        await trio.sleep(0)
        if url in self.silent:
            await trio.sleep_forever()
        if url in self.broken:
            raise NodeUnreachable(f"peer {url} does not answer")
        if url in self.garbage:
            return {"node": 3, "results": "no"}
        held = self.caches[url]
        hits = {k: held[Digest.parse(k)].to_wire() for k in body["keys"] if Digest.parse(k) in held}
        return {"node": url.removeprefix("http://"), "results": hits}


def local_cache(tmp_path: Path, name: str = "n") -> LocalActionCache:
    db = StateDB(str(tmp_path / f"{name}.db"))
    return LocalActionCache(db, node_id=name, has=lambda d: True, holds_tree=lambda d: True)


def key(i: int) -> Digest:
    return Digest.of(f"key {i}".encode())


async def test_a_local_miss_is_found_at_a_peer_and_lookups_are_batched(tmp_path: Path) -> None:
    peers = Peers({"http://a": {key(1): result("x")}, "http://b": {key(2): result("b")}})
    cache = MeshActionCache(local_cache(tmp_path), peers, node_id="n")
    found: dict[int, ActionResult | None] = {}

    async def look(i: int) -> None:
        found[i] = await cache.get_further(key(i))

    async with trio.open_nursery() as nursery:
        await nursery.start(cache.run)
        assert cache.asks_further() and cache.get(key(1)) is None
        async with trio.open_nursery() as lookups:
            for i in range(5):
                lookups.start_soon(look, i)
        nursery.cancel_scope.cancel()
    assert sorted(url for url, _ in peers.calls) == ["http://a", "http://b"]  # one request per peer
    assert all(len(keys) == 5 for _, keys in peers.calls)
    hit = found[1]
    assert hit is not None and hit.cached and hit.cache_key == key(1)
    assert hit.cache_note == "from the action cache of node a (http://a), run on node x"
    assert found[2] is not None and found[2].cache_note == "from the action cache of node b (http://b)"
    assert found[0] is None and found[3] is None and found[4] is None
    assert cache.statistics().asked == 5 and cache.statistics().found == 2


async def test_a_silent_broken_or_nonsensical_peer_is_a_miss_within_the_timeout(tmp_path: Path) -> None:
    peers = Peers({"http://ok": {key(1): result()}, "http://quiet": {}, "http://down": {}, "http://odd": {}})
    peers.silent.add("http://quiet")
    peers.broken.add("http://down")
    peers.garbage.add("http://odd")
    cache = MeshActionCache(local_cache(tmp_path), peers, node_id="n", timeout=0.3)
    with trio.fail_after(2):
        assert await cache.get_further(key(1)) is not None  # the others are not waited for
        started = trio.current_time()
        assert await cache.get_further(key(2)) is None  # waits for the silent one, up to the timeout
        assert 0.25 < trio.current_time() - started < 1.5


async def test_a_failed_result_from_a_peer_is_not_taken(tmp_path: Path) -> None:
    peers = Peers({"http://a": {key(1): result(exit_code=1)}})
    assert await MeshActionCache(local_cache(tmp_path), peers, node_id="n").get_further(key(1)) is None


def test_a_peers_lookup_is_answered_from_the_local_cache_only(tmp_path: Path) -> None:
    local = local_cache(tmp_path, "me")
    local.put(key(1), result("me"))
    cache = MeshActionCache(local, Peers({}), node_id="me")
    answer = cache.answer({"keys": [str(key(1)), str(key(2))]})
    assert answer["node"] == "me" and list(answer["results"]) == [str(key(1))]
    assert ActionResult.from_wire(answer["results"][str(key(1))]).cached
    assert not cache.asks_further()
    # A field of a later version is ignored: its lookup is answered all the same.
    later = cache.answer({"keys": [str(key(1))], "inline": 0, "claim": {"holder": "http://x:1"}})
    assert list(later["results"]) == [str(key(1))]
    for bad in (
        {"keys": ["nope"]},
        {"keys": "x"},
        {"keys": [], "inline": "lots"},
        [1],
        {"keys": [str(key(1))] * (MAX_KEYS + 1)},
    ):
        with pytest.raises(CodecError):
            cache.answer(bad)


async def test_a_task_missing_here_is_answered_by_a_peer_without_running(tmp_path: Path) -> None:
    """The scheduler asks the peers after a local miss, before the task takes a slot; a hit
    finishes it, a miss queues it; a cancel meanwhile stays a cancel."""
    runner = FakeRunner()
    db = StateDB(str(tmp_path / "state.db"))
    peers = Peers({"http://a": {}})
    local = LocalActionCache(db, node_id="n", has=lambda d: True, holds_tree=lambda d: True)
    cache = MeshActionCache(local, peers, node_id="n")
    scheduler = Scheduler(db, runner, AllPresent(), node_id="n", slots=1, cache=cache)
    async with trio.open_nursery() as nursery:
        await nursery.start(cache.run)
        await nursery.start(scheduler.run)
        first = await wait_state(scheduler, scheduler.submit(job(t("a", ["ok", "a"]))), "succeeded")
        made = first["tasks"][0]["result"]
        assert runner.ran == [("ok", "a")] and made["cache_note"] == "not in the cache: first run"
        # The entry moves to the peer (as if made there): this node's copy is gone.
        peers.caches["http://a"][Digest.parse(made["cache_key"])] = ActionResult.from_wire(made)
        db.forget_cached(made["cache_key"])
        again = await wait_state(scheduler, scheduler.submit(job(t("a", ["ok", "a"]))), "succeeded")
        hit = again["tasks"][0]["result"]
        assert runner.ran == [("ok", "a")] and hit["cached"]
        assert hit["cache_note"] == "from the action cache of node a (http://a), run on node fake"

        peers.silent.add("http://a")
        waiting = scheduler.submit(job(t("b", ["ok", "b"])))
        assert scheduler.job_status(waiting)["tasks"][0]["state"] == "queued"
        scheduler.cancel(waiting)
        await wait_state(scheduler, waiting, "cancelled")
        other = scheduler.submit(job(t("c", ["ok", "c"]), no_cache=True))  # not held up by the lookup
        await wait_state(scheduler, other, "succeeded")
        with trio.fail_after(3):
            while scheduler._looking:
                await trio.sleep(0.01)
        assert scheduler.job_status(waiting)["state"] == "cancelled" and ("ok", "b") not in runner.ran
        nursery.cancel_scope.cancel()


class Linked:
    """Peers that are real caches: a lookup is answered by the peer's own ``answer`` (its
    blobs go through CBOR, as on the wire), after ``tamper`` may change the answer."""

    def __init__(self, caches: dict[str, MeshActionCache]) -> None:
        self.caches = caches
        self.bodies: list[Any] = []
        self.tamper: Any = None

    def alive_urls(self) -> list[str]:
        return sorted(self.caches)

    async def call(self, url: str, path: str, body: Any, *, timeout: float) -> Any:
        assert path == LOOKUP_PATH
        self.bodies.append(body)
        answer = codec.decode(codec.encode(self.caches[url].answer(codec.decode(codec.encode(body)))))
        return answer if self.tamper is None else self.tamper(answer)


def holder_with_a_compile(tmp_path: Path, obj: bytes) -> tuple[MeshActionCache, LocalStore, ActionResult]:
    """A node's cache and store holding one compile's result: a warning on stderr, an empty
    stdout, an output snapshot of one object."""
    store = LocalStore(tmp_path / "holder")
    empty, said = store.put(b""), store.put(b"warning: this\n")
    root = store.put(encode_node([Entry(b"out.o", Kind.FILE, store.put(obj))]))
    made = ActionResult(
        exit_code=0, stdout=empty, stderr=said, output=root, started_at=NOW, finished_at=NOW, node="holder"
    )
    local = LocalActionCache(
        StateDB(str(tmp_path / "holder.db")), node_id="holder", has=store.has, holds_tree=store.has
    )
    local.put(key(1), made)
    return MeshActionCache(local, Peers({}), node_id="holder", blobs=ResultBlobs(store)), store, made


async def test_a_peers_hit_brings_its_small_blobs_with_it_each_checked(tmp_path: Path) -> None:
    """A hit found at a peer comes with its stderr and output snapshot (root node and object),
    stored here verified, so reading them costs no further request; an answer with one blob
    whose bytes are not its digest's has none of its blobs kept (the hit still counts)."""
    holder, _, made = holder_with_a_compile(tmp_path, b"\x7fELF object" * 1000)
    assert made.output is not None
    peers = Linked({"http://holder": holder})
    here = LocalStore(tmp_path / "here")
    cache = MeshActionCache(local_cache(tmp_path), peers, node_id="n", blobs=ResultBlobs(here))
    hit = await cache.get_further(key(1))
    assert hit is not None and hit.output == made.output
    assert peers.bodies[-1]["inline"] > 0
    assert here.has(made.stderr) and here.get(made.stderr) == b"warning: this\n"
    (entry,) = decode_node(here.get(made.output))
    assert here.get(entry.blob) == b"\x7fELF object" * 1000

    def swap_bytes(answer: dict[str, Any]) -> dict[str, Any]:
        blobs = answer["blobs"]
        first = next(iter(blobs))
        blobs[first] = blobs[first][:-1] + b"?"
        return answer

    elsewhere = LocalStore(tmp_path / "elsewhere")
    peers.tamper = swap_bytes
    other = MeshActionCache(local_cache(tmp_path, "o"), peers, node_id="o", blobs=ResultBlobs(elsewhere))
    assert await other.get_further(key(1)) is not None
    assert elsewhere.find_missing([made.stderr, made.output, entry.blob]) == [made.stderr, made.output, entry.blob]


async def test_a_hit_too_big_for_the_budget_stays_a_reference(tmp_path: Path) -> None:
    holder, _, made = holder_with_a_compile(tmp_path, b"x" * (HIT_BUDGET + 1))
    assert made.output is not None
    here = LocalStore(tmp_path / "here")
    cache = MeshActionCache(local_cache(tmp_path), Linked({"http://h": holder}), node_id="n", blobs=ResultBlobs(here))
    assert await cache.get_further(key(1)) is not None
    assert not here.has(made.output) and not here.has(made.stderr)
    small, _, _ = holder_with_a_compile(tmp_path / "small", b"y")
    assert "blobs" not in small.answer({"keys": [str(key(1))]})  # a lookup that offers no budget gets none
    assert "blobs" not in small.answer({"keys": [str(key(1))], "inline": 0})
    assert len(small.answer({"keys": [str(key(1))], "inline": 1 << 20})["blobs"]) == 3  # stderr, root, object
    with pytest.raises(CodecError):
        small.answer({"keys": [], "inline": -1})


async def test_a_hit_counts_when_keeping_its_blobs_outlasts_the_lookup(tmp_path: Path) -> None:
    """Blobs that cannot be kept in the lookup's time (a slow disk, eviction for room) leave
    the hit a reference, fetched later, but still a hit."""

    class Stuck(ResultBlobs):
        async def keep(self, sent: Any, budget: int, roots: Any, source: str) -> None:
            await trio.sleep_forever()

    holder, _, made = holder_with_a_compile(tmp_path, b"object")
    here = LocalStore(tmp_path / "here")
    cache = MeshActionCache(
        local_cache(tmp_path), Linked({"http://h": holder}), node_id="n", timeout=0.2, blobs=Stuck(here)
    )
    with trio.fail_after(3):
        hit = await cache.get_further(key(1))
    assert hit is not None and hit.output == made.output
