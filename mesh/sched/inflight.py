"""One run for identical work in flight: who leads a cache key, who waits, and the claims seam.

When to use: the scheduler, for a cacheable task whose lookups all missed, before it takes
a slot. On one node, :class:`InFlight` maps each cache key to the task that runs it (the
leader); a task with the same key that comes while the leader is queued or running waits,
and takes the leader's result (marked cached) when it succeeds. A leader that ends
otherwise (failed, cancelled, its job given up) passes the lead to the first waiter, which
then runs; a failure is not shared, as the cache keeps no failures either.

Across nodes the scheduler asks a :class:`Claims` service (mesh.cluster.inflight, which
says how) before a leader queues: granted, it runs; held by another node, it waits for
that node's result; no answer, it runs. The ``Claims`` seam keeps the scheduler free of
the cluster: a node alone has none.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from mesh.cas.digest import Digest

T = TypeVar("T")


class InFlight(Generic[T]):
    """Cache keys being run here: each one's leader and its waiters (items compared with ==)."""

    def __init__(self) -> None:
        self._leaders: dict[Digest, T] = {}
        self._waiters: dict[Digest, list[T]] = {}

    def __len__(self) -> int:
        return len(self._leaders)

    def lead_or_wait(self, key: Digest, item: T) -> T | None:
        """Make ``item`` the leader of ``key`` and return None; or, when another item leads it,
        add ``item`` to its waiters and return that leader."""
        leader = self._leaders.get(key)
        if leader is None or leader == item:
            self._leaders[key] = item
            return None
        self._waiters.setdefault(key, []).append(item)
        return leader

    def end(self, key: Digest, item: T) -> list[T]:
        """``item``, the leader of ``key``, ended: no item leads it any more; returns its
        waiters, in the order they came (none when ``item`` did not lead it)."""
        if key not in self._leaders or self._leaders[key] != item:
            return []
        del self._leaders[key]
        return self._waiters.pop(key, [])

    def forget(self, keep: Callable[[T], bool]) -> None:
        """Drop the leaders and waiters that ``keep`` refuses (a submission rolled back)."""
        for key, leader in list(self._leaders.items()):
            if not keep(leader):
                del self._leaders[key]
                self._waiters.pop(key, None)
        for key, waiters in list(self._waiters.items()):
            self._waiters[key] = [w for w in waiters if keep(w)]


@dataclass(frozen=True)
class ClaimAnswer:
    """What a claim of a cache key came to.

    ``granted``: run it. ``by``: the node that granted the claim (release it there when the
    task ends); None when no node could be asked, and the task runs unclaimed. Not granted:
    ``holder`` (a node URL) runs it now; ``done``: it has run it and succeeded, so its
    result is in the mesh's cache.
    """

    granted: bool
    by: str | None = None
    holder: str | None = None
    done: bool = False


class Claims(Protocol):
    """Claims of cache keys among the nodes of a mesh (mesh.cluster.inflight.MeshClaims)."""

    def enabled(self) -> bool:
        """Whether there are other nodes to share claims with (live peers)."""

    async def claim(self, key: Digest, ttl: float, *, wait: bool) -> ClaimAnswer:
        """Claim ``key`` for this node for ``ttl`` seconds. With ``wait``, a claim another node
        holds is waited on for a few seconds before the answer. Never raises: a node that
        cannot be asked grants it (``by`` None)."""

    async def release(self, key: Digest, *, succeeded: bool) -> None:
        """This node's run of ``key`` ended; ``succeeded``: its result is in the cache. Never raises."""


__all__ = ["InFlight", "ClaimAnswer", "Claims"]
