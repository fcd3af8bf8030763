"""Membership: merging gossip, peers of peers, the failure detector, rejoining."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh.cas.digest import Digest
from mesh.cluster.membership import (
    DEAD_AFTER,
    FORGET_AFTER,
    SUSPECT_AFTER,
    Member,
    PeerTable,
    Watched,
    parse_message,
)
from mesh.errors import CodecError

SNAP = Digest.of(b"watched")


def member(node: str, incarnation: int = 1, heartbeat: int = 0) -> Member:
    return Member(node=node, url=f"http://{node}:7474", incarnation=incarnation, heartbeat=heartbeat)


def test_newer_versions_win_and_self_is_ignored() -> None:
    table = PeerTable("me")
    assert table.merge([member("a", 1, 5), member("me", 9, 9)], now=0) == ["a"]
    table.merge([member("a", 1, 3)], now=1)  # older: ignored
    peer = table.get("a")
    assert peer is not None and peer.member.heartbeat == 5 and peer.changed_at == 0
    table.merge([member("a", 1, 6)], now=2)
    peer = table.get("a")
    assert peer is not None and peer.changed_at == 2
    assert table.get("me") is None


def test_silence_makes_suspect_then_dead_then_forgotten() -> None:
    table = PeerTable("me")
    table.merge([member("a")], now=0)
    table.tick(SUSPECT_AFTER - 0.1)
    assert [m.node for m in table.alive()] == ["a"]
    table.tick(SUSPECT_AFTER + 0.1)
    assert table.alive() == [] and table.peers()[0].state == "suspect"
    assert table.tick(DEAD_AFTER + 0.1) == ["a"]
    assert table.peers()[0].state == "dead"
    assert table.tick(DEAD_AFTER + 0.2) == []  # reported once
    table.tick(FORGET_AFTER + 0.1)
    assert table.peers() == []


def test_a_restarted_node_rejoins_with_its_new_incarnation() -> None:
    table = PeerTable("me")
    table.merge([member("a", incarnation=100, heartbeat=50)], now=0)
    table.tick(DEAD_AFTER + 1)
    assert table.merge([member("a", incarnation=200, heartbeat=0)], now=DEAD_AFTER + 2) == ["a"]
    assert [m.node for m in table.alive()] == ["a"]


def test_peers_of_peers_spread_from_one_seed() -> None:
    """Nodes that each know one other learn everyone after a few rounds of pushes."""
    names = [f"n{i}" for i in range(6)]
    tables = {n: PeerTable(n) for n in names}
    selves = {n: member(n) for n in names}
    for i, n in enumerate(names):  # a chain: each node seeded with the next only
        if i + 1 < len(names):
            tables[n].merge([selves[names[i + 1]]], now=0)
    for round_ in range(len(names)):
        for n in names:
            for peer in tables[n].alive():
                members = parse_message(tables[n].message(selves[n])).members
                tables[peer.node].merge(members, now=round_)
    for n in names:
        assert {m.node for m in tables[n].alive()} == set(names) - {n}


def test_wire_round_trip_and_validation() -> None:
    me = Member(
        node="x",
        url="http://x:1",
        incarnation=5,
        heartbeat=2,
        capabilities={"os": "linux"},
        load={"slots": 4, "busy": 1, "queued": 0},
    )
    sender, members, dropped = parse_message(PeerTable("x").message(me))
    assert sender == "x" and members == [me] and dropped == []
    for bad in (
        {"from": "x"},
        {"from": "x", "members": [{"node": "y"}]},
        {"from": "x", "members": [{**me.to_wire(), "load": {"slots": "4"}}]},
    ):
        with pytest.raises(CodecError):
            parse_message(bad)


def test_fields_of_a_later_version_are_ignored_not_refused() -> None:
    """A mesh upgraded one node at a time still merges its members (the module's Versions)."""
    me = Member(node="x", url="http://x:1", incarnation=5, watches=(Watched(directory="/d", host="h", snapshot=SNAP),))
    wire = me.to_wire()
    wire["later"] = {"anything": [1, 2]}
    wire["watches"][0]["later"] = True
    sender, members, dropped = parse_message({"from": "x", "members": [wire], "later": 1})
    assert (sender, members, dropped) == ("x", [me], [])
    assert "later" not in members[0].to_wire()  # passed on without it


@given(st.lists(st.tuples(st.sampled_from("abc"), st.integers(0, 3), st.integers(0, 5)), max_size=30))
def test_merge_order_does_not_matter(updates: list[tuple[str, int, int]]) -> None:
    forward, backward = PeerTable("me"), PeerTable("me")
    forward.merge([member(n, i, h) for n, i, h in updates], now=0)
    backward.merge([member(n, i, h) for n, i, h in reversed(updates)], now=0)
    assert [p.member for p in forward.peers()] == [p.member for p in backward.peers()]
