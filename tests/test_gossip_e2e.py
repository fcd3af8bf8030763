"""Several real nodes on loopback, joined by --peer seeds: membership, failure detection, rejoin."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mesh.cas.digest import Digest
from mesh.cluster.membership import DEAD_AFTER
from mesh.errors import NodeError
from mesh.wire.client import NodeClient
from tests.nodeutil import MESH, NodeProcess, free_port, node_env, task_workroot, wait_for


def peers_of(node: NodeProcess) -> dict[str, dict[str, object]]:
    status = httpx.get(node.url + "/status", timeout=5, trust_env=False).json()
    return {p["node"]: p for p in status["peers"]}


def node_id(node: NodeProcess) -> str:
    return str(httpx.get(node.url + "/health", timeout=5, trust_env=False).json()["node"])


@pytest.fixture
def trio_of_nodes(tmp_path: Path) -> Iterator[list[NodeProcess]]:
    """Three nodes sharing one mesh key, seeded as a chain: a <- b <- c (c knows only b)."""
    ports = [free_port() for _ in range(3)]
    nodes: list[NodeProcess] = []
    key = None
    try:
        for i, port in enumerate(ports):
            home = tmp_path / f"node{i}"
            home.mkdir()
            if key is not None:
                (home / "mesh.key").write_text(key)
            extra = ["--peer", f"127.0.0.1:{ports[i - 1]}"] if i else []
            if i == 2:
                extra += ["--label", "special=1"]
            nodes.append(NodeProcess(str(home), port=port, extra_args=extra).start())
            key = (home / "mesh.key").read_text()
        yield nodes
    finally:
        for node in nodes:
            node.kill()


def test_peers_of_peers_from_one_seed_and_status(trio_of_nodes: list[NodeProcess]) -> None:
    a, b, c = trio_of_nodes
    ids = [node_id(n) for n in trio_of_nodes]
    for node, me in zip(trio_of_nodes, ids, strict=True):
        expected = set(ids) - {me}
        wait_for(
            lambda node=node, expected=expected: (
                set(peers_of(node)) == expected and all(p["state"] == "alive" for p in peers_of(node).values())
            ),
            timeout=15,
            what=f"{node.url} to know both others",
        )
    seen_c = peers_of(a)[ids[2]]
    assert seen_c["capabilities"]["label.special"] == "1"  # type: ignore[index]
    assert seen_c["load"]["slots"] == 2  # type: ignore[index]
    listing = a.mesh("peers")
    assert listing.returncode == 0 and ids[2].encode() in listing.stdout and b"special=1" in listing.stdout


def test_a_dead_peer_leaves_and_a_restarted_one_rejoins(trio_of_nodes: list[NodeProcess]) -> None:
    a, b, c = trio_of_nodes
    ids = [node_id(n) for n in trio_of_nodes]
    wait_for(
        lambda: len(peers_of(a)) == 2 and all(p["state"] == "alive" for p in peers_of(a).values()),
        timeout=15,
        what="a full mesh",
    )
    c.kill()
    killed_at = time.monotonic()
    wait_for(
        lambda: peers_of(a)[ids[2]]["state"] == "dead",
        timeout=DEAD_AFTER + 10,
        what="the killed node to be declared dead",
    )
    assert time.monotonic() - killed_at <= DEAD_AFTER + 5
    assert peers_of(b)[ids[2]]["state"] in ("suspect", "dead")
    c.start()
    wait_for(lambda: peers_of(a)[ids[2]]["state"] == "alive", timeout=15, what="the restarted node to rejoin")


def test_a_node_of_another_mesh_is_not_a_peer(trio_of_nodes: list[NodeProcess], tmp_path: Path) -> None:
    a = trio_of_nodes[0]
    outsider = NodeProcess(str(tmp_path / "outsider"), extra_args=["--peer", a.url.removeprefix("http://")]).start()
    try:
        outsider_id = node_id(outsider)
        ids = {node_id(n) for n in trio_of_nodes}
        wait_for(lambda: len(peers_of(a)) == 2, timeout=15, what="the mesh to form")
        # Let the outsider gossip to its seed for several rounds; neither side may accept the other.
        rounds = httpx.get(outsider.url + "/status", trust_env=False).json()["gossip"]["rounds"]
        wait_for(
            lambda: httpx.get(outsider.url + "/status", trust_env=False).json()["gossip"]["rounds"] >= rounds + 4,
            timeout=15,
            what="four more gossip rounds of the outsider",
        )
        assert outsider_id not in peers_of(a)
        assert not set(peers_of(outsider)) & ids
    finally:
        outsider.kill()


def test_bad_peer_flags_are_usage_errors(tmp_path: Path) -> None:
    done = subprocess.run(
        MESH + ["up", "--peer", "nonsense", "--listen", f"127.0.0.1:{free_port()}"],
        env=node_env(str(tmp_path / "h")),
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 2 and b"HOST:PORT" in done.stderr


def test_bad_executor_lists_are_usage_errors(tmp_path: Path) -> None:
    for value, words in (("teleport", b"unknown executor(s) teleport"), (",", b"non-empty list")):
        done = subprocess.run(
            MESH + ["up", "--executors", value, "--listen", f"127.0.0.1:{free_port()}"],
            env=node_env(str(tmp_path / "h")),
            capture_output=True,
            timeout=60,
        )
        assert done.returncode == 2 and words in done.stderr, (value, done.stderr)


def _snapshot(node: NodeProcess, tmp_path: Path) -> str:
    src = tmp_path / "input"
    src.mkdir(exist_ok=True)
    (src / "data.txt").write_text("shared input\n")
    done = node.mesh("snapshot", str(src))
    assert done.returncode == 0, done.stderr
    return done.stdout.decode().strip()


def _client(node: NodeProcess) -> NodeClient:
    from mesh.wire.auth import load_key

    return NodeClient(node.url, key=load_key(node.home))


def _mesh_formed(nodes: list[NodeProcess]) -> None:
    for node in nodes:
        wait_for(
            lambda node=node: (
                len(peers_of(node)) == len(nodes) - 1 and all(p["state"] == "alive" for p in peers_of(node).values())
            ),
            timeout=15,
            what=f"{node.url} to know every other node",
        )


def test_a_job_spreads_over_the_mesh_and_requirements_hold(trio_of_nodes: list[NodeProcess], tmp_path: Path) -> None:
    a, b, c = trio_of_nodes
    _mesh_formed(trio_of_nodes)
    snapshot = _snapshot(a, tmp_path)
    tasks = [
        {"name": f"t{i}", "argv": ["sh", "-c", f"sleep 0.3; cat data.txt; echo {i}"], "input": snapshot}
        for i in range(30)
    ]
    tasks.append(
        {"name": "special", "argv": ["cat", "data.txt"], "input": snapshot, "requirements": {"label.special": "1"}}
    )
    tasks.append({"name": "impossible", "argv": ["true"], "input": snapshot, "requirements": {"label.gpu": "1"}})
    with _client(a) as client:
        job_id = client.submit({"tasks": tasks, "no_cache": True})["id"]
        wait_for(lambda: client.job(job_id)["state"] != "running", timeout=120, what="the job to finish")
        status = {t["name"]: t for t in client.job(job_id)["tasks"]}
        ran_on = {t["result"]["node"] for name, t in status.items() if name.startswith("t") and t["result"]}
        assert all(status[f"t{i}"]["state"] == "succeeded" for i in range(30)), status
        assert ran_on == {node_id(n) for n in trio_of_nodes}  # every node took part
        out = b"".join(client.read_blob(Digest.parse(status["t7"]["result"]["stdout"])))
        assert out == b"shared input\n7\n"  # the coordinator serves outputs made elsewhere
    assert status["special"]["state"] == "succeeded", (status["special"]["reason"], status["special"]["result"])
    assert status["special"]["result"]["node"] == node_id(c)
    assert status["impossible"]["state"] == "failed"
    assert "label.gpu=1" in status["impossible"]["reason"]


def test_a_task_whose_peer_dies_completes_elsewhere(
    trio_of_nodes: list[NodeProcess], tmp_path: Path, shared: Path
) -> None:
    """Three long tasks on a coordinator with two slots: one runs on a peer. Kill that peer:
    the task runs again elsewhere and the job succeeds. (The tasks write where they run in a
    directory every task uid may write; a task directory is under the node's home, or, on a
    root node, under the directory of its task uids' task directories.)"""
    a, b, c = trio_of_nodes
    _mesh_formed(trio_of_nodes)
    snapshot = _snapshot(a, tmp_path)
    marks = shared
    script = f'echo "$MESH_TASK_DIR" > {marks}/$1.$$; sleep 5; echo done'
    tasks = [
        {"name": f"long{i}", "argv": ["sh", "-c", script, "sh", f"long{i}"], "input": snapshot, "executor": "process"}
        for i in range(3)
    ]
    with _client(a) as client:
        job_id = client.submit({"tasks": tasks, "no_cache": True})["id"]
        wait_for(lambda: len(list(marks.iterdir())) >= 3, timeout=30, what="the three tasks to start")
        homes = {task_workroot(n.home) or str(n.home): n for n in (b, c)}
        remote = [
            (m.name.split(".")[0], m.read_text())
            for m in marks.iterdir()
            if any(m.read_text().startswith(h) for h in homes)
        ]
        assert remote, "no task was placed on a peer"
        name, task_dir = remote[0]
        victim = next(n for h, n in homes.items() if task_dir.startswith(h))
        victim_id = node_id(victim)
        victim.kill()
        wait_for(lambda: client.job(job_id)["state"] != "running", timeout=90, what="the job to finish")
        status = {t["name"]: t for t in client.job(job_id)["tasks"]}
    summary = {n: (t["state"], t["reason"], t["attempts"]) for n, t in status.items()}
    assert all(t["state"] == "succeeded" for t in status.values()), summary
    assert status[name]["attempts"] >= 2 and status[name]["result"]["node"] != victim_id


@pytest.mark.slow
def test_a_task_goes_where_its_big_input_already_is(trio_of_nodes: list[NodeProcess], tmp_path: Path) -> None:
    """200 MB of input on b (and not on a): a task submitted to a, with a free slot on both, runs on b."""
    a, b, c = trio_of_nodes
    _mesh_formed(trio_of_nodes)
    big = tmp_path / "big"
    big.mkdir()
    with open(big / "data.bin", "wb") as f:
        for _ in range(200):
            f.write(os.urandom(1 << 20))
    made = b.mesh("snapshot", str(big))  # into b's store only
    assert made.returncode == 0, made.stderr
    snapshot = made.stdout.decode().strip()
    with _client(a) as client:
        job_id = client.submit(
            {"tasks": [{"name": "use", "argv": ["wc", "-c", "data.bin"], "input": snapshot}], "no_cache": True}
        )["id"]
        wait_for(lambda: client.job(job_id)["state"] != "running", timeout=60, what="the job to finish")
        [task] = client.job(job_id)["tasks"]
        assert task["state"] == "succeeded", task
        assert task["result"]["node"] == node_id(b)
        out = b"".join(client.read_blob(Digest.parse(task["result"]["stdout"])))
    assert out == b"209715200 data.bin\n"


def test_an_idle_node_steals_queued_tasks_from_a_busy_peer(tmp_path: Path) -> None:
    """a and b, one slot each. b is busy with a job of its own while a queues a job of four
    tasks (b looks full to a, so a keeps them). When b's own task ends, b asks a for queued
    tasks at once and runs them: both count it, and the results say b ran some. (With more
    than twice the mesh's slots queued, a would rather hand b tasks to hold until its slot
    frees: mesh.sched.scheduler.PREFETCH.)"""
    a = NodeProcess(str(tmp_path / "a"), port=free_port(), slots=1)
    b = NodeProcess(str(tmp_path / "b"), slots=1, extra_args=["--peer", f"127.0.0.1:{a.port}"])
    try:
        a.start()
        os.makedirs(b.home)
        (Path(b.home) / "mesh.key").write_text((Path(a.home) / "mesh.key").read_text())
        b.start()
        _mesh_formed([a, b])
        snapshot = _snapshot(a, tmp_path)
        b_id = node_id(b)
        with _client(b) as on_b, _client(a) as on_a:
            own = on_b.submit(
                {
                    "tasks": [{"name": "own", "argv": ["sleep", "2"], "input": snapshot}],
                    "no_cache": True,
                    "pinned": True,
                }
            )["id"]
            wait_for(lambda: peers_of(a)[b_id]["load"]["busy"] == 1, timeout=10, what="a to hear that b is busy")
            tasks = [{"name": f"t{i}", "argv": ["sh", "-c", f"sleep 1; echo {i}"], "input": snapshot} for i in range(4)]
            job_id = on_a.submit({"tasks": tasks, "no_cache": True})["id"]
            wait_for(lambda: on_a.job(job_id)["state"] != "running", timeout=60, what="a's job to finish")
            status = on_a.job(job_id)
            assert on_b.job(own)["state"] == "succeeded"
        assert status["state"] == "succeeded", status
        assert b_id in {t["result"]["node"] for t in status["tasks"]}
        stealing_b = httpx.get(b.url + "/status", timeout=5, trust_env=False).json()["stealing"]
        stealing_a = httpx.get(a.url + "/status", timeout=5, trust_env=False).json()["stealing"]
        assert stealing_b["stolen"] >= 1 and stealing_a["given"] >= 1, (stealing_a, stealing_b)
    finally:
        a.kill()
        b.kill()


def test_gossip_advertising_bad_peer_urls_is_dropped_and_logged(node: NodeProcess) -> None:
    """One signed gossip names peers no node could be (port 99999, ftp, no host, a host with a
    space) and one that could: only that one joins, each drop is logged, and a blob this node
    lacks (whose GET asks the peers) is a 404."""
    bad = {
        "port99999": "http://127.0.0.1:99999",
        "ftp": "ftp://127.0.0.1:7474",
        "nohost": "http://:7474",
        "spaces": "http://bad host:7474",
    }
    members = [{"node": name, "url": url, "incarnation": 1, "heartbeat": 1} for name, url in bad.items()]
    members.append({"node": "fine", "url": f"http://127.0.0.1:{free_port()}", "incarnation": 1, "heartbeat": 1})
    with NodeClient(node.url) as client:
        client.request("POST", "/v1/gossip", body={"from": "fine", "members": members})
        assert set(peers_of(node)) == {"fine"}
        wait_for(
            lambda: all(f"dropped member {name!r}" in node.log() for name in bad), timeout=10, what="the drops logged"
        )
        assert "port '99999' is not a number from 1 to 65535" in node.log()
        absent = Digest.of(os.urandom(64))
        try:
            next(client.read_blob(absent))
        except NodeError as exc:
            assert exc.status == 404, exc
        else:
            raise AssertionError("a blob no node holds was served")
        assert httpx.get(node.url + "/health", trust_env=False).status_code == 200
