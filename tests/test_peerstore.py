"""PeerStore: missing blobs come from whichever peer has them; the first answers win."""

from __future__ import annotations

import time

import trio

from mesh.cas.digest import Digest
from mesh.cas.store import LocalStore
from mesh.errors import NodeUnreachable
from mesh.peerstore import LOCATE_TIMEOUT, PeerStore


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
    assert await blobs.fetch(a) and len(peers.copied) == 2 and blobs.has(b)


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
