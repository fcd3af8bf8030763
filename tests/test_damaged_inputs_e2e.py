"""Real nodes never run a task on a damaged input: it fails naming the blob, or the blob is
fetched again from a peer and the task runs on the right bytes.

A blob of a task's input is damaged in a node's store (a flipped byte; also with the
file's mode and mtime put back, so that only its ctime tells). Under every executor the
node finds it before the task starts and quarantines it: alone, the task fails with a
reason naming the blob; with a peer that holds it (two nodes on loopback, ``--peer``,
mDNS off), the node fetches it again and the task prints the right bytes. Either way the
store is fsck-clean afterwards and the node keeps serving.

The sandbox runs the task once before the damage, so that in link mode (``sandbox-link``:
a root node with ``--sandbox-inputs link``) the store's record vouches for the blob file
when it is damaged; in copy mode (its default) it copies, hashing, afresh for every task.
The process and docker executors do
not: a node keeps an intact copy of a task's input for the next task with the same input
(mesh.exec.workpool), which that task would use instead of the damaged blob.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mesh.cas.digest import Digest
from mesh.cas.snapshot import ingest
from mesh.cas.store import LocalStore
from mesh.wire.auth import load_key
from mesh.wire.client import NodeClient
from tests import treeutil
from tests.damageutil import RESTORED, alter
from tests.nodeutil import MESH, NodeProcess, free_port, node_env, wait_for
from tests.podmanutil import IMAGE

DATA = os.urandom(100_000)
INPUT: treeutil.Tree = {
    b"a.txt": ("file", b"alpha\n", False),
    b"d": ("dir", {b"f": ("file", DATA, False)}),
}
#: ``sandbox-link``: the sandbox of a node with ``--sandbox-inputs link``.
EXECUTORS = ["sandbox", "sandbox-link", "process", "docker"]


def node_options(executor: str, request: pytest.FixtureRequest) -> dict[str, Any]:
    """What a node needs to offer ``executor`` (skipping, with the reason, where it cannot)."""
    if executor == "sandbox-link":
        return {**node_options("sandbox", request), "extra_args": ["--sandbox-inputs", "link"]}
    if executor == "sandbox":
        from mesh.exec.sandbox import sandbox_unavailable

        why_not = sandbox_unavailable()
        if why_not is not None:
            pytest.skip(reason=f"the sandbox cannot run here: {why_not}")
    if executor == "docker":
        return {"env": {"DOCKER_HOST": request.getfixturevalue("docker_host")}}
    return {}


def stored_input(home: Path, tmp_path: Path) -> Digest:
    """The input tree, ingested into the node's store as ``mesh snapshot`` on its machine does."""
    tree = tmp_path / "tree"
    if not tree.exists():
        tree.mkdir()
        treeutil.build(tree, INPUT)
    with LocalStore(home / "cas") as store:
        return ingest(store, tree)


def run_task(node: NodeProcess, root: Digest, executor: str) -> dict[str, Any]:
    """Run ``cat d/f a.txt`` on the input at ``node`` (and only there); the task's record."""
    task: dict[str, Any] = {"name": "t", "argv": ["sh", "-c", "cat d/f a.txt"], "input": str(root)}
    task["executor"] = executor.removesuffix("-link")
    if executor == "docker":
        task["image"] = IMAGE
    with NodeClient(node.url, key=load_key(node.home)) as client:
        events = list(client.submit_and_follow({"tasks": [task], "no_cache": True, "pinned": True}))
        [record] = client.job(events[-1]["job"])["tasks"]
        if record["state"] == "succeeded":
            record["stdout_bytes"] = b"".join(client.read_blob(Digest.parse(record["result"]["stdout"])))
    return dict(record)


def blob_file(home: Path, digest: Digest) -> str:
    return str(home / "cas" / "blobs" / digest.hex[:2] / digest.hex)


def damage(home: Path, digest: Digest, how: str) -> None:
    """Damage the blob's file and the timed copies of it that link checkouts link (a task
    without a times manifest gets them too: mesh.cas.times; one damaged alone is made again)."""
    alter(blob_file(home, digest), how)
    for timed in (home / "cas" / "timed" / digest.hex[:2]).glob(digest.hex + "-*"):
        alter(str(timed), how)


def assert_fsck_clean(home: Path) -> None:
    run = subprocess.run([*MESH, "fsck"], env=node_env(str(home)), capture_output=True, timeout=120)
    assert run.returncode == 0, (run.stdout, run.stderr)


@pytest.mark.parametrize("how", ["same size", RESTORED])
@pytest.mark.parametrize("executor", EXECUTORS)
def test_alone_a_node_fails_the_task_naming_the_blob(
    executor: str, how: str, request: pytest.FixtureRequest, home: Path, tmp_path: Path
) -> None:
    node = NodeProcess(str(home), **node_options(executor, request)).start()
    try:
        root = stored_input(home, tmp_path)
        if executor.startswith("sandbox"):
            first = run_task(node, root, executor)
            assert first["state"] == "succeeded" and first["stdout_bytes"] == DATA + b"alpha\n", first
        damaged = Digest.of(DATA)
        damage(home, damaged, how)

        task = run_task(node, root, executor)
        assert task["state"] == "failed", task
        assert str(damaged) in task["reason"] and "damaged" in task["reason"], task["reason"]
        assert task.get("result") is None  # nothing ran: no result, nothing to cache
        assert not os.path.exists(blob_file(home, damaged))
        assert any(name.startswith(damaged.hex) for name in os.listdir(home / "cas" / "quarantine"))
        assert_fsck_clean(home)
        assert "Traceback" not in node.log()
        assert httpx.get(node.url + "/health", trust_env=False).status_code == 200
    finally:
        node.stop()


@pytest.fixture
def homes(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    yield a, b


@pytest.mark.parametrize("executor", EXECUTORS)
def test_a_damaged_blob_is_fetched_again_from_a_peer(
    executor: str, request: pytest.FixtureRequest, homes: tuple[Path, Path], tmp_path: Path
) -> None:
    home_a, home_b = homes
    options = node_options(executor, request)
    a = NodeProcess(str(home_a), port=free_port(), **options)
    b = NodeProcess(str(home_b), extra_args=["--peer", f"127.0.0.1:{a.port}"])
    try:
        a.start()
        (home_b / "mesh.key").write_text((home_a / "mesh.key").read_text())
        b.start()
        wait_for(lambda: _alive_peers(a) == 1 and _alive_peers(b) == 1, timeout=20, what="a mesh of two")
        root = stored_input(home_a, tmp_path)
        assert stored_input(home_b, tmp_path) == root
        if executor.startswith("sandbox"):
            assert run_task(a, root, executor)["state"] == "succeeded"
        damaged = Digest.of(DATA)
        damage(home_a, damaged, RESTORED)

        task = run_task(a, root, executor)
        assert task["state"] == "succeeded", task
        assert task["stdout_bytes"] == DATA + b"alpha\n"
        assert "is damaged" in a.log() and "fetching input" in a.log()
        with LocalStore(home_a / "cas") as store:
            assert store.get(damaged) == DATA  # fetched again, intact
        assert_fsck_clean(home_a)
        assert "Traceback" not in a.log() + b.log()
    finally:
        a.kill()
        b.kill()


def _alive_peers(node: NodeProcess) -> int:
    peers = httpx.get(node.url + "/status", timeout=5, trust_env=False).json()["peers"]
    return sum(1 for p in peers if p["state"] == "alive")
