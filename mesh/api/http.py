"""HTTP plumbing of the API: bounded bodies, content negotiation, errors as messages.

Every failure a request can cause comes back as a status and ``{"error": ...}``
that says what was wrong: mesh's own exceptions are mapped here, in one place
(:func:`error_response`), and anything unexpected is logged on the node and
answered with a 500 that carries no traceback. A full disk, under the store or
under the state database (a submission or a cancel that cannot be recorded), is a
507 naming it and its free space.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from mesh import codec
from mesh.api.services import services
from mesh.api.sessions import COOKIE, CSRF_HEADER, SAFE_METHODS, Session, takes_sessions
from mesh.errors import (
    BlobNotFound,
    CodecError,
    CommitNotFound,
    DigestMismatch,
    DiskFull,
    GitError,
    HookTooLarge,
    HookUnauthorized,
    InvalidDigest,
    InvalidHook,
    InvalidJob,
    InvalidUrl,
    JobNotFound,
    MeshError,
    NoFreeSlot,
    PathNotFound,
    PipelineError,
    ProjectExists,
    ProjectNotFound,
    ProjectRefused,
    RerunRefused,
    SnapshotError,
    WatchConflict,
    WatchError,
    WatchNotFound,
)
from mesh.wire.auth import HEADERS, Admitted, AuthError, NotForThisNode, signed_headers
from mesh.wire.formats import CBOR, JSON, to_json

log = logging.getLogger("mesh.api")


class ApiError(MeshError):
    """A request the API refuses, with the status to answer and a message for a person."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


_STATUS: list[tuple[type[BaseException], int]] = [
    (ApiError, 0),
    (AuthError, 401),
    (JobNotFound, 404),
    (NoFreeSlot, 409),
    (ProjectNotFound, 404),
    (ProjectExists, 409),
    (ProjectRefused, 400),
    (BlobNotFound, 404),  # BlobDamaged too: the store quarantined it, and holds it no more
    (PathNotFound, 404),
    (DigestMismatch, 400),
    (InvalidDigest, 400),
    (RerunRefused, 409),  # before InvalidJob, of which it is a kind
    (InvalidJob, 400),
    (InvalidUrl, 400),
    (CodecError, 400),
    (SnapshotError, 422),
    (HookUnauthorized, 401),  # the forge's signature or token, under the project's webhook secret
    (HookTooLarge, 413),  # before InvalidHook, of which it is a kind
    (InvalidHook, 400),
    (PipelineError, 422),  # a pushed commit's .mesh.yml is missing or malformed: nothing started
    (CommitNotFound, 422),  # a pushed commit the project's repository does not have
    (GitError, 502),  # the project's repository could not be fetched: git's stderr says why
    (WatchConflict, 409),  # another live watcher claims the directory
    (WatchNotFound, 404),  # the watcher timed out or the node restarted: it registers again
    (WatchError, 409),  # the node has as many watchers as it takes
    (DiskFull, 507),  # Insufficient Storage: the store's or the state database's, named with its free space
]


def wants_json(request: Request) -> bool:
    return request.query_params.get("format") == "json" or JSON in request.headers.get("accept", "")


def reply(request: Request, value: Any, *, status: int = 200, as_json: bool = False) -> Response:
    """Answer with ``value`` as CBOR, or JSON when the client asked for it.

    An error answer to a request that carries a body closes the connection: the
    body may be unread (refused early), so the client must not reuse it. ``as_json``: JSON
    whatever the request asked (a forge's webhook delivery, which shows the answer to a person).
    """
    if as_json or wants_json(request):
        response = Response(to_json(value), status_code=status, media_type=JSON)
    else:
        response = Response(codec.encode(value), status_code=status, media_type=CBOR)
    if status >= 400 and (request.headers.get("content-length", "0") != "0" or "transfer-encoding" in request.headers):
        response.headers["connection"] = "close"
    return response


def error_response(request: Request, exc: BaseException, *, as_json: bool = False) -> Response:
    """The response for an exception raised while handling ``request`` (JSON if ``as_json``)."""
    if isinstance(exc, ClientDisconnect):
        message = "the client went away before the request body was complete"
        return reply(request, {"error": message}, status=400, as_json=as_json)
    for kind, status in _STATUS:
        if isinstance(exc, kind):
            code = exc.status if isinstance(exc, ApiError) else status
            return reply(request, {"error": str(exc)}, status=code, as_json=as_json)
    log.exception("internal error handling %s %s", request.method, request.url.path, exc_info=exc)
    message = f"internal error ({type(exc).__name__}); the node logged the details"
    return reply(request, {"error": message}, status=500, as_json=as_json)


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing (413) one longer than ``limit`` before reading past it."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise ApiError(413, f"request body of {declared} bytes exceeds the limit of {limit} bytes")
        except ValueError:
            raise ApiError(400, f"bad content-length {declared!r}") from None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, f"request body exceeds the limit of {limit} bytes")
    return bytes(body)


def admit(request: Request) -> Admitted | Session:
    """What can be checked of a request's signature before its body is read (mesh.wire.auth):
    the form of its headers, its host, its time. Raises AuthError (401).

    An unsigned request to a handler a person may call (mesh.api.sessions.for_people) may come
    with a UI session instead: its cookie, and its CSRF token unless it is a GET."""
    if not signed(request) and COOKIE in request.cookies and takes_sessions(request.scope.get("endpoint")):
        session = ui_session(request)
        assert session is not None
        if request.method not in SAFE_METHODS:
            services(request).sessions.check_csrf(session, request.headers.get(CSRF_HEADER))
        return session
    try:
        return services(request).verifier.admit(signed_headers(request.headers.items()))
    except AuthError as exc:
        raise _actionable(exc) from None


def authenticate(
    request: Request,
    body: bytes | None,
    *,
    content_addressed: bool = False,
    admitted: Admitted | Session | None = None,
) -> None:
    """Refuse (401) a request not signed with the mesh key, for another node, stale or replayed
    (mesh.wire.auth).

    ``body``: the bytes the request carried (b"" for none); None with
    ``content_addressed`` for blob uploads, whose bytes are verified by digest.
    ``admitted``: what :func:`admit` said before the body was read (a UI session: nothing
    more to check).
    """
    if admitted is None:
        admitted = admit(request)
    if isinstance(admitted, Session):
        return
    scope = request.scope
    target = (scope.get("raw_path") or scope["path"].encode()).decode("ascii", "replace")
    if scope.get("query_string"):
        target += "?" + scope["query_string"].decode("ascii", "replace")
    try:
        services(request).verifier.verify(admitted, request.method, target, body, content_addressed=content_addressed)
    except AuthError as exc:
        raise _actionable(exc) from None


def _actionable(exc: AuthError) -> AuthError:
    if isinstance(exc, NotForThisNode):
        return exc  # the key is fine; the message says what to do
    return AuthError(
        f"{exc} (a client needs this mesh's key: run `mesh key show` on a node and set MESH_KEY, "
        "or copy it to $MESH_HOME/mesh.key)"
    )


def ui_session(request: Request) -> Session | None:
    """The UI session whose cookie the request carries, None without one; AuthError (401) for
    a cookie that is forged, expired or logged out (mesh.api.sessions)."""
    cookie = request.cookies.get(COOKIE)
    return None if cookie is None else services(request).sessions.check(cookie)


def good_session(request: Request) -> Session | None:
    """The request's UI session if it carries a good one; None without one or with one that is
    forged, expired or logged out (for the open pages, which then show what anyone sees)."""
    try:
        return ui_session(request)
    except AuthError:
        return None


def signed(request: Request) -> bool:
    """Whether a request carries a signature (then it must be a good one)."""
    return any(name in request.headers for name in HEADERS)


async def read_message(request: Request, limit: int, *, empty: Any = None) -> Any:
    """Authenticate and decode a CBOR (or, with a JSON content type, JSON) message body of at
    most ``limit`` bytes. The signature's headers are checked before the body is read.
    ``empty``: what an empty body stands for (None: it is refused as malformed)."""
    admitted = admit(request)
    body = await read_body(request, limit)
    authenticate(request, body, admitted=admitted)
    if not body and empty is not None:
        return empty
    if request.headers.get("content-type", "").startswith(JSON):
        try:
            return json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise CodecError(f"malformed JSON: {exc}") from None
    return codec.decode(body)
