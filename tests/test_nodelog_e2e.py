"""A node's log people can read: timestamps and levels, no per-request lines unless ``mesh up -v``.

Two real ``mesh up`` processes (one mesh key, seeded at each other, mDNS off) gossip for a
few rounds; their logs are read as they stand.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.nodeutil import NodeProcess, free_port, wait_for

#: A line of the node's log: date, time to the millisecond, level, logger, message.
LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) +[\w.]+: .+")


def gossip_pair(tmp_path: Path, *extra: str) -> list[NodeProcess]:
    """Two nodes of one mesh, each seeded with the other, with ``extra`` arguments for ``mesh up``."""
    ports = [free_port(), free_port()]
    nodes = []
    key = None
    for i, port in enumerate(ports):
        home = tmp_path / f"node{i}"
        home.mkdir()
        if key is not None:
            (home / "mesh.key").write_text(key)
        nodes.append(NodeProcess(str(home), port=port, extra_args=["--peer", f"127.0.0.1:{ports[1 - i]}", *extra]))
        nodes[-1].start()
        key = (home / "mesh.key").read_text()
    return nodes


@pytest.fixture
def quiet_pair(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[list[NodeProcess]]:
    nodes = gossip_pair(tmp_path, *request.param)
    try:
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def gossiped(node: NodeProcess, rounds: int) -> bool:
    """Whether the node has been up long enough for ``rounds`` gossip rounds (one a second)
    with a peer it knows alive."""
    status = httpx.get(node.url + "/status", timeout=5, trust_env=False).json()
    alive = [p for p in status["peers"] if p["state"] == "alive"]
    return bool(alive) and status["uptime"] >= rounds + 1


def log_lines(node: NodeProcess) -> list[str]:
    return [line for line in node.log().splitlines() if line.strip()]


@pytest.mark.parametrize("quiet_pair", [()], indirect=True)
def test_a_quiet_node_logs_timestamped_lines_and_no_requests(quiet_pair: list[NodeProcess]) -> None:
    a, b = quiet_pair
    wait_for(lambda: gossiped(a, 4) and gossiped(b, 4), timeout=20, what="four gossip rounds each")
    for node in quiet_pair:
        lines = log_lines(node)
        assert lines, node.log()
        assert all(LINE.fullmatch(line) for line in lines), node.log()
        assert not any("HTTP Request" in line or "/v1/gossip" in line for line in lines), node.log()
        assert len(lines) < 10, node.log()  # what happened, not every round


@pytest.mark.parametrize("quiet_pair", [("-v",)], indirect=True)
def test_a_verbose_node_logs_each_request_at_debug(quiet_pair: list[NodeProcess]) -> None:
    a, b = quiet_pair
    wait_for(
        lambda: all(sum(" DEBUG " in line and "/v1/gossip" in line for line in log_lines(n)) >= 3 for n in quiet_pair),
        timeout=20,
        what="three gossip requests logged at debug by each node",
    )
    for node in quiet_pair:
        assert all(LINE.fullmatch(line) for line in log_lines(node)), node.log()
