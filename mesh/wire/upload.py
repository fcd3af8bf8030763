"""Send a planned snapshot to a node, straight from the tree's files.

A client on another machine than the node does not copy its tree into a local
store first (:mod:`mesh.cas.plan` only hashes it). :func:`upload` asks the node
which blobs it misses and sends only those:

* blobs under :data:`LARGE_BLOB` go in batches, ``POST /v1/blobs:upload``, each
  body under :data:`BATCH_BYTES` and streamed as records (see
  :mod:`mesh.wire.formats`): a 2-byte big-endian length, the digest's text, then
  the blob's raw bytes;
* larger blobs go one per ``PUT /v1/blobs/{digest}``, streamed from the file in
  :data:`CHUNK`-sized reads;
* directory nodes come from the plan's memory, after the files, children before
  parents.

Files are hashed again as they are read. The node verifies what it receives,
but a file edited since it was planned must not even reach it: the last piece of
every file is held back until the file's hash checks out, so a changed file
aborts the request with :class:`~mesh.errors.TreeChanged` before its last byte
is sent (the node sees a body cut short and keeps nothing of that blob), and the
caller plans the tree again.

Errors are translated here, at the boundary: a node that cannot be reached
raises NodeUnreachable, an error status or a reply that breaks the protocol
raises NodeError with the node's message (see mesh.errors).
"""

from __future__ import annotations

import errno
import os
import stat
import sys
import time
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass

import httpx

from mesh import codec
from mesh.cas.digest import Digest
from mesh.cas.hasher import StreamHasher, hash_bytes
from mesh.cas.plan import FileSource, Plan
from mesh.errors import CodecError, InvalidDigest, NodeError, NodeUnreachable, SnapshotError, TreeChanged
from mesh.wire.formats import CBOR, RECORD_HEADER

#: Blobs at least this large are sent alone with PUT; smaller ones in batches.
LARGE_BLOB = 4 << 20
#: A batch body stays within this many bytes.
BATCH_BYTES = 8 << 20
#: Digests asked about per find-missing request (the node's limit).
MISSING_PER_REQUEST = 10_000
#: Read size for files sent with PUT, and the size of the pieces a batch body is sent in.
CHUNK = 1 << 20
#: Uploads at least this large show a progress line (when stderr is a terminal).
PROGRESS_BYTES = 16 << 20
#: Largest reply accepted from the node (a find-missing answer is about 80 bytes a digest).
MAX_REPLY = 4 << 20
_OCTETS = "application/octet-stream"


@dataclass(frozen=True, slots=True)
class UploadStats:
    """What an upload did: blobs in the snapshot, blobs the node missed (all sent), and how."""

    blobs: int
    missing: int
    bytes_sent: int
    batches: int
    puts: int


def upload(client: httpx.Client, plan: Plan, *, show_progress: bool | None = None) -> UploadStats:
    """Make the node behind ``client`` hold every blob of ``plan``; send only what it misses.

    ``client`` (owned by the caller, ``base_url`` set) is used as it is, auth and
    timeouts included. ``show_progress``: None shows a line on stderr for uploads
    of :data:`PROGRESS_BYTES` or more when stderr is a terminal.

    Raises TreeChanged when a file no longer has its planned bytes (plan again),
    SnapshotError when one cannot be read, NodeUnreachable and NodeError when the
    node cannot be reached or refuses a request. Blobs sent before a failure stay
    on the node (each one complete and verified); uploading again skips them.
    """
    blobs = plan.digests()
    missing = set(find_missing(client, blobs))
    todo = _order([(d, plan.nodes[d] if d in plan.nodes else plan.files[d]) for d in blobs if d in missing])
    total = sum(d.size for d, _ in todo)
    if show_progress is None:
        show_progress = total >= PROGRESS_BYTES and sys.stderr.isatty()
    progress = _Progress(total, show_progress)
    batches = puts = 0
    batch: list[tuple[Digest, bytes | FileSource]] = []
    batch_size = 0

    def flush() -> None:
        nonlocal batches, batch_size
        if batch:
            _send_batch(client, batch, batch_size, progress)
            batches, batch_size = batches + 1, 0
            batch.clear()

    try:
        for digest, source in todo:
            if digest.size >= LARGE_BLOB:
                flush()  # keeps the order: a large root node goes after the files it names
                _put(client, digest, source, progress)
                puts += 1
                continue
            size = _record_size(digest)
            if batch_size + size > BATCH_BYTES:
                flush()
            batch.append((digest, source))
            batch_size += size
        flush()
    finally:
        progress.close()
    return UploadStats(len(blobs), len(todo), progress.sent, batches, puts)


def put_blob(client: httpx.Client, data: bytes) -> Digest:
    """Make the node hold the blob ``data`` (a times manifest, sent beside a plan); its digest.
    Sent only if the node misses it. Raises NodeUnreachable or NodeError."""
    digest = hash_bytes(data)
    if find_missing(client, [digest]):
        progress = _Progress(digest.size, False)
        try:
            _put(client, digest, data, progress)
        finally:
            progress.close()
    return digest


def find_missing(client: httpx.Client, digests: Sequence[Digest]) -> list[Digest]:
    """The digests among ``digests`` that the node does not hold, asked in requests of
    :data:`MISSING_PER_REQUEST`. Raises NodeUnreachable or NodeError."""
    missing: list[Digest] = []
    for start in range(0, len(digests), MISSING_PER_REQUEST):
        asked = digests[start : start + MISSING_PER_REQUEST]
        body = codec.encode({"digests": [str(d) for d in asked]})
        what = "a find-missing request"
        reply = _decode(_call(client, "POST", "/v1/blobs:missing", what, body, CBOR), what)
        texts = reply.get("missing")
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise NodeError(f"the node at {client.base_url} answered {what} without a list of digests")
        wanted = set(asked)
        for text in texts:
            try:
                digest = Digest.parse(text)
            except InvalidDigest as exc:
                raise NodeError(f"the node at {client.base_url} answered {what} with a bad digest: {exc}") from None
            if digest not in wanted:
                raise NodeError(f"the node at {client.base_url} named {digest}, which it was not asked about")
            missing.append(digest)
    return missing


def _order(todo: list[tuple[Digest, bytes | FileSource]]) -> list[tuple[Digest, bytes | FileSource]]:
    """Large files first, then small files, then directory nodes in the plan's order (children first).

    The root node goes last, so a node that holds it got the rest of the tree
    from this upload; large files first keep batches from being cut by PUTs.
    """
    files = [item for item in todo if isinstance(item[1], FileSource)]
    nodes = [item for item in todo if not isinstance(item[1], FileSource)]
    files.sort(key=lambda item: item[0].size < LARGE_BLOB)
    return files + nodes


def _record_size(digest: Digest) -> int:
    return RECORD_HEADER.size + len(str(digest)) + digest.size


# -- sending ---------------------------------------------------------------------


def _send_batch(
    client: httpx.Client, batch: list[tuple[Digest, bytes | FileSource]], size: int, progress: _Progress
) -> None:
    """One ``POST /v1/blobs:upload`` carrying ``batch`` (``size``: the exact body length)."""
    what = f"an upload of {len(batch)} blob{'' if len(batch) == 1 else 's'}"
    body = _batch_body(batch, progress)
    try:
        reply = _decode(_call(client, "POST", "/v1/blobs:upload", what, body, _OCTETS, size), what)
    finally:
        body.close()
    stored = reply.get("stored")
    if type(stored) is not int or not 0 <= stored <= len(batch):
        raise NodeError(f"the node at {client.base_url} answered {what} with stored={stored!r}")


def _batch_body(batch: list[tuple[Digest, bytes | FileSource]], progress: _Progress) -> Generator[bytes, None, None]:
    """The records of a batch, in pieces of about :data:`CHUNK` bytes.

    A file's record joins the body only once the whole file has been read and
    its hash checked (batched files are small), so a changed file is never sent.
    """
    pending: list[bytes] = []
    pending_size = blob_bytes = 0
    for digest, source in batch:
        text = str(digest).encode("ascii")
        data = source if isinstance(source, bytes) else b"".join(_file_chunks(source, digest))
        pending += [RECORD_HEADER.pack(len(text)), text, data]
        pending_size += RECORD_HEADER.size + len(text) + len(data)
        blob_bytes += len(data)
        if pending_size >= CHUNK:
            yield b"".join(pending)
            progress.add(blob_bytes)
            pending, pending_size, blob_bytes = [], 0, 0
    if pending:
        yield b"".join(pending)
        progress.add(blob_bytes)


def _put(client: httpx.Client, digest: Digest, source: bytes | FileSource, progress: _Progress) -> None:
    """One ``PUT /v1/blobs/{digest}`` streaming a large blob."""
    body = _counted(_blob_chunks(digest, source), progress)
    try:
        _call(client, "PUT", f"/v1/blobs/{digest}", f"the upload of {digest}", body, _OCTETS, digest.size)
    finally:
        body.close()


def _blob_chunks(digest: Digest, source: bytes | FileSource) -> Generator[bytes, None, None]:
    if isinstance(source, FileSource):
        yield from _file_chunks(source, digest)
        return
    for start in range(0, len(source), CHUNK):
        yield source[start : start + CHUNK]


def _counted(chunks: Generator[bytes, None, None], progress: _Progress) -> Generator[bytes, None, None]:
    """``chunks``, counted as sent once the transport took each (closes ``chunks`` when closed)."""
    try:
        for chunk in chunks:
            yield chunk
            progress.add(len(chunk))
    finally:
        chunks.close()


def _file_chunks(source: FileSource, digest: Digest) -> Generator[bytes, None, None]:
    """The bytes of the file ``source`` in reads of :data:`CHUNK`, checked against ``digest``.

    The last piece is yielded only after the whole file hashed to ``digest``;
    otherwise TreeChanged is raised instead (and SnapshotError if it cannot be read).
    """
    path = os.fsdecode(source.path)
    try:
        fd = os.open(source.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise TreeChanged(path, "it was removed") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise TreeChanged(path, "it is now a symlink") from None
        raise SnapshotError(f"cannot read {path}: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise TreeChanged(path, "it is no longer a regular file")
        hasher = StreamHasher()
        remaining = digest.size
        held = b""
        while True:
            want = min(CHUNK, remaining + 1)  # one byte more than expected tells a file that grew
            chunk = os.read(fd, want)
            if len(chunk) > remaining:
                raise TreeChanged(path, f"it now has more than {digest.size} bytes")
            if not chunk:
                break
            hasher.update(chunk)
            remaining -= len(chunk)
            if held:
                yield held
            held = chunk
            if not remaining and len(chunk) < want:
                break  # a short read at the expected size: the end of a regular file
        if remaining:
            raise TreeChanged(path, f"it now has {digest.size - remaining} bytes, not {digest.size}")
        if hasher.digest() != digest:
            raise TreeChanged(path, "its content is different")
        if held:
            yield held
    except OSError as exc:
        raise SnapshotError(f"cannot read {path}: {exc.strerror}") from None
    finally:
        os.close(fd)


# -- the HTTP boundary ------------------------------------------------------------


def _call(
    client: httpx.Client,
    method: str,
    url: str,
    what: str,
    body: bytes | Iterator[bytes],
    content_type: str,
    length: int | None = None,
) -> bytes:
    """Send one request and return the reply's body; translate every failure into NodeError.

    ``length`` is the exact size of a streamed ``body``: sent as Content-Length,
    so a body cut short by an error is one the node can tell is incomplete.
    Errors raised by ``body`` itself (TreeChanged) pass through unchanged.
    """
    headers = {"content-type": content_type, "accept": CBOR}
    if length is not None:
        headers["content-length"] = str(length)
    try:
        with client.stream(method, url, content=body, headers=headers) as response:
            data = bytearray()
            for chunk in response.iter_bytes():
                data += chunk
                if len(data) > MAX_REPLY:
                    raise NodeError(f"the node at {client.base_url} answered {what} with more than {MAX_REPLY} bytes")
    except httpx.HTTPError as exc:
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            where = client.base_url
            raise NodeUnreachable(f"no mesh node answers at {where} ({exc}); start one with `mesh up`") from None
        reason = str(exc) or type(exc).__name__
        raise NodeError(f"sending {what} to the node at {client.base_url} failed: {reason}") from None
    if not 200 <= response.status_code < 300:
        raise NodeError(
            f"the node at {client.base_url} refused {what}: {_error_message(response, bytes(data))}",
            response.status_code,
        )
    return bytes(data)


def _error_message(response: httpx.Response, data: bytes) -> str:
    """The node's own message from an error reply ``{"error": message}``, else the status."""
    try:
        message = codec.decode(data, max_size=MAX_REPLY).get("error")
    except (CodecError, AttributeError):
        message = None
    if isinstance(message, str) and message:
        return message
    return f"HTTP {response.status_code} {response.reason_phrase}".rstrip()


def _decode(data: bytes, what: str) -> dict[str, object]:
    """A CBOR map reply; NodeError for anything else."""
    try:
        value = codec.decode(data, max_size=MAX_REPLY)
    except CodecError as exc:
        raise NodeError(f"the node's answer to {what} is not valid CBOR: {exc}") from None
    if not isinstance(value, dict):
        raise NodeError(f"the node's answer to {what} is not a map")
    return value


# -- progress ------------------------------------------------------------------------


class _Progress:
    """Counts blob bytes sent; when ``shown``, keeps a line on stderr up to date (sent / total, rate)."""

    _EVERY = 0.2  # seconds between redraws

    def __init__(self, total: int, shown: bool) -> None:
        self.total = total
        self.shown = shown
        self.sent = 0
        self._started = time.monotonic()
        self._drawn_at = 0.0
        self._drawn = False

    def add(self, n: int) -> None:
        self.sent += n
        if not self.shown:
            return
        now = time.monotonic()
        if now - self._drawn_at < self._EVERY and self.sent < self.total:
            return
        self._drawn_at = now
        rate = self.sent / max(now - self._started, 1e-3)
        sys.stderr.write(f"\rupload: {_mb(self.sent)}/{_mb(self.total)} MB, {_mb(rate)} MB/s\x1b[K")
        sys.stderr.flush()
        self._drawn = True

    def close(self) -> None:
        if self._drawn:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
            self._drawn = False


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f}" if n < 10e6 else f"{n / 1e6:.0f}"
