"""A small async client of the Docker Engine HTTP API, over its unix socket.

Docker and Podman (``podman system service``) both serve this API; only what the
``docker`` executor and the node's probe need is here: ping, list images, an image's ID, pull,
create / attach / start / kill / inspect / wait / remove a container, list
containers by label. Paths carry no API version (``/containers/create``, not
``/v1.41/...``): the engine then answers at its own current version, and engines
keep dropping old versions (Docker 29 refuses anything below 1.44).

Every call but one goes through httpx's async client on trio (the exception: the
attachment to a container's output, see :class:`Attachment`). An :class:`Engine` holds one
connection pool and belongs to one trio run (an httpx pool cannot outlive the event
loop it was made in), so callers open one per task, which is cheap: the client is
made without TLS set-up (``verify=False``; nothing here speaks TLS), ~0.5 ms instead
of ~55 ms. Errors are translated here: an engine that cannot be reached, or that
answers with an error status, raises :class:`mesh.errors.DockerError` with the
engine's own message and the HTTP status.

The output of a container without a TTY comes multiplexed: frames of an 8-byte header
(stream type: 0 stdin, 1 stdout, 2 stderr; three zero bytes; a big-endian uint32
payload length) and the payload. :class:`Demux` splits them back into stdout and
stderr as bytes arrive, without waiting for a frame to be complete.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import h11
import httpx
import trio

from mesh.errors import DockerError

__all__ = [
    "DEFAULT_SOCKET",
    "Attachment",
    "Demux",
    "DockerStatus",
    "Engine",
    "docker_status",
    "socket_path",
    "valid_reference",
]

#: The engine's socket when ``DOCKER_HOST`` is not set.
DEFAULT_SOCKET = "/var/run/docker.sock"
#: Seconds a plain request (not a log stream, wait or pull) may take.
API_TIMEOUT = 60.0
_BASE_URL = "http://docker"  # the host part is ignored on a unix socket
#: Bytes asked of an attachment's socket per read.
READ_SIZE = 1 << 16
_HEADER = 8
_STREAMS = {0: "stdout", 1: "stdout", 2: "stderr", 3: "stderr"}  # 0: stdin echoed on stdout; 3: the engine's errors


def socket_path(host: str | None = None) -> str:
    """The socket path of a ``DOCKER_HOST`` value (``unix:///run/x.sock``); ``host`` None reads ``DOCKER_HOST``.

    Only unix sockets: the executor bind-mounts host paths, so the engine must run
    on this machine. Raises DockerError for any other scheme.
    """
    if host is None:
        host = os.environ.get("DOCKER_HOST") or ""
    if not host:
        return DEFAULT_SOCKET
    if host.startswith("unix://"):
        path = host[len("unix://") :]
        if path.startswith("/"):
            return path
    raise DockerError(f"DOCKER_HOST must be a unix socket on this machine (unix:///path/to.sock), not {host!r}")


class Demux:
    """Splits the engine's multiplexed log stream into (stream, bytes) pieces as they come.

    Payload bytes are passed on as soon as they arrive, a frame's tail in a later
    piece than its head; consecutive pieces of one stream are joined.
    """

    def __init__(self) -> None:
        self._header = bytearray()
        self._stream = "stdout"
        self._left = 0  # payload bytes of the current frame still to come

    @property
    def clean(self) -> bool:
        """True when the data so far ended on a frame boundary (no cut frame)."""
        return not self._header and self._left == 0

    def feed(self, data: bytes) -> list[tuple[str, bytes]]:
        """The payload in ``data`` (which may start and end anywhere in a frame), by stream."""
        out: list[tuple[str, bytes]] = []
        view = memoryview(data)
        while view:
            if self._left == 0:
                need = _HEADER - len(self._header)
                self._header += view[:need]
                view = view[need:]
                if len(self._header) < _HEADER:
                    break
                self._stream = _STREAMS.get(self._header[0], "stderr")
                self._left = int.from_bytes(self._header[4:8], "big")
                self._header.clear()
                continue
            take = bytes(view[: self._left])
            view = view[len(take) :]
            self._left -= len(take)
            if out and out[-1][0] == self._stream:
                out[-1] = (self._stream, out[-1][1] + take)
            else:
                out.append((self._stream, take))
        return out


class Attachment:
    """The output of a container, attached before it starts, read piece by piece until it ends.

    ``POST /containers/{id}/attach?stream=1&stdout=1&stderr=1`` with ``Upgrade: tcp``,
    as ``docker run`` does: the engine answers 101 and then sends the multiplexed
    output on the bare connection until the container ends (or 200 and the same as
    a body read to the end). Not ``/logs?follow=1``: Podman's followed logs of a
    container that ends while they are read lose their tail (podman issue 21914,
    open; here the tail of 50,000 lines was lost in 2 runs of 3) and end only on a 250 ms poll.

    Spoken with h11 over a unix socket connection of its own rather than through
    httpx, which cannot take over an upgraded connection, and whose reads cannot be
    cancelled without closing the response; a read here may be cancelled (at a
    deadline) and called again, nothing lost, and takes whatever has arrived (up to
    64 KiB) in one piece.
    """

    def __init__(self, socket: str, stream: trio.abc.Stream, connection: h11.Connection) -> None:
        self.socket = socket
        self._stream = stream
        self._connection = connection
        self._raw: bytes | None = None  # after a 101: bytes received with the answer, not yet passed on
        self._demux = Demux()
        self.ended = False

    @classmethod
    async def open(cls, socket: str, container: str, timeout: float) -> Attachment:
        """Attach to a created container's stdout and stderr; raises DockerError."""
        target = f"/containers/{quote(container)}/attach?stream=1&stdout=1&stderr=1"
        headers = [("Host", "docker"), ("Content-Length", "0"), ("Connection", "Upgrade"), ("Upgrade", "tcp")]
        try:
            with trio.fail_after(timeout):
                stream = await trio.open_unix_socket(socket)
        except (OSError, trio.TooSlowError) as exc:
            raise _no_answer(socket, exc) from None
        try:
            connection = h11.Connection(our_role=h11.CLIENT)
            request = connection.send(h11.Request(method="POST", target=target, headers=headers))
            end = connection.send(h11.EndOfMessage())
            attachment = cls(socket, stream, connection)
            with trio.fail_after(timeout):
                await stream.send_all((request or b"") + (end or b""))
                await attachment._answer(target)
            return attachment
        except BaseException as exc:
            with trio.CancelScope(shield=True):
                await stream.aclose()
            if isinstance(exc, _LOST):
                raise _no_answer(socket, exc) from None
            raise

    async def _answer(self, target: str) -> None:
        """Read the answer's head: 101 (then the bare connection) or 200 (then its body); else raise."""
        while True:
            event = self._connection.next_event()
            if event is h11.NEED_DATA:
                self._connection.receive_data(bytes(await self._stream.receive_some(READ_SIZE)))
            elif event is h11.PAUSED or isinstance(event, h11.InformationalResponse) and event.status_code == 101:
                self._raw = self._connection.trailing_data[0]
                return
            elif isinstance(event, h11.Response):
                if event.status_code != 200:
                    reason = _message_of(await self._body(), event.status_code)
                    raise DockerError(f"the Docker engine refused POST {target}: {reason}", event.status_code, reason)
                return
            elif not isinstance(event, h11.InformationalResponse):
                raise h11.RemoteProtocolError(f"unexpected {type(event).__name__} before the answer")

    async def _body(self, limit: int = 4096) -> bytes:
        """The body of an error answer (up to ``limit`` bytes)."""
        body = bytearray()
        while len(body) < limit:
            data = await self._receive()
            if not data:
                break
            body += data
        return bytes(body)

    async def _receive(self) -> bytes:
        """The next bytes of the output stream; b"" at its end."""
        if self._raw is not None:
            if self._raw:
                data, self._raw = self._raw, b""
                return data
            return bytes(await self._stream.receive_some(READ_SIZE))
        while True:
            event = self._connection.next_event()
            if event is h11.NEED_DATA:
                self._connection.receive_data(bytes(await self._stream.receive_some(READ_SIZE)))  # b"": closed
            elif isinstance(event, h11.Data):
                return bytes(event.data)
            else:  # EndOfMessage, ConnectionClosed
                return b""

    async def read(self) -> list[tuple[str, bytes]]:
        """The next output, by stream; an empty list once the stream has ended (then ``ended``).

        May be cancelled at any point and called again: nothing received is lost.
        """
        try:
            while not self.ended:
                data = await self._receive()
                if not data:
                    self.ended = True
                    break
                pieces = self._demux.feed(data)
                if pieces:
                    return pieces
        except _LOST as exc:
            raise _no_answer(self.socket, exc) from None
        return []

    async def aclose(self) -> None:
        """Detach: close the connection."""
        await self._stream.aclose()


#: What a lost connection raises, translated into DockerError.
_LOST = (OSError, trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError, h11.ProtocolError)


def _no_answer(socket: str, exc: BaseException) -> DockerError:
    return DockerError(f"the Docker engine at {socket} does not answer: {exc or type(exc).__name__}")


def _message_of(body: bytes, status: int) -> str:
    try:
        message = json.loads(body).get("message")
    except (ValueError, AttributeError):
        message = None
    return str(message or body.decode(errors="replace").strip()[:500] or f"HTTP {status}")


class Engine:
    """One connection pool to the engine at ``socket``, for one trio run; use as ``async with``."""

    def __init__(self, socket: str, *, timeout: float = API_TIMEOUT) -> None:
        self.socket = socket
        self.timeout = timeout
        transport = httpx.AsyncHTTPTransport(uds=socket, verify=False)
        self._client = httpx.AsyncClient(
            transport=transport, base_url=_BASE_URL, timeout=timeout, verify=False, trust_env=False
        )

    async def __aenter__(self) -> Engine:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections."""
        await self._client.aclose()

    # -- requests ----------------------------------------------------------------------

    def unreachable(self, exc: httpx.TransportError) -> DockerError:
        """The DockerError for a request that got no (complete) answer."""
        return _no_answer(self.socket, exc)

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        body: object = None,
        timeout: float | None | httpx.Timeout = None,
        ok: tuple[int, ...] = (),
    ) -> httpx.Response:
        """Send one request and read the answer; raises DockerError unless 2xx or in ``ok``."""
        extra: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        try:
            response = await self._client.request(method, path, params=params, json=body, **extra)
        except httpx.TransportError as exc:
            raise self.unreachable(exc) from None
        if not response.is_success and response.status_code not in ok:
            raise self.refused(method, path, response)
        return response

    @staticmethod
    def refused(method: str, path: str, response: httpx.Response) -> DockerError:
        """The DockerError for an error answer, with the engine's own message."""
        reason = error_message(response)
        return DockerError(f"the Docker engine refused {method} {path}: {reason}", response.status_code, reason)

    async def ping(self) -> str:
        """``/_ping``; returns the engine's API version (the ``Api-Version`` header, "" if absent)."""
        response = await self._request("GET", "/_ping")
        return str(response.headers.get("api-version", ""))

    async def images(self) -> list[str]:
        """The repo tags of the images the engine holds (``name:tag``), sorted, untagged ones left out."""
        response = await self._request("GET", "/images/json")
        tags = {tag for image in response.json() for tag in image.get("RepoTags") or () if tag != "<none>:<none>"}
        return sorted(tags)

    async def image_id(self, image: str) -> str | None:
        """The ID of the image ``image`` names (``sha256:...``), None when the engine lacks it."""
        response = await self._request("GET", f"/images/{quote(image, safe='/:@')}/json", ok=(404,))
        if response.status_code == 404:
            return None
        return str(response.json()["Id"])

    async def pull(self, image: str) -> None:
        """Pull ``image`` (``POST /images/create``). Raises DockerError with the engine's reason.

        The engine answers 200 at once and reports progress, and failure, as JSON lines
        in the body; a failed pull is a line with ``error``. Not bounded in time here:
        the caller sets its deadline.
        """
        repo, tag = split_reference(image)
        params = {"fromImage": repo} if tag is None else {"fromImage": repo, "tag": tag}
        path = "/images/create"
        try:
            async with self._client.stream(
                "POST", path, params=params, timeout=httpx.Timeout(self.timeout, read=None)
            ) as response:
                if not response.is_success:
                    await response.aread()
                    raise self.refused("POST", path, response)
                async for line in response.aiter_lines():
                    error = _progress_error(line)
                    if error:
                        message = f"the Docker engine could not pull {image!r}: {error}"
                        raise DockerError(message, response.status_code, error)
        except httpx.TransportError as exc:
            raise self.unreachable(exc) from None

    async def create(self, name: str, config: Mapping[str, object]) -> str:
        """Create a container named ``name``; returns its id. A missing image is a DockerError with status 404."""
        response = await self._request("POST", "/containers/create", params={"name": name}, body=config)
        return str(response.json()["Id"])

    async def start(self, container: str) -> None:
        """Start a created container."""
        await self._request("POST", f"/containers/{quote(container)}/start", ok=(304,))

    async def kill(self, container: str) -> bool:
        """SIGKILL the container; False when it was not running (ended, never started, or gone)."""
        path = f"/containers/{quote(container)}/kill"
        response = await self._request("POST", path, params={"signal": "KILL"}, ok=(404, 409, 500))
        if response.is_success:
            return True
        message = error_message(response)
        if response.status_code == 500 and "state improper" not in message and "not running" not in message:
            # Podman says 500 for "not running". Under load it also answers 500 after the kill
            # was delivered, having timed out waiting for its monitor's exit file (seen in CI:
            # "timed out waiting for file .../exits/ID"): what counts is whether it still runs.
            if (await self.inspect(container)).get("Status") in ("running", "paused"):
                raise self.refused("POST", path, response)
            return True
        return False

    async def inspect(self, container: str) -> dict[str, Any]:
        """The container's ``State`` (``Status``, ``ExitCode``, ``OOMKilled`` ...)."""
        response = await self._request("GET", f"/containers/{quote(container)}/json")
        state: dict[str, Any] = response.json().get("State") or {}
        return state

    async def wait(self, container: str) -> int:
        """Wait (without a time limit: the caller sets its deadline) until the container stops; its exit code."""
        path = f"/containers/{quote(container)}/wait"
        response = await self._request("POST", path, timeout=httpx.Timeout(self.timeout, read=None))
        answer = response.json()
        error = (answer.get("Error") or {}).get("Message")
        if error:
            raise DockerError(f"the Docker engine failed to wait for container {container}: {error}")
        return int(answer["StatusCode"])

    async def remove(self, container: str) -> bool:
        """Remove the container, killing it first if it runs, with its anonymous volumes; False if absent."""
        path = f"/containers/{quote(container)}"
        response = await self._request("DELETE", path, params={"force": 1, "v": 1}, ok=(404,))
        return response.is_success

    async def containers(self, labels: Mapping[str, str | None]) -> list[str]:
        """Ids of the containers (running or not) that carry all of ``labels`` (value None: any value)."""
        wanted = [key if value is None else f"{key}={value}" for key, value in labels.items()]
        filters = json.dumps({"label": wanted})
        response = await self._request("GET", "/containers/json", params={"all": 1, "filters": filters})
        return [str(entry["Id"]) for entry in response.json()]

    async def attach(self, container: str) -> Attachment:
        """Attach to a created container's stdout and stderr (before starting it: nothing is missed).

        On a connection of its own, not from this pool (see :class:`Attachment`).
        """
        return await Attachment.open(self.socket, container, self.timeout)


_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_HOST_PART = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
_REFERENCE = re.compile(
    rf"(?:{_HOST_PART}(?:\.{_HOST_PART})*(?::[0-9]+)?/)?{_COMPONENT}(?:/{_COMPONENT})*"
    r"(?::\w[\w.-]{0,127})?(?:@[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[0-9a-fA-F]{32,})?"
)


def valid_reference(image: str) -> bool:
    """Whether ``image`` is an image reference by Docker's grammar: ``[registry/]name[:tag][@digest]``.

    Checked before asking the engine, which answers a malformed one with an error
    status that differs between engines (Podman: 500, as if it had failed itself).
    """
    return len(image) <= 512 and _REFERENCE.fullmatch(image) is not None


def split_reference(image: str) -> tuple[str, str | None]:
    """``(repository, tag)`` of an image reference for a pull; tag None for a ``@digest``.

    Without a tag the engine would pull every tag of the repository, so "latest" is
    made explicit, as ``docker pull`` does.
    """
    if "@" in image:
        return image, None
    repo, colon, tag = image.rpartition(":")
    if colon and "/" not in tag:
        return repo, tag
    return image, "latest"


def error_message(response: httpx.Response) -> str:
    """The engine's ``message`` from an error answer (JSON), else its text, else its status."""
    return _message_of(response.content, response.status_code)


def _progress_error(line: str) -> str | None:
    """The error of one JSON line of a pull's progress, if it reports one."""
    line = line.strip()
    if not line:
        return None
    try:
        event = json.loads(line)
    except ValueError:
        return None
    if not isinstance(event, dict):
        return None
    error = event.get("error") or (event.get("errorDetail") or {}).get("message")
    return str(error) if error else None


@dataclass(frozen=True, slots=True)
class DockerStatus:
    """What a node can tell of its Docker engine.

    ``available``: the engine answered ``/_ping`` (then the node may advertise
    ``executor.docker=1``). ``images``: the repo tags it holds (``name:tag``, sorted;
    empty when not available). ``api_version``: the engine's API version. ``reason``:
    why it is not available (None when it is), for logs and ``/status``.
    """

    available: bool
    socket: str
    images: tuple[str, ...] = ()
    api_version: str = ""
    reason: str | None = None


async def docker_status(host: str | None = None, *, timeout: float = 5.0) -> DockerStatus:
    """Probe the engine at ``host`` (a ``DOCKER_HOST`` value; None reads ``DOCKER_HOST``).

    Never raises for an engine that is absent, slow or broken: the answer says so,
    within ``timeout`` seconds overall. Cheap enough to call at start-up and now and
    then after (two requests on a fresh connection).
    """
    try:
        socket = socket_path(host)
    except DockerError as exc:
        return DockerStatus(False, host or "", reason=str(exc))
    if not os.path.exists(socket):
        return DockerStatus(False, socket, reason=f"no Docker engine socket at {socket}")
    with trio.move_on_after(timeout if timeout > 0 else math.inf) as scope:
        try:
            async with Engine(socket, timeout=timeout) as engine:
                version = await engine.ping()
                images = await engine.images()
        except DockerError as exc:
            return DockerStatus(False, socket, reason=str(exc))
        except ValueError as exc:  # not JSON: not a Docker engine on that socket
            return DockerStatus(False, socket, reason=f"the answer at {socket} is not the Docker Engine API: {exc}")
        return DockerStatus(True, socket, tuple(images), version)
    assert scope.cancelled_caught
    return DockerStatus(False, socket, reason=f"the Docker engine at {socket} did not answer within {timeout} s")
