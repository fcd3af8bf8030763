"""A task's way through the action cache: its key, the lookups, the claim, and a keyed run.

When to use: the scheduler, for each task of a job that may use the cache; it keeps the
task's state (queued, waiting, finished), this module what the cache answers:

1. :meth:`CacheLookup.here`: the key with this node's toolchain identity for the action
   (mesh.exec.toolchain) and the local cache, synchronously (a job of hits is finished at
   submit). A docker action's identity is the engine's to give, so it goes on to 2.
2. :meth:`CacheLookup.further`: the engine (docker), then the other caches (the peers:
   mesh.cluster.actioncache), asynchronously and bounded in time.
3. :meth:`CacheLookup.claim`: the mesh's claim of the key before its run (mesh.sched.inflight),
   which may end in another node's result.
4. :meth:`CacheLookup.run`: the run, keyed with the identity as it was before it and still
   is after it, so that a result is cached only under the toolchain that made it.

Each step says why a miss was one (``note``, from :class:`~mesh.sched.actioncache.MissReasons`)
for ``mesh exec -v``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Protocol

import trio

from mesh.cas.digest import Digest
from mesh.errors import ToolMissing
from mesh.exec.action import Action, ActionResult
from mesh.exec.toolchain import Identity, Toolchain
from mesh.sched.actioncache import ActionCache, MissReasons
from mesh.sched.inflight import Claims

log = logging.getLogger("mesh.sched")

#: Seconds the container engine gets to say which image ID an action's image names (its
#: toolchain identity) before the lookup counts as a miss.
ENGINE_TIMEOUT = 5.0
#: Seconds a claim of a cache key is held beyond the action's timeout (mesh.sched.inflight):
#: the time it may wait for a slot. A claim held longer lapses, and a node waiting on it
#: runs the action too (twice then, never lost).
CLAIM_SLACK = 600.0

OutputSink = Callable[[str, bytes], Awaitable[None]]


class Runs(Protocol):
    async def run(
        self,
        action: Action,
        *,
        on_output: OutputSink | None = None,
        on_cancel: Callable[[ActionResult], None] | None = None,
    ) -> ActionResult: ...


@dataclass(frozen=True)
class Found:
    """What a lookup came to: a ``hit``, or a miss with its ``key`` (None: no identity here
    yet, or none at all) and ``note`` (why); ``further``: whether step 2 may still find it."""

    hit: ActionResult | None = None
    key: Digest | None = None
    note: str | None = None
    further: bool = False


class CacheLookup:
    """The steps of the module docstring over one node's cache, toolchain and claims."""

    def __init__(self, cache: ActionCache, toolchain: Toolchain, reasons: MissReasons, claims: Claims | None) -> None:
        self.cache = cache
        self.toolchain = toolchain
        self.reasons = reasons
        self.claims = claims

    def here(self, action: Action, *, pinned: bool) -> Found:
        """Step 1. A pinned task (a peer's offer) is not looked up further: its coordinator was."""
        if self.toolchain.needs_engine(action):
            return Found(further=True)
        try:
            identity = self.toolchain.identity(action)
        except ToolMissing as exc:  # the task fails with it if it runs here; a peer may have the tool
            return Found(note=self.reasons.note(action, None, no_identity=str(exc)))
        found = self._get(action, identity)
        further = found.hit is None and self.cache.asks_further() and not pinned
        return replace(found, further=further)

    def _get(self, action: Action, identity: Identity) -> Found:
        key = action.cache_key(identity.digest())
        hit = self.cache.get(key)
        return Found(hit, key, None if hit is not None else self.reasons.note(action, identity))

    async def further(self, action: Action, found: Found, *, pinned: bool) -> Found:
        """Step 2, after :meth:`here` said ``further``."""
        if found.key is None:  # a docker action: the engine says which image it runs
            identity = None
            with trio.move_on_after(ENGINE_TIMEOUT):
                identity = await self.toolchain.of_image(action)
            if identity is None:
                why = f"the image {action.image} is not on this node, or its engine did not say"
                return Found(note=self.reasons.note(action, None, no_identity=why))
            found = self._get(action, identity)
            if found.hit is not None:
                return found
        if pinned or found.key is None or not self.cache.asks_further():
            return found
        hit = await self.cache.get_further(found.key)
        return found if hit is None else Found(hit, found.key)

    async def claim(self, action: Action, key: Digest, *, pinned: bool) -> tuple[ActionResult | None, str | None]:
        """Step 3: claim ``key`` for this node among the nodes of the mesh: (None, the node that
        granted it, or None when no node could be asked) to run it here; held by another node,
        its result from the mesh's cache once it has one (None, None: not to be found, run
        it here unclaimed)."""
        if self.claims is None or pinned or not self.claims.enabled():
            return None, None
        ttl = action.timeout + CLAIM_SLACK
        answer = await self.claims.claim(key, ttl, wait=False)
        while not answer.granted:
            if answer.done:
                hit = await self.cache.get_further(key)
                if hit is None:
                    return None, None
                note = f"waited for {answer.holder}, which ran it at the same time; {hit.cache_note}"
                return replace(hit, cache_note=note), None
            answer = await self.claims.claim(key, ttl, wait=True)
        return None, answer.by

    async def release(self, key: Digest, *, succeeded: bool) -> None:
        """The run of a claimed ``key`` ended (never raises)."""
        if self.claims is not None:
            await self.claims.release(key, succeeded=succeeded)

    async def key_now(self, action: Action) -> Digest | None:
        """The cache key of ``action`` with this node's identity for it now (None: it has none
        here, the engine lacks the image). Raises ToolMissing for a declared tool not here."""
        if self.toolchain.needs_engine(action):
            identity = None
            with trio.move_on_after(ENGINE_TIMEOUT):
                identity = await self.toolchain.of_image(action)
        else:
            identity = self.toolchain.identity(action)
        return None if identity is None else action.cache_key(identity.digest())

    async def run(
        self,
        runner: Runs,
        action: Action,
        on_output: OutputSink,
        *,
        cache: bool,
        on_cancel: Callable[[ActionResult], None] | None = None,
    ) -> ActionResult:
        """Step 4: run ``action`` in ``runner``. With ``cache``, the result carries the cache key
        of this node's toolchain identity as it was before the run and still is after it (a
        compiler replaced while the task ran: no key, so it is not cached under either). A
        declared tool missing here fails the task (ToolMissing) before it runs. A cancelled run
        hands ``on_cancel`` what it wrote until then (mesh.exec.runner.Runner.run)."""
        docker = self.toolchain.needs_engine(action)
        before = None if docker and not cache else await self.key_now(action)
        result = await runner.run(action, on_output=on_output, on_cancel=on_cancel)
        if not cache or not result.success:
            return result
        try:
            after = await self.key_now(action)
        except ToolMissing:
            after = None
        if before is not None and after != before:
            log.warning("the toolchain of an action changed while it ran; its result is not cached")
            return result
        return replace(result, cache_key=after)


__all__ = ["CacheLookup", "Found", "ENGINE_TIMEOUT", "CLAIM_SLACK"]
