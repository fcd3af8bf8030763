"""One run for identical work in flight across the mesh: claims of cache keys.

When to use: on a node of a mesh, as the scheduler's :class:`~mesh.sched.inflight.Claims`.
Two nodes given the same cacheable action at the same time each miss the cache; without
a claim both would run it. With one, a node about to queue such a task (its lookups,
local and at the peers, missed; no task of its own runs the key) first claims the key:

- **The owner.** Each key has one owner among the live nodes: the node whose URL gives the
  highest rendezvous hash of (key, URL), over this node and the peers it knows alive. Every
  node with the same view of the membership picks the same owner, without asking anyone;
  keys spread over the nodes evenly, and a node joining or leaving moves only its share.
  The key carries the toolchain identity (mesh.exec.toolchain), so only nodes of the same
  identity ever claim the same key; the owner itself may be any node (it only keeps the
  table), including the claimant.
- **Granting.** The owner keeps a :class:`ClaimTable`: key -> holder (a node URL) and until
  when. The first claim is granted; a claim by the holder again is granted too (a node
  restarted, a task put back in its queue). A later claimant is told who holds it, and
  asks again with ``wait``: the owner keeps that request open for up to :data:`CLAIM_WAIT`
  seconds, answering as soon as the holder releases the key.
- **Release.** When the holder's task ends it releases the key: succeeded (the result is
  in the holder's cache: the owner keeps the key as done for :data:`DONE_KEEP` seconds, and
  claimants are told so, and look it up in the mesh's cache), or not (the key is free: the
  next claim is granted and that node runs it).
- **Never wait forever, never lose a task.** A claim lapses after its ``ttl`` (the action's
  timeout and the time it may queue, mesh.sched.scheduler's CLAIM_SLACK), and at once when
  the holder is no longer alive in the owner's view. An owner that does not answer within
  :data:`CLAIM_TIMEOUT` (beyond a wait) grants the claim by its silence: the claimant runs
  the task unclaimed. A claimant told "done" whose lookup then misses runs it too. The
  price of all three is a second run, never a task left waiting. Owners are not agreed
  on: while the membership changes, two nodes may name different owners and both run.

The cost: a claim and a release per cacheable task that missed everywhere (about 1.6 ms
each on loopback, :data:`CLAIM_TIMEOUT`), at most :data:`CONCURRENT_CLAIMS` at once; a
claim this node owns is a call, not a request. Tasks of a pinned job (a peer's offer) and
jobs with ``no_cache`` claim nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import blake3
import trio

from mesh import codec
from mesh.cas.digest import Digest
from mesh.cluster.actioncache import CachePeers
from mesh.errors import CodecError, MeshError, describe
from mesh.exec.action import parse_digest
from mesh.sched.inflight import ClaimAnswer
from mesh.urls import peer_url

log = logging.getLogger("mesh.cluster")

CLAIM_PATH = "/v1/cache:claim"
RELEASE_PATH = "/v1/cache:release"
#: Seconds an owner keeps a waiting claim open before answering "still held".
CLAIM_WAIT = 5.0
#: Seconds a claimant gives an owner to answer, beyond the wait: then it runs the task
#: itself. Measured on loopback (2 cores, 50 signed requests to a real node): a claim
#: answered at once 1.6 ms median, 1.9 ms at the 90th percentile; a release the same.
CLAIM_TIMEOUT = 2.0
#: Seconds an owner remembers a key whose holder ran it and succeeded.
DONE_KEEP = 60.0
#: Longest ttl a claim may ask for (an action's longest timeout and then some).
MAX_TTL = 8 * 24 * 3600.0
#: Claims (but waiting ones) and releases this node has out at once (the rest wait their turn).
CONCURRENT_CLAIMS = 32
#: Claims an owner keeps before it sweeps the lapsed ones.
SWEEP_AT = 10_000
#: Claims an owner keeps at most (~300 bytes each): past it, after a sweep, a new claim is
#: granted without being kept, as an owner's silence grants it (a second run, at worst), so
#: that claims signed peers make by the million cannot take the node's memory.
MAX_CLAIMS = 100_000


@dataclass(eq=False)
class _Claim:
    holder: str
    until: float
    done: bool = False
    changed: trio.Event = field(default_factory=trio.Event)


class ClaimTable:
    """The claims this node owns (see the module docstring). ``alive(url)``: whether the
    node at ``url`` is this node or a live peer."""

    def __init__(self, alive: Callable[[str], bool]) -> None:
        self.alive = alive
        self._claims: dict[Digest, _Claim] = {}

    def __len__(self) -> int:
        return len(self._claims)

    async def claim(self, key: Digest, holder: str, ttl: float, *, wait: float = 0.0) -> ClaimAnswer:
        """Grant ``key`` to ``holder`` for ``ttl`` seconds, or say who holds it (waiting up to
        ``wait`` seconds for it to be released, then answering as things are)."""
        current = self._current(key)
        if current is not None and current.holder != holder and not current.done and wait > 0:
            with trio.move_on_after(wait):
                await current.changed.wait()
            current = self._current(key)
        if current is not None and current.holder == holder:  # claimed again by its holder
            current.until, current.done = trio.current_time() + ttl, False
            return ClaimAnswer(True)
        if current is None:
            if len(self._claims) >= SWEEP_AT:
                self._sweep()
            if len(self._claims) < MAX_CLAIMS:
                self._claims[key] = _Claim(holder, trio.current_time() + ttl)
            return ClaimAnswer(True)
        return ClaimAnswer(False, holder=current.holder, done=current.done)

    def release(self, key: Digest, holder: str, *, succeeded: bool) -> None:
        """``holder``'s run of ``key`` ended (a release by another node is ignored)."""
        current = self._claims.get(key)
        if current is None or current.holder != holder or current.done:
            return
        if succeeded:
            current.done, current.until = True, trio.current_time() + DONE_KEEP
        else:
            del self._claims[key]
        current.changed.set()

    def _current(self, key: Digest) -> _Claim | None:
        """The claim of ``key`` that still holds: not lapsed, its holder alive."""
        current = self._claims.get(key)
        if current is not None and (trio.current_time() > current.until or not self.alive(current.holder)):
            del self._claims[key]
            current.changed.set()
            return None
        return current

    def _sweep(self) -> None:
        for key in list(self._claims):
            self._current(key)

    # -- the wire -------------------------------------------------------------------------

    async def answer_claim(self, message: Any) -> dict[str, Any]:
        """A peer's claim ``{"key", "holder", "ttl", "wait"}``; CodecError (400) if malformed."""
        fields = codec.Fields(message, "a claim")
        key = parse_digest(fields.text("key"), "the key of a claim")
        holder = _holder(fields.text("holder"))
        ttl = float(fields.number("ttl"))
        wait = float(fields.number("wait", 0.0))
        fields.done()
        if not 0 < ttl <= MAX_TTL:
            raise CodecError(f"a claim's ttl must be more than 0 and at most {MAX_TTL:g} seconds, not {ttl}")
        if not 0 <= wait <= CLAIM_WAIT:
            raise CodecError(f"a claim's wait must be between 0 and {CLAIM_WAIT:g} seconds, not {wait}")
        answer = await self.claim(key, holder, ttl, wait=wait)
        return {"granted": answer.granted, "holder": answer.holder, "done": answer.done}

    def answer_release(self, message: Any) -> dict[str, Any]:
        """A peer's release ``{"key", "holder", "succeeded"}``; CodecError (400) if malformed."""
        fields = codec.Fields(message, "a release")
        key = parse_digest(fields.text("key"), "the key of a release")
        holder = _holder(fields.text("holder"))
        succeeded = fields.flag("succeeded")
        fields.done()
        self.release(key, holder, succeeded=succeeded)
        return {}


def _holder(text: str) -> str:
    try:
        return peer_url(text)
    except MeshError as exc:
        raise CodecError(f"a claim's holder must be a node's URL: {exc}") from None


def owner(key: Digest, urls: list[str]) -> str:
    """The node (by URL) that owns ``key`` among ``urls``: the highest rendezvous hash."""
    return max(urls, key=lambda url: blake3.blake3(key.hash + url.encode()).digest())


class MeshClaims:
    """This node's claims of cache keys at their owners (the scheduler's Claims).

    ``table``: the claims this node owns; ``peers``: the live peers and requests to them;
    ``url``: this node's own URL as its peers know it (empty until it serves).
    """

    def __init__(self, table: ClaimTable, peers: CachePeers, url: Callable[[], str]) -> None:
        self.table = table
        self.peers = peers
        self.url = url
        self._limit = trio.CapacityLimiter(CONCURRENT_CLAIMS)
        self.granted = self.waited = self.unanswered = 0

    def enabled(self) -> bool:
        return bool(self.url()) and bool(self.peers.alive_urls())

    def _owner(self, key: Digest) -> str:
        return owner(key, [self.url(), *self.peers.alive_urls()])

    async def claim(self, key: Digest, ttl: float, *, wait: bool) -> ClaimAnswer:
        me, at = self.url(), self._owner(key)
        waiting = CLAIM_WAIT if wait else 0.0
        try:
            if at == me:
                answer = await self.table.claim(key, me, ttl, wait=waiting)
            else:
                body = {"key": str(key), "holder": me, "ttl": ttl, "wait": waiting}
                if wait:  # not limited: a waiting claim holds its request open for seconds
                    reply = await self.peers.call(at, CLAIM_PATH, body, timeout=waiting + CLAIM_TIMEOUT)
                else:
                    async with self._limit:
                        reply = await self.peers.call(at, CLAIM_PATH, body, timeout=CLAIM_TIMEOUT)
                answer = _answer(reply, at)
        except (MeshError, ValueError, TypeError, KeyError) as exc:
            log.info("the claim of a cache key at %s was not answered (%s): the task runs here", at, describe(exc))
            self.unanswered += 1
            return ClaimAnswer(True)
        if answer.granted:
            self.granted += 1
            return ClaimAnswer(True, by=at)
        self.waited += 1
        return answer

    async def release(self, key: Digest, *, succeeded: bool) -> None:
        me, at = self.url(), self._owner(key)
        try:
            if at == me:
                self.table.release(key, me, succeeded=succeeded)
                return
            body = {"key": str(key), "holder": me, "succeeded": succeeded}
            async with self._limit:
                await self.peers.call(at, RELEASE_PATH, body, timeout=CLAIM_TIMEOUT)
        except MeshError as exc:  # the claim lapses at the owner (its ttl, or this node's death)
            log.info("the release of a cache key at %s failed: %s", at, exc)
        except Exception as exc:  # a bug: logged, the node goes on
            log.error("releasing a cache key at %s failed: %s", at, describe(exc))


def _answer(reply: Any, at: str) -> ClaimAnswer:
    fields = codec.Fields(reply, f"the claim answer of {at}")
    granted = fields.flag("granted")
    holder = fields.text("holder", None)
    done = fields.flag("done", False)
    if not granted and holder is None:
        raise CodecError(f"{at} refused a claim without saying who holds it")
    return ClaimAnswer(granted, holder=holder, done=done)


__all__ = ["ClaimTable", "MeshClaims", "owner", "CLAIM_PATH", "RELEASE_PATH", "CLAIM_WAIT"]
