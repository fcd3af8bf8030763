"""The lean offer client against a real node: events as they come, refusals with the node's words."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
import trio

from mesh import codec
from mesh.api.auth import MeshKey, load_key
from mesh.api.offerpost import post_offer
from mesh.errors import NodeError, PeerDeclined
from tests.nodeutil import NodeProcess, free_port


async def events_of(url: str, key: MeshKey, job: dict[str, Any]) -> list[dict[str, Any]]:
    target = "/v1/jobs?follow=1&offer=1&source=http://127.0.0.1:1"
    async with contextlib.aclosing(post_offer(key, url, target, codec.encode(job))) as events:
        return [event async for event in events]


async def test_an_offer_streams_its_events_and_a_bad_one_is_refused_with_the_reason(node: NodeProcess) -> None:
    snapshot = node.mesh("snapshot", str(node.home)).stdout.decode().strip()  # any tree the node holds
    task = {"name": "offered", "argv": ["sh", "-c", "echo hi"], "input": snapshot, "executor": "process"}
    key = load_key(node.home)
    assert key is not None
    with trio.fail_after(30):
        events = await events_of(node.url, key, {"tasks": [task], "pinned": True})
    kinds = [e["type"] for e in events]
    assert kinds[0] == "job_submitted" and kinds[-1] == "job_finished" and "task_finished" in kinds
    assert b"".join(e["data"] for e in events if e["type"] == "output") == b"hi\n"
    with pytest.raises(NodeError, match="an offer is a pinned job of one task"):
        await events_of(node.url, key, {"tasks": [task]})


async def test_a_peer_that_does_not_answer_declines() -> None:
    with pytest.raises(PeerDeclined, match="does not answer"):
        await events_of(f"http://127.0.0.1:{free_port()}", MeshKey.generate(), {"tasks": []})
