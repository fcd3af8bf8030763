"""The lean offer client against a real node: events as they come, refusals with the node's words,
connections kept for the next offer and replaced when the peer closed them."""

from __future__ import annotations

import contextlib
import os
from typing import Any

import h11
import pytest
import trio

from mesh import codec
from mesh.cluster import offerpost
from mesh.cluster.offerpost import OfferConnections
from mesh.errors import NodeError, PeerDeclined
from mesh.wire.auth import MeshKey, load_key
from tests.nodeutil import NodeProcess, free_port


async def events_of(
    url: str, key: MeshKey, job: dict[str, Any], connections: OfferConnections | None = None
) -> list[dict[str, Any]]:
    target = "/v1/jobs?follow=1&offer=1&source=http://127.0.0.1:1"
    pool = connections or OfferConnections()
    async with contextlib.aclosing(pool.post(key, url, target, codec.encode(job))) as events:
        return [event async for event in events]


def offered(node: NodeProcess, script: str = "echo hi") -> tuple[dict[str, Any], MeshKey]:
    tree = os.path.join(os.path.dirname(node.home), "offered-tree")  # any tree the node holds
    os.makedirs(tree, exist_ok=True)
    with open(os.path.join(tree, "file"), "w") as f:
        f.write("offered\n")
    done = node.mesh("snapshot", tree)
    assert done.returncode == 0, done.stderr.decode()
    snapshot = done.stdout.decode().strip()
    task = {"name": "offered", "argv": ["sh", "-c", script], "input": snapshot, "executor": "process"}
    key = load_key(node.home)
    assert key is not None
    return task, key


async def test_an_offer_streams_its_events_and_a_bad_one_is_refused_with_the_reason(node: NodeProcess) -> None:
    task, key = offered(node)
    with trio.fail_after(30):
        events = await events_of(node.url, key, {"tasks": [task], "pinned": True})
    kinds = [e["type"] for e in events]
    assert kinds[0] == "job_submitted" and kinds[-1] == "job_finished" and "task_finished" in kinds
    assert b"".join(e["data"] for e in events if e["type"] == "output") == b"hi\n"
    with pytest.raises(NodeError, match="an offer is a pinned job of one task"):
        await events_of(node.url, key, {"tasks": [task]})


async def test_offers_reuse_a_connection_and_replace_one_the_peer_closed(node: NodeProcess) -> None:
    task, key = offered(node)
    pool = OfferConnections()
    peer = ("127.0.0.1", node.port)
    with trio.fail_after(60):
        await events_of(node.url, key, {"tasks": [task], "pinned": True}, pool)
        [first] = pool._kept[peer]
        await events_of(node.url, key, {"tasks": [dict(task, env={"N": "2"})], "pinned": True}, pool)
        assert pool._kept[peer] == [first], "the second offer went over the kept connection"
        with pytest.raises(NodeError):  # a refusal: its connection is not kept
            await events_of(node.url, key, {"tasks": [task]}, pool)
        assert pool._kept[peer] == []
        await events_of(node.url, key, {"tasks": [dict(task, env={"N": "3"})], "pinned": True}, pool)
        [second] = pool._kept[peer]
        assert node.stop() == 0  # the kept connection dies with the node's server ...
        node.start()
        events = await events_of(node.url, key, {"tasks": [dict(task, env={"N": "4"})], "pinned": True}, pool)
        assert events[-1]["type"] == "job_finished" and events[-1]["state"] == "succeeded"  # ... sent again
        [third] = pool._kept[peer]
        assert third is not second
    await pool.aclose()


async def test_a_peer_that_does_not_answer_declines() -> None:
    with pytest.raises(PeerDeclined, match="does not answer"):
        await events_of(f"http://127.0.0.1:{free_port()}", MeshKey.generate(), {"tasks": []})


async def test_connections_kept_too_long_are_closed_for_every_peer() -> None:
    """A peer that went away is never offered to again: its kept connections must not hold
    their descriptors for the node's lifetime (they are swept once IDLE_LIMIT has passed)."""
    pool = OfferConnections()
    ends = []
    for peer in (("10.0.0.1", 1), ("10.0.0.2", 1)):
        a, b = trio.socket.socketpair()
        ends.append(b)
        kept = offerpost._Kept(trio.SocketStream(a), h11.Connection(our_role=h11.CLIENT))
        kept.since -= offerpost.IDLE_LIMIT + 1
        pool._kept[peer] = [kept]
    a, b = trio.socket.socketpair()
    ends.append(b)
    pool._kept[("10.0.0.3", 1)] = [offerpost._Kept(trio.SocketStream(a), h11.Connection(our_role=h11.CLIENT))]
    pool._sweep()
    assert list(pool._kept) == [("10.0.0.3", 1)] and pool.kept() == 1
    assert [await end.recv(1) for end in ends[:2]] == [b"", b""]  # the swept ones are closed
    await pool.aclose()
    assert await ends[2].recv(1) == b""
    for end in ends:
        end.close()
