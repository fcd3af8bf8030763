"""Membership: the table of known nodes, merged from gossip, with a failure detector.

Gossip-style heartbeats (van Renesse et al., "A gossip-style failure detection
service"): every node counts a heartbeat up once per gossip round and pushes its
table to a few peers; a receiver keeps, for each node, the entry with the
highest version ``(incarnation, heartbeat)`` and notes *when* that version last
grew. Nothing needs a direct connection to a node to know it is alive: hearing
its heartbeat grow through any peer is enough, so one seed reaches the mesh.

``incarnation`` is fixed at a node's start (its start time in milliseconds), so
a restarted node outranks every entry of its previous life and rejoins at once.

Timings (with the 1 s gossip round of mesh.cluster.gossip): a node whose version
has not grown for :data:`SUSPECT_AFTER` seconds is ``suspect`` (still listed,
no longer given new work), after :data:`DEAD_AFTER` seconds ``dead`` (out of
placement, shown as dead by ``/status``), and after :data:`FORGET_AFTER`
seconds it is forgotten. Any newer version makes it ``alive`` again.

A member also carries the directories watched through it (``mesh watch``), each with the
snapshot it has now (:class:`Watched`): this is how every node learns every healthy
watcher of the mesh, and a dead member's watches leave with it (mesh.watch.files).

Versions: a field this version does not know, in a message, a member or a watched
directory, is ignored rather than refused, so that a node of a later version and one of
this version still merge each other's members while a mesh is upgraded one node at a time
(what they know of each other is what both know; a member passed on by this node loses the
fields it did not know). Jobs and actions stay strict: an unknown field there could change
what a task computes.

Pure: the clock is passed in, nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

from mesh import codec
from mesh.cas.digest import Digest
from mesh.errors import CodecError, InvalidUrl
from mesh.urls import peer_url

SUSPECT_AFTER = 3.0
DEAD_AFTER = 8.0
FORGET_AFTER = 60.0
#: Most members one gossip message may list.
MAX_MEMBERS = 1000
#: Most watched directories one member may carry (a node refuses more watchers).
MAX_WATCHES = 256


@dataclass(frozen=True, kw_only=True)
class Watched:
    """A directory watched through a node (``mesh watch``) and the snapshot it has now."""

    directory: str  # the absolute path on the watcher's host
    host: str  # the watcher's host name
    snapshot: Digest

    def to_wire(self) -> dict[str, Any]:
        return {"dir": self.directory, "host": self.host, "snapshot": str(self.snapshot)}

    @classmethod
    def from_wire(cls, value: Any) -> Watched:
        """Raises CodecError for a malformed one (InvalidDigest is one)."""
        fields = codec.Fields(value, "watched directory")
        directory, host, snapshot = fields.text("dir"), fields.text("host"), fields.text("snapshot")
        # no fields.done(): fields of a later version are left for it (see the module)
        try:
            digest = Digest.parse(snapshot)
        except ValueError as exc:
            raise CodecError(f"watched directory {directory[:200]!r}: {exc}") from None
        return cls(directory=directory, host=host, snapshot=digest)


@dataclass(frozen=True, kw_only=True)
class Member:
    """One node as gossip describes it."""

    node: str
    url: str
    incarnation: int
    heartbeat: int = 0
    capabilities: Mapping[str, str] = field(default_factory=dict)
    load: Mapping[str, int] = field(default_factory=dict)  # slots, busy, queued
    watches: tuple[Watched, ...] = ()

    @property
    def version(self) -> tuple[int, int]:
        return (self.incarnation, self.heartbeat)

    def to_wire(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "url": self.url,
            "incarnation": self.incarnation,
            "heartbeat": self.heartbeat,
            "capabilities": dict(self.capabilities),
            "load": dict(self.load),
            "watches": [w.to_wire() for w in self.watches],
        }

    @classmethod
    def from_wire(cls, value: Any) -> Member:
        """A member from gossip. Raises CodecError for a malformed one, InvalidUrl (after every
        other check) for one whose URL no node could have (mesh.urls)."""
        fields = codec.Fields(value, "gossip member")
        load = fields.mapping("load", {})
        if not all(isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in load.items()):
            raise CodecError("field 'load' of a gossip member must map names to integers")
        watches = fields.sequence("watches", [])
        if len(watches) > MAX_WATCHES:
            raise CodecError(f"a gossip member may carry at most {MAX_WATCHES} watched directories")
        member = cls(
            node=fields.text("node"),
            url=fields.text("url"),
            incarnation=fields.integer("incarnation", minimum=0),
            heartbeat=fields.integer("heartbeat", 0, minimum=0),
            capabilities=fields.text_map("capabilities", {}),
            load=load,
            watches=tuple(Watched.from_wire(w) for w in watches),
        )
        # no fields.done(): fields of a later version are left for it (see the module)
        return replace(member, url=peer_url(member.url))


@dataclass(frozen=True)
class PeerState:
    """A member plus what this node concluded about it."""

    member: Member
    state: str  # alive | suspect | dead
    changed_at: float  # when its version last grew (this node's clock)


class PeerTable:
    """The members this node knows, itself excluded. Feed it gossip; ask who is alive."""

    def __init__(self, self_id: str) -> None:
        self.self_id = self_id
        self._peers: dict[str, PeerState] = {}

    def merge(self, members: Iterable[Member], now: float) -> list[str]:
        """Take in what a gossip message said; returns the ids that joined or came back."""
        back = []
        for member in members:
            if member.node == self.self_id:
                continue
            known = self._peers.get(member.node)
            if known is not None and member.version <= known.member.version:
                continue
            if known is None or known.state != "alive":
                back.append(member.node)
            self._peers[member.node] = PeerState(member, "alive", now)
        return back

    def tick(self, now: float) -> list[str]:
        """Age the table: alive -> suspect -> dead -> forgotten. Returns the ids that just died."""
        died = []
        for node, peer in list(self._peers.items()):
            silent = now - peer.changed_at
            if silent > FORGET_AFTER:
                del self._peers[node]
            elif silent > DEAD_AFTER and peer.state != "dead":
                self._peers[node] = replace(peer, state="dead")
                died.append(node)
            elif SUSPECT_AFTER < silent <= DEAD_AFTER and peer.state == "alive":
                self._peers[node] = replace(peer, state="suspect")
        return died

    def peers(self) -> list[PeerState]:
        """Every known peer, by id."""
        return [self._peers[n] for n in sorted(self._peers)]

    def alive(self) -> list[Member]:
        """The peers that may be given work."""
        return [p.member for p in self.peers() if p.state == "alive"]

    def get(self, node: str) -> PeerState | None:
        return self._peers.get(node)

    def message(self, me: Member) -> dict[str, Any]:
        """The gossip this node sends: itself and every peer not dead, as the wire map."""
        members = [me] + [p.member for p in self.peers() if p.state != "dead"]
        return {"from": me.node, "members": [m.to_wire() for m in members[:MAX_MEMBERS]]}


class Gossiped(NamedTuple):
    """A gossip message, validated: its sender, its members, and why members were dropped."""

    sender: str
    members: list[Member]
    dropped: list[str]


def parse_message(value: Any) -> Gossiped:
    """Validate a gossip message. Raises CodecError when it is malformed; a member whose URL
    is not one a node could have (a bad scheme, host or port) is left out, and ``dropped``
    says which and why, for the caller's log."""
    fields = codec.Fields(value, "gossip message")
    sender = fields.text("from")
    raw = fields.sequence("members")
    # no fields.done(): fields of a later version are left for it (see the module)
    if len(raw) > MAX_MEMBERS:
        raise CodecError(f"a gossip message may list at most {MAX_MEMBERS} members")
    members, dropped = [], []
    for item in raw:
        try:
            members.append(Member.from_wire(item))
        except InvalidUrl as exc:
            node = item.get("node") if isinstance(item, dict) else None
            dropped.append(f"member {str(node)[:64]!r}: {exc}")
    return Gossiped(sender, members, dropped)
