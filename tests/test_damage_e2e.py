"""Damaged bytes are never handed out: a real node, and the CLI, against blobs altered on disk.

Someone with access to the disk (or a failing disk) changes a stored blob's file: the same
size with other bytes, or another size. The store's files are 0444, so the test chmods
first, as such a person would. Then no answer of the node carries the altered blob as a
success (a signed GET answers an error or is cut short; a batched download leaves it out or
fails), no command writes its bytes (``mesh cat``, ``mesh logs``), the blob is quarantined
(fsck is clean afterwards), and the node keeps serving.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from pathlib import Path

import httpx
import pytest

from mesh import codec
from mesh.api.blobs import SEND_PIECE
from mesh.cas.digest import Digest
from mesh.cas.snapshot import ingest
from mesh.cas.store import LocalStore
from mesh.wire.auth import load_key
from mesh.wire.client import MeshAuth, NodeClient
from mesh.wire.formats import RECORD_HEADER
from tests.damageutil import ALTERATIONS, alter
from tests.nodeutil import MESH, NodeProcess, node_env

CBOR = "application/cbor"
#: Sizes of the altered blobs: one read piece, and several (the node sends SEND_PIECE pieces).
SIZES = {"small": 3000, "large": 2 * SEND_PIECE + 12345}


def quarantined(home: Path, digest: Digest) -> bool:
    return not (home / "cas" / "blobs" / digest.hex[:2] / digest.hex).exists() and any(
        name.startswith(digest.hex) for name in os.listdir(home / "cas" / "quarantine")
    )


def signed(node: NodeProcess) -> httpx.Client:
    key = load_key(node.home)
    assert key is not None
    return httpx.Client(base_url=node.url, timeout=60, trust_env=False, auth=MeshAuth(key))


def put(node: NodeProcess, data: bytes) -> Digest:
    digest = Digest.of(data)
    with signed(node) as http:
        response = http.put(f"/v1/blobs/{digest}", content=data)
    assert response.status_code == 201, response.content
    return digest


def fsck_clean(home: Path) -> None:
    run = subprocess.run([*MESH, "fsck"], env=node_env(str(home)), capture_output=True, timeout=120)
    assert run.returncode == 0, (run.stdout, run.stderr)


def assert_serving(node: NodeProcess) -> None:
    """/health answers, and an intact blob still comes back whole."""
    assert httpx.get(node.url + "/health", trust_env=False).status_code == 200
    data = secrets.token_bytes(5000)
    digest = put(node, data)
    with signed(node) as http:
        response = http.get(f"/v1/blobs/{digest}")
    assert response.status_code == 200 and response.content == data


def get_outcome(node: NodeProcess, digest: Digest) -> tuple[int | None, bytes, str]:
    """A signed GET: (status, body bytes received, transport error or "")."""
    received = bytearray()
    with signed(node) as http:
        try:
            with http.stream("GET", f"/v1/blobs/{digest}") as response:
                for chunk in response.iter_bytes():
                    received += chunk
        except httpx.HTTPError as exc:
            return response.status_code, bytes(received), f"{type(exc).__name__}: {exc}"
    return response.status_code, bytes(received), ""


@pytest.mark.parametrize("how", ALTERATIONS)
@pytest.mark.parametrize("size", list(SIZES))
def test_a_get_of_a_damaged_blob_is_never_a_success(node: NodeProcess, home: Path, size: str, how: str) -> None:
    data = secrets.token_bytes(SIZES[size])
    digest = put(node, data)
    alter(str(home / "cas" / "blobs" / digest.hex[:2] / digest.hex), how)

    status, body, error = get_outcome(node, digest)
    assert not (status == 200 and not error), f"the damaged blob was served as a success ({len(body)} bytes)"
    if status == 404:  # found before the head went out (a file of the wrong size)
        message = codec.decode(body)["error"]
        assert "damaged" in message and "quarantine" in message, message
    else:  # found as it was sent: the answer is cut short of its last piece
        assert status == 200 and error and len(body) < len(data), (status, error, len(body))
    assert quarantined(home, digest)
    assert "is damaged" in node.log() and "Traceback" not in node.log()

    # The node keeps serving; the blob is missing now, so a client sends it again, and it is whole.
    assert_serving(node)
    with NodeClient(node.url) as client:
        assert client.find_missing([digest]) == [digest]
    put(node, data)
    with signed(node) as http:
        assert http.get(f"/v1/blobs/{digest}").content == data
    fsck_clean(home)


def _records(answer: bytes) -> dict[str, bytes]:
    """The blobs of a batched download's answer, by digest text."""
    found = {}
    view = memoryview(answer)
    while view:
        (length,) = RECORD_HEADER.unpack_from(view)
        text = bytes(view[RECORD_HEADER.size : RECORD_HEADER.size + length]).decode()
        size = Digest.parse(text).size
        start = RECORD_HEADER.size + length
        found[text] = bytes(view[start : start + size])
        assert len(found[text]) == size, "a record cut short"
        view = view[start + size :]
    return found


@pytest.mark.parametrize("how", ALTERATIONS)
def test_a_batched_download_leaves_a_damaged_blob_out(node: NodeProcess, home: Path, how: str) -> None:
    before, damaged, after = (secrets.token_bytes(2000 + i) for i in range(3))
    digests = [put(node, data) for data in (before, damaged, after)]
    alter(str(home / "cas" / "blobs" / digests[1].hex[:2] / digests[1].hex), how)

    body = codec.encode({"digests": [str(d) for d in digests]})
    with signed(node) as http:
        response = http.post("/v1/blobs:download", content=body, headers={"content-type": CBOR})
    assert response.status_code == 200, response.content
    records = _records(response.content)
    assert records == {str(digests[0]): before, str(digests[2]): after}
    assert quarantined(home, digests[1])
    assert_serving(node)
    fsck_clean(home)


def test_a_batched_download_cut_inside_a_damaged_blob_fails_visibly(node: NodeProcess, home: Path) -> None:
    """A blob large enough that pieces of it went out before the damage was found: the answer
    is cut short, never completed."""
    small, large = secrets.token_bytes(1000), secrets.token_bytes(3 << 20)
    digests = [put(node, small), put(node, large)]
    alter(str(home / "cas" / "blobs" / digests[1].hex[:2] / digests[1].hex), "same size")
    body = codec.encode({"digests": [str(d) for d in digests]})
    with signed(node) as http:
        with pytest.raises(httpx.HTTPError):
            with http.stream("POST", "/v1/blobs:download", content=body, headers={"content-type": CBOR}) as response:
                assert response.status_code == 200
                for _ in response.iter_bytes():
                    pass
    assert quarantined(home, digests[1])
    assert "is damaged" in node.log() and "Traceback" not in node.log()
    assert_serving(node)
    fsck_clean(home)


@pytest.mark.parametrize("how", ALTERATIONS)
@pytest.mark.parametrize("size", list(SIZES))
def test_mesh_cat_writes_nothing_of_a_damaged_file(home: Path, tmp_path: Path, size: str, how: str) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    data = secrets.token_bytes(SIZES[size])
    (tree / "file.bin").write_bytes(data)
    with LocalStore(home / "cas") as store:
        root = ingest(store, tree)
        digest = Digest.of(data)
        alter(store.blob_path(digest), how)
    run = subprocess.run(
        [*MESH, "cat", str(root), "file.bin"], env=node_env(str(home)), capture_output=True, timeout=60
    )
    assert run.returncode == 1
    assert run.stdout == b"", f"{len(run.stdout)} bytes written"
    assert b"mesh: error:" in run.stderr and b"damaged" in run.stderr and b"quarantine" in run.stderr, run.stderr
    assert run.stderr.count(b"\n") == 1, run.stderr  # one line, no traceback
    assert quarantined(home, digest)
    fsck_clean(home)


@pytest.mark.parametrize("how", ALTERATIONS)
def test_mesh_checkout_link_stops_at_a_damaged_file(home: Path, tmp_path: Path, how: str) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    data = secrets.token_bytes(SIZES["small"])
    (tree / "file.bin").write_bytes(data)
    with LocalStore(home / "cas") as store:
        root = ingest(store, tree)
        digest = Digest.of(data)
        alter(store.blob_path(digest), how)
    out = tmp_path / "out"
    run = subprocess.run(
        [*MESH, "checkout", "--link", str(root), str(out)], env=node_env(str(home)), capture_output=True, timeout=60
    )
    assert run.returncode == 1
    assert b"mesh: error:" in run.stderr and str(digest).encode() in run.stderr and b"damaged" in run.stderr
    assert run.stderr.count(b"\n") == 1, run.stderr  # one line, no traceback
    assert not (out / "file.bin").exists()
    assert quarantined(home, digest)
    fsck_clean(home)


def test_mesh_logs_writes_nothing_of_a_damaged_output(node: NodeProcess, home: Path, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    with LocalStore(home / "cas") as store:
        root = ingest(store, tree)
    nonce = secrets.token_hex(8)
    job = {"tasks": [{"name": "t", "argv": ["sh", "-c", f"echo {nonce}"], "input": str(root)}], "no_cache": True}
    with NodeClient(node.url) as client:
        events = list(client.submit_and_follow(job))
        assert events[-1]["state"] == "succeeded", events
        job_id = events[-1]["job"]
        stdout = Digest.parse(client.job(job_id)["tasks"][0]["result"]["stdout"])
    alter(str(home / "cas" / "blobs" / stdout.hex[:2] / stdout.hex), "same size")
    run = node.mesh("logs", job_id)
    assert run.returncode == 1
    assert nonce.encode()[:-1] not in run.stdout and run.stdout == b"", run.stdout
    assert b"mesh: error:" in run.stderr, run.stderr
    assert quarantined(home, stdout)
    assert_serving(node)
    fsck_clean(home)
