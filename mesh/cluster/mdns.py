"""mDNS discovery: register this node as ``_mesh._tcp.local.`` and browse for peers.

One :class:`MdnsDiscovery` per node. Its :meth:`~MdnsDiscovery.run` is a long-running
service for the node's nursery (``await nursery.start(discovery.run)``): it returns from
``start`` once the service is registered and browsing, and on cancellation it unregisters
(goodbye packets, so peers drop us at once) and closes zeroconf, shielded.

The TXT record carries ``node`` (node id), ``mesh`` (mesh id: the fingerprint of the mesh
key), ``port`` (API port) and ``version``. Records of this node and of another mesh id are
ignored; what remains is available as :meth:`~MdnsDiscovery.peers` (``node id -> Peer``)
and, optionally, as a stream of :class:`PeerChange` sent to a trio memory channel given to
the constructor (closed when ``run`` ends).

Threads: zeroconf runs its own asyncio loop in a thread and the ``ServiceBrowser`` calls
its handlers in another thread. The handler resolves the record there (blocking, bounded
by ``resolve_timeout``) and hands a plain event to trio with ``trio.from_thread.run`` on
the run's trio token, through a bounded memory channel; all state lives in the trio
thread. Nothing here uses asyncio from trio, and no task outlives ``run``.

Removal: a peer that stops cleanly sends goodbyes and disappears from every view within
about a second. A peer that dies without them (kill -9, cable pulled) stays until its PTR
record expires (zeroconf's default TTL for it is 4500 s): mDNS is for *finding* peers,
the gossip failure detector decides who is alive.

Turning it off (``--no-mdns`` / ``MESH_MDNS=0``) is simply not starting ``run``: nothing
touches the network before it. Never start it in tests outside a network namespace the
test made (see tests/netns.py): it multicasts on every interface it finds.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import ifaddr
import trio
from zeroconf import InterfaceChoice, IPVersion, ServiceBrowser, ServiceInfo, ServiceStateChange, Zeroconf
from zeroconf._utils.net import InterfacesType

from mesh.errors import InvalidUrl, describe
from mesh.urls import peer_url

__all__ = ["SERVICE_TYPE", "MdnsDiscovery", "Peer", "PeerChange", "local_addresses", "peer_from_record"]

SERVICE_TYPE = "_mesh._tcp.local."

logger = logging.getLogger(__name__)

_NODE_ID = re.compile(r"[0-9A-Za-z_-]{1,48}")


@dataclass(frozen=True)
class Peer:
    """A node of our mesh seen on the LAN."""

    node_id: str
    url: str  # http://ADDR:API_PORT/ (no trailing slash)
    mesh_id: str
    version: str


@dataclass(frozen=True)
class PeerChange:
    """A change of :meth:`MdnsDiscovery.peers`; for ``removed``, ``peer`` is the last known record."""

    kind: Literal["added", "updated", "removed"]
    peer: Peer


@dataclass(frozen=True)
class _Seen:
    name: str  # the DNS-SD instance name
    peer: Peer | None  # None: the record is not a valid mesh record


@dataclass(frozen=True)
class _Gone:
    name: str


_Event = _Seen | _Gone


def local_addresses() -> list[str]:
    """IPv4 addresses of this network namespace's interfaces, loopback only if nothing else."""
    found: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if ip.is_IPv4 and isinstance(ip.ip, str) and ip.ip not in found:
                found.append(ip.ip)
    outside = [a for a in found if not ipaddress.IPv4Address(a).is_loopback]
    return outside or ["127.0.0.1"]


def _text(properties: Mapping[bytes, bytes | None], key: bytes) -> str | None:
    value = properties.get(key)
    if value is None:
        return None
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _url(address: str, port: int) -> str:
    ip = ipaddress.ip_address(address)
    host = f"[{ip}]" if ip.version == 6 else str(ip)
    return f"http://{host}:{port}"


def peer_from_record(
    properties: Mapping[bytes, bytes | None], addresses: Sequence[str], srv_port: int | None
) -> Peer | None:
    """The :class:`Peer` a resolved record describes, or None when it is not a usable mesh record.

    ``addresses`` are the record's parsed addresses; IPv4 is preferred, IPv6 link-local
    addresses are skipped (they need a scope the URL cannot carry). The API port is the TXT
    ``port`` (the SRV port if that is missing).
    """
    node_id = _text(properties, b"node")
    mesh_id = _text(properties, b"mesh")
    version = _text(properties, b"version") or ""
    port_text = _text(properties, b"port")
    if node_id is None or not _NODE_ID.fullmatch(node_id) or not mesh_id:
        return None
    port = int(port_text) if port_text is not None and port_text.isascii() and port_text.isdigit() else srv_port
    if port is None or not 0 < port < 65536:
        logger.info("mDNS: dropped the record of node %s: port %r is not a number from 1 to 65535", node_id, port)
        return None
    usable: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for text in addresses:
        try:
            ip = ipaddress.ip_address(text.split("%", 1)[0])
        except ValueError:
            continue
        if not (ip.version == 6 and ip.is_link_local):
            usable.append(ip)
    if not usable:
        return None
    usable.sort(key=lambda ip: ip.version)  # IPv4 first, stable otherwise
    try:
        url = peer_url(_url(str(usable[0]), port))  # the one check of every URL naming a node
    except InvalidUrl as exc:
        logger.info("mDNS: dropped the record of node %s: %s", node_id, exc)
        return None
    return Peer(node_id=node_id, url=url, mesh_id=mesh_id, version=version)


class MdnsDiscovery:
    """Announce this node and track the peers of the same mesh.

    ``changes``, when given, receives a :class:`PeerChange` for every change of
    :meth:`peers`; ``run`` waits for it to accept each one (a slow reader delays discovery,
    it loses nothing) and closes it when it ends. ``addresses`` are the addresses announced
    for this node (default: :func:`local_addresses`); ``interfaces`` is zeroconf's choice of
    interfaces to multicast on (default: all of this network namespace's IPv4 interfaces).
    """

    def __init__(
        self,
        *,
        node_id: str,
        mesh_id: str,
        api_port: int,
        version: str,
        changes: trio.MemorySendChannel[PeerChange] | None = None,
        addresses: Sequence[str] | None = None,
        interfaces: InterfacesType = InterfaceChoice.All,
        resolve_timeout: float = 3.0,
    ) -> None:
        if not _NODE_ID.fullmatch(node_id):
            raise ValueError(f"node id {node_id!r} is not usable in an mDNS name ([0-9A-Za-z_-], 1-48 characters)")
        if not mesh_id:
            raise ValueError("mesh id must not be empty")
        if not 0 < api_port < 65536:
            raise ValueError(f"API port {api_port} is out of range")
        self.node_id = node_id
        self.mesh_id = mesh_id
        self.api_port = api_port
        self.version = version
        self._changes = changes
        self._addresses = list(addresses) if addresses is not None else None
        self._interfaces = interfaces
        self._resolve_timeout_ms = int(resolve_timeout * 1000)
        self._by_name: dict[str, Peer] = {}  # instance name -> peer, latest last
        self._ignored: set[str] = set()  # instance names of other meshes, logged once

    def peers(self) -> dict[str, Peer]:
        """The peers currently known: node id -> :class:`Peer` (a copy)."""
        return {peer.node_id: peer for peer in self._by_name.values()}

    def service_info(self) -> ServiceInfo:
        """The record this node announces."""
        addresses = self._addresses if self._addresses is not None else local_addresses()
        return ServiceInfo(
            SERVICE_TYPE,
            f"mesh-{self.node_id}.{SERVICE_TYPE}",
            port=self.api_port,
            properties={
                "node": self.node_id,
                "mesh": self.mesh_id,
                "port": str(self.api_port),
                "version": self.version,
            },
            server=f"mesh-{self.node_id}.local.",
            parsed_addresses=addresses,
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Register and browse until cancelled; ``task_status.started()`` once registered."""
        token = trio.lowlevel.current_trio_token()
        send, receive = trio.open_memory_channel[_Event](64)
        info = self.service_info()
        zc = await trio.to_thread.run_sync(functools.partial(Zeroconf, interfaces=self._interfaces))
        browser: ServiceBrowser | None = None
        registering = False
        try:
            # Browse first: peers are found while our own record is probed and announced
            # (about 1.5 s); the handler's events wait in the channel until the loop below.
            handler = functools.partial(self._on_state_change, token, send)
            browser = ServiceBrowser(zc, SERVICE_TYPE, handlers=[handler])
            registering = True
            await trio.to_thread.run_sync(functools.partial(zc.register_service, info, allow_name_change=True))
            logger.info("mDNS: registered %s, browsing %s", info.name, SERVICE_TYPE)
            task_status.started()
            async for event in receive:
                try:
                    changes = self._apply(event)
                except Exception as exc:  # one record's failure drops that record only
                    logger.error("mDNS: handling %s failed: %s", event.name, describe(exc))
                    continue
                for change in changes:
                    if self._changes is not None:
                        await self._changes.send(change)
        finally:
            with trio.CancelScope(shield=True):
                receive.close()  # a handler blocked on send gets BrokenResourceError and returns
                await trio.to_thread.run_sync(_shutdown, zc, browser, info if registering else None)
                if self._changes is not None:
                    self._changes.close()

    # --- the browser thread -------------------------------------------------------------

    def _on_state_change(
        self,
        token: trio.lowlevel.TrioToken,
        send: trio.MemorySendChannel[_Event],
        *,
        zeroconf: Zeroconf,
        service_type: str,
        name: str,
        state_change: ServiceStateChange,
    ) -> None:
        """ServiceBrowser handler: runs in the browser's thread, never in trio's."""
        try:
            event: _Event
            if state_change is ServiceStateChange.Removed:
                event = _Gone(name)
            else:
                info = zeroconf.get_service_info(service_type, name, timeout=self._resolve_timeout_ms)
                if info is None:
                    logger.debug("mDNS: could not resolve %s", name)
                    return
                properties = info.properties
                addresses = info.parsed_addresses(IPVersion.V4Only) + info.parsed_addresses(IPVersion.V6Only)
                event = _Seen(name, peer_from_record(properties, addresses, info.port))
            trio.from_thread.run(send.send, event, trio_token=token)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.RunFinishedError, trio.Cancelled):
            pass  # run() is ending
        except Exception:
            logger.exception("mDNS: handling %s %s failed", state_change, name)

    # --- the trio thread ----------------------------------------------------------------

    def _apply(self, event: _Event) -> list[PeerChange]:
        """Fold one event into the state; the changes of :meth:`peers` it caused."""
        before = self.peers()
        name = event.name
        peer = event.peer if isinstance(event, _Seen) else None
        self._by_name.pop(name, None)
        if isinstance(event, _Gone):
            self._ignored.discard(name)
        elif peer is None:
            logger.debug("mDNS: %s is not a valid mesh record", name)
        elif peer.node_id == self.node_id:
            pass  # ourselves
        elif peer.mesh_id != self.mesh_id:
            if name not in self._ignored:
                self._ignored.add(name)
                logger.info(
                    "mDNS: ignoring node %s at %s: mesh id %s is not ours", peer.node_id, peer.url, peer.mesh_id
                )
        else:
            self._by_name[name] = peer  # re-inserted: the newest record of a node wins
        return _diff(before, self.peers())


def _diff(before: dict[str, Peer], after: dict[str, Peer]) -> list[PeerChange]:
    changes = [PeerChange("removed", peer) for node_id, peer in before.items() if node_id not in after]
    for node_id, peer in after.items():
        old = before.get(node_id)
        if old is None:
            changes.append(PeerChange("added", peer))
        elif old != peer:
            changes.append(PeerChange("updated", peer))
    return changes


def _shutdown(zc: Zeroconf, browser: ServiceBrowser | None, info: ServiceInfo | None) -> None:
    """Stop browsing, say goodbye, close zeroconf (blocking: run in a worker thread)."""
    try:
        if browser is not None:
            browser.cancel()
        if info is not None:
            try:
                zc.unregister_service(info)
            except Exception:
                logger.exception("mDNS: unregistering %s failed", info.name)
    finally:
        zc.close()
