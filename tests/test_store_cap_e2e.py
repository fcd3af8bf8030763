"""MESH_STORE_MAX caps the store: a real node evicts for uploads past its cap, or refuses them.

A node started with a 4 MiB cap. Uploads (a batched upload, a PUT) that would take the
store past it make room by evicting least recently used blobs; an upload that cannot fit
even then (the rest is a running job's input) gets 507 before any of its bytes is
stored, naming the cap, what the store holds and what is pinned; the running job's
input is never evicted and the job reads it whole. Afterwards the node serves and fsck
is clean.

Recency is the blob file's mtime (mesh.cas.gc): the tests set it, as hours of use would.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mesh.cas.digest import Digest
from mesh.cas.snapshot import ingest
from mesh.cas.store import LocalStore
from mesh.wire.auth import load_key
from mesh.wire.client import NodeClient
from tests.nodeutil import MESH, NodeProcess, node_env, wait_for
from tests.test_damage_e2e import put
from tests.test_disk_full_e2e import announce, error_of, record, signed

MIB = 1 << 20
CAP = 4 * MIB


@pytest.fixture
def capped(home: Path) -> Iterator[NodeProcess]:
    node = NodeProcess(str(home), env={"MESH_STORE_MAX": "4M"}).start()
    try:
        yield node
    finally:
        node.stop()


def blob_file(node: NodeProcess, digest: Digest) -> Path:
    return Path(node.home) / "cas" / "blobs" / digest.hex[:2] / digest.hex


def stored(node: NodeProcess, digest: Digest) -> bool:
    return blob_file(node, digest).exists()


def last_used(node: NodeProcess, digest: Digest, hours: float) -> None:
    """Make the blob look last used ``hours`` ago (its file's mtime is its recency)."""
    t = time.time() - hours * 3600
    os.utime(blob_file(node, digest), (t, t))


def store_status(node: NodeProcess) -> dict[str, int]:
    status = httpx.get(node.url + "/status", trust_env=False).json()["store"]
    assert isinstance(status, dict)
    return status


def held_bytes(node: NodeProcess) -> int:
    return sum(f.stat().st_size for f in (Path(node.home) / "cas" / "blobs").rglob("*") if f.is_file())


def assert_clean_and_serving(node: NodeProcess) -> None:
    assert httpx.get(node.url + "/health", trust_env=False).status_code == 200
    assert os.listdir(os.path.join(node.home, "cas", "tmp")) == []
    run = subprocess.run([*MESH, "fsck", "--json"], env=node_env(node.home), capture_output=True, timeout=60)
    report = json.loads(run.stdout)
    assert run.returncode == 0 and report["clean"], (run.stdout, run.stderr)
    assert "Traceback" not in node.log()


def test_uploads_past_the_cap_evict_the_least_recently_used_blobs(capped: NodeProcess) -> None:
    node = capped
    old = [put(node, secrets.token_bytes(MIB)) for _ in range(3)]
    for hours, digest in zip((4, 3, 2), old, strict=True):
        last_used(node, digest, hours)

    # A batched upload of 2 MiB, 1 MiB past the cap: the two least recently used go
    # (the node evicts down to 90% of its cap, so that the next upload need not).
    batch = [secrets.token_bytes(MIB), secrets.token_bytes(MIB)]
    with signed(node) as http:
        body = b"".join(record(Digest.of(data), data) for data in batch)
        response = http.post("/v1/blobs:upload", content=body)
    assert response.status_code == 200, response.content
    assert all(stored(node, Digest.of(data)) for data in batch)
    assert [stored(node, d) for d in old] == [False, False, True]

    # A PUT of 1.5 MiB past the cap: the oldest left goes, the batch's blobs stay.
    data = secrets.token_bytes(3 * MIB // 2)
    put(node, data)
    assert not stored(node, old[2]) and all(stored(node, Digest.of(b)) for b in batch)
    status = store_status(node)
    assert status["cap"] == CAP and status["evicted_blobs"] == 3 and status["evicted_bytes"] == 3 * MIB, status
    assert status["bytes"] == held_bytes(node) <= CAP, status
    assert "evicted 2 least recently used blobs" in node.log()
    assert_clean_and_serving(node)


def test_a_running_jobs_input_is_never_evicted_and_what_cannot_fit_gets_507(
    capped: NodeProcess, tmp_path: Path, shared: Path
) -> None:
    """A job runs (held at a gate) on a 2.5 MiB input that is the least recently used of all:
    an upload past the cap evicts another blob, not the input; uploads that cannot fit even
    so are refused with 507 before their bytes are sent; the job then reads its input whole."""
    node = capped
    tree = tmp_path / "tree"
    tree.mkdir()
    content = secrets.token_bytes(5 * MIB // 2)
    (tree / "input.bin").write_bytes(content)
    with LocalStore(tmp_path / "client") as client_store:
        snapshot = ingest(client_store, tree)
        for blob in client_store.iter_blobs():
            put(node, (Path(client_store.file_of(blob))).read_bytes())
    loose = put(node, secrets.token_bytes(MIB))
    last_used(node, loose, 2)
    for digest in (snapshot, Digest.of(content)):
        last_used(node, digest, 5)  # the input is the oldest of all

    fifo, runs = shared / "gate", shared / "runs"
    os.mkfifo(fifo)
    check = f"echo {hashlib.sha256(content).hexdigest()}  input.bin | sha256sum -c"
    task = {"name": "reads", "argv": ["sh", "-c", f"echo run > {runs}; read line < {fifo}; {check}"]}
    job = {"tasks": [{**task, "input": str(snapshot), "executor": "process"}], "no_cache": True}
    with NodeClient(node.url, key=load_key(node.home)) as client:
        job_id = client.submit(job)["id"]
        wait_for(runs.exists, what="the task to start")

        # Past the cap: the loose blob goes, not the older input the running job reads.
        kept = put(node, secrets.token_bytes(MIB))
        assert not stored(node, loose) and stored(node, kept)
        assert stored(node, snapshot) and stored(node, Digest.of(content))

        # 2 MiB more cannot fit: 2.5 MiB are pinned. Refused before its bytes are sent.
        big = Digest.of(secrets.token_bytes(2 * MIB))
        status, message = announce(node, "PUT", f"/v1/blobs/{big}", big.size, b"x" * 1000)
        assert status == 507, (status, message)
        for part in ("MESH_STORE_MAX", "cap", "4.0 MiB", "holds 3.5 MiB", "2.5 MiB are pinned", "live jobs"):
            assert part in message, (part, message)
        assert not stored(node, big)

        # A batched upload: its first blob fits and is stored, its second is refused.
        small = secrets.token_bytes(MIB // 4)
        head = record(Digest.of(small), small) + record(big, b"")
        status, message = announce(node, "POST", "/v1/blobs:upload", len(head) + big.size, head + b"x" * 1000)
        assert status == 507 and "MESH_STORE_MAX" in message, (status, message)
        assert stored(node, Digest.of(small)) and not stored(node, big)
        assert os.listdir(os.path.join(node.home, "cas", "tmp")) == []
        assert store_status(node)["refused"] == 2

        with open(fifo, "w") as gate:
            gate.write("go\n")
        wait_for(lambda: client.job(job_id)["state"] != "running", what="the job to end", timeout=60)
        [task] = client.job(job_id)["tasks"]
        assert task["state"] == "succeeded", task["reason"]  # it read its input whole

    # The job is over: its input may go now, and the upload fits.
    with signed(node) as http:
        data = secrets.token_bytes(2 * MIB)
        response = http.put(f"/v1/blobs/{Digest.of(data)}", content=data)
    assert response.status_code == 201, error_of(response)
    assert not stored(node, Digest.of(content))
    assert held_bytes(node) <= CAP
    assert_clean_and_serving(node)
