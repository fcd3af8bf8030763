"""The node's part in the mesh: who its peers are, and how they learn about it.

:class:`Peering` owns the peer table (mesh.cluster.membership), the gossip service
(mesh.cluster.gossip), the signed async client to peers (mesh.cluster.peer) and, when
enabled, mDNS discovery (mesh.cluster.mdns, imported only then), whose finds
become gossip candidates. ``await nursery.start(peering.run)`` starts them all;
cancellation stops them (unregistering from mDNS, closing connections).
"""

from __future__ import annotations

import logging
import os
import platform
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import trio

from mesh import __version__
from mesh.cas.digest import Digest
from mesh.cas.snapshot import missing_levels, read_node
from mesh.cas.store import LocalStore
from mesh.cas.tree import Kind
from mesh.cluster.gossip import Gossip
from mesh.cluster.membership import Member, PeerTable, Watched
from mesh.cluster.peer import PeerClient, TaskOffers
from mesh.cluster.peerstore import PeerStore, Room
from mesh.config import NodeConfig
from mesh.errors import BlobNotFound, MeshError, NodeError, describe
from mesh.exec.action import Action, ActionResult
from mesh.sched.placement import NodeView
from mesh.sched.scheduler import OutputSink
from mesh.urls import netloc, peer_url
from mesh.wire.auth import MeshKey

log = logging.getLogger("mesh.cluster.peering")


def capabilities(
    executors: list[str],
    labels: Mapping[str, str],
    images: Iterable[str] = (),
    workdirs: Mapping[str, str | None] | None = None,
) -> dict[str, str]:
    """What this node offers, as the flat ``key=value`` map placement matches requirements on.

    ``images``: the container images its Docker engine holds, as ``image.NAME:TAG=1``
    (and ``image.NAME=1`` for a ``latest`` tag, which is what a bare name means).
    ``workdirs``: where each executor shows its tasks their workdir (mesh.exec.paths), as
    ``workdir.NAME=PATH``; an executor that runs them at their host directories (None: a
    ``process`` executor with no mount namespace) has none. A task whose command names
    that path (``mesh cc``'s debug builds) requires it, so that it never runs where the
    path is another.
    """
    caps = {
        "os": platform.system().lower(),
        "arch": platform.machine(),
        "cores": str(os.cpu_count() or 1),
        "memory": str(_memory_bytes()),
    }
    caps.update({f"executor.{name}": "1" for name in executors})
    if "docker" in executors:
        caps["docker"] = "1"  # the short form: a container engine answers here
    caps.update({f"workdir.{name}": path for name, path in sorted((workdirs or {}).items()) if path})
    caps.update({f"label.{k}": v for k, v in labels.items()})
    for image in images:
        caps[f"image.{image}"] = "1"
        if image.endswith(":latest"):
            caps[f"image.{image.removesuffix(':latest')}"] = "1"
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
    return peer_url(f"http://{netloc(host, bound_port)}")  # the normal form every peer compares


#: Seconds a locality answer is reused for tasks with the same input.
LOCALITY_TTL = 5.0
#: Inputs smaller than this are not asked about: a peer fetches them in less time than
#: asking every peer takes (a round trip that would hold up the job's first placement).
LOCALITY_MIN_BYTES = 1 << 20
#: Most file blobs of an input a locality probe asks peers about.
LOCALITY_MAX_FILES = 10_000


def _file_blobs(store: LocalStore, root: Digest) -> list[Digest]:
    """The distinct file blobs of a snapshot this store holds the tree of (at most LOCALITY_MAX_FILES)."""
    found: dict[Digest, None] = {}
    pending = [root]
    while pending and len(found) < LOCALITY_MAX_FILES:
        node = pending.pop()
        try:
            entries = read_node(store, node)
        except MeshError:
            continue  # a part of the tree this node lacks: the probe covers what it can see
        for entry in entries:
            if entry.kind == Kind.DIRECTORY:
                pending.append(entry.blob)
            elif entry.kind != Kind.SYMLINK:
                found[entry.blob] = None
    return list(found)[:LOCALITY_MAX_FILES]


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
        room: Room | None = None,
        watches: Callable[[], tuple[Watched, ...]] = tuple,
    ) -> None:
        self.config = config
        self._watches = watches  # the directories watched through this node now, for gossip
        self.room = room  # room under the store's cap for what is fetched (mesh.cas.space)
        self.node_id = node_id
        self.key = key
        self.table = PeerTable(node_id)
        self.capabilities = capabilities(executors, dict(config.labels))
        self.incarnation = int(time.time() * 1000)
        self.url = ""
        self._load = load
        self.client: PeerClient | None = None
        self.offers: TaskOffers | None = None
        self._locality: dict[Digest, tuple[float, dict[str, int]]] = {}
        #: Snapshots whose root node is stored here but maybe not all the rest (being fetched,
        #: a fetch that failed, or only the root taken from a peer to accept a job).
        self.partial: set[Digest] = set()
        self.gossip = Gossip(self.table, self._me, self._send, seeds=list(config.seeds))

    def _me(self, heartbeat: int) -> Member:
        return Member(
            node=self.node_id,
            url=self.url,
            incarnation=self.incarnation,
            heartbeat=heartbeat,
            capabilities=self.capabilities,
            load=self._load(),
            watches=self._watches(),
        )

    async def _send(self, url: str, message: dict[str, Any]) -> Any:
        assert self.client is not None
        return await self.client.gossip(url, message)

    # -- running tasks on peers, moving blobs (the scheduler's Remote) -----------------

    def candidates(self) -> list[NodeView]:
        """The live peers as placement sees them (``node`` is the peer's URL)."""
        return [
            NodeView(
                node=m.url,
                capabilities=m.capabilities,
                slots=int(m.load.get("slots", 0)),
                busy=int(m.load.get("busy", 0)),
                queued=int(m.load.get("queued", 0)),
            )
            for m in self.table.alive()
        ]

    async def run_on(
        self,
        url: str,
        task_key: str,
        action: Action,
        on_output: OutputSink,
        on_cancel: Callable[[ActionResult], None] | None = None,
        *,
        no_cache: bool = False,
    ) -> ActionResult:
        """Run a task on the peer at ``url`` (see mesh.cluster.peer.TaskOffers)."""
        assert self.offers is not None, "peering is not running"
        return await self.offers.run(url, task_key, action, on_output, on_cancel, no_cache=no_cache)

    async def steal(self, url: str, slots: int) -> int:
        """Ask the peer at ``url`` to offer this node up to ``slots`` queued tasks (work stealing)."""
        assert self.client is not None, "peering is not running"
        reply = await self.client.request("POST", url + "/v1/steal", body={"thief": self.url, "slots": slots})
        given = reply.get("given") if isinstance(reply, dict) else None
        if not isinstance(given, int) or given < 0:
            raise NodeError(f"peer {url} answered a steal request with {reply!r}")
        return given

    async def locality(self, root: Digest, store: LocalStore) -> dict[str, int]:
        """How many bytes of snapshot ``root``'s files each live peer (by URL) and this node (by
        id) already hold: one find-missing request per peer, concurrently, cached a few seconds.
        Peers are not asked about inputs under LOCALITY_MIN_BYTES."""
        now = time.monotonic()
        cached = self._locality.get(root)
        if cached is not None and now - cached[0] < LOCALITY_TTL:
            return cached[1]
        files = _file_blobs(store, root)
        total = sum(d.size for d in files)
        found = {self.node_id: total - sum(d.size for d in store.find_missing(files))}
        if total >= LOCALITY_MIN_BYTES and self.client is not None:

            async def ask(url: str) -> None:
                try:
                    missing = sum(d.size for d in await self.missing_on(url, files))
                except MeshError:
                    return  # a peer that cannot say holds nothing, as far as placement knows
                found[url] = total - missing

            async with trio.open_nursery() as nursery:
                for member in self.table.alive():
                    nursery.start_soon(ask, member.url)
        self._locality[root] = (now, found)
        if len(self._locality) > 1000:
            self._locality.clear()
        return found

    def is_complete(self, root: Digest, store: LocalStore) -> bool:
        """Whether the store holds all of snapshot ``root`` as far as this node knows: its root,
        and no fetch of it is under way or was cut short (see :meth:`fetch_tree`)."""
        return store.has(root) and root not in self.partial

    async def fetch_tree(self, source: str | None, root: Digest, store: LocalStore) -> None:
        """Copy what ``store`` lacks of snapshot ``root``, verified, from the node at ``source``
        (None: from whichever live peer has each blob), a level of the tree at a time.

        While it runs (and if it fails) ``root`` is in :attr:`partial`, so a concurrent
        caller that finds the root node stored does not take the tree for complete.
        """
        blobs = self.peer_store(store)
        self.partial.add(root)
        for missing in missing_levels(store, root):
            await self._fetch_all(blobs, source, missing)
        self.partial.discard(root)

    async def fetch_blobs(self, source: str | None, digests: list[Digest], store: LocalStore) -> None:
        """Copy what ``store`` lacks of ``digests`` (plain blobs: a task's times manifest or stdin),
        verified, from the node at ``source`` (None: whichever live peer has each)."""
        missing = store.find_missing(digests)
        if missing:
            await self._fetch_all(self.peer_store(store), source, missing)

    @staticmethod
    async def _fetch_all(blobs: PeerStore, source: str | None, digests: list[Digest]) -> None:
        lost = await blobs.fetch_many(digests, source=source)
        if lost:
            raise BlobNotFound(lost[0])

    async def fetch_root(self, root: Digest, store: LocalStore) -> bool:
        """Copy the root node of snapshot ``root`` from whichever live peer has it (False when
        none does), and remember that the rest of the tree is not here: :meth:`is_complete`
        says so until :meth:`fetch_tree` completes it, when a task runs on it here."""
        if not await self.fetch_from_peers(root, store):
            return False
        self.partial.add(root)
        return True

    async def fetch_from_peers(self, digest: Digest, store: LocalStore) -> bool:
        """Copy a blob from whichever live peer has it; False when none does."""
        if self.offers is None:
            return False
        return await self.peer_store(store).fetch(digest)

    def peer_store(self, store: LocalStore) -> PeerStore:
        """``store`` with the live peers behind it (mesh.cluster.peerstore)."""
        assert self.offers is not None, "peering is not running"
        return PeerStore(
            store, self.alive_urls, self.missing_on, self.offers.fetch, self.offers.fetch_many, room=self.room
        )

    def alive_urls(self) -> list[str]:
        """The URLs of the live peers (none before peering runs)."""
        return [m.url for m in self.table.alive()] if self.client is not None else []

    async def call(self, url: str, path: str, body: Any, *, timeout: float) -> Any:
        """A signed request with a CBOR body to the peer at ``url``; its decoded answer
        (NodeError, NodeUnreachable when it cannot answer). mesh.cluster's services use it."""
        if self.client is None:
            raise NodeError("peering is not running")
        return await self.client.request("POST", url + path, body=body, timeout=timeout)

    async def missing_on(self, url: str, digests: list[Digest]) -> list[Digest]:
        """Which of ``digests`` the peer at ``url`` lacks (``POST /v1/blobs:missing``)."""
        assert self.client is not None, "peering is not running"
        reply = await self.client.request(
            "POST", url + "/v1/blobs:missing", body={"digests": [str(d) for d in digests]}
        )
        try:
            return [Digest.parse(text) for text in reply["missing"]]
        except (MeshError, KeyError, TypeError, ValueError) as exc:
            raise NodeError(f"peer {url} answered find-missing with {str(reply)[:200]!r}: {exc}") from None

    async def run(self, url: str, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Gossip (and discover, if enabled) as the node at ``url`` until cancelled."""
        self.url = url
        self.client = PeerClient(self.key)
        self.offers = TaskOffers(self.client, lambda: self.url)
        try:
            async with trio.open_nursery() as nursery:
                if self.config.mdns:
                    await nursery.start(self._discover)
                await nursery.start(self.gossip.run)
                task_status.started()
        finally:
            with trio.CancelScope(shield=True):
                await self.offers.aclose()
                await self.client.aclose()

    async def _discover(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        from urllib.parse import urlsplit

        from mesh.cluster.mdns import MdnsDiscovery, PeerChange

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
                    if change.kind not in ("added", "updated"):
                        continue
                    log.info("mDNS found %s at %s", change.peer.node_id, change.peer.url)
                    try:
                        self.gossip.add_candidate(change.peer.url)
                    except Exception as exc:  # one record's failure drops that record only
                        log.warning("mDNS record of %s dropped: %s", change.peer.node_id, describe(exc))

    def status(self, now: float | None = None) -> list[dict[str, Any]]:
        """The peers for ``/status``: health, load, capabilities, seconds since last heard, and how
        many directories are watched through each (``mesh watch``; gossip carries them)."""
        now = time.monotonic() if now is None else now
        return [
            {
                "node": p.member.node,
                "url": p.member.url,
                "state": p.state,
                "last_heard": round(now - p.changed_at, 3),
                "load": dict(p.member.load),
                "capabilities": dict(p.member.capabilities),
                "watches": len(p.member.watches),
            }
            for p in self.table.peers()
        ]
