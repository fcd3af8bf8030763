"""The lean blob downloads between nodes. One blob (GET): a real node's blob arrives whole and
verified; a peer that sends too little, wrong bytes, a wrong length, an error or nothing at all
stores nothing. Many (POST /v1/blobs:download): what the node holds arrives, what it lacks is
left out, and a bad answer keeps the blobs that came whole before it."""

from __future__ import annotations

import errno
import functools
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from mesh.cas import blobio
from mesh.cas.digest import Digest
from mesh.cas.store import LocalStore
from mesh.cluster import blobget
from mesh.cluster.blobget import get_blob, get_blobs
from mesh.errors import DigestMismatch, NodeError, NodeUnreachable, StoreFull
from mesh.wire.auth import MeshKey, load_key
from mesh.wire.client import NodeClient
from mesh.wire.records import record_header
from tests.nodeutil import NodeProcess

KEY = MeshKey(b"k" * 32)
#: Spans several of the receiver's buffers (its threaded path) and ends inside one.
DATA = os.urandom(2 * blobget.PIPE_BUFFER + 12345)
DIGEST = Digest.of(DATA)
#: Read without a thread.
SMALL = os.urandom(5000)


@pytest.fixture
def local(tmp_path: Path) -> Iterator[LocalStore]:
    """A store of its own (the ``store`` fixture would be the node's)."""
    with LocalStore(tmp_path / "local") as s:
        yield s


def put(node: NodeProcess, key: MeshKey, data: bytes) -> Digest:
    digest = Digest.of(data)
    with NodeClient(node.url, key=key) as client:
        headers = {"content-type": "application/octet-stream"}
        answer = client.http.put(f"/v1/blobs/{digest}", content=data, headers=headers)
        assert answer.status_code in (200, 201), answer.text
    return digest


async def test_blobs_come_whole_from_a_real_node_and_an_absent_one_is_false(
    node: NodeProcess, local: LocalStore
) -> None:
    key = load_key(node.home)
    assert key is not None
    for data in (DATA, SMALL, b""):
        digest = put(node, key, data)
        with trio.fail_after(30):
            assert await get_blob(key, node.url, digest, local) is True
        with local.open(digest) as reader:  # verifies as it reads
            assert reader.read() == data
    with trio.fail_after(30):
        assert await get_blob(key, node.url, Digest.of(b"nobody has this"), local) is False


@asynccontextmanager
async def fake_peer(answer: bytes, *, then_hang: bool = False) -> AsyncIterator[str]:
    """A peer that reads one request, sends ``answer`` raw, then closes (or hangs); yields its URL."""

    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            request = b""
            while b"\r\n\r\n" not in request:
                data = await stream.receive_some(65536)
                if not data:
                    return
                request += data
            await stream.send_all(answer)
            if then_hang:
                await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        yield f"http://127.0.0.1:{port}"
        nursery.cancel_scope.cancel()


def head(status: str, length: int) -> bytes:
    return f"HTTP/1.1 {status}\r\ncontent-length: {length}\r\n\r\n".encode()


def stored_nothing(store: LocalStore, digest: Digest) -> bool:
    return not store.has(digest) and os.listdir(os.path.join(store.root, "tmp")) == []


def answers(data: bytes) -> list[tuple[bytes, type[Exception], str | None]]:
    """Bad answers to a GET of ``data``: what each should raise."""
    return [
        (head("200 OK", len(data)) + data[:-1], NodeUnreachable, "closed the connection"),
        (head("200 OK", len(data)) + data[:-1] + b"x", DigestMismatch, None),
        (head("200 OK", len(data) - 1) + data[:-1], NodeError, "content-length"),
        (head("500 Internal Server Error", 4) + b"boom", NodeError, "HTTP 500 b'boom'"),
        (b"not http at all\r\n\r\n", NodeUnreachable, "was lost"),
    ]


IDS = ["short", "wrong-bytes", "wrong-length", "error", "garbage"]


@pytest.mark.parametrize("data", [DATA, SMALL], ids=["large", "small"])
@pytest.mark.parametrize("case", range(len(IDS)), ids=IDS)
async def test_a_bad_answer_raises_and_stores_nothing(local: LocalStore, data: bytes, case: int) -> None:
    answer, error, match = answers(data)[case]
    digest = Digest.of(data)
    with trio.fail_after(30):
        async with fake_peer(answer) as url:
            with pytest.raises(error, match=match):
                await get_blob(KEY, url, digest, local)
    assert stored_nothing(local, digest)


async def test_a_peer_that_stops_sending_is_given_up_after_the_idle_timeout(
    local: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(blobget, "IDLE_TIMEOUT", 0.3)
    with trio.fail_after(30):
        async with fake_peer(head("200 OK", DIGEST.size) + DATA[: blobget.PIPE_BUFFER + 10], then_hang=True) as url:
            with pytest.raises(NodeUnreachable, match="TooSlowError"):
                await get_blob(KEY, url, DIGEST, local)
    assert stored_nothing(local, DIGEST)


async def test_a_disk_that_fills_during_a_large_body_raises_store_full_and_stores_nothing(
    local: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writing thread's failure ends the receiving too, and nothing waits for ever."""
    writes = 0

    def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
        nonlocal writes
        writes += 1
        if writes == 3:  # the second buffer (one call each), written by the thread
            raise OSError(errno.ENOSPC, "No space left on device")
        os.write(fd, data)

    monkeypatch.setattr(blobio, "write_all", write_all)
    with trio.fail_after(30):
        async with fake_peer(head("200 OK", DIGEST.size) + DATA, then_hang=True) as url:
            with pytest.raises(StoreFull):
                await get_blob(KEY, url, DIGEST, local)
    assert writes == 3
    assert stored_nothing(local, DIGEST)


# -- batched downloads ---------------------------------------------------------------------


async def test_a_batch_brings_what_the_node_holds_and_leaves_out_what_it_lacks(
    node: NodeProcess, local: LocalStore
) -> None:
    key = load_key(node.home)
    assert key is not None
    blobs = [os.urandom(n) for n in (0, 1, 1000, 70_000, 3 << 20)]  # spans several answer chunks
    digests = [put(node, key, data) for data in blobs]
    absent = Digest.of(b"nobody has this")
    asked = [digests[0], absent, *digests[1:]]
    with trio.fail_after(30):
        assert await get_blobs(key, node.url, asked, local) == digests
        assert await get_blobs(key, node.url, [], local) == []
    for digest, data in zip(digests, blobs, strict=True):
        with local.open(digest) as reader:  # verifies as it reads
            assert reader.read() == data
    assert not local.has(absent)
    with trio.fail_after(30), pytest.raises(NodeError, match="HTTP 413"):
        await get_blobs(key, node.url, [absent] * 10_001, local)


def records(*items: tuple[Digest, bytes]) -> bytes:
    return b"".join(record_header(digest) + data for digest, data in items)


def answer_of(body: bytes) -> bytes:
    return head("200 OK", len(body)) + body


async def test_a_bad_batch_is_refused_and_keeps_the_blobs_that_came_whole(tmp_path: Path) -> None:
    first, second = os.urandom(3000), os.urandom(3000)
    d1, d2 = Digest.of(first), Digest.of(second)
    other = Digest.of(b"not asked for")
    wrong = bytes([second[0] ^ 1]) + second[1:]
    cases = [
        (answer_of(records((d1, first), (d2, wrong))), NodeError, "does not match"),
        (answer_of(records((d1, first), (d2, second[:100]))), NodeError, "ended inside the blob"),
        (answer_of(records((d1, first), (other, b"not asked for"))), NodeError, "not asked for"),
        (answer_of(records((d1, first), (d1, first))), NodeError, "not asked for"),
        (answer_of(records((d1, first)) + b"\xff\xff" + b"x" * 10), NodeError, "not a digest"),
        (head("200 OK", 10_000) + records((d1, first)), NodeUnreachable, "lost during a batched download"),
        (head("500 Internal Server Error", 4) + b"boom", NodeError, "HTTP 500 b'boom'"),
    ]
    for i, (answer, error, match) in enumerate(cases):
        with LocalStore(tmp_path / f"store{i}") as local:
            with trio.fail_after(30):
                async with fake_peer(answer) as url:
                    with pytest.raises(error, match=match):
                        await get_blobs(KEY, url, [d1, d2], local)
            assert local.has(d1) == (i != len(cases) - 1), match  # kept, unless refused before any record
            assert stored_nothing(local, d2), match
