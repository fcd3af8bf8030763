"""HTTP handlers of watched directories (``mesh watch``) and of the mesh-wide ``/files``.

| path | what |
| --- | --- |
| ``POST /v1/watches`` | ``{"dir", "host", "pid"}``: register a watcher -> ``{"id", "beat", "timeout"}`` (409: taken) |
| ``POST /v1/watches/{id}`` | a beat, ``{"snapshot"?}`` with the directory's snapshot (404: register again) |
| ``DELETE /v1/watches/{id}`` | the watcher stops |
| ``GET /files`` | signed or a session: ``?from=&limit=&dir=`` -> ``{"files", "total", "next", "directories"}`` |

Every one needs the mesh key: file names can be sensitive, and a watcher changes what the
node pins and gossips. ``/files`` is also the web UI's (``/ui/files``), so a person's
session may read it instead (mesh.api.sessions.for_people). The node's logic is
mesh.watch.service; these only translate.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from mesh import codec
from mesh.api.http import ApiError, authenticate, read_body, read_message, reply
from mesh.api.services import services
from mesh.api.sessions import for_people
from mesh.cas.digest import Digest
from mesh.errors import CodecError
from mesh.watch.files import directories, in_directory, page

#: Most files one ``/files`` answer lists (and its default page); ``next`` says where the rest begins.
MAX_FILES_PAGE = 10_000


def _watcher_id(request: Request) -> str:
    text: str = request.path_params["watcher_id"]
    if not (len(text) == 20 and all(c in "0123456789abcdef" for c in text)):
        raise CodecError(f"{text[:40]!r} is not a watcher id (20 hex digits)")
    return text


async def register(request: Request) -> Response:
    fields = codec.Fields(await read_message(request, 16 << 10), "a watcher registration")
    directory, host, pid = fields.text("dir"), fields.text("host"), fields.integer("pid")
    fields.done()
    return reply(request, services(request).watches.register(directory, host, pid), status=201)


async def beat(request: Request) -> Response:
    fields = codec.Fields(await read_message(request, 4096), "a watcher's beat")
    watcher_id = _watcher_id(request)
    text = fields.text("snapshot", None)
    fields.done()
    snapshot = None if text is None else Digest.parse(text)  # InvalidDigest: 400
    return reply(request, services(request).watches.beat(watcher_id, snapshot))


async def stop(request: Request) -> Response:
    authenticate(request, await read_body(request, 0))
    watcher_id = _watcher_id(request)
    services(request).watches.remove(watcher_id)
    return reply(request, {"removed": watcher_id})


def _count(request: Request, name: str, default: int, maximum: int) -> int:
    text = request.query_params.get(name)
    if text is None:
        return default
    if not text.isdigit() or not 0 <= int(text) <= maximum:
        raise ApiError(400, f"query parameter {name!r} must be a whole number from 0 to {maximum}, not {text[:40]!r}")
    return int(text)


@for_people
async def files(request: Request) -> Response:
    """``GET /files``: the sorted files of every healthy watcher of the mesh, a page at a time;
    ``?dir=HOST:DIRECTORY`` keeps one watched directory's. ``directories`` lists every watched
    directory with its node and how many files it has (the whole mesh's, whatever ``dir``)."""
    start = _count(request, "from", 0, 2**62)
    limit = max(1, _count(request, "limit", MAX_FILES_PAGE, MAX_FILES_PAGE))
    where = request.query_params.get("dir")
    if where is not None and ":" not in where:
        raise ApiError(400, f"query parameter 'dir' is HOST:DIRECTORY, as `mesh files` prints it, not {where[:200]!r}")
    authenticate(request, await read_body(request, 0))
    rows = await services(request).watches.files()
    chosen = rows if where is None else in_directory(rows, where)
    return reply(request, {**page(chosen, start, limit), "directories": directories(rows)}, as_json=True)
