"""A cache hit's small blobs, sent in the answer to the lookup that found it.

When to use: by mesh.cluster.actioncache, on both sides of ``POST /v1/cache:lookup``. A
hit from a peer's cache is a reference: its stdout, stderr and output snapshot stay on
the peer until they are needed, and then cost a find-missing question to every peer and a
download for each level of the snapshot (two levels for a compile's one object: its root
node, then the object). Measured with ``bench/cc.py`` (2026-12-04): a warm rebuild from
another node took 1.72-2.3x the same node's, four round trips per compile after the
lookup. A lookup that offers a ``budget`` is answered with the blobs of each hit whose
whole set (its non-empty streams, every node and file of its output) fits in what is
left of it; bigger ones stay references, fetched as before.

Nothing sent is trusted: :meth:`ResultBlobs.keep` stores a blob only if its bytes hash to
the digest it is sent under (the whole answer's blobs are dropped otherwise, and the hit's
blobs are fetched as before), and only within the budget asked for. An output's root
node is stored after the blobs below it, so no one sees a root without its tree.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from typing import Any

import trio

from mesh.cas.digest import Digest
from mesh.cas.snapshot import walk
from mesh.cas.store import LocalStore
from mesh.errors import BlobNotFound, CodecError, DigestMismatch, InvalidDigest, MeshError
from mesh.exec.action import ActionResult

log = logging.getLogger("mesh.cluster")

#: Bytes of blobs a lookup asks to be sent with its hits, all hits together. A compile's
#: object is 1-150 KB (brotli's 35 at -O2); an answer of a thousand such keys stays references.
ANSWER_BUDGET = 4 << 20
#: Largest share of the budget one hit may take.
HIT_BUDGET = 1 << 20

Room = Callable[[int], Awaitable[AbstractContextManager[object]]]


class ResultBlobs:
    """The store's side of inline blobs: what to send with a hit, and keeping what came.
    ``room``: room under the store's cap (mesh.cas.space) for what is kept."""

    def __init__(self, store: LocalStore, room: Room | None = None) -> None:
        self.store = store
        self.room = room

    def gather(self, result: ActionResult, budget: int) -> dict[str, bytes] | None:
        """The blobs of ``result`` (by digest text) if they are all here and together take at
        most ``budget`` bytes (and :data:`HIT_BUDGET`); else None (it stays a reference)."""
        budget = min(budget, HIT_BUDGET)
        wanted = [d for d in (result.stdout, result.stderr) if d.size]
        try:
            if result.output is not None:
                wanted.append(result.output)
                for _path, entry in walk(self.store, result.output):
                    if entry.digest is not None:
                        wanted.append(entry.digest)
                    if sum(d.size for d in wanted) > budget:
                        return None
            unique = list(dict.fromkeys(wanted))
            if sum(d.size for d in unique) > budget:
                return None
            return {str(d): self.store.get(d) for d in unique}
        except (BlobNotFound, DigestMismatch, CodecError, MeshError):
            return None  # not whole here (evicted meanwhile): the asker fetches it as before

    async def keep(self, sent: Any, budget: int, roots: Iterable[Digest], source: str) -> None:
        """Store the blobs a peer sent with its hits (``{digest: bytes}``), each verified,
        roots of outputs last; nothing at all when one is wrong or they exceed ``budget``."""
        blobs = _checked(sent, budget, source)
        if not blobs:
            return
        last = set(roots)
        ordered = sorted(blobs.items(), key=lambda item: item[0] in last)
        missing = set(self.store.find_missing(list(blobs)))
        todo = [(d, data) for d, data in ordered if d in missing]
        if not todo:
            return

        def put_all() -> None:
            for _digest, data in todo:
                self.store.put(data)

        size = sum(d.size for d, _ in todo)
        try:
            if self.room is None:
                await trio.to_thread.run_sync(put_all)
                return
            with await self.room(size):
                await trio.to_thread.run_sync(put_all)
        except MeshError as exc:  # no room under the cap, a full disk: fetched when needed, as before
            log.info("the blobs peer %s sent with its hits were not kept: %s", source, exc)


def _checked(sent: Any, budget: int, source: str) -> dict[Digest, bytes]:
    """The blobs of an answer, each one's bytes hashed against its digest; {} if any is wrong."""
    if sent is None:
        return {}
    if not isinstance(sent, Mapping):
        log.warning("peer %s sent the blobs of its hits as %s, not a map: ignored", source, type(sent).__name__)
        return {}
    blobs: dict[Digest, bytes] = {}
    total = 0
    for text, data in sent.items():
        try:
            digest = Digest.parse(text) if isinstance(text, str) else None
        except InvalidDigest:
            digest = None
        if digest is None or not isinstance(data, bytes) or Digest.of(data) != digest:
            log.warning("peer %s sent a blob with its hits that is not what its digest says: none kept", source)
            return {}
        total += len(data)
        blobs[digest] = data
    if total > budget:
        log.warning(
            "peer %s sent %d bytes of blobs with its hits, more than the %d asked: none kept", source, total, budget
        )
        return {}
    return blobs


__all__ = ["ResultBlobs", "ANSWER_BUDGET", "HIT_BUDGET"]
