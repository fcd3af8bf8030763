"""The streamed blob answer (mesh.api.blobs.BlobStream): the next piece is read while one is
sent; a damaged blob leaves the answer unfinished; a client that goes away stops the reading."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio.testing

from mesh.api.blobs import BlobStream
from mesh.cas.digest import Digest
from mesh.errors import BlobDamaged

PIECES = [b"first", b"second", b"third"]


async def test_the_next_piece_is_read_while_one_is_sent() -> None:
    read: list[bytes] = []

    async def body() -> AsyncIterator[bytes]:
        for piece in PIECES:
            read.append(piece)
            yield piece

    read_by_then: list[int] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and message["body"]:
            await trio.testing.wait_all_tasks_blocked()  # a slow client: everything else may run
            read_by_then.append(len(read))

    with trio.fail_after(10):
        await BlobStream(body()).stream_response(send)
    assert read_by_then == [2, 3, 3]  # while piece i went out, piece i + 1 was read already


async def test_a_damaged_blob_leaves_the_answer_unfinished() -> None:
    async def body() -> AsyncIterator[bytes]:
        yield PIECES[0]
        yield PIECES[1]
        raise BlobDamaged(Digest.of(b"blob"), Digest.of(b"other"), "/store")  # instead of the last piece

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    with trio.fail_after(10):
        await BlobStream(body()).stream_response(send)
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body", "http.response.body"]
    assert [m["body"] for m in sent[1:]] == PIECES[:2]
    assert all(m["more_body"] for m in sent[1:])  # never the end of the answer


async def test_a_client_that_goes_away_stops_the_reading_and_its_error_is_raised_as_it_is() -> None:
    closed = trio.Event()

    async def body() -> AsyncIterator[bytes]:
        try:
            for i in range(1000):
                yield b"%d" % i
        finally:
            closed.set()

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and message["body"] == b"1":
            raise OSError("the client went away")

    with trio.fail_after(10):
        with pytest.raises(OSError, match="went away"):  # not wrapped in a group: the server knows it
            await BlobStream(body()).stream_response(send)
    assert closed.is_set()
