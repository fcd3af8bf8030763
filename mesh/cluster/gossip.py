"""Gossip: every round, push this node's table to a few peers and merge their answers.

Push-pull over ``POST /v1/gossip`` (signed): the sender's table goes in the body,
the receiver merges it and answers with its own, which the sender merges. Each
round (:data:`ROUND`, 1 s) the node counts its heartbeat up, picks up to
:data:`FANOUT` targets at random among the live peers, plus every *candidate*
not yet known as a member (``--peer`` seeds, mDNS finds, the URLs of peers that
died), then ages its table (mesh.cluster.membership has the failure detector's
timings). A node therefore learns peers of peers from a single seed, and a peer
that comes back is found again through its seed or its mDNS record. A member whose
URL no node could have (mesh.urls: a bad scheme, host or port) is dropped from what
is merged, with a warning in the log; the rest of the message is taken. An unexpected
error in one exchange ends that exchange, and one in a round that round, each logged in
one line: gossip goes on.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any

import trio

from mesh.cluster.membership import Gossiped, Member, PeerTable, parse_message
from mesh.errors import CodecError, MeshError, describe
from mesh.urls import peer_url

log = logging.getLogger("mesh.gossip")

ROUND = 1.0
FANOUT = 3


class Gossip:
    """The gossip service of one node. ``me()`` describes this node as it is now."""

    def __init__(
        self,
        table: PeerTable,
        me: Callable[[int], Member],
        send: Callable[[str, dict[str, Any]], Any],
        *,
        seeds: list[str] | None = None,
        round_seconds: float = ROUND,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.table = table
        self._me = me
        self._send = send
        self.round_seconds = round_seconds
        self._clock = clock
        self.heartbeat = 0
        self.candidates: set[str] = {peer_url(s) for s in seeds or ()}
        self.rounds = 0

    def me(self) -> Member:
        return self._me(self.heartbeat)

    def add_candidate(self, url: str) -> None:
        """A URL that may be a peer (mDNS found it, or it is a seed); tried every round until known.
        Raises InvalidUrl for one no node could have (mesh.urls)."""
        self.candidates.add(peer_url(url))

    def receive(self, message: Any) -> dict[str, Any]:
        """Merge a peer's pushed table; returns ours (the answer of ``/v1/gossip``). Raises CodecError."""
        self._merge(parse_message(message))
        return self.table.message(self.me())

    def _merge(self, gossiped: Gossiped) -> None:
        for why in gossiped.dropped:
            log.warning("gossip from %s: dropped %s", gossiped.sender[:64], why)
        for node in self.table.merge(gossiped.members, self._clock()):
            peer = self.table.get(node)
            log.info("peer %s at %s is alive", node, peer.member.url if peer else "?")

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Gossip every round until cancelled. A round that fails on an unexpected error is
        logged in one line, and the next one comes as usual."""
        task_status.started()
        while True:
            try:
                await self.round()
            except Exception as exc:
                log.error("a gossip round failed: %s", describe(exc))
            await trio.sleep(self.round_seconds)

    async def round(self) -> None:
        """One round: heartbeat, push to the chosen targets (concurrently), age the table."""
        self.heartbeat += 1
        self.rounds += 1
        message = self.table.message(self.me())
        async with trio.open_nursery() as nursery:
            for url in self._targets():
                nursery.start_soon(self._push, url, message)
        for node in self.table.tick(self._clock()):
            peer = self.table.get(node)
            log.warning("peer %s stopped answering: dead", node)
            if peer is not None:
                self.add_candidate(peer.member.url)  # try it again: it may come back

    def _targets(self) -> list[str]:
        alive = [m.url for m in self.table.alive()]
        chosen = random.sample(alive, min(FANOUT, len(alive)))
        known = {p.member.url for p in self.table.peers() if p.state != "dead"}
        return chosen + sorted(self.candidates - known - set(chosen) - {self.me().url})

    async def _push(self, url: str, message: dict[str, Any]) -> None:
        """Push to one peer and merge its answer. Whatever goes wrong ends this exchange only:
        a peer that does not answer or answers nonsense (debug: it happens all the time), or
        an unexpected error (logged in one line)."""
        try:
            reply = await self._send(url, message)
            gossiped = parse_message(reply)
            self._merge(gossiped)
        except (MeshError, CodecError) as exc:
            log.debug("gossip to %s failed: %s", url, exc)
        except Exception as exc:
            log.error("gossip with %s failed: %s", url, describe(exc))
