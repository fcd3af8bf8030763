"""PeerStore: missing blobs come from whichever peer has them; the first answers win."""

from __future__ import annotations

import os
import time

import pytest
import trio

from mesh.cas.digest import Digest
from mesh.cas.space import Roots, StoreSpace
from mesh.cas.store import LocalStore
from mesh.cluster import peerstore
from mesh.cluster.peerstore import LOCATE_TIMEOUT, PeerStore
from mesh.errors import NodeUnreachable, StoreCapReached


class Peers:
    """Fake peers over real stores: ``blobs[url]`` is what the peer holds, ``delay[url]`` how
    long it takes to answer a question; ``broken`` peers say they have a blob but lose the
    connection when asked for it. Records every call."""

    def __init__(self, blobs: dict[str, dict[Digest, bytes]], delay: dict[str, float] | None = None) -> None:
        self.blobs = blobs
        self.delay = delay or {}
        self.broken: set[str] = set()
        self.asked: list[str] = []
        self.answered: list[str] = []
        self.copied: list[tuple[str, Digest]] = []
        self.batches: list[tuple[str, list[Digest]]] = []

    async def ask(self, url: str, digests: list[Digest]) -> list[Digest]:
        self.asked.append(url)
        await trio.sleep(self.delay.get(url, 0))
        self.answered.append(url)
        return [d for d in digests if d not in self.blobs[url]]

    async def copy(self, url: str, digest: Digest, store: LocalStore) -> bool:
        self.copied.append((url, digest))
        if url in self.broken:
            raise NodeUnreachable(f"peer {url} was lost")
        data = self.blobs[url].get(digest)
        if data is None:
            return False
        store.put(data)
        return True

    async def copy_many(self, url: str, digests: list[Digest], store: LocalStore) -> list[Digest]:
        self.batches.append((url, list(digests)))
        if url in self.broken:
            raise NodeUnreachable(f"peer {url} was lost")
        came = [d for d in digests if d in self.blobs[url]]
        for digest in came:
            store.put(self.blobs[url][digest])
        return came


def blob(text: str) -> tuple[Digest, bytes]:
    data = text.encode()
    return Digest.of(data), data


async def test_the_first_answers_win_and_slow_peers_are_not_waited_for(store: LocalStore) -> None:
    (a, a_bytes), (b, b_bytes) = blob("alpha"), blob("beta")
    peers = Peers(
        {"fast": {a: a_bytes}, "also": {b: b_bytes}, "slow": {a: a_bytes, b: b_bytes}},
        delay={"slow": 60.0},
    )
    blobs = PeerStore(store, lambda: ["slow", "fast", "also"], peers.ask, peers.copy)
    started = time.monotonic()
    assert await blobs.fetch_many([a, b, a]) == []
    assert time.monotonic() - started < LOCATE_TIMEOUT  # the slow peer's question was cancelled
    assert sorted(peers.asked) == ["also", "fast", "slow"] and "slow" not in peers.answered
    assert sorted(peers.copied) == sorted([("fast", a), ("also", b)])
    assert store.get(a) == a_bytes and store.get(b) == b_bytes
    # Stored now: nothing is asked or copied again; PeerStore reads through to the store.
    assert await blobs.fetch(a) and len(peers.copied) == 2 and store.has(b)


async def test_a_lost_holder_is_passed_over_and_missing_blobs_are_reported(store: LocalStore) -> None:
    (a, a_bytes), (nowhere, _) = blob("alpha"), blob("on no peer")
    peers = Peers({"first": {a: a_bytes}, "second": {a: a_bytes}}, delay={"second": 0.2})
    peers.broken.add("first")  # answers first, so it is tried first, and fails
    blobs = PeerStore(store, lambda: ["first", "second"], peers.ask, peers.copy)
    assert await blobs.fetch_many([a, nowhere]) == [nowhere]
    assert store.get(a) == a_bytes
    assert peers.copied[:2] == [("first", a), ("second", a)]
    assert not await blobs.fetch(nowhere)


async def test_a_source_is_the_only_peer_asked(store: LocalStore) -> None:
    a, a_bytes = blob("alpha")
    peers = Peers({"source": {a: a_bytes}, "other": {a: a_bytes}})
    blobs = PeerStore(store, lambda: ["other", "source"], peers.ask, peers.copy)
    assert await blobs.fetch(a, source="source")
    assert peers.asked == [] and peers.copied == [("source", a)]


async def test_small_blobs_come_in_one_batch_per_holder_and_a_failed_batch_falls_back(
    store: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(peerstore, "BATCH_BLOB_MAX", 10)
    (a, a_bytes), (b, b_bytes), (c, c_bytes) = blob("alpha"), blob("beta"), blob("gamma")
    large, large_bytes = blob("more than ten bytes")
    peers = Peers({"p": {a: a_bytes, b: b_bytes, large: large_bytes}, "q": {c: c_bytes}}, delay={"q": 0.05})
    blobs = PeerStore(store, lambda: ["p", "q"], peers.ask, peers.copy, peers.copy_many)
    assert await blobs.fetch_many([a, b, c, large]) == []
    assert sorted(peers.batches) == [("p", [a, b]), ("q", [c])]  # one request per holder
    assert peers.copied == [("p", large)]  # too large for a batch: its own GET
    assert [store.get(d) for d in (a, b, c, large)] == [a_bytes, b_bytes, c_bytes, large_bytes]

    (d, d_bytes), (e, e_bytes) = blob("delta"), blob("eps")
    peers = Peers({"p": {d: d_bytes}, "q": {d: d_bytes, e: e_bytes}}, delay={"q": 0.05})
    peers.broken.add("p")  # claims d first, then loses its batch and its GET
    blobs = PeerStore(store, lambda: ["p", "q"], peers.ask, peers.copy, peers.copy_many)
    assert await blobs.fetch_many([d, e]) == []
    assert ("p", [d]) in peers.batches and peers.copied == [("p", d), ("q", d)]
    assert store.get(d) == d_bytes and store.get(e) == e_bytes


async def test_a_fetch_past_the_cap_evicts_first_or_copies_nothing(store: LocalStore) -> None:
    """Under a cap, what a fetch lacks is reserved before anything is copied: the store evicts
    least recently used blobs for it, or the fetch raises StoreCapReached and copies nothing."""
    old = store.put(b"o" * 3000)
    os.utime(store.blob_path(old), (time.time() - 7200,) * 2)
    (a, a_bytes), (b, b_bytes) = blob("a" * 2500), blob("b" * 2000)
    space = StoreSpace(store, 5000, roots=lambda: Roots(blobs=frozenset({a})))
    store.admit = None  # a node copies through the store's writer, which the fetch's reservation covers
    space.count()
    peers = Peers({"peer": {a: a_bytes, b: b_bytes}})
    blobs = PeerStore(store, lambda: ["peer"], peers.ask, peers.copy, room=space.reserve)
    assert await blobs.fetch_many([a]) == []
    assert store.has(a) and not store.has(old)  # 3000 + 2500 > 5000: the old blob made room
    with pytest.raises(StoreCapReached):
        await blobs.fetch_many([b, Digest.of(b"c" * 1000)])  # 2500 pinned + 3000 > 5000
    assert peers.copied == [("peer", a)] and not store.has(b)
