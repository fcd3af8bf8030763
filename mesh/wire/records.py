"""Blob records (mesh.wire.formats): many blobs in one stream, read into a store or written out.

A record is a 2-byte big-endian length, the digest's text form, then exactly the
digest's size in raw bytes. Batched uploads (``POST /v1/blobs:upload``) and batched
downloads between nodes (``POST /v1/blobs:download``) both carry them, so that a
tree of many small files moves in one request rather than one per file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from mesh.cas.access import BlobAccess
from mesh.cas.blobio import BlobWriter
from mesh.cas.digest import Digest
from mesh.errors import BlobDamaged, BlobNotFound, CodecError, InvalidDigest
from mesh.wire.formats import RECORD_HEADER

if TYPE_CHECKING:
    from mesh.cas.space import Reservation

#: Longest digest text a record header may announce (the text form is ~80 bytes).
MAX_DIGEST_TEXT = 200
#: Bytes a record writer gathers before handing them on (small blobs share a write).
OUT_CHUNK = 1 << 20


class RecordError(CodecError):
    """A record stream broke the format, or named a blob it should not have."""


class RecordReader:
    """Incremental parser of a record stream that stores each blob, verified.

    ``accept(digest)`` may refuse a record's digest (raise RecordError): a node
    only takes what it asked for. Blobs the store holds already are read past.
    A digest mismatch raises DigestMismatch (from the store's writer) and
    nothing of that blob is kept.

    ``room(size)``, if given, reserves room for each blob to write before its writer
    opens (mesh.cas.space's ``try_reserve``: at once, or None when the store must
    evict first); a record it has no room for waits (:attr:`waiting`, see :meth:`feed`).
    """

    def __init__(
        self,
        store: BlobAccess,
        accept: Callable[[Digest], None],
        what: str = "the stream",
        *,
        room: Callable[[int], Reservation | None] | None = None,
    ) -> None:
        self.store = store
        self.accept = accept
        self.what = what  # what the stream is, for messages: "upload", "the answer"
        self.room = room
        self.buffer = bytearray()
        self.writer: BlobWriter | None = None
        self.reservation: Reservation | None = None
        self.digest: Digest | None = None
        #: The record that waits for room, its header read and none of its bytes.
        self.waiting: Digest | None = None
        self.remaining = 0
        self.stored = 0
        self.present = 0
        #: Every digest whose record ended here, in order.
        self.received: list[Digest] = []

    def feed(self, data: bytes | bytearray | memoryview) -> memoryview | None:
        """Take the next bytes of the stream. Returns None once all are taken, or the bytes not
        taken when a record waits for room (:attr:`waiting`): reserve its size, give the
        reservation to :meth:`admit`, then feed them again."""
        view = memoryview(data)
        while view:
            if self.waiting is not None:
                return view
            if self.digest is not None:
                take = view[: self.remaining]
                if self.writer is not None:
                    self.writer.write(take)
                self.remaining -= len(take)
                view = view[len(take) :]
                if not self.remaining:
                    self._end_record()
                continue
            self.buffer += view
            view = memoryview(b"")
            rest = self._start_record()
            if rest is not None:
                view = memoryview(rest)
        return None

    def admit(self, reservation: Reservation) -> None:
        """Room for the waiting record: its writer opens, and :meth:`feed` takes its bytes."""
        assert self.waiting is not None
        self.reservation, self.waiting = reservation, None
        self._open_writer()

    def _open_writer(self) -> None:
        assert self.digest is not None
        try:
            self.writer = self.store.writer(expected=self.digest)
        except BaseException:
            self.abort()
            raise

    def _start_record(self) -> bytes | None:
        if len(self.buffer) < RECORD_HEADER.size:
            return None
        (length,) = RECORD_HEADER.unpack_from(self.buffer)
        if length > MAX_DIGEST_TEXT:
            raise RecordError(f"{self.what} record header of {length} bytes is not a digest")
        if len(self.buffer) < RECORD_HEADER.size + length:
            return None
        text = bytes(self.buffer[RECORD_HEADER.size : RECORD_HEADER.size + length]).decode("ascii", "replace")
        rest = bytes(self.buffer[RECORD_HEADER.size + length :])
        self.buffer.clear()
        try:
            digest = Digest.parse(text)
        except InvalidDigest as exc:
            raise RecordError(str(exc)) from None
        self.accept(digest)
        self.digest, self.remaining = digest, digest.size
        if self.store.has(digest):
            self.present += 1
        else:
            if self.room is not None:
                self.reservation = self.room(digest.size)
                if self.reservation is None:
                    self.waiting = digest
                    return rest
            self._open_writer()
        if not self.remaining:
            self._end_record()
        return rest

    def _end_record(self) -> None:
        assert self.digest is not None
        if self.writer is not None:
            try:
                self.writer.commit()  # closes the writer, published or not
            finally:
                self.abort()
            self.stored += 1
        self.received.append(self.digest)
        self.writer, self.digest = None, None

    def close(self) -> None:
        """The stream ended: it must end between records. Drops a blob cut short."""
        self.abort()
        if self.digest is not None:
            raise RecordError(f"{self.what} ended inside the blob {self.digest} ({self.remaining} bytes short)")
        if self.buffer:
            raise RecordError(f"{self.what} ended inside a record header ({len(self.buffer)} stray bytes)")

    def abort(self) -> None:
        """Discard the blob being written, if any, and release its room."""
        if self.writer is not None:
            self.writer.abort()
            self.writer = None
        if self.reservation is not None:
            self.reservation.release()
            self.reservation = None


def record_header(digest: Digest) -> bytes:
    """A record's header: the length of the digest's text, then the text."""
    text = str(digest).encode("ascii")
    return RECORD_HEADER.pack(len(text)) + text


def write_records(store: BlobAccess, digests: list[Digest]) -> Iterator[bytes]:
    """The records of those of ``digests`` the store holds, in order, as pieces of about
    OUT_CHUNK bytes (a blob the store lacks, or loses meanwhile, is left out: the receiver
    sees which arrived).

    Every blob is verified as it is read (the store's reader). A damaged one (the store
    quarantines it) is left out too while none of its record has been handed on, which is
    the rule for blobs below OUT_CHUNK; if part of it has, BlobDamaged is raised instead of
    the bytes that would complete it, and the answer must end unfinished (BlobStream).
    """
    out = bytearray()
    for digest in digests:
        try:
            reader = store.open(digest)
        except BlobNotFound:  # BlobDamaged too: a file of the wrong size
            continue
        start = len(out)  # where this record begins in ``out``, while none of it has been handed on
        out += record_header(digest)
        try:
            with reader:
                while data := reader.read(OUT_CHUNK):  # the read that completes a blob verifies it
                    out += data
                    if len(out) >= OUT_CHUNK:
                        yield bytes(out)
                        out.clear()
                        start = -1
        except BlobDamaged:
            if start < 0:
                raise
            del out[start:]
    if out:
        yield bytes(out)
