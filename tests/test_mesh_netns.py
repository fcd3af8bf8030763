"""Real `mesh up` nodes in network namespaces on a private bridge find each other by mDNS alone.

No seeds: discovery is real multicast between the namespaces (tests/netns.py builds and
always removes them). Needs root; elsewhere it is skipped with the reason printed, and
tests/test_gossip_e2e.py covers the same membership over loopback with --peer seeds.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from mesh.wire.auth import MeshKey
from tests.netns import Lan, NsProcess, require_namespaces
from tests.nodeutil import node_env, wait_for

PORT = 7474
#: Where the matrix test's rendezvous listens, in namespace 0.
RENDEZVOUS_PORT = 7575


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


def start_mesh(lan: Lan, tmp_path: Path, labels: dict[int, list[str]]) -> tuple[list[Path], list[NsProcess], list[str]]:
    """A node in each namespace (2 slots, one key, no seeds: mDNS alone), ``labels[i]`` the
    extra arguments of node i; returns their homes, processes and ids once each node has
    found the other two."""
    homes = [tmp_path / f"node{i}" for i in range(3)]
    key = MeshKey.generate().text()
    nodes = []
    for i, home in enumerate(homes):
        home.mkdir()
        (home / "mesh.key").write_text(key)
        os.chmod(home / "mesh.key", 0o600)
        env = node_env(str(home), MESH_MDNS="1")  # inside a namespace the test made: allowed
        up = [sys.executable, "-m", "mesh", "up", "--slots", "2", *labels.get(i, [])]
        nodes.append(lan.spawn(i, up, env=env))
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
    return homes, nodes, ids


def test_three_namespaced_nodes_find_each_other_by_mdns(lan: Lan, tmp_path: Path) -> None:
    homes, nodes, ids = start_mesh(lan, tmp_path, {2: ["--label", "special=1"]})
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


#: The rendezvous of the matrix test, run in namespace 0: it takes connections until
#: ``count`` tasks have each sent their N, then answers each "go" and prints "released";
#: at the deadline it closes what it holds unanswered instead (the tasks fail) and prints
#: "deadline" and how many came.
RENDEZVOUS = """
import socket, sys, time
port, count, limit = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
server = socket.create_server(("0.0.0.0", port))
print("ready", flush=True)
deadline = time.monotonic() + limit
held = []
while len(held) < count and time.monotonic() < deadline:
    server.settimeout(max(0.01, deadline - time.monotonic()))
    try:
        conn, _ = server.accept()
    except TimeoutError:
        break
    conn.settimeout(max(0.01, deadline - time.monotonic()))
    print("arrived", conn.makefile("rb").readline().decode().strip(), flush=True)
    held.append(conn)
if len(held) == count:
    for conn in held:
        conn.sendall(b"go")
    print("released", flush=True)
else:
    print("deadline", len(held), flush=True)
for conn in held:
    conn.close()
"""

#: A matrix task: meets the others at the rendezvous and succeeds once all six are there.
MEET = """
import os, socket, sys
conn = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=120)
conn.sendall(os.environ["N"].encode() + b"\\n")
sys.exit(0 if conn.recv(2) == b"go" else "the rendezvous closed before all six tasks came")
"""

MATRIX_PIPELINE = """\
steps:
  - name: spread
    run: [python3, -c, {meet}, {host}, "{port}"]
    matrix: {{N: [1, 2, 3, 4, 5, 6]}}
    executor: process
    network: true
    cache: false
"""


def test_a_matrix_of_six_runs_on_all_three_namespaced_nodes(lan: Lan, tmp_path: Path) -> None:
    """``mesh run`` of a 6-task matrix on three 2-slot nodes that found each other by mDNS:
    the six tasks wait for each other at a rendezvous (a TCP server in namespace 0 the test
    holds), so they can only all succeed running at once, on all six slots of the mesh."""
    homes, nodes, ids = start_mesh(lan, tmp_path, {})
    rendezvous = lan.spawn(0, [sys.executable, "-u", "-c", RENDEZVOUS, str(RENDEZVOUS_PORT), "6", "90"])
    rendezvous.wait_for(lambda lines: "ready" in lines, timeout=30, what="the rendezvous to listen")
    repo = tmp_path / "repo"
    repo.mkdir()
    meet = json.dumps(MEET)
    pipeline = MATRIX_PIPELINE.format(meet=meet, host=lan.addresses[0], port=RENDEZVOUS_PORT)
    (repo / ".mesh.yml").write_text(pipeline)
    node = f"http://127.0.0.1:{PORT}"
    done = lan.run(
        0,
        [sys.executable, "-m", "mesh", "run", "-C", str(repo), "--node", node],
        env=node_env(str(homes[0])),
        timeout=150,
    )
    assert done.returncode == 0, (done.stdout, done.stderr, rendezvous.lines)
    assert "released" in rendezvous.lines
    (job_id,) = re.findall(r"pipeline succeeded \(job (\w+)\)", done.stderr)
    shown = lan.run(
        0, [sys.executable, "-m", "mesh", "job", job_id, "--json", "--node", node], env=node_env(str(homes[0]))
    )
    assert shown.returncode == 0, shown.stderr
    tasks = json.loads(shown.stdout)["tasks"]
    assert sorted(t["name"] for t in tasks) == [f"spread:{n}" for n in range(1, 7)]
    assert all(t["state"] == "succeeded" and not t["result"]["cached"] for t in tasks), tasks
    ran_on = Counter(t["result"]["node"] for t in tasks)
    assert ran_on == dict.fromkeys(ids, 2), ran_on  # all three nodes, each with both its slots
    for process in nodes:
        assert process.stop() == 0
