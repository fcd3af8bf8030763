"""mesh.watch.registry: a node's watchers, their beats, their timeout, one live watcher per directory."""

from __future__ import annotations

import pytest

from mesh.cas.digest import Digest
from mesh.cluster.membership import Member, Watched
from mesh.errors import CodecError, WatchConflict, WatchNotFound
from mesh.watch.files import directories, in_directory, page
from mesh.watch.registry import WatchRegistry


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_second_live_watcher_of_a_directory_is_refused_until_the_first_times_out() -> None:
    clock = Clock()
    registry = WatchRegistry(10.0, clock=clock)
    first = registry.register("/src", "host1", 42)
    registry.register("/src", "host2", 43)  # the same path on another host is another directory
    with pytest.raises(WatchConflict, match="pid 42 on host1"):
        registry.register("/src", "host1", 44)
    clock.now += 9.0
    registry.beat(first.id)
    clock.now += 9.0
    with pytest.raises(WatchConflict):  # it beat 9 s ago: still live
        registry.register("/src", "host1", 44)
    clock.now += 1.5
    again = registry.register("/src", "host1", 44)  # the first was silent 10.5 s: dropped
    assert registry.dropped == 2  # the first, and host2's watcher that never beat
    with pytest.raises(WatchNotFound, match="register again"):
        registry.beat(first.id)
    assert [w.id for w in registry.live()] == [again.id]


def test_only_watchers_with_a_snapshot_are_gossiped_and_pinned_until_they_stop() -> None:
    registry = WatchRegistry(10.0, clock=Clock())
    snapshot = Digest.of(b"a tree")
    a = registry.register("/a", "h", 1)
    registry.register("/b", "h", 2)
    registry.beat(a.id, snapshot)
    assert registry.watched() == (Watched(directory="/a", host="h", snapshot=snapshot),)
    assert registry.roots() == {snapshot}
    registry.remove(a.id)
    assert registry.watched() == () and registry.roots() == frozenset()
    with pytest.raises(WatchNotFound):
        registry.remove(a.id)
    assert registry.beat_every == pytest.approx(10.0 / 3)


@pytest.mark.parametrize(
    ("directory", "host", "pid"), [("relative", "h", 1), ("/a\0b", "h", 1), ("/a", "", 1), ("/a", "h", 0)]
)
def test_a_registration_that_cannot_be_a_watcher_is_refused(directory: str, host: str, pid: int) -> None:
    with pytest.raises(CodecError):
        WatchRegistry().register(directory, host, pid)


def test_gossip_carries_a_members_watched_directories_and_refuses_a_bad_one() -> None:
    watched = Watched(directory="/w", host="h", snapshot=Digest.of(b"x"))
    member = Member(node="n", url="http://10.0.0.1:7474", incarnation=1, watches=(watched,))
    assert Member.from_wire(member.to_wire()) == member
    wire = member.to_wire()
    wire["watches"] = [{"dir": "/w", "host": "h", "snapshot": "not a digest"}]
    with pytest.raises(CodecError, match="/w"):
        Member.from_wire(wire)


def test_files_are_served_a_page_at_a_time() -> None:
    rows = [{"path": str(i)} for i in range(5)]
    assert page(rows, 0, 2) == {"files": rows[:2], "total": 5, "next": 2}
    assert page(rows, 4, 2) == {"files": rows[4:], "total": 5, "next": None}
    assert page(rows, 9, 2) == {"files": [], "total": 5, "next": None}


def test_files_are_grouped_and_kept_by_watched_directory() -> None:
    """The web UI's files page: each watched directory with its node and count; one directory's
    files by ``HOST:DIRECTORY`` (a directory may hold a colon; the host must match too)."""
    rows = [
        {"path": "a", "node": "n1", "host": "h", "directory": "/w:x"},
        {"path": "b", "node": "n2", "host": "g", "directory": "/w:x"},
        {"path": "c", "node": "n1", "host": "h", "directory": "/w:x"},
        {"path": "d", "node": "n1", "host": "h", "directory": "/v"},
    ]
    assert directories(rows) == [
        {"host": "g", "directory": "/w:x", "node": "n2", "files": 1},
        {"host": "h", "directory": "/v", "node": "n1", "files": 1},
        {"host": "h", "directory": "/w:x", "node": "n1", "files": 2},
    ]
    assert [r["path"] for r in in_directory(rows, "h:/w:x")] == ["a", "c"]
    assert in_directory(rows, "h:/w") == [] and directories([]) == []
