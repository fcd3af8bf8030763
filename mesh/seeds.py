"""Static seeds: ``--peer HOST:PORT`` for networks without multicast (or beside mDNS).

A seed is only a first address to gossip with: once the node there answers it is a
member like any other, and the peers it knows are learnt from it (mesh.cluster.gossip).
Seeds come from, in order of precedence, ``--peer`` (repeatable), ``MESH_PEERS``
(comma-separated) and ``peers = ["host:7474"]`` in mesh.toml.
"""

from __future__ import annotations

import os
from typing import Any

from mesh.errors import InvalidUrl, UsageError
from mesh.urls import peer_url


def seeds(flags: list[str] | None, configured: Any = None) -> tuple[str, ...]:
    """The seed URLs from ``--peer`` flags, else MESH_PEERS, else ``configured`` (mesh.toml's ``peers``)."""
    if flags:
        texts = flags
    elif os.environ.get("MESH_PEERS"):
        texts = [p for p in os.environ["MESH_PEERS"].split(",") if p.strip()]
    else:
        value = [] if configured is None else configured
        if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
            raise UsageError('peers in mesh.toml must be a list like ["host:7474"]')
        texts = value
    return tuple(dict.fromkeys(seed_url(text) for text in texts))


def seed_url(text: str) -> str:
    """``HOST:PORT`` (``[v6]:PORT`` too), or an ``http(s)://`` URL, of a seed peer, as a URL in the
    normal form of mesh.urls (the one check of every URL that names a node)."""
    text = text.strip()
    try:
        if "://" in text:
            return peer_url(text)
        if not text.rpartition(":")[2].isdigit():
            raise InvalidUrl("the port is missing")
        return peer_url("http://" + text)
    except InvalidUrl as exc:
        raise UsageError(
            f"a peer must look like HOST:PORT (e.g. 192.168.1.20:7474) or a URL, not {text!r} ({exc})"
        ) from None
