"""Eviction: keep a LocalStore under a size cap, least recently used blobs first.

Blobs reachable from a pinned root (``store.pin``: running jobs, recent results,
watched directories) are never evicted; a pinned snapshot keeps every node and
file below it. Recency is the blob file's mtime, which the store refreshes on
every read and every put of an existing blob. Executable copies are derived
data and go first among blobs of equal age. Eviction changes the store's epoch
once, so stat caches forget what they knew.
"""

from __future__ import annotations

from dataclasses import dataclass

from mesh.cas.digest import Digest
from mesh.cas.snapshot import reachable
from mesh.cas.store import LocalStore
from mesh.errors import BlobNotFound, InvalidTree


@dataclass(frozen=True, slots=True)
class EvictionReport:
    before_bytes: int
    after_bytes: int
    removed: int
    pinned_bytes: int


def pinned_hashes(store: LocalStore, extra_roots: tuple[Digest, ...] = ()) -> set[str]:
    """Hex hashes of every blob a pinned root reaches (snapshots are walked; other blobs kept as is)."""
    keep: set[str] = set()
    for root in (*store.pins().values(), *extra_roots):
        keep.add(root.hex)
        try:
            keep.update(d.hex for d in reachable(store, root))
        except (InvalidTree, BlobNotFound):
            continue  # a plain blob, or a snapshot whose parts are gone: keep what exists
    return keep


def evict(store: LocalStore, max_bytes: int, *, extra_roots: tuple[Digest, ...] = ()) -> EvictionReport:
    """Remove unpinned blobs, least recently used first, until the store holds at most ``max_bytes``."""
    blobs = list(store.iter_blobs())
    total = sum(b.size for b in blobs)
    if total <= max_bytes:
        return EvictionReport(total, total, 0, 0)
    keep = pinned_hashes(store, extra_roots)
    pinned = sum(b.size for b in blobs if b.hex in keep)
    candidates = sorted((b for b in blobs if b.hex not in keep), key=lambda b: (b.mtime_ns, not b.executable_copy))
    removed = 0
    after = total
    for blob in candidates:
        if after <= max_bytes:
            break
        store.remove(blob, new_epoch=False)
        after -= blob.size
        removed += 1
    if removed:
        store.new_epoch()
    return EvictionReport(total, after, removed, pinned)
