"""``mesh ls``, ``cat`` and ``checkout`` with ``--node``: reading a snapshot that a node's store
holds and the local store does not, over the signed API, verified, fetching only what is read.

The CLI runs with a MESH_HOME (and so a store) of its own and the node's key, as on
another machine; the node is a real ``mesh up``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests import clientutil
from tests.clientutil import client
from tests.nodeutil import NodeProcess
from tests.treeutil import read


@pytest.fixture
def remote_snapshot(node: NodeProcess, tmp_path: Path) -> tuple[str, Path]:
    """A snapshot in the node's store only, and the tree it was made from."""
    tree = tmp_path / "tree"
    (tree / "sub" / "deep").mkdir(parents=True)
    (tree / "a.txt").write_text("alpha\n")
    (tree / "sub" / "b.txt").write_text("beta\n")
    (tree / "sub" / "deep" / "c.txt").write_text("gamma\n")
    (tree / "link").symlink_to("a.txt")
    made = node.mesh("snapshot", str(tree))
    assert made.returncode == 0, made.stderr
    return made.stdout.decode().strip(), tree


@pytest.fixture
def client_home(node: NodeProcess, tmp_path: Path) -> Path:
    return clientutil.client_home(node, tmp_path / "client-home")


def stored_blobs(home: Path) -> int:
    return sum(1 for p in (home / "cas" / "blobs").rglob("*") if p.is_file())


def test_ls_and_cat_read_from_the_node_fetching_only_the_path(
    node: NodeProcess, remote_snapshot: tuple[str, Path], client_home: Path
) -> None:
    snap, _ = remote_snapshot
    local = client(client_home, "ls", snap)
    assert local.returncode == 1 and b"not in the store" in local.stderr  # the local store lacks it

    listed = client(client_home, "ls", "--node", node.url, "--json", snap, "sub")
    assert listed.returncode == 0, listed.stderr
    assert [e["path"] for e in json.loads(listed.stdout)] == ["b.txt", "deep"]
    assert stored_blobs(client_home) == 2  # the root's node and sub's: no file, not sub/deep

    cat = client(client_home, "cat", "--node", node.url, snap, "sub/deep/c.txt")
    assert cat.returncode == 0, cat.stderr
    assert cat.stdout == b"gamma\n"
    assert stored_blobs(client_home) == 4  # and sub/deep's node and the one file

    by_env = client(client_home, "cat", snap, "a.txt", MESH_NODE=node.url)  # the usual default
    assert by_env.returncode == 0 and by_env.stdout == b"alpha\n", by_env.stderr


def test_checkout_from_the_node(
    node: NodeProcess, remote_snapshot: tuple[str, Path], client_home: Path, tmp_path: Path
) -> None:
    snap, tree = remote_snapshot
    target = tmp_path / "copy"
    done = client(client_home, "checkout", "--node", node.url, snap, str(target))
    assert done.returncode == 0, done.stderr
    assert read(target) == read(tree)
    again = client(client_home, "ls", "-r", snap)  # now whole in the local store
    assert again.returncode == 0 and b"sub/deep/c.txt" in again.stdout


def test_an_id_the_node_lacks_is_a_clear_failure(node: NodeProcess, client_home: Path, tmp_path: Path) -> None:
    absent = "b3:" + "ab" * 32 + ":99"
    for args in (("ls", absent), ("cat", absent, "x"), ("checkout", absent, str(tmp_path / "out"))):
        out = client(client_home, args[0], "--node", node.url, *args[1:])
        assert out.returncode == 1, out.stderr
        assert f"blob {absent} is not in the local store, nor at {node.url}\n".encode() in out.stderr
        assert b"Traceback" not in out.stderr
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")


def test_a_damaged_blob_at_the_node_is_refused(
    node: NodeProcess, remote_snapshot: tuple[str, Path], client_home: Path, tmp_path: Path
) -> None:
    snap, _ = remote_snapshot
    listed = client(client_home, "ls", "--node", node.url, "--json", snap, "sub/b.txt")
    digest = json.loads(listed.stdout)[0]["digest"]
    hexdigest = digest.split(":")[1]
    blob = Path(node.home) / "cas" / "blobs" / hexdigest[:2] / hexdigest
    os.chmod(blob, 0o644)
    blob.write_bytes(b"BETA\n")  # same size, other bytes: what the node would send is forged

    cat = client(client_home, "cat", "--node", node.url, snap, "sub/b.txt")
    assert cat.returncode == 1
    assert cat.stdout == b""
    assert (
        b"Traceback" not in cat.stderr
        and b"could not be read from" in cat.stderr
        and b"none of it was kept" in cat.stderr
    )
    out = client(client_home, "checkout", "--node", node.url, snap, str(tmp_path / "out"))
    assert out.returncode == 1
    assert not (tmp_path / "out" / "sub" / "b.txt").exists()
    assert client(client_home, "cat", snap, "sub/b.txt").returncode == 1  # nothing of it was stored here
