"""The lean blob GET between nodes: a real node's blob arrives whole and verified; a peer that
sends too little, wrong bytes, a wrong length, an error or nothing at all stores nothing."""

from __future__ import annotations

import functools
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from mesh.api import blobget
from mesh.api.auth import MeshKey, load_key
from mesh.api.blobget import get_blob
from mesh.api.client import NodeClient
from mesh.cas.digest import Digest
from mesh.cas.store import LocalStore
from mesh.errors import DigestMismatch, NodeError, NodeUnreachable
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


async def test_blobs_come_whole_from_a_real_node_and_an_absent_one_is_false(
    node: NodeProcess, local: LocalStore
) -> None:
    key = load_key(node.home)
    assert key is not None
    for data in (DATA, SMALL, b""):
        digest = Digest.of(data)
        with NodeClient(node.url, key=key) as client:
            put = client.http.put(
                f"/v1/blobs/{digest}", content=data, headers={"content-type": "application/octet-stream"}
            )
            assert put.status_code in (200, 201), put.text
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
