"""Eviction: keep a LocalStore under a size cap, least recently used blobs first.

Blobs reachable from a pinned root (``store.pin``: running jobs, recent results,
watched directories) are never evicted; a pinned snapshot keeps every node and
file below it. Recency is the blob file's mtime, which the store refreshes on
every read and every put of an existing blob. Executable copies are derived
data and go first among blobs of equal age. Eviction changes the store's epoch
once, so stat caches forget what they knew.

:func:`evict` is ``mesh gc`` (and ``mesh snapshot`` under a cap): one pass over the
store. A node keeps its store under its cap as it writes (mesh.cas.space), with the
same choice (:func:`pinned_hashes`, :func:`lru_order`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from mesh.cas.digest import Digest
from mesh.cas.snapshot import read_node
from mesh.cas.store import LocalStore, StoredBlob
from mesh.cas.tree import MAX_NODE_BYTES, Kind
from mesh.errors import BlobNotFound, CodecError, DigestMismatch


@dataclass(frozen=True, slots=True)
class EvictionReport:
    before_bytes: int
    after_bytes: int
    removed: int
    pinned_bytes: int


def pinned_hashes(store: LocalStore, extra_roots: Iterable[Digest] = (), *, blobs: Iterable[Digest] = ()) -> set[str]:
    """Hex hashes of every blob a pinned root reaches: the store's pins and ``extra_roots``
    (snapshots, walked; a root that is a plain blob is kept as it is), and ``blobs`` (kept
    alone, never read). A directory node that is missing or damaged is skipped, and the
    rest of its snapshot is still kept (a snapshot being fetched from peers is partial)."""
    keep = {d.hex for d in blobs}
    walked: set[Digest] = set()
    pending = [*store.pins().values(), *extra_roots]
    while pending:
        node = pending.pop()
        if node in walked:
            continue
        walked.add(node)
        keep.add(node.hex)
        if node.size > MAX_NODE_BYTES:
            continue  # too large to be a directory node: a plain blob
        try:
            entries = read_node(store, node)
        except (BlobNotFound, DigestMismatch, CodecError):
            continue  # a plain blob, or a node that is gone: keep what exists
        for entry in entries:
            if entry.kind == Kind.DIRECTORY:
                pending.append(entry.blob)
            elif entry.digest is not None:
                keep.add(entry.digest.hex)
    return keep


def lru_order(blobs: Iterable[StoredBlob], keep: set[str]) -> list[StoredBlob]:
    """The blobs that may go, least recently used first (executable copies before blobs of equal age)."""
    return sorted((b for b in blobs if b.hex not in keep), key=lambda b: (b.mtime_ns, not b.executable_copy))


def evict(store: LocalStore, max_bytes: int, *, extra_roots: tuple[Digest, ...] = ()) -> EvictionReport:
    """Remove unpinned blobs, least recently used first, until the store holds at most ``max_bytes``."""
    blobs = list(store.iter_blobs())
    total = sum(b.size for b in blobs)
    if total <= max_bytes:
        return EvictionReport(total, total, 0, 0)
    store.prune_timed(unused=True)  # derived copies first (not counted in the cap: see LocalStore.link_into)
    keep = pinned_hashes(store, extra_roots)
    pinned = sum(b.size for b in blobs if b.hex in keep)
    removed = 0
    after = total
    for blob in lru_order(blobs, keep):
        if after <= max_bytes:
            break
        store.remove(blob, new_epoch=False)
        after -= blob.size
        removed += 1
    if removed:
        store.new_epoch()
    return EvictionReport(total, after, removed, pinned)
