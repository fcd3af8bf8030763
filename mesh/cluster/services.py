"""The node's blob and cache services, as the HTTP handlers call them (mesh.api.services).

When to use: the node (mesh.node) builds one of each; nothing else should. They hold
what a handler must not: the fall-back to the live peers when the store lacks a blob,
and the answers this node gives its peers about the mesh-wide action cache.
"""

from __future__ import annotations

from typing import Any

from mesh.cas.blobio import BlobReader
from mesh.cas.digest import Digest
from mesh.cas.space import StoreSpace
from mesh.cas.store import LocalStore
from mesh.cluster.actioncache import MeshActionCache
from mesh.cluster.inflight import MeshClaims
from mesh.cluster.peering import Peering


class PeerBackedBlobs:
    """The node's blob service (mesh.api.services.Blobs): its store, the room under its cap,
    and the live peers to fetch from when the store lacks a blob."""

    def __init__(self, store: LocalStore, space: StoreSpace, peering: Peering) -> None:
        self.store = store
        self.space = space
        self._peering = peering

    async def open(self, digest: Digest, *, ask_peers: bool) -> BlobReader:
        # Outputs of tasks that ran on peers are fetched on demand. A peer's own request never
        # fans out again (ask_peers False), or two nodes that both lack a blob would ask
        # each other for ever.
        if ask_peers and not self.store.has(digest):
            await self._peering.fetch_from_peers(digest, self.store)
        return self.store.open(digest)


class MeshCacheService:
    """The node's side of the mesh-wide action cache (mesh.api.services.Cache): peers' lookups
    answered from the local cache, and the claims of keys this node owns."""

    def __init__(self, cache: MeshActionCache, claims: MeshClaims) -> None:
        self._cache = cache
        self._claims = claims

    def answer_lookup(self, message: Any) -> Any:
        return self._cache.answer(message)

    async def answer_claim(self, message: Any) -> Any:
        return await self._claims.table.answer_claim(message)

    def answer_release(self, message: Any) -> Any:
        return self._claims.table.answer_release(message)
