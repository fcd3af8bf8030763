"""Uploads: only what the node misses is sent, straight from the files, and checked as read."""

from __future__ import annotations

import http.server
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given

from mesh import codec
from mesh.cas.checkout import checkout
from mesh.cas.digest import Digest
from mesh.cas.plan import Plan, plan_tree
from mesh.cas.snapshot import ingest
from mesh.cas.store import LocalStore
from mesh.errors import DigestMismatch, NodeError, NodeUnreachable, TreeChanged
from mesh.wire import upload as upload_module
from mesh.wire.upload import find_missing, upload
from tests import treeutil
from tests.strategies import trees

# -- a node with the three blob endpoints, over a real store --------------------------


class FakeNode:
    """Find-missing, batched upload and PUT on a LocalStore, verifying every blob like a node.

    Records what it was asked and sent. A body cut short (the client gave up) keeps
    the records that arrived whole and nothing of the rest.
    """

    def __init__(self, store: LocalStore) -> None:
        self.store = store
        self.asked: list[list[Digest]] = []
        self.batches: list[list[Digest]] = []
        self.batch_sizes: list[int] = []
        self.puts: list[Digest] = []
        self.received: list[Digest] = []
        self.truncated = 0
        self.fail: tuple[int, bytes] | None = None
        self.missing_reply: bytes | None = None

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        complete = int(headers.get("content-length", len(body))) == len(body)
        if not complete:
            self.truncated += 1
        if method == "POST" and path == "/v1/blobs:missing":
            asked = [Digest.parse(t) for t in codec.decode(body)["digests"]]
            assert len(asked) <= 10_000
            self.asked.append(asked)
            if self.missing_reply is not None:
                return 200, self.missing_reply
            return 200, codec.encode({"missing": [str(d) for d in self.store.find_missing(asked)]})
        if self.fail is not None:
            return self.fail
        try:
            if method == "POST" and path == "/v1/blobs:upload":
                self.batch_sizes.append(len(body))
                stored = self._records(body)
                return 200, codec.encode({"stored": stored})
            if method == "PUT" and path.startswith("/v1/blobs/"):
                digest = Digest.parse(path.removeprefix("/v1/blobs/"))
                self.puts.append(digest)
                if complete:
                    self._store(digest, body)
                return 201, codec.encode({"digest": str(digest), "stored": True})
        except DigestMismatch as exc:
            return 400, codec.encode({"error": f"upload refused: {exc}"})
        return 404, codec.encode({"error": f"no such endpoint {method} {path}"})

    def _records(self, body: bytes) -> int:
        view, digests = memoryview(body), []
        while len(view) >= 2:
            length = int.from_bytes(view[:2], "big")
            digest = Digest.parse(bytes(view[2 : 2 + length]).decode("ascii"))
            data = view[2 + length : 2 + length + digest.size]
            if len(data) < digest.size:
                break  # cut short
            self._store(digest, data)
            digests.append(digest)
            view = view[2 + length + digest.size :]
        self.batches.append(digests)
        return len(digests)

    def _store(self, digest: Digest, data: bytes | memoryview) -> None:
        with self.store.writer(expected=digest) as writer:
            writer.write(data)
            writer.commit()
        self.received.append(digest)

    def transport(self) -> httpx.MockTransport:
        def handler(request: httpx.Request) -> httpx.Response:
            status, body = self.handle(request.method, request.url.path, dict(request.headers), request.content)
            return httpx.Response(status, content=body, headers={"content-type": "application/cbor"})

        return httpx.MockTransport(handler)


@pytest.fixture
def node(store: LocalStore) -> FakeNode:
    return FakeNode(store)


@pytest.fixture
def client(node: FakeNode) -> Iterator[httpx.Client]:
    with httpx.Client(base_url="http://node.test", transport=node.transport()) as c:
        yield c


def every_blob_is_sound(store: LocalStore) -> None:
    """Every blob the store holds is complete and hashes to its name."""
    for blob in store.iter_blobs():
        store.get(Digest(bytes.fromhex(blob.hex), blob.size))


SMALL_TREE: treeutil.Tree = {
    b"a": ("file", b"alpha", False),
    b"run": ("file", b"#!/bin/sh\necho hi\n", True),
    b"empty": ("file", b"", False),
    b"same": ("file", b"alpha", False),
    b"sub": ("dir", {b"b": ("file", b"beta" * 1000, False), b"link": ("link", b"../a"), b"e": ("dir", {})}),
}


def make_tree(root: Path, tree: treeutil.Tree) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    treeutil.build(root, tree)
    return root


# -- what is sent ---------------------------------------------------------------------


def test_everything_is_sent_once_and_checks_out(
    node: FakeNode, client: httpx.Client, store: LocalStore, tmp_path: Path
) -> None:
    src = make_tree(tmp_path / "src", SMALL_TREE)
    plan = plan_tree(src)
    stats = upload(client, plan)
    assert stats.blobs == stats.missing == len(plan.digests()) and stats.puts == 0 and stats.batches == 1
    assert sorted(node.received) == sorted(plan.digests())
    assert node.received[-1] == plan.root  # the root node arrives last
    assert stats.bytes_sent == plan.total_bytes
    checkout(store, plan.root, tmp_path / "out")
    assert treeutil.read(tmp_path / "out") == SMALL_TREE

    again = upload(client, plan)
    assert (again.missing, again.batches, again.puts, again.bytes_sent) == (0, 0, 0, 0)
    assert len(node.batches) == 1


@given(trees)
def test_any_tree_arrives_whole(tree: treeutil.Tree) -> None:
    import shutil
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="mesh-up-"))
    try:
        src = make_tree(work / "src", tree)
        with LocalStore(work / "cas") as store:
            node = FakeNode(store)
            with httpx.Client(base_url="http://node.test", transport=node.transport()) as client:
                plan = plan_tree(src)
                upload(client, plan)
            checkout(store, plan.root, work / "out")
            assert treeutil.read(work / "out") == tree
    finally:
        shutil.rmtree(work)


def test_only_missing_blobs_are_sent(node: FakeNode, client: httpx.Client, store: LocalStore, tmp_path: Path) -> None:
    old = make_tree(tmp_path / "old", {b"a": ("file", b"alpha", False), b"sub": ("dir", {})})
    ingest(store, old, sync=False)  # the node already has "alpha" and the empty directory's node
    src = make_tree(tmp_path / "src", SMALL_TREE)
    plan = plan_tree(src)
    expected = set(store.find_missing(plan.digests()))
    assert expected and len(expected) < len(plan.digests())
    stats = upload(client, plan)
    assert set(node.received) == expected and len(node.received) == len(expected)
    assert stats.missing == len(expected)
    assert stats.bytes_sent == sum(d.size for d in expected)


def test_large_blobs_are_put_and_small_ones_batched_under_the_limit(
    node: FakeNode, client: httpx.Client, store: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(upload_module, "BATCH_BYTES", 3000)
    tree: treeutil.Tree = {
        b"big": ("file", os.urandom(5 << 20), False),
        **{b"f%d" % i: ("file", os.urandom(700), i % 2 == 0) for i in range(12)},
    }
    src = make_tree(tmp_path / "src", tree)
    plan = plan_tree(src)
    stats = upload(client, plan)
    big = Digest.of(tree[b"big"][1])
    assert node.puts == [big] and stats.puts == 1
    assert stats.batches == len(node.batches) >= 4
    assert all(size <= 3000 for size in node.batch_sizes)
    assert sorted(d for batch in node.batches for d in batch) == sorted(d for d in plan.digests() if d != big)
    checkout(store, plan.root, tmp_path / "out")
    assert treeutil.read(tmp_path / "out") == tree


def test_large_directory_nodes_are_put_from_memory(
    node: FakeNode, client: httpx.Client, store: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(upload_module, "LARGE_BLOB", 100)
    monkeypatch.setattr(upload_module, "CHUNK", 64)
    src = make_tree(tmp_path / "src", {b"f%d" % i: ("file", b"x%d" % i, False) for i in range(20)})
    plan = plan_tree(src)
    upload(client, plan)
    assert node.puts == [plan.root] and node.received[-1] == plan.root  # after the files it names
    checkout(store, plan.root, tmp_path / "out")


def test_find_missing_asks_in_bounded_requests(
    node: FakeNode, client: httpx.Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(upload_module, "MISSING_PER_REQUEST", 3)
    plan = plan_tree(make_tree(tmp_path / "src", SMALL_TREE))
    assert sorted(find_missing(client, plan.digests())) == sorted(plan.digests())
    assert [len(a) for a in node.asked] == [3] * (len(plan.digests()) // 3) + (
        [len(plan.digests()) % 3] if len(plan.digests()) % 3 else []
    )


def test_progress_line_is_drawn_and_cleared(
    client: httpx.Client, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = plan_tree(make_tree(tmp_path / "src", SMALL_TREE))
    upload(client, plan, show_progress=True)
    err = capsys.readouterr().err
    assert err.startswith("\rupload: ") and "MB/s" in err and err.endswith("\r\x1b[K")
    upload(client, plan_tree(make_tree(tmp_path / "two", {b"x": ("file", b"new", False)})))
    assert capsys.readouterr().err == ""  # small uploads and a non-terminal stderr: quiet


# -- a tree that changed since it was planned ------------------------------------------


def change(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "same size":
        path.write_bytes(bytes([data[0] ^ 1]) + data[1:])
    elif how == "last byte":
        path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    elif how == "grown":
        path.write_bytes(data + b"!")
    elif how == "shrunk":
        path.write_bytes(data[:-1])
    elif how == "removed":
        path.unlink()
    elif how == "symlink":
        path.unlink()
        path.symlink_to("a")
    elif how == "fifo":
        path.unlink()
        os.mkfifo(path)


HOWS = ["same size", "last byte", "grown", "shrunk", "removed", "symlink", "fifo"]


@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("size", [3000, 5000], ids=["batched", "put"])
def test_a_changed_file_stops_the_upload_and_nothing_wrong_is_stored(
    node: FakeNode,
    client: httpx.Client,
    store: LocalStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    how: str,
    size: int,
) -> None:
    monkeypatch.setattr(upload_module, "LARGE_BLOB", 4000)
    monkeypatch.setattr(upload_module, "CHUNK", 1024)  # several reads per file
    tree = dict(SMALL_TREE)
    tree[b"victim"] = ("file", os.urandom(size), False)
    src = make_tree(tmp_path / "src", tree)
    plan = plan_tree(src)
    planned = Digest.of(tree[b"victim"][1])
    change(src / "victim", how)

    with pytest.raises(TreeChanged, match="victim changed since the tree was hashed") as info:
        upload(client, plan)
    assert "snapshot the tree again" in str(info.value) and info.value.path.endswith("victim")
    assert not store.has(planned)
    if how not in ("removed", "symlink", "fifo"):
        assert not store.has(Digest.of((src / "victim").read_bytes()))
    every_blob_is_sound(store)

    if how == "fifo":
        (src / "victim").unlink()  # a snapshot cannot hold one
    fresh = plan_tree(src)  # what the caller does: plan again, upload again
    upload(client, fresh)
    checkout(store, fresh.root, tmp_path / "out")
    assert treeutil.read(tmp_path / "out") == treeutil.read(src)


# -- errors from the node ------------------------------------------------------------


def test_a_node_error_message_reaches_the_exception(node: FakeNode, client: httpx.Client, tmp_path: Path) -> None:
    plan = plan_tree(make_tree(tmp_path / "src", SMALL_TREE))
    node.fail = (507, codec.encode({"error": "no space left on the node's store"}))
    with pytest.raises(NodeError, match="no space left on the node's store") as info:
        upload(client, plan)
    assert info.value.status == 507 and not isinstance(info.value, NodeUnreachable)
    assert "http://node.test" in str(info.value)

    node.fail = (502, b"<html>bad gateway</html>")
    with pytest.raises(NodeError, match="HTTP 502 Bad Gateway"):
        upload(client, plan)


def test_a_blob_the_node_refuses_is_an_error(
    node: FakeNode, client: httpx.Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = plan_tree(make_tree(tmp_path / "src", SMALL_TREE))
    wrong = Plan(plan.root, {d: b"\x00" * len(data) for d, data in plan.nodes.items()}, plan.files)
    with pytest.raises(NodeError, match="upload refused: content does not match") as info:
        upload(client, wrong)
    assert info.value.status == 400


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (httpx.ConnectError("connection refused"), NodeUnreachable),
        (httpx.ConnectTimeout("timed out"), NodeUnreachable),
        (httpx.ReadTimeout("read timed out"), NodeError),
        (httpx.RemoteProtocolError("peer closed connection"), NodeError),
    ],
)
def test_transport_errors_become_node_errors(error: Exception, kind: type[NodeError], tmp_path: Path) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise error

    plan = plan_tree(make_tree(tmp_path / "src", SMALL_TREE))
    with httpx.Client(base_url="http://node.test:7", transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(kind, match="node.test:7") as info:
            upload(client, plan)
    assert type(info.value) is kind


@pytest.mark.parametrize(
    "reply",
    [
        b"\xff not cbor",
        codec.encode(["missing"]),
        codec.encode({"missing": "all"}),
        codec.encode({"missing": ["b3:nope"]}),
        codec.encode({"missing": [str(Digest.of(b"never asked"))]}),
    ],
)
def test_a_reply_that_breaks_the_protocol_is_an_error(
    node: FakeNode, client: httpx.Client, tmp_path: Path, reply: bytes
) -> None:
    node.missing_reply = reply
    with pytest.raises(NodeError, match="node"):
        upload(client, plan_tree(make_tree(tmp_path / "src", SMALL_TREE)))


# -- over a real socket -----------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves a FakeNode over real HTTP, reading bodies by Content-Length as a server does."""

    node: FakeNode

    def _serve(self) -> None:
        length = int(self.headers.get("content-length", "0"))
        body = self.rfile.read(length)
        status, reply = self.node.handle(self.command, self.path, {"content-length": str(length)}, body)
        if len(body) < length:
            self.close_connection = True
            return  # the client is gone
        self.send_response(status)
        self.send_header("content-type", "application/cbor")
        self.send_header("content-length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    do_POST = do_PUT = _serve

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def real_node(node: FakeNode) -> Iterator[str]:
    handler = type("Handler", (_Handler,), {"node": node})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = False  # server_close() joins the request threads
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_over_real_http_a_changed_large_file_is_cut_short(
    node: FakeNode, real_node: str, store: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(upload_module, "LARGE_BLOB", 1 << 20)
    tree: treeutil.Tree = {b"big": ("file", os.urandom(3 << 20), False), b"small": ("file", b"s", False)}
    src = make_tree(tmp_path / "src", tree)
    plan = plan_tree(src)
    change(src / "big", "last byte")
    with httpx.Client(base_url=real_node) as client:
        with pytest.raises(TreeChanged):
            upload(client, plan)
        upload(client, plan_tree(src))
    assert node.truncated == 1 and not store.has(Digest.of(tree[b"big"][1]))
    every_blob_is_sound(store)
    checkout(store, plan_tree(src).root, tmp_path / "out")
    assert treeutil.read(tmp_path / "out") == treeutil.read(src)


def test_the_client_is_used_as_given(node: FakeNode, store: LocalStore, tmp_path: Path) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("x-mesh-test", ""))
        status, body = node.handle(request.method, request.url.path, dict(request.headers), request.content)
        return httpx.Response(status, content=body)

    plan = plan_tree(make_tree(tmp_path / "src", SMALL_TREE))
    with httpx.Client(
        base_url="http://node.test", transport=httpx.MockTransport(handler), headers={"x-mesh-test": "1"}
    ) as client:
        upload(client, plan)
        assert not client.is_closed
    assert seen and set(seen) == {"1"}
