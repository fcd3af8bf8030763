"""NodeClient: the synchronous httpx client the CLI (and tests) use to talk to a node.

Sync on purpose: the CLI must start fast and must not import trio or hypercorn.
Every transport failure and every error status is translated here, once, into
:class:`~mesh.errors.NodeUnreachable` or :class:`~mesh.errors.NodeError`
carrying the node's own message.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Callable, Generator, Iterator
from typing import Any

from mesh import codec
from mesh.cas.digest import Digest
from mesh.errors import CodecError, NodeError, NodeLost, NodeUnreachable
from mesh.wire.auth import CONTENT_ADDRESSED, UPLOAD_PATHS, MeshKey, load_key, sign
from mesh.wire.formats import CBOR, FRAME_HEADER, MAX_FRAME


def _import_httpx_without_async_backends() -> None:
    """Import httpx (and httpcore) with trio and anyio hidden, unless they are loaded already.

    httpcore imports trio and anyio whenever they are installed, for async
    connection pools; the CLI's sync client needs neither, and they cost it about
    150 ms of start-up (``mesh exec`` on a cache hit is mostly start-up). An
    in-process node that imports trio later restores httpcore's view of them
    (:func:`restore_async_backends`).
    """
    if "httpcore" in sys.modules:
        return
    hidden = [name for name in ("trio", "anyio", "h2") if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # makes `import name` raise ImportError
    try:
        import httpcore  # noqa: F401  (httpx imports it lazily, at the first Client)
        import httpx  # noqa: F401
    finally:
        for name in hidden:
            if sys.modules.get(name) is None:
                del sys.modules[name]


def restore_async_backends() -> None:
    """Give httpcore the trio and anyio modules it did not see at import (see above)."""
    sync = sys.modules.get("httpcore._synchronization")
    if sync is None:
        return
    import anyio
    import trio

    if getattr(sync, "trio", None) is None:
        sync.trio = trio  # type: ignore[attr-defined]
    if getattr(sync, "anyio", None) is None:
        sync.anyio = anyio  # type: ignore[attr-defined]


_import_httpx_without_async_backends()

import httpx  # noqa: E402

#: Seconds to wait for a connection to a node.
CONNECT_TIMEOUT = 5.0
#: Bytes of a blob read_blob holds in memory until it is verified; more wait in a temp file.
SPOOL_MEMORY = 16 << 20
SPOOL_CHUNK = 1 << 20


class MeshAuth(httpx.Auth):
    """The signing layer of every request (see mesh.wire.auth): client -> auth -> transport.

    Blob uploads are signed as content-addressed (their bytes are verified against
    their digests), so a streamed upload is never read twice; every other body is
    small and signed by its digest. The signature covers the ``Host`` the request is
    sent with, so only the node it is addressed to accepts it.
    """

    def __init__(self, key: MeshKey) -> None:
        self.key = key

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        target = request.url.raw_path.decode("ascii")
        if request.method in ("PUT", "POST") and target.startswith(UPLOAD_PATHS):
            body: bytes | str = CONTENT_ADDRESSED
        else:
            body = request.read()
        request.headers.update(sign(self.key, request.method, target, body, authority=request.headers["host"]))
        yield request


def default_key() -> MeshKey | None:
    """The mesh key this client would use: MESH_KEY, else $MESH_HOME/mesh.key (None if neither)."""
    from mesh.config import Settings

    return load_key(Settings.load().home)


class NodeClient:
    """Requests to one node at ``url``, signed with ``key`` (default: :func:`default_key`).

    Close it (or use ``with``) to release the connection. Without a key requests go
    unsigned, and a node answers those that need one with 401 and what to do.
    """

    def __init__(
        self,
        url: str,
        *,
        key: MeshKey | None | str = "default",
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        if key == "default":
            key = default_key()
        self.key = key if isinstance(key, MeshKey) else None
        self.http = httpx.Client(
            base_url=self.url,
            auth=MeshAuth(self.key) if self.key is not None else None,
            timeout=httpx.Timeout(timeout, connect=CONNECT_TIMEOUT),
            headers={"accept": CBOR, "user-agent": "mesh-cli"},
            transport=transport,
            trust_env=False,
            # A TLS context with the system's certificates costs ~50 ms to build; plain http needs none.
            verify=not self.url.startswith("http://"),
        )

        self._health: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"NodeClient({self.url!r})"

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> NodeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ------------------------------------------------------------------

    def request(self, method: str, path: str, *, body: Any = None, params: dict[str, Any] | None = None) -> Any:
        """One request with a CBOR body (when given) and a CBOR or JSON answer, decoded."""
        content = None if body is None else codec.encode(body)
        headers = {"content-type": CBOR} if content is not None else None
        try:
            response = self.http.request(method, path, content=content, headers=headers, params=params)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        check(response)
        return decode_response(response)

    def _unreachable(self, exc: httpx.HTTPError) -> NodeError:
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            return NodeUnreachable(f"no mesh node answers at {self.url} ({exc}); start one with `mesh up`")
        if isinstance(exc, httpx.TransportError):  # cut mid-answer: a restart, a network failure
            return NodeLost(f"the connection to the node at {self.url} broke: {exc or type(exc).__name__}")
        return NodeError(f"talking to the node at {self.url} failed: {exc}")

    # -- the API ----------------------------------------------------------------------

    def health(self, *, cached: bool = False) -> dict[str, Any]:
        """The node's /health; ``cached`` reuses the last answer (it names the node and its store)."""
        if cached and self._health is not None:
            return self._health
        result: dict[str, Any] = self.request("GET", "/health")
        self._health = result
        return result

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", "/status")
        return result

    def submit(self, job: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", "/v1/jobs", body=job)
        return result

    def submit_and_follow(self, job: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Submit a job and yield its events as they happen, until it finishes."""
        yield from self._events("POST", "/v1/jobs", params={"follow": "1"}, content=codec.encode(job))

    def events(
        self, job_id: str, start: int = 0, *, wait: bool = True, on_open: Callable[[], None] | None = None
    ) -> Iterator[dict[str, Any]]:
        """A job's events from ``start``, live until it finishes; without ``wait``, only those
        the node holds now. ``on_open`` is called once the node has answered."""
        params = {"from": str(start)}
        if not wait:
            params["wait"] = "0"
        yield from self._events("GET", f"/v1/jobs/{job_id}/events", params=params, on_open=on_open)

    def _events(
        self, method: str, path: str, *, on_open: Callable[[], None] | None = None, **kwargs: Any
    ) -> Iterator[dict[str, Any]]:
        headers = {"content-type": CBOR} if "content" in kwargs else None
        timeout = httpx.Timeout(None, connect=CONNECT_TIMEOUT)
        try:
            with self.http.stream(method, path, headers=headers, timeout=timeout, **kwargs) as response:
                if response.status_code >= 400:
                    response.read()
                    check(response)
                if on_open is not None:
                    on_open()
                yield from read_frames(response.iter_raw())
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None

    def job(self, job_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", f"/v1/jobs/{job_id}")
        return result

    def jobs(self, *, limit: int = 50, before: int | None = None, state: str | None = None) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit}
        if before is not None:
            params["before"] = before
        if state is not None:
            params["state"] = state
        result: dict[str, Any] = self.request("GET", "/v1/jobs", params=params)
        return result

    def cancel(self, job_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", f"/v1/jobs/{job_id}/cancel")
        return result

    def find_missing(self, digests: list[Digest]) -> list[Digest]:
        reply = self.request("POST", "/v1/blobs:missing", body={"digests": [str(d) for d in digests]})
        return [Digest.parse(t) for t in reply["missing"]]

    def stream_blob(self, digest: Digest) -> Iterator[bytes]:
        """A blob's bytes as they arrive, for a consumer that verifies them itself (the store's
        writer): the hash of the whole is checked only after the last piece.

        Raises NodeError when the node lacks it, when the bytes do not match, and when the
        node cuts the answer short (it does for a blob it finds damaged as it sends it).
        """
        from mesh.cas.hasher import StreamHasher

        hasher = StreamHasher()
        try:
            with self.http.stream("GET", f"/v1/blobs/{digest}") as response:
                if response.status_code >= 400:
                    response.read()
                    check(response)
                for chunk in response.iter_bytes():
                    hasher.update(chunk)
                    yield chunk
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        if hasher.digest() != digest:
            raise NodeError(f"the node sent bytes that do not match {digest}")

    def read_blob(self, digest: Digest, *, offset: int = 0) -> Iterator[bytes]:
        """A blob's bytes from ``offset`` on, verified: nothing is yielded before the whole blob
        arrived and hashed to ``digest`` (it waits in memory, or in a temp file past
        :data:`SPOOL_MEMORY`), so a caller that writes them out never writes unverified bytes.

        Raises NodeError as :meth:`stream_blob` does.
        """
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY) as spool:
            for chunk in self.stream_blob(digest):
                spool.write(chunk)
            spool.seek(offset)
            while chunk := spool.read(SPOOL_CHUNK):
                yield chunk


def check(response: httpx.Response) -> None:
    """Raise NodeError with the node's message for an error status."""
    if response.status_code < 400:
        return
    try:
        message = decode_response(response).get("error")
    except (CodecError, AttributeError, ValueError):
        message = None
    if not message:
        message = f"HTTP {response.status_code} {response.reason_phrase}"
    raise NodeError(str(message), response.status_code)


def decode_response(response: httpx.Response) -> Any:
    if response.headers.get("content-type", "").startswith("application/json"):
        try:
            return json.loads(response.content)
        except ValueError as exc:
            raise CodecError(f"the node sent malformed JSON: {exc}") from None
    return codec.decode(response.content)


class FrameSplitter:
    """Splits a byte stream of length-prefixed CBOR frames (mesh.wire.formats) into event maps.

    Feed it chunks as they arrive; :meth:`end` checks nothing is left half-sent.
    Shared by the sync client and the async peer client.
    """

    def __init__(self, who: str = "the node") -> None:
        self.who = who
        self._buffer = bytearray()

    def feed(self, chunk: bytes) -> list[dict[str, Any]]:
        buffer = self._buffer
        buffer += chunk
        events = []
        start = 0
        while len(buffer) - start >= FRAME_HEADER.size:
            (length,) = FRAME_HEADER.unpack_from(buffer, start)
            if length > MAX_FRAME:
                raise NodeError(f"{self.who} sent an event frame of {length} bytes (limit {MAX_FRAME})")
            end = start + FRAME_HEADER.size + length
            if len(buffer) < end:
                break
            event = codec.decode(bytes(buffer[start + FRAME_HEADER.size : end]))
            if not isinstance(event, dict):
                raise NodeError(f"{self.who} sent an event that is not a map")
            events.append(event)
            start = end
        del buffer[:start]
        return events

    def end(self) -> None:
        if self._buffer:
            raise NodeError(f"{self.who}'s event stream ended in the middle of an event")


def read_frames(chunks: Iterator[bytes]) -> Iterator[dict[str, Any]]:
    """Split a stream of length-prefixed CBOR frames into decoded event maps."""
    splitter = FrameSplitter()
    for chunk in chunks:
        yield from splitter.feed(chunk)
    splitter.end()
