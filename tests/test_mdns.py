"""mDNS discovery: record parsing and bookkeeping (anywhere), real multicast in namespaces (root).

The multicast test builds a private LAN of network namespaces (tests/netns.py) and runs
this file as a script in each (``python tests/test_mdns.py child NODE MESH PORT``): the
child runs :class:`MdnsDiscovery` under ``trio.run`` and prints JSON lines (``ready``,
``added``/``updated``/``removed``, ``log``, ``stopped``). zeroconf never runs in this
pytest process, and the child refuses to run in the test runner's network namespace.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mesh.cluster.mdns import MdnsDiscovery, Peer, PeerChange, _Gone, _Seen, peer_from_record
from tests.netns import Lan, require_namespaces

REPO = Path(__file__).resolve().parent.parent
MESH_A = "a" * 16
MESH_B = "b" * 16


# --- the child process (runs only inside a test namespace) ------------------------------


def _emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def _child(node_id: str, mesh_id: str, port: int) -> None:
    import logging

    import trio

    if os.readlink("/proc/self/ns/net") == os.environ.get("MESH_TEST_OUTER_NETNS", os.readlink("/proc/self/ns/net")):
        raise SystemExit("refusing to multicast from the test runner's network namespace")

    class JsonLog(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            _emit(event="log", level=record.levelname, msg=record.getMessage())

    logger = logging.getLogger("mesh.cluster.mdns")
    logger.addHandler(JsonLog())
    logger.setLevel(logging.INFO)

    async def main() -> None:
        send, receive = trio.open_memory_channel[PeerChange](16)
        discovery = MdnsDiscovery(node_id=node_id, mesh_id=mesh_id, api_port=port, version="test", changes=send)

        async def report() -> None:
            async for change in receive:
                p = change.peer
                _emit(event=change.kind, node=p.node_id, url=p.url, mesh=p.mesh_id, version=p.version)

        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(report)
                await nursery.start(discovery.run)
                _emit(event="ready", node=node_id)
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break
        _emit(event="stopped", node=node_id)

    trio.run(main)


# --- pure parts: no network ---------------------------------------------------------------


def test_peer_from_record() -> None:
    props: dict[bytes, bytes | None] = {b"node": b"n1", b"mesh": b"m", b"port": b"8080", b"version": b"0.1"}
    assert peer_from_record(props, ["fe80::1", "10.0.0.5"], 9) == Peer("n1", "http://10.0.0.5:8080", "m", "0.1")
    assert peer_from_record(props, ["2001:db8::1"], 9) == Peer("n1", "http://[2001:db8::1]:8080", "m", "0.1")
    assert peer_from_record({**props, b"port": None}, ["10.0.0.5"], 9) == Peer("n1", "http://10.0.0.5:9", "m", "0.1")
    assert peer_from_record(props, ["fe80::1"], 9) is None  # no usable address
    assert peer_from_record({**props, b"node": b"bad/id"}, ["10.0.0.5"], 9) is None
    assert peer_from_record({**props, b"mesh": None}, ["10.0.0.5"], 9) is None
    assert peer_from_record({**props, b"port": b"99999"}, ["10.0.0.5"], 9) is None


def test_bookkeeping_ignores_self_and_other_meshes_and_reports_changes() -> None:
    d = MdnsDiscovery(node_id="me", mesh_id="m", api_port=1, version="v")
    me = Peer("me", "http://10.0.0.1:1", "m", "v")
    p = Peer("p", "http://10.0.0.2:1", "m", "v")
    stranger = Peer("s", "http://10.0.0.3:1", "other", "v")
    assert d._apply(_Seen("mesh-me", me)) == []
    assert d._apply(_Seen("mesh-s", stranger)) == []
    assert d._apply(_Seen("mesh-x", None)) == []
    assert d._apply(_Seen("mesh-p", p)) == [PeerChange("added", p)]
    assert d._apply(_Seen("mesh-p", p)) == []
    moved = Peer("p", "http://10.0.0.9:1", "m", "v")
    assert d._apply(_Seen("mesh-p", moved)) == [PeerChange("updated", moved)]
    # the same node under a second instance name (renamed after a conflict): one peer
    assert d._apply(_Seen("mesh-p-2", moved)) == []
    assert d._apply(_Gone("mesh-p")) == []
    assert d.peers() == {"p": moved}
    # a record that switches to another mesh is a removal
    assert d._apply(_Seen("mesh-p-2", Peer("p", moved.url, "other", "v"))) == [PeerChange("removed", moved)]
    assert d.peers() == {}
    assert d._apply(_Gone("mesh-unknown")) == []


def test_constructor_rejects_unusable_values() -> None:
    with pytest.raises(ValueError):
        MdnsDiscovery(node_id="a.b", mesh_id="m", api_port=1, version="v")
    with pytest.raises(ValueError):
        MdnsDiscovery(node_id="a", mesh_id="", api_port=1, version="v")
    with pytest.raises(ValueError):
        MdnsDiscovery(node_id="a", mesh_id="m", api_port=0, version="v")


# --- real multicast between namespaces -----------------------------------------------------


@pytest.fixture
def lan() -> Iterator[Lan]:
    require_namespaces("the mDNS namespace test")
    with Lan(4) as built:
        yield built


def _events(lines: list[str]) -> list[dict[str, str]]:
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def _view(lines: list[str]) -> dict[str, str]:
    """node id -> url, folded from a child's change events."""
    view: dict[str, str] = {}
    for e in _events(lines):
        if e["event"] in ("added", "updated"):
            view[e["node"]] = e["url"]
        elif e["event"] == "removed":
            view.pop(e["node"], None)
    return view


def _sees(expected: dict[str, str]) -> Callable[[list[str]], bool]:
    return lambda lines: _view(lines) == expected


def test_three_namespaces_discover_each_other_ignore_another_mesh_and_see_goodbyes(lan: Lan) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "MESH_TEST_OUTER_NETNS": os.readlink("/proc/self/ns/net")}
    ids = [f"node{i}" for i in range(4)]
    meshes = [MESH_A, MESH_A, MESH_A, MESH_B]
    start = time.monotonic()
    procs = [
        lan.spawn(
            i, [sys.executable, "-u", __file__, "child", ids[i], meshes[i], str(8000 + i)], env=env, cwd=str(REPO)
        )
        for i in range(4)
    ]

    def remaining() -> float:
        return max(0.1, 10.0 - (time.monotonic() - start))

    for i in range(3):
        others = {ids[j]: f"http://{lan.addresses[j]}:{8000 + j}" for j in range(3) if j != i}
        procs[i].wait_for(_sees(others), timeout=remaining(), what=f"{ids[i]} to see {others}")
    seen_within = time.monotonic() - start

    # node3 (mesh B) was registered and answering before the others finished: each of them
    # received its record (the log says so) and left it out.
    for i in range(3):
        procs[i].wait_for(
            lambda lines: any(e["event"] == "log" and "ignoring node node3" in e["msg"] for e in _events(lines)),
            timeout=10,
            what=f"{ids[i]} to log that it ignores node3",
        )
        assert all(e.get("node") != "node3" for e in _events(procs[i].lines) if e["event"] != "log")
    procs[3].wait_for(
        lambda lines: sum(e["event"] == "log" and "ignoring node" in e["msg"] for e in _events(lines)) == 3,
        timeout=10,
        what="node3 to ignore the three nodes of mesh A",
    )
    assert _view(procs[3].lines) == {}

    # a clean stop sends goodbyes: the others drop the node promptly
    stopping = time.monotonic()
    assert procs[2].stop(signal.SIGTERM, timeout=10) == 0
    assert any(e["event"] == "stopped" for e in _events(procs[2].lines))
    for i in (0, 1):
        procs[i].wait_for(
            lambda lines: "node2" not in _view(lines), timeout=10, what=f"{ids[i]} to drop node2 after its goodbye"
        )
    print(f"discovered within {seen_within:.2f}s; dropped {time.monotonic() - stopping:.2f}s after SIGTERM")
    for p in procs:
        assert p.stop(signal.SIGTERM, timeout=10) == 0


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "child":
    _child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
