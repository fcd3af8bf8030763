"""The action cache as the scheduler sees it: an interface, and one node's own cache.

Keys are :meth:`mesh.exec.action.Action.cache_key`: the action and the toolchain identity of
the node that runs it (mesh.exec.toolchain), so any node may hold any entry, and an entry
answers only for nodes whose identity for the action is the one it was made with.

Which to use (the shape of Buildbarn's action cache: a backend and decorators):

- :class:`LocalActionCache`: the entries of one node, in its state database. A result is
  served only while all of its blobs (stdout, stderr, the output tree) are in the node's
  store; an entry whose blobs were evicted is dropped. Synchronous: a job of hits is
  finished when its submission is answered. Use it alone for a node without peers.
- ``mesh.cluster.actioncache.MeshActionCache``: wraps a local cache and, after a local miss,
  asks the live peers (asynchronously, bounded in time). Use it on a node of a mesh.

The scheduler depends on :class:`ActionCache` only. :class:`MissReasons` is beside it: what
an action was last looked up with, to say why a run was not a hit (``mesh exec -v``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

from mesh import codec
from mesh.cas.digest import Digest
from mesh.errors import CodecError, StateError
from mesh.exec.action import Action, ActionResult
from mesh.exec.toolchain import Identity
from mesh.sched.statedb import StateDB

log = logging.getLogger("mesh.sched")


class ActionCache(Protocol):
    """Action results by cache key (see the module docstring for which one to use)."""

    def get(self, key: Digest) -> ActionResult | None:
        """The result held for ``key`` whose blobs are all here (marked ``cached``, its
        ``cache_note`` saying where it came from), or None. Synchronous and local."""

    def put(self, key: Digest, result: ActionResult) -> None:
        """Keep a successful ``result`` under ``key`` (written with the next commit)."""

    def asks_further(self) -> bool:
        """Whether :meth:`get_further` may find what :meth:`get` did not (live peers)."""

    async def get_further(self, key: Digest) -> ActionResult | None:
        """After a miss of :meth:`get`: the result another cache (a peer's) holds for ``key``,
        or None; bounded in time, never raises for a cache that cannot answer."""


class LocalActionCache:
    """One node's action cache, in its state database (see the module docstring).

    ``has``: whether a blob is in the local store; ``holds_tree``: whether a whole snapshot is
    (mesh.cas.space: eviction may have taken part of an output tree).
    """

    def __init__(
        self, db: StateDB, *, node_id: str, has: Callable[[Digest], bool], holds_tree: Callable[[Digest], bool]
    ) -> None:
        self.db = db
        self.node_id = node_id
        self.has = has
        self.holds_tree = holds_tree

    def get(self, key: Digest) -> ActionResult | None:
        text = str(key)
        try:
            hit = self.db.cached_result(text)
            if hit is None:
                return None
            whole = self.has(hit.stdout) and self.has(hit.stderr)
            if not whole or (hit.output is not None and not self.holds_tree(hit.output)):
                self.db.forget_cached(text)  # its blobs were evicted: run it again
                return None
        except StateError as exc:  # the cache is only a shortcut: an entry that cannot be read is a miss
            log.warning("the action cache could not be read: %s", exc)
            return None
        where = f"from the action cache of node {self.node_id}"
        return replace(hit, cached=True, cache_key=key, cache_note=where + ran_on(hit, self.node_id))

    def put(self, key: Digest, result: ActionResult) -> None:
        self.db.cache_result(str(key), replace(result, cached=False, cache_key=key, cache_note=None))

    def asks_further(self) -> bool:
        return False

    async def get_further(self, key: Digest) -> ActionResult | None:
        return None


def ran_on(result: ActionResult, holder: str) -> str:
    """``", run on node X"`` when the result was made on another node than ``holder``."""
    return "" if result.node == holder else f", run on node {result.node}"


class MissReasons:
    """What each action shape (the action without its input) was last looked up with here, to
    say why a lookup was not a hit: first run, inputs changed, toolchain changed (naming the
    parts), or neither (the last run left no entry). Kept in the state database."""

    def __init__(self, db: StateDB) -> None:
        self.db = db

    def note(self, action: Action, identity: Identity | None, *, no_identity: str = "") -> str:
        """Why a lookup of ``action`` with ``identity`` would miss, as seen from the last lookup
        of its shape; and remember this one for the next. ``identity`` None: none could be made
        here, for the reason ``no_identity`` says."""
        shape = str(action.shape())
        stored = None if identity is None else codec.encode(identity.to_wire())
        try:
            last = self.db.last_seen(shape)
            if last is None or last != (action.input_key(), stored):
                self.db.remember_seen(shape, action.input_key(), stored)
        except StateError as exc:
            log.warning("the action cache's history could not be read: %s", exc)
            return "not in the cache"
        if identity is None:
            return f"not in the cache: this node has no toolchain identity for it ({no_identity})"
        return "not in the cache: " + _why(action, identity, last)


def _why(action: Action, identity: Identity, last: tuple[str, bytes | None] | None) -> str:
    if last is None:
        return "first run"
    reasons = []
    if last[0] != action.input_key():
        reasons.append("inputs changed")
    changed = _changed(identity, last[1])
    if changed:
        reasons.append(f"toolchain changed ({', '.join(changed)})")
    if not reasons:
        return (
            "the last run with these inputs and toolchain left no result"
            " (it failed, ran uncached, or its outputs were evicted)"
        )
    return " and ".join(reasons)


def _changed(identity: Identity, stored: bytes | None) -> list[str]:
    if stored is None:
        return ["it had no identity before"]
    try:
        earlier = Identity.from_wire(codec.decode(stored))
    except CodecError:
        return ["the record of the earlier one cannot be read"]
    return identity.changed(earlier)


__all__ = ["ActionCache", "LocalActionCache", "MissReasons", "ran_on"]
