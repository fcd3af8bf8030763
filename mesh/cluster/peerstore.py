"""PeerStore: a node's store (a BlobAccess) plus its peers; what the store lacks is fetched from them.

When to use it: to make blobs present here that a peer has (a task's input, a result
made on a peer, a blob a client asks this node for). Reads and writes go to the local
store itself (``PeerStore.local``); :meth:`PeerStore.fetch` and :meth:`PeerStore.fetch_many`
copy missing blobs in from whichever live peer has them, verified as the bytes stream
in (the store's writer checks the digest before anything becomes visible).

Finding a holder: every live peer is asked at once (``POST /v1/blobs:missing``,
signed); the first answer that has a blob claims it, and once every wanted blob
has a holder the questions still out are cancelled, so one slow or dead peer never
delays a fetch the others can serve. Small blobs are then copied from their holders
in batches (one request for up to BATCH_COUNT of them: a tree of many small files
would otherwise cost a round trip per file). Every other blob, and any a batch did
not bring, is copied with the lean GET of :mod:`mesh.cluster.blobget`; if that fails
(the peer vanished, it lost the blob meanwhile), the other peers that said they had
it are tried in turn, then every peer that has not answered. A peer's own request
is never passed on (see mesh.api.blobs), so two nodes that lack a blob cannot ask
each other for ever.

Under a cap on the store (mesh.cas.space), the bytes a fetch lacks are reserved
before any is copied (``room``): the store evicts for them first, or the fetch
raises StoreCapReached and copies nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

import trio

from mesh.cas.access import BlobAccess
from mesh.cas.digest import Digest
from mesh.errors import MeshError, NodeError

log = logging.getLogger("mesh.cluster.peerstore")

#: Seconds to wait for peers to say which blobs they hold.
LOCATE_TIMEOUT = 5.0
#: Digests per find-missing question (the API's own limit is far above).
LOCATE_BATCH = 10_000

Ask = Callable[[str, list[Digest]], Any]
"""``await ask(url, digests)``: the digests of ``digests`` the peer at ``url`` lacks."""
Copy = Callable[[str, Digest, BlobAccess], Any]
"""``await copy(url, digest, store)``: copy one blob in, verified; False if the peer lacks it."""
CopyMany = Callable[[str, list[Digest], BlobAccess], Any]
"""``await copy_many(url, digests, store)``: copy many blobs in one request; returns those that came."""
Room = Callable[[int], Awaitable[AbstractContextManager[object]]]
"""``with await room(size):`` room in the store for ``size`` bytes while they are copied in."""

#: Blobs up to this size are copied in batches (one request per holder and BATCH_COUNT
#: blobs); larger ones each take their own pipelined GET.
BATCH_BLOB_MAX = 1 << 20
#: Blobs per batched request (the API's limit).
BATCH_COUNT = 10_000


class PeerStore:
    """``local`` plus the live peers ``peers()`` (their URLs), reached through ``ask`` and ``copy``."""

    def __init__(
        self,
        local: BlobAccess,
        peers: Callable[[], list[str]],
        ask: Ask,
        copy: Copy,
        copy_many: CopyMany | None = None,
        *,
        room: Room | None = None,
    ) -> None:
        self.local = local
        self.peers = peers
        self._ask = ask
        self._copy = copy
        self._copy_many = copy_many
        self._room = room

    def __repr__(self) -> str:
        return f"PeerStore({self.local!r})"

    async def fetch(self, digest: Digest, *, source: str | None = None) -> bool:
        """Make sure ``digest`` is stored here; False when no peer has it. ``source``: ask only it."""
        missing = await self.fetch_many([digest], source=source)
        return not missing

    async def fetch_many(self, digests: Sequence[Digest], *, source: str | None = None) -> list[Digest]:
        """Copy in what the store lacks of ``digests``; returns those no peer could give.

        ``source`` names the one node to take them from (the node that offered a task
        holds its input); None asks every live peer (see the module docstring).
        """
        wanted = self.local.find_missing(list(dict.fromkeys(digests)))
        if not wanted:
            return []
        if source is not None:
            holders = {d: [source] for d in wanted}
            others: list[str] = []
        else:
            peers = self.peers()
            holders = await self.locate(wanted, peers)
            others = peers
        if self._room is None:
            return await self._copy_all(wanted, holders, others)
        size = sum(d.size for d in wanted if d in holders or others)  # not what no peer has
        with await self._room(size):  # or StoreCapReached: nothing is copied
            return await self._copy_all(wanted, holders, others)

    async def _copy_all(
        self, wanted: list[Digest], holders: dict[Digest, list[str]], others: list[str]
    ) -> list[Digest]:
        if self._copy_many is not None:
            await self._copy_batches(wanted, holders)
            wanted = self.local.find_missing(wanted)  # what the batches did not bring
        lost = []
        for digest in wanted:
            if not await self._copy_from(digest, holders.get(digest, []), others):
                lost.append(digest)
        return lost

    async def _copy_batches(self, wanted: list[Digest], holders: dict[Digest, list[str]]) -> None:
        """Copy the small ones of ``wanted`` from their first holder, many per request. A batch
        that fails is logged and left to the one-blob-at-a-time path, with its fallbacks."""
        assert self._copy_many is not None
        groups: dict[str, list[Digest]] = {}
        for digest in wanted:
            if digest.size <= BATCH_BLOB_MAX and holders.get(digest):
                groups.setdefault(holders[digest][0], []).append(digest)
        for url, group in groups.items():
            for start in range(0, len(group), BATCH_COUNT):
                try:
                    await self._copy_many(url, group[start : start + BATCH_COUNT], self.local)
                except MeshError as exc:
                    log.info("a batched fetch from %s failed (%s); fetching those blobs one by one", url, exc)

    async def locate(self, digests: list[Digest], peers: list[str]) -> dict[Digest, list[str]]:
        """Which peers hold each of ``digests``, as far as the first answers tell: asks every peer
        at once and stops waiting once every digest has a holder (or after LOCATE_TIMEOUT)."""
        holders: dict[Digest, list[str]] = {}
        unclaimed = set(digests)
        if not peers:
            return holders

        async def ask(url: str, scope: trio.CancelScope) -> None:
            for start in range(0, len(digests), LOCATE_BATCH):
                batch = digests[start : start + LOCATE_BATCH]
                try:
                    missing = set(await self._ask(url, batch))
                except MeshError as exc:
                    log.info("peer %s could not say which blobs it holds: %s", url, exc)
                    return
                for digest in batch:
                    if digest not in missing:
                        holders.setdefault(digest, []).append(url)
                        unclaimed.discard(digest)
            if not unclaimed:
                scope.cancel()  # every blob has a holder: the slower answers are not needed

        with trio.move_on_after(LOCATE_TIMEOUT):
            async with trio.open_nursery() as nursery:
                for url in peers:
                    nursery.start_soon(ask, url, nursery.cancel_scope)
        return holders

    async def _copy_from(self, digest: Digest, holders: list[str], others: list[str]) -> bool:
        """Copy ``digest`` from its holders, then from any other peer; True once it is stored."""
        for url in list(dict.fromkeys(holders + others)):
            try:
                if await self._copy(url, digest, self.local):
                    return True
            except NodeError as exc:
                log.info("fetching %s from %s failed: %s", digest, url, exc)
            if self.local.has(digest):  # a concurrent fetch stored it meanwhile
                return True
        return self.local.has(digest)
