"""Peering.locality: how much of an input each node holds; peers are asked only about large inputs."""

from __future__ import annotations

import os
import time
from pathlib import Path

from mesh.cas.digest import Digest
from mesh.cas.snapshot import ingest
from mesh.cas.store import LocalStore
from mesh.cluster.membership import Member
from mesh.cluster.peering import LOCALITY_MIN_BYTES, Peering
from mesh.config import NodeConfig
from mesh.wire.auth import MeshKey

PEER = "http://peer:1"


def peering_with_one_peer(tmp_path: Path, asked: list[str], holds: int) -> Peering:
    """A Peering that knows one live peer; asking it records the URL and says it misses the
    files beyond its first ``holds`` bytes."""
    peering = Peering(
        NodeConfig(home=str(tmp_path / "home")),
        node_id="me",
        key=MeshKey(bytes(range(32))),
        executors=["process"],
        load=lambda: {},
    )
    peering.table.merge([Member(node="peer", url=PEER, incarnation=1, heartbeat=1)], time.monotonic())
    peering.client = object()  # type: ignore[assignment]  # only missing_on uses it, replaced below

    async def missing_on(url: str, digests: list[Digest]) -> list[Digest]:
        asked.append(url)
        kept, missing = 0, []
        for d in digests:
            if kept + d.size <= holds:
                kept += d.size
            else:
                missing.append(d)
        return missing

    peering.missing_on = missing_on  # type: ignore[method-assign]
    return peering


def tree_of(tmp_path: Path, name: str, size: int) -> Path:
    root = tmp_path / name
    root.mkdir()
    (root / "data").write_bytes(os.urandom(size))
    return root


async def test_peers_are_asked_about_large_inputs_only(tmp_path: Path) -> None:
    with LocalStore(tmp_path / "cas") as store:
        small = ingest(store, tree_of(tmp_path, "small", 4096))
        large = ingest(store, tree_of(tmp_path, "large", LOCALITY_MIN_BYTES))
        asked: list[str] = []
        peering = peering_with_one_peer(tmp_path, asked, holds=LOCALITY_MIN_BYTES)
        assert await peering.locality(small, store) == {"me": 4096}
        assert asked == []
        assert await peering.locality(large, store) == {"me": LOCALITY_MIN_BYTES, PEER: LOCALITY_MIN_BYTES}
        assert asked == [PEER]
        await peering.locality(large, store)  # answered from the cache
        assert asked == [PEER]
