"""What the API's watch endpoints and ``/files`` call: a node's watchers and the mesh's files.

The node composes one :class:`Watches` from its registry (mesh.watch.registry), its store
and its peering: gossip carries its watchers' snapshots to the mesh (the node passes
:meth:`WatchRegistry.watched` to its peering) and brings the peers' back, which
:meth:`Watches.files` lists with mesh.watch.files.
"""

from __future__ import annotations

from typing import Any

from mesh.cas.digest import Digest
from mesh.cas.store import LocalStore
from mesh.cluster.peering import Peering
from mesh.errors import SnapshotError
from mesh.watch.files import FileList, Source
from mesh.watch.registry import WatchRegistry


class Watches:
    """The watchers of one node and the files of the mesh's watchers."""

    def __init__(self, registry: WatchRegistry, store: LocalStore, peering: Peering) -> None:
        self.registry = registry
        self._store = store
        self._peering = peering
        self._files = FileList(store, self._fetch)

    async def _fetch(self, digests: list[Digest], url: str) -> list[Digest]:
        return await self._peering.peer_store(self._store).fetch_many(digests, source=url)

    def register(self, directory: str, host: str, pid: int) -> dict[str, Any]:
        """A new watcher (WatchConflict: 409): its id, and how often it must beat."""
        watcher = self.registry.register(directory, host, pid)
        return {"id": watcher.id, "beat": self.registry.beat_every, "timeout": self.registry.timeout}

    def beat(self, watcher_id: str, snapshot: Digest | None) -> dict[str, Any]:
        """A watcher's beat, with its directory's snapshot (WatchNotFound: 404; a snapshot whose
        root this node's store lacks, SnapshotError: 422)."""
        if snapshot is not None and not self._store.has(snapshot):
            raise SnapshotError(f"snapshot {snapshot} is not on this node: upload its blobs first")
        watcher = self.registry.beat(watcher_id, snapshot)
        return {"id": watcher.id, "beat": self.registry.beat_every}

    def remove(self, watcher_id: str) -> None:
        """A watcher stops (WatchNotFound: 404)."""
        self.registry.remove(watcher_id)

    def sources(self) -> list[Source]:
        """The watched directories of the mesh: this node's healthy watchers, and those gossip
        says every peer not dead has."""
        node = self._peering.node_id
        found = [Source(node, None, w) for w in self.registry.watched()]
        for peer in self._peering.table.peers():
            if peer.state != "dead":
                found.extend(Source(peer.member.node, peer.member.url, w) for w in peer.member.watches)
        return found

    async def files(self) -> list[dict[str, Any]]:
        """The files of every healthy watcher of the mesh, sorted (mesh.watch.files)."""
        return await self._files.files(self.sources())
