"""``/files``: one sorted list of the files of every healthy watcher of the mesh.

Gossip carries, for each node, the directories watched through it and each one's
snapshot id (mesh.cluster.membership.Watched); a node's own come from its registry.
A dead node (mesh.cluster.membership: silent for DEAD_AFTER seconds) is left out, and
with it its watchers' files; a watcher its node dropped (mesh.watch.registry) has left
that node's gossip already.

The listing is read from the snapshots' directory nodes. Those of a peer's watcher are
copied from that peer first, verified (only the directory nodes: the file blobs stay
where they are), so a snapshot is listed from this node's store like any other. Snapshots
are immutable, so the listing of each is kept (:data:`LISTINGS_KEPT` of them) and the
sorted whole is rebuilt only when the set of watched snapshots changes. A peer whose
nodes cannot be fetched within :data:`FETCH_TIMEOUT` has its watcher's files left out of
that answer, with a line in the log.
"""

from __future__ import annotations

import logging
import os
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from mesh.cas.access import BlobAccess
from mesh.cas.digest import Digest
from mesh.cas.snapshot import children, walk
from mesh.cas.tree import Entry, Kind
from mesh.cluster.membership import Watched
from mesh.errors import MeshError
from mesh.text import encodable

log = logging.getLogger("mesh.watch")

#: Listings of snapshots kept in memory (a listing of 50,000 files is ~10 MB of Python objects).
LISTINGS_KEPT = 32
#: Seconds to copy a peer's directory nodes before its watcher is left out of an answer.
FETCH_TIMEOUT = 10.0

#: Copies the given blobs from the node at the URL into the store; returns those it could not.
Fetch = Callable[[list[Digest], str], Awaitable[list[Digest]]]


@dataclass(frozen=True)
class Source:
    """A watched directory and the node it is watched through (``url`` None: this node)."""

    node: str
    url: str | None
    watched: Watched


class FileList:
    """The mesh-wide file list of one node, read from ``store``; ``fetch`` copies directory
    nodes from peers."""

    def __init__(self, store: BlobAccess, fetch: Fetch) -> None:
        self._store = store
        self._fetch = fetch
        self._listings: OrderedDict[Digest, list[tuple[bytes, Entry]]] = OrderedDict()
        self._whole: tuple[frozenset[tuple[str, str, str, Digest]], list[dict[str, Any]]] | None = None

    async def files(self, sources: Sequence[Source]) -> list[dict[str, Any]]:
        """Every file (and symlink) of ``sources``, sorted by path, then node, then directory."""
        key = frozenset((s.node, s.watched.host, s.watched.directory, s.watched.snapshot) for s in sources)
        if self._whole is not None and self._whole[0] == key:
            return self._whole[1]
        rows: list[dict[str, Any]] = []
        complete = True
        for source in sources:
            listing = await self._listing(source)
            if listing is None:
                complete = False
                continue
            rows.extend(_row(source, path, entry) for path, entry in listing if entry.kind != Kind.DIRECTORY)
        rows.sort(key=lambda r: (r["path"], r["node"], r["directory"]))
        if complete:
            self._whole = (key, rows)
        return rows

    async def _listing(self, source: Source) -> list[tuple[bytes, Entry]] | None:
        root = source.watched.snapshot
        listing = self._listings.get(root)
        if listing is not None:
            self._listings.move_to_end(root)
            return listing
        try:
            if source.url is not None:
                with trio.fail_after(FETCH_TIMEOUT):
                    await self._fetch_nodes(root, source.url)
            listing = await trio.to_thread.run_sync(lambda: list(walk(self._store, root)))
        except (MeshError, trio.TooSlowError) as exc:
            log.warning(
                "the files of %s on %s (node %s) are left out of /files: %s",
                source.watched.directory,
                source.watched.host,
                source.node,
                exc if str(exc) else "its node did not send them in time",
            )
            return None
        self._listings[root] = listing
        while len(self._listings) > LISTINGS_KEPT:
            self._listings.popitem(last=False)
        return listing

    async def _fetch_nodes(self, root: Digest, url: str) -> None:
        """Copy the directory nodes of snapshot ``root`` this store lacks from the node at ``url``."""
        level = [root]
        while level:
            missing = self._store.find_missing(level)
            if missing and await self._fetch(missing, url):
                raise MeshError(f"node {url} could not send the directory nodes of snapshot {root}")
            level = children(self._store, level)[1]


def _row(source: Source, path: bytes, entry: Entry) -> dict[str, Any]:
    row: dict[str, Any] = {
        "path": encodable(os.fsdecode(path)),
        "kind": entry.kind.label,
        "size": entry.size,
        "node": source.node,
        "host": source.watched.host,
        "directory": source.watched.directory,
    }
    if entry.kind == Kind.SYMLINK:
        row["target"] = encodable(os.fsdecode(entry.link))
    else:
        row["digest"] = str(entry.digest)
    return row


def page(rows: list[dict[str, Any]], start: int, limit: int) -> dict[str, Any]:
    """One page of ``rows``: ``files``, ``total`` and ``next`` (where the next page starts, or None)."""
    end = start + limit
    return {"files": rows[start:end], "total": len(rows), "next": end if end < len(rows) else None}


def directories(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The watched directories ``rows`` come from, each with its node and how many files it has,
    sorted by host, directory, then node: what the web UI groups the files by. One pass over the
    rows (19 ms for 100,000 on the 2-core test machine), so it is not kept."""
    counts = Counter((r["host"], r["directory"], r["node"]) for r in rows)
    return [{"host": h, "directory": d, "node": n, "files": counts[h, d, n]} for h, d, n in sorted(counts)]


def in_directory(rows: list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
    """The rows of the watched directory ``where``, ``HOST:DIRECTORY`` as ``mesh files`` prints
    it (the host name holds no colon; the directory may)."""
    host, _, directory = where.partition(":")
    return [r for r in rows if r["directory"] == directory and r["host"] == host]
