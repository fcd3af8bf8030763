"""The mesh-wide action cache: a decorator of a node's local cache that asks its peers.

When to use it: on a node of a mesh. :class:`MeshActionCache` answers :meth:`get` and
:meth:`put` from the local cache it wraps (mesh.sched.actioncache.LocalActionCache:
synchronous, so a job of local hits is finished when it is submitted); after a local miss
the scheduler calls :meth:`get_further`, which asks every live peer (``POST
/v1/cache:lookup``, signed) whether its own local cache holds the key. The key carries the
toolchain identity (mesh.exec.toolchain), so a peer's entry under it was made with the
identity this node has for the action: hits are shared exactly between nodes whose
identity matches, whichever node holds them.

A hit from a peer is a reference: its stdout, stderr and output snapshot stay on that peer
until they are needed here, and are then fetched as any blob a peer holds (a blob GET on
this node falls back to its peers; a task that takes the output as its input fetches the
tree, mesh.cluster.peering.Peering.fetch_tree). A peer answers only with entries whose blobs it holds whole.
With :class:`~mesh.cluster.inline.ResultBlobs` (a node has one), a lookup offers a budget
(``"inline"``, bytes) and the peer sends the blobs of its small hits with the answer
(``"blobs"``), each checked against its digest before it is stored here: a hit found on a
peer then costs this one round trip, not four more (mesh.cluster.inline says why).

Lookups are batched: the keys asked while a batch is out go together in the next one (one
request per peer for a job of many tasks, not one per task), at most :data:`MAX_KEYS` a
request. Each batch is bounded by :data:`LOOKUP_TIMEOUT`: a peer that does not answer in
time, or answers with an error or nonsense, counts as a miss (logged once per batch).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import trio

from mesh import codec
from mesh.cas.digest import Digest
from mesh.cluster.inline import ANSWER_BUDGET, ResultBlobs
from mesh.errors import CodecError, InvalidDigest, MeshError, describe
from mesh.exec.action import ActionResult, parse_digest
from mesh.sched.actioncache import ActionCache, ran_on

log = logging.getLogger("mesh.cluster")

#: The peers' endpoint for lookups.
LOOKUP_PATH = "/v1/cache:lookup"
#: Most keys one lookup request carries (~90 bytes each).
MAX_KEYS = 1000
#: Largest lookup request a node reads, in bytes.
MAX_LOOKUP_BODY = 256 << 10
#: Seconds a batch of lookups waits for the peers' answers; a peer that has not answered
#: then is a miss. Measured on loopback (2 cores, 30 signed requests to a real node, medians
#: and 90th percentiles): one key 4.1 / 11 ms, 100 keys 4.3 / 18 ms, 1000 keys 13 / 17 ms;
#: a busy peer or a LAN adds some, a second is far past any of it.
LOOKUP_TIMEOUT = 1.0


class CachePeers(Protocol):
    """What the mesh cache needs of the cluster (mesh.cluster.peering serves it)."""

    def alive_urls(self) -> list[str]:
        """The URLs of the live peers."""

    async def call(self, url: str, path: str, body: Any, *, timeout: float) -> Any:
        """A signed request to the peer at ``url``; its decoded answer. Raises MeshError
        (NodeError, NodeUnreachable) when the peer cannot answer."""


@dataclass(eq=False)
class _Wanted:
    """One key being looked up, and the callers waiting for it."""

    done: trio.Event = field(default_factory=trio.Event)
    result: ActionResult | None = None


@dataclass(frozen=True)
class MeshCacheStatistics:
    """Keys this node asked its peers about and found there; keys peers asked here and found."""

    asked: int
    found: int
    answered: int
    served: int


class MeshActionCache:
    """A local :class:`~mesh.sched.actioncache.ActionCache` with the peers behind it (see the
    module docstring). ``await nursery.start(cache.run)`` starts its batching; without it,
    each :meth:`get_further` asks at once, alone."""

    def __init__(
        self,
        local: ActionCache,
        peers: CachePeers,
        *,
        node_id: str,
        timeout: float = LOOKUP_TIMEOUT,
        blobs: ResultBlobs | None = None,
        budget: int = ANSWER_BUDGET,
    ) -> None:
        self.local = local
        self.peers = peers
        self.node_id = node_id
        self.timeout = timeout
        self.blobs = blobs  # None: hits stay references, and peers are sent none
        self.budget = budget if blobs is not None else 0
        self._pending: dict[Digest, _Wanted] = {}  # asked for, not yet sent
        self._out: dict[Digest, _Wanted] = {}  # sent, answers awaited: a new caller joins
        self._wake = trio.Event()
        self._running = False
        self._asked = self._found = self._answered = self._served = 0

    def get(self, key: Digest) -> ActionResult | None:
        return self.local.get(key)

    def put(self, key: Digest, result: ActionResult) -> None:
        self.local.put(key, result)

    def asks_further(self) -> bool:
        return bool(self.peers.alive_urls())

    async def get_further(self, key: Digest) -> ActionResult | None:
        wanted = self._out.get(key) or self._pending.get(key)
        if wanted is None:
            wanted = self._pending[key] = _Wanted()
            self._wake.set()
            if not self._running:
                await self._ask(self._take())
        await wanted.done.wait()
        return wanted.result

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Send the lookups asked for, a batch at a time, until cancelled."""
        self._running = True
        try:
            async with trio.open_nursery() as nursery:
                task_status.started()
                while True:
                    await self._wake.wait()
                    self._wake = trio.Event()
                    while self._pending:
                        nursery.start_soon(self._ask, self._take())
        finally:
            self._running = False
            for wanted in [*self._pending.values(), *self._out.values()]:
                wanted.done.set()  # a miss for whoever still waits

    def answer(self, message: Any) -> dict[str, Any]:
        """A peer's lookup (``{"keys": [...], "inline": BYTES}``) answered from the local cache:
        ``{"node": id, "results": {key: result}, "blobs": {digest: bytes}}``, the blobs of the
        hits that fit in ``inline`` (mesh.cluster.inline). Raises CodecError for a malformed
        one (HTTP 400). A field this version does not know is ignored, as gossip ignores one
        (mesh.cluster.membership): a lookup only asks, so a node of a later version that
        offers more (as ``inline`` was once new) still gets this one's hits while a mesh is
        upgraded one node at a time."""
        fields = codec.Fields(message, "a cache lookup")
        keys = fields.texts("keys")
        left = min(fields.integer("inline", 0, minimum=0), ANSWER_BUDGET)
        if len(keys) > MAX_KEYS:
            raise CodecError(f"a cache lookup may ask for at most {MAX_KEYS} keys, not {len(keys)}")
        results = {}
        blobs: dict[str, bytes] = {}
        for text in keys:
            hit = self.local.get(parse_digest(text, "a key of a cache lookup"))
            if hit is not None:
                results[text] = hit.to_wire()
                sent = None if self.blobs is None or left <= 0 else self.blobs.gather(hit, left)
                if sent:
                    left -= sum(len(data) for digest, data in sent.items() if digest not in blobs)
                    blobs.update(sent)
        self._answered += len(keys)
        self._served += len(results)
        answer: dict[str, Any] = {"node": self.node_id, "results": results}
        if blobs:
            answer["blobs"] = blobs
        return answer

    def statistics(self) -> MeshCacheStatistics:
        return MeshCacheStatistics(self._asked, self._found, self._answered, self._served)

    def _take(self) -> dict[Digest, _Wanted]:
        batch: dict[Digest, _Wanted] = {}
        for key in list(self._pending)[:MAX_KEYS]:
            batch[key] = self._out[key] = self._pending.pop(key)
        return batch

    async def _ask(self, batch: dict[Digest, _Wanted]) -> None:
        """Ask every live peer about ``batch`` at once; each key is settled by its first hit,
        or as a miss when every peer has answered or the time is up."""
        self._asked += len(batch)
        try:
            with trio.move_on_after(self.timeout) as scope:
                async with trio.open_nursery() as nursery:
                    for url in self.peers.alive_urls():
                        nursery.start_soon(self._ask_one, url, batch, scope)
        finally:
            for key, wanted in batch.items():
                self._out.pop(key, None)
                wanted.done.set()

    async def _ask_one(self, url: str, batch: dict[Digest, _Wanted], scope: trio.CancelScope) -> None:
        try:
            body: dict[str, Any] = {"keys": [str(k) for k in batch]}
            if self.blobs is not None:
                body["inline"] = self.budget
            reply = await self.peers.call(url, LOOKUP_PATH, body, timeout=self.timeout)
            hits = list(self._hits(url, reply, batch))
            try:
                if self.blobs is not None and hits and isinstance(reply, dict):
                    roots = [r.output for _, r in hits if r.output is not None]
                    await self.blobs.keep(reply.get("blobs"), self.budget, roots, url)
            finally:  # the hits count even when keeping their blobs was cut short (the timeout)
                for key, result in hits:
                    if not batch[key].done.is_set():
                        batch[key].result = result
                        batch[key].done.set()
                        self._found += 1
        except MeshError as exc:
            log.info("peer %s could not answer a cache lookup: %s", url, exc)
        except Exception as exc:  # a bug reading one peer's answer: a miss there, not a failed node
            log.error("the cache lookup at peer %s failed: %s", url, describe(exc))
        if all(wanted.done.is_set() for wanted in batch.values()):
            scope.cancel()  # every key found: the slower peers are not waited for

    def _hits(self, url: str, reply: Any, batch: dict[Digest, _Wanted]) -> Iterable[tuple[Digest, ActionResult]]:
        """The results in a peer's answer, each checked: a key that was asked, a successful
        result; its note says where it came from."""
        fields = codec.Fields(reply, f"the cache lookup answer of peer {url}")
        node = fields.text("node")
        results = fields.mapping("results")
        fields.mapping("blobs", None)  # kept by _ask_one (mesh.cluster.inline)
        for text, wire in results.items():
            try:
                key = Digest.parse(text)
                result = ActionResult.from_wire(wire, f"a result from peer {url}")
            except (CodecError, InvalidDigest) as exc:
                log.warning("peer %s answered a cache lookup with a bad entry: %s", url, exc)
                continue
            if key in batch and result.success:
                note = f"from the action cache of node {node} ({url}){ran_on(result, node)}"
                yield key, replace(result, cached=True, cache_key=key, cache_note=note)


__all__ = ["CachePeers", "MeshActionCache", "MeshCacheStatistics", "LOOKUP_PATH", "MAX_KEYS", "LOOKUP_TIMEOUT"]
