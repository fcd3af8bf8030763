"""Snapshot overlays: a base snapshot with other snapshots (layers) laid over it.

A pipeline step sees the repository's snapshot plus the declared outputs of the steps it
depends on, at their paths (mesh.pipelines.compile, mesh.sched.scheduler): the overlay of
their output snapshots on the repository's. The rules:

- a layer's file, executable or symlink replaces the base's entry at its path;
- a layer's directory where the base has a directory merges with it, recursively;
- a layer's entry where the base has an entry of the other sort (a file where the base has
  a directory, or a directory where it has a file): the layer's wins, whole (the base's
  directory and all under it are gone; it is what copying the layer over a checkout of the
  base would give, after removing what was in the way);
- two layers with an entry at the same path (other than two directories, which merge) are
  refused with OverlayConflict naming the path and both layers: the outputs of two steps,
  or of two matrix tasks of a step, that write the same path are a pipeline bug, and "the
  later wins" would make what a step sees depend on an order nobody wrote down. Two layers
  with exactly the same entry there (same kind and bytes) do not conflict: whichever wins,
  the step sees the same.

Cheap because the trees are Merkle trees: only the directory nodes on the paths a layer
changes are read, merged and encoded again; every other subtree, of the base and of the
layers, is shared by its digest. Every node read is validated (mesh.cas.tree.decode_node).

Times (mesh.cas.times): :func:`overlay_times` makes the overlay's manifest from the
base's: an entry that comes from the base keeps the base's mtime (so make sees the
repository's files as they were), an entry from a layer gets :data:`FIXED_MTIME_NS` (a
task's output has no times of its own); a directory the layers merge into keeps the base's.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from mesh.cas.digest import Digest
from mesh.cas.times import FIXED_MTIME_NS, Times
from mesh.cas.tree import Entry, Kind, decode_node, encode_node
from mesh.errors import OverlayConflict


class Blobs(Protocol):
    """What an overlay needs of a store (mesh.cas.store.LocalStore): reading and putting blobs."""

    def get(self, digest: Digest) -> bytes: ...

    def put(self, data: bytes | bytearray | memoryview) -> Digest: ...


@dataclass(kw_only=True)
class Overlaid:
    """An overlay's root and what it took from the layers (for its times manifest).

    ``fresh``: the path of every entry of the result that comes from a layer (all of a
    subtree taken whole included); ``replaced``: the paths of the base's entries a layer's
    entry replaced (with everything under them)."""

    root: Digest
    fresh: list[bytes] = field(default_factory=list)
    replaced: set[bytes] = field(default_factory=set)


def overlay(store: Blobs, base: Digest, layers: Sequence[Digest], names: Sequence[str] = ()) -> Digest:
    """The snapshot ``base`` with each of ``layers`` laid over it (module docstring); its nodes are
    put in ``store``, which must hold the base's and the layers' trees (BlobNotFound otherwise).
    ``names`` names the layers in a conflict's message (default: their digests)."""
    return overlay_tree(store, base, layers, names).root


def overlay_tree(store: Blobs, base: Digest, layers: Sequence[Digest], names: Sequence[str] = ()) -> Overlaid:
    """:func:`overlay`, with the paths that came from the layers (:class:`Overlaid`)."""
    labels = list(names) or [str(layer) for layer in layers]
    if len(labels) != len(layers):
        raise ValueError("one name per layer")
    result = Overlaid(root=base)
    tops = [(label, _read(store, layer)) for label, layer in zip(labels, layers, strict=True)]
    result.root = _lay(store, _read(store, base), tops, b"", result)
    return result


def overlay_times(base_times: Times, overlaid: Overlaid) -> Times:
    """The times manifest of an overlay whose base had ``base_times`` (module docstring)."""
    replaced = overlaid.replaced

    def kept(path: bytes) -> bool:
        if not replaced:
            return True
        parts = path.split(b"/")
        return not any(b"/".join(parts[: i + 1]) in replaced for i in range(len(parts)))

    pairs = {path: base_times.mtimes[i] for i, path in enumerate(base_times.paths) if not path or kept(path)}
    for path in overlaid.fresh:
        pairs[path] = FIXED_MTIME_NS
    return Times.of(pairs.items())


def tree_paths(store: Blobs, root: Digest, prefix: bytes = b"") -> Iterator[bytes]:
    """Every entry's path under the directory node ``root`` (joined to ``prefix``), depth first."""
    for entry in _read(store, root):
        path = _join(prefix, entry.name)
        yield path
        if entry.kind == Kind.DIRECTORY:
            yield from tree_paths(store, entry.blob, path)


def _read(store: Blobs, digest: Digest) -> list[Entry]:
    return decode_node(store.get(digest))


def _join(prefix: bytes, name: bytes) -> bytes:
    return prefix + b"/" + name if prefix else name


def _lay(
    store: Blobs, base: list[Entry], layers: list[tuple[str, list[Entry]]], prefix: bytes, out: Overlaid
) -> Digest:
    """Lay the directory entries of ``layers`` over ``base`` (the directory at ``prefix``); put
    the merged node in the store and return its digest."""
    merged = {entry.name: entry for entry in base}
    offered: dict[bytes, list[tuple[str, Entry]]] = {}
    for label, entries in layers:
        for entry in entries:
            offered.setdefault(entry.name, []).append((label, entry))
    for name, items in offered.items():
        path = _join(prefix, name)
        items = _unique(items)
        dirs = all(entry.kind == Kind.DIRECTORY for _, entry in items)
        if len(items) > 1 and not dirs:
            (first, _), (second, _) = items[0], items[1]
            shown = path.decode(errors="backslashreplace")
            raise OverlayConflict(
                f"path {shown!r} is written by both {first} and {second}; a path may come from one only"
            )
        below = merged.get(name)
        if dirs and (below is not None and below.kind == Kind.DIRECTORY or len(items) > 1):
            children = [(label, _read(store, entry.blob)) for label, entry in items]
            if below is not None and below.kind == Kind.DIRECTORY:
                merged[name] = Entry(name, Kind.DIRECTORY, _lay(store, _read(store, below.blob), children, path, out))
                continue
            if below is not None:
                out.replaced.add(path)
            out.fresh.append(path)
            merged[name] = Entry(name, Kind.DIRECTORY, _lay(store, [], children, path, out))
            continue
        entry = items[0][1]
        if below is not None:
            if below.same_content(entry):
                continue  # the same entry: the base's stays, with its time
            out.replaced.add(path)
        out.fresh.append(path)
        if entry.kind == Kind.DIRECTORY:
            out.fresh.extend(tree_paths(store, entry.blob, path))
        merged[name] = entry
    return store.put(encode_node([merged[name] for name in sorted(merged)]))


def _unique(items: list[tuple[str, Entry]]) -> list[tuple[str, Entry]]:
    """``items`` less those with the same content as one before them (no conflict: module docstring)."""
    kept: list[tuple[str, Entry]] = []
    for label, entry in items:
        if not any(entry.same_content(other) for _, other in kept):
            kept.append((label, entry))
    return kept
