"""The node's part in the mesh: who its peers are, and how they learn about it.

:class:`Peering` owns the peer table (mesh.sched.membership), the gossip service
(mesh.sched.gossip), the signed async client to peers (mesh.api.peer) and, when
enabled, mDNS discovery (mesh.discovery.mdns, imported only then), whose finds
become gossip candidates. ``await nursery.start(peering.run)`` starts them all;
cancellation stops them (unregistering from mDNS, closing connections).
"""

from __future__ import annotations

import logging
import os
import platform
import time
from collections.abc import Callable, Mapping
from typing import Any

import trio

from mesh import __version__
from mesh.api.auth import MeshKey
from mesh.api.peer import PeerClient
from mesh.config import NodeConfig
from mesh.sched.gossip import Gossip
from mesh.sched.membership import Member, PeerTable

log = logging.getLogger("mesh.peering")


def capabilities(executors: list[str], labels: Mapping[str, str]) -> dict[str, str]:
    """What this node offers, as the flat ``key=value`` map placement matches requirements on."""
    caps = {
        "os": platform.system().lower(),
        "arch": platform.machine(),
        "cores": str(os.cpu_count() or 1),
        "memory": str(_memory_bytes()),
    }
    caps.update({f"executor.{name}": "1" for name in executors})
    caps.update({f"label.{k}": v for k, v in labels.items()})
    return caps


def _memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 0


def advertised_url(config: NodeConfig, bound_port: int) -> str:
    """The URL peers should use for this node: ``advertise``, else the listen address, else
    (listening on every interface) the first non-loopback IPv4 address of this host."""
    if config.advertise:
        return config.advertise.rstrip("/")
    host = config.listen[0]
    if host in ("0.0.0.0", "::", ""):
        import ipaddress

        import ifaddr

        addresses = [
            ip.ip
            for adapter in ifaddr.get_adapters()
            for ip in adapter.ips
            if ip.is_IPv4 and isinstance(ip.ip, str) and not ipaddress.IPv4Address(ip.ip).is_loopback
        ]
        host = addresses[0] if addresses else "127.0.0.1"
    return f"http://[{host}]:{bound_port}" if ":" in host else f"http://{host}:{bound_port}"


class Peering:
    """Peers of one node: table, gossip, discovery. ``load()`` reports this node's load."""

    def __init__(
        self,
        config: NodeConfig,
        *,
        node_id: str,
        key: MeshKey,
        executors: list[str],
        load: Callable[[], dict[str, int]],
    ) -> None:
        self.config = config
        self.node_id = node_id
        self.key = key
        self.table = PeerTable(node_id)
        self.capabilities = capabilities(executors, dict(config.labels))
        self.incarnation = int(time.time() * 1000)
        self.url = ""
        self._load = load
        self.client: PeerClient | None = None
        self.gossip = Gossip(self.table, self._me, self._send, seeds=list(config.seeds))

    def _me(self, heartbeat: int) -> Member:
        return Member(
            node=self.node_id,
            url=self.url,
            incarnation=self.incarnation,
            heartbeat=heartbeat,
            capabilities=self.capabilities,
            load=self._load(),
        )

    async def _send(self, url: str, message: dict[str, Any]) -> Any:
        assert self.client is not None
        return await self.client.gossip(url, message)

    async def run(self, url: str, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Gossip (and discover, if enabled) as the node at ``url`` until cancelled."""
        self.url = url
        self.client = PeerClient(self.key)
        try:
            async with trio.open_nursery() as nursery:
                if self.config.mdns:
                    await nursery.start(self._discover)
                await nursery.start(self.gossip.run)
                task_status.started()
        finally:
            with trio.CancelScope(shield=True):
                await self.client.aclose()

    async def _discover(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        from urllib.parse import urlsplit

        from mesh.discovery.mdns import MdnsDiscovery, PeerChange

        send, receive = trio.open_memory_channel[PeerChange](64)
        port = urlsplit(self.url).port or 0
        discovery = MdnsDiscovery(
            node_id=self.node_id, mesh_id=self.key.mesh_id, api_port=port, version=__version__, changes=send
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(discovery.run)
            task_status.started()
            async with receive:
                async for change in receive:
                    if change.kind in ("added", "updated"):
                        log.info("mDNS found %s at %s", change.peer.node_id, change.peer.url)
                        self.gossip.add_candidate(change.peer.url)

    def status(self, now: float | None = None) -> list[dict[str, Any]]:
        """The peers for ``/status``: health, load, capabilities, seconds since last heard."""
        now = time.monotonic() if now is None else now
        return [
            {
                "node": p.member.node,
                "url": p.member.url,
                "state": p.state,
                "last_heard": round(now - p.changed_at, 3),
                "load": dict(p.member.load),
                "capabilities": dict(p.member.capabilities),
            }
            for p in self.table.peers()
        ]
