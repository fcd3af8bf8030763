"""Gossip rounds with fake peers: one exchange that fails on a bug ends that exchange only."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from mesh.cluster.gossip import Gossip
from mesh.cluster.membership import Member, PeerTable


def me(heartbeat: int) -> Member:
    return Member(node="me", url="http://me:1", incarnation=1, heartbeat=heartbeat)


async def test_an_exchange_that_fails_on_a_bug_ends_that_exchange_only(caplog: pytest.LogCaptureFixture) -> None:
    """On cec0609 the error left the round's nursery, and with it the node's."""
    good = Member(node="good", url="http://good:2", incarnation=1)

    async def send(url: str, message: dict[str, Any]) -> Any:
        if url == "http://broken:3":
            raise RuntimeError("a bug meeting this peer")
        return PeerTable("good").message(good)

    gossip = Gossip(PeerTable("me"), me, send, seeds=["http://broken:3", "http://good:2"])
    with caplog.at_level(logging.DEBUG, logger="mesh.gossip"):
        await gossip.round()
        await gossip.round()
    assert [m.node for m in gossip.table.alive()] == ["good"]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == ["gossip with http://broken:3 failed: RuntimeError: a bug meeting this peer"] * 2
