"""Real `mesh up` nodes in network namespaces on a private bridge find each other by mDNS alone.

No seeds: discovery is real multicast between the namespaces (tests/netns.py builds and
always removes them). Needs root; elsewhere it is skipped with the reason printed, and
tests/test_gossip_e2e.py covers the same membership over loopback with --peer seeds.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.netns import Lan, require_namespaces
from tests.nodeutil import node_env, wait_for

PORT = 7474


@pytest.fixture
def lan() -> Iterator[Lan]:
    require_namespaces("the namespace mesh test")
    with Lan(3) as built:
        yield built


def peers_seen(lan: Lan, i: int, home: Path) -> dict[str, str]:
    """node id -> state, as node i's own /status says (asked from inside its namespace)."""
    done = lan.run(
        i,
        [sys.executable, "-m", "mesh", "peers", "--json", "--node", f"http://127.0.0.1:{PORT}"],
        env=node_env(str(home)),
        timeout=30,
    )
    if done.returncode != 0:
        return {}
    return {p["node"]: p["state"] for p in json.loads(done.stdout)}


def test_three_namespaced_nodes_find_each_other_by_mdns(lan: Lan, tmp_path: Path) -> None:
    homes = [tmp_path / f"node{i}" for i in range(3)]
    key = None
    nodes = []
    for i, home in enumerate(homes):
        home.mkdir()
        if key is not None:
            (home / "mesh.key").write_text(key)
        else:
            from mesh.wire.auth import MeshKey

            key = MeshKey.generate().text()
            (home / "mesh.key").write_text(key)
        os.chmod(home / "mesh.key", 0o600)
        env = node_env(str(home), MESH_MDNS="1")  # inside a namespace the test made: allowed
        labels = ["--label", "special=1"] if i == 2 else []
        nodes.append(lan.spawn(i, [sys.executable, "-m", "mesh", "up", "--slots", "2", *labels], env=env))
    started = time.monotonic()
    ids: list[str] = []
    health = f"import urllib.request as u; print(u.urlopen('http://127.0.0.1:{PORT}/health').read().decode())"
    for i in range(3):

        def answered(i: int = i) -> bool:
            done = lan.run(i, [sys.executable, "-c", health])
            if done.returncode == 0:
                ids.append(json.loads(done.stdout)["node"])
            return done.returncode == 0

        wait_for(answered, timeout=30, what=f"node {i} to serve")
    for i, home in enumerate(homes):
        others = set(ids) - {ids[i]}
        wait_for(
            lambda i=i, home=home, others=others: peers_seen(lan, i, home) == dict.fromkeys(others, "alive"),
            timeout=max(1.0, 30 - (time.monotonic() - started)),
            what=f"node {i} to find the other two by mDNS",
        )
    # A job of 30 tasks submitted to node 0 runs on all three; a label-only task runs on node 2
    # alone; an unmeetable requirement fails with a reason.
    src = tmp_path / "input"
    src.mkdir()
    (src / "data.txt").write_text("in the namespaces\n")
    made = lan.run(0, [sys.executable, "-m", "mesh", "snapshot", str(src)], env=node_env(str(homes[0])))
    assert made.returncode == 0, made.stderr
    done = lan.run(
        0, [sys.executable, "-c", SUBMIT, made.stdout.strip(), str(PORT)], env=node_env(str(homes[0])), timeout=180
    )
    assert done.returncode == 0, done.stderr
    tasks = json.loads(done.stdout)
    ran_on = {t["result"]["node"] for t in tasks if t["name"].startswith("t")}
    assert all(t["state"] == "succeeded" for t in tasks if t["name"].startswith("t")), tasks
    assert ran_on == set(ids)
    by_name = {t["name"]: t for t in tasks}
    assert by_name["special"]["result"]["node"] == ids[2]
    assert by_name["impossible"]["state"] == "failed" and "label.gpu=1" in by_name["impossible"]["reason"]
    for node in nodes:
        assert node.stop() == 0


SUBMIT = """
import json, sys, time
from mesh.wire.client import NodeClient
snapshot, port = sys.argv[1], sys.argv[2]
tasks = [{"name": f"t{i}", "argv": ["sh", "-c", "sleep 0.3; cat data.txt"], "input": snapshot, "env": {"I": str(i)}}
         for i in range(30)]
tasks.append({"name": "special", "argv": ["true"], "input": snapshot, "requirements": {"label.special": "1"}})
tasks.append({"name": "impossible", "argv": ["true"], "input": snapshot, "requirements": {"label.gpu": "1"}})
with NodeClient(f"http://127.0.0.1:{port}") as client:
    job = client.submit({"tasks": tasks, "no_cache": True})["id"]
    deadline = time.monotonic() + 150
    while client.job(job)["state"] == "running":
        assert time.monotonic() < deadline, "the job did not finish"
        time.sleep(0.1)
    print(json.dumps(client.job(job)["tasks"]))
"""
