"""The node's HTTP API as a Starlette app (served by hypercorn on trio; see mesh.node).

| path | what |
| --- | --- |
| ``GET /`` | the dashboard (mesh/web/index.html, reads /status) |
| ``GET /health`` | JSON: ok, node id, version, store id |
| ``GET /status`` | JSON: node, uptime, slots, queue, job counts, peers; signed: recent jobs too |
| ``GET /metrics`` | Prometheus text: slots, queue, jobs, cache, store, peers |
| ``POST /v1/blobs:missing`` | CBOR ``{"digests": [...]}`` -> ``{"missing": [...]}`` |
| ``POST /v1/blobs:upload`` | batched upload (see mesh.api.wire) |
| ``PUT/GET /v1/blobs/{digest}`` | one blob's raw bytes, verified on the way in |
| ``POST /v1/jobs`` | submit a job (mesh.sched.jobs); ``?follow=1`` streams its events; 507 if it cannot be recorded |
| ``GET /v1/jobs`` | jobs newest first: ``?limit=&before=&state=``; ``next`` pages on |
| ``GET /v1/jobs/{id}`` | a job with its tasks, states, results; ``recorded``: false while changes wait to be written |
| ``POST /v1/jobs/{id}/cancel`` | cancel a job (kills its running tasks); 507 if it cannot be recorded |
| ``GET /v1/jobs/{id}/events`` | its events from ``?from=N``, live until it finishes |
| ``POST /v1/gossip`` | a peer's membership table in, ours out (mesh.sched.gossip) |
| ``POST /v1/steal`` | an idle peer asks for queued tasks (mesh.sched.scheduler: work stealing) |
| ``POST /v1/cache:lookup`` | a peer asks for action-cache entries by key (mesh.cluster.actioncache) |
| ``POST /v1/cache:claim``, ``:release`` | a peer claims (releases) a cache key this node owns (mesh.cluster.inflight) |

Handlers only translate between HTTP and the node: validation lives in the
model (mesh.sched.jobs), errors are mapped in mesh.api.http.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from mesh import codec
from mesh.api import blobs
from mesh.api.http import (
    ApiError,
    authenticate,
    error_response,
    read_body,
    read_message,
    reply,
    signed,
    wants_json,
)
from mesh.api.metrics import metrics
from mesh.api.wire import EVENTS_CBOR, NDJSON, frame, to_json
from mesh.cas.digest import Digest
from mesh.cluster.actioncache import MAX_LOOKUP_BODY
from mesh.errors import InvalidUrl, MeshError
from mesh.sched.events import PACE
from mesh.sched.jobs import JOB_STATES, JobSpec, check_job_id, parse_job
from mesh.urls import peer_url

if TYPE_CHECKING:
    from mesh.node import Node

#: Largest job submission, in bytes.
MAX_JOB_BODY = 16 << 20
#: Most jobs one listing returns.
MAX_PAGE = 1000


def _node(request: Request) -> Node:
    node: Node = request.app.state.node
    return node


_DASHBOARD = Path(__file__).resolve().parent.parent / "web" / "index.html"


async def dashboard(request: Request) -> Response:
    """``GET /``: the status dashboard (a static page that reads /status)."""
    return HTMLResponse(_DASHBOARD.read_bytes())


async def health(request: Request) -> Response:
    answer = _node(request).health()
    return JSONResponse(answer, status_code=200 if answer["ok"] else 503)


async def status(request: Request) -> Response:
    """``GET /status``: counts and node facts for anyone; a signed request (it must be a good
    signature) also gets the recent jobs, whose labels are command lines."""
    detailed = signed(request)
    if detailed:
        authenticate(request, await read_body(request, 0))
    return JSONResponse(_node(request).status(detailed=detailed))


async def submit_job(request: Request) -> Response:
    node = _node(request)
    spec = parse_job(await read_message(request, MAX_JOB_BODY), default_executor=node.default_executor)
    if request.query_params.get("offer") == "1":
        await _accept_offer(request, spec)
    inputs = {t.input for t in spec.tasks if t.input is not None}  # often one for the whole job
    absent = sorted(str(d) for d in inputs if not node.store.has(d))
    for text in list(absent):  # an input a peer holds (made there, say): its root node is enough here
        root = Digest.parse(text)
        if await node.peering.fetch_from_peers(root, node.store):
            node.peering.partial.add(root)  # the rest is fetched if the task runs here
            absent.remove(text)
    if absent:
        raise ApiError(400, f"input snapshot {absent[0]} is not on this node; upload its blobs first")
    job_id = node.scheduler.submit(spec)
    if request.query_params.get("follow") in ("1", "true"):
        return _event_stream(request, job_id, 0)
    return reply(request, node.scheduler.job_status(job_id), status=201)


async def _accept_offer(request: Request, spec: JobSpec) -> None:
    """A peer offers a task (mesh.api.peer.TaskOffers): take it only with a free slot, after
    fetching the input's missing blobs from the offering node (``source``)."""
    node = _node(request)
    if not spec.pinned or len(spec.tasks) != 1:
        raise ApiError(400, "an offer is a pinned job of one task")
    if not node.scheduler.takes_offer():
        raise ApiError(409, "no free slot: offer the task to another node")
    source = request.query_params.get("source")
    if source is None:
        raise ApiError(400, "an offer names the offering node's URL in 'source'")
    try:
        source = peer_url(source)
    except InvalidUrl as exc:
        raise ApiError(400, f"an offer names the offering node's URL in 'source': {exc}") from None
    task = spec.tasks[0]
    if task.input is not None and not node.peering.is_complete(task.input, node.store):
        await node.peering.fetch_tree(source, task.input, node.store)
    node.scheduler.offer_arrived()  # submitted next: the task is in the queue from now on


def _int_param(request: Request, name: str, default: int | None, minimum: int, maximum: int) -> int | None:
    text = request.query_params.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ApiError(400, f"query parameter {name!r} must be an integer, not {text!r}") from None
    if not minimum <= value <= maximum:
        raise ApiError(400, f"query parameter {name!r} must be between {minimum} and {maximum}")
    return value


async def list_jobs(request: Request) -> Response:
    node = _node(request)
    limit = _int_param(request, "limit", 50, 1, MAX_PAGE)
    before = _int_param(request, "before", None, 1, 2**62)
    state = request.query_params.get("state")
    if state is not None and state not in JOB_STATES:
        raise ApiError(400, f"state must be one of {', '.join(JOB_STATES)}, not {state!r}")
    assert limit is not None
    authenticate(request, await read_body(request, 0))
    rows = node.scheduler.db.jobs(limit=limit, before=before, state=state)
    jobs = [row.to_wire() for row in rows]  # a job's row says "running" until it has finished
    next_page = rows[-1].seq if len(rows) == limit else None
    return reply(request, {"jobs": jobs, "next": next_page})


async def get_job(request: Request) -> Response:
    job_id = check_job_id(request.path_params["job_id"])
    authenticate(request, await read_body(request, 0))
    return reply(request, _node(request).scheduler.job_status(job_id))


async def cancel_job(request: Request) -> Response:
    node = _node(request)
    job_id = check_job_id(request.path_params["job_id"])
    authenticate(request, await read_body(request, 0))
    node.scheduler.cancel(job_id)
    return reply(request, node.scheduler.job_status(job_id))


async def job_events(request: Request) -> Response:
    job_id = check_job_id(request.path_params["job_id"])
    start = _int_param(request, "from", 0, 0, 2**62)
    assert start is not None
    authenticate(request, await read_body(request, 0))
    _node(request).scheduler.job_status(job_id)  # 404 for an unknown job
    return _event_stream(request, job_id, start)


def _event_stream(request: Request, job_id: str, start: int) -> Response:
    """The job's events from ``start``: live from its log, or a summary once the log is gone."""
    scheduler = _node(request).scheduler
    log = scheduler.events(job_id)
    as_json = wants_json(request)

    def encode(event: dict[str, Any]) -> bytes:
        return to_json(event) + b"\n" if as_json else frame(codec.encode(event))

    async def stream() -> AsyncIterator[bytes]:
        if log is not None:
            async for batch in log.follow(start, pace=PACE):
                yield b"".join(encode(event) for event in batch)
            return
        # The node no longer holds this job's live log: summarise it from the database.
        status = scheduler.job_status(job_id)
        seq = 0
        for task in status["tasks"]:
            yield encode(
                {
                    "seq": seq,
                    "type": "task_finished",
                    "task": task["name"],
                    "state": task["state"],
                    "reason": task["reason"],
                    "result": task["result"],
                    "summary": True,
                }
            )
            seq += 1
        yield encode({"seq": seq, "type": "job_finished", "job": job_id, "state": status["state"], "summary": True})

    return StreamingResponse(stream(), media_type=NDJSON if as_json else EVENTS_CBOR)


async def gossip(request: Request) -> Response:
    """``POST /v1/gossip``: merge a peer's table, answer with ours (mesh.sched.gossip)."""
    message = await read_message(request, 4 << 20)
    return reply(request, _node(request).peering.gossip.receive(message))


async def steal(request: Request) -> Response:
    """``POST /v1/steal``: a peer with free slots, ``{"thief": URL, "slots": N}``, asks for
    queued tasks; they are offered to it at once; answers ``{"given": n}``."""
    fields = codec.Fields(await read_message(request, 4096), "a steal request")
    thief, slots = peer_url(fields.text("thief")), fields.integer("slots")  # InvalidUrl: 400
    fields.done()
    if not 1 <= slots <= 4096:
        raise ApiError(400, f"'slots' must be between 1 and 4096, not {slots}")
    return reply(request, {"given": _node(request).scheduler.give(thief, slots)})


async def cache_lookup(request: Request) -> Response:
    """``POST /v1/cache:lookup``: a peer asks which of ``keys`` this node's own action cache
    holds (mesh.cluster.actioncache); answered from the local cache only."""
    message = await read_message(request, MAX_LOOKUP_BODY)
    return reply(request, _node(request).action_cache.answer(message))


async def cache_claim(request: Request) -> Response:
    """``POST /v1/cache:claim``: a peer about to run a cacheable action claims its key, which
    this node owns (mesh.cluster.inflight); a waiting claim is answered within seconds."""
    message = await read_message(request, 4096)
    return reply(request, await _node(request).claims.table.answer_claim(message))


async def cache_release(request: Request) -> Response:
    """``POST /v1/cache:release``: the holder of a claim ran its action (mesh.cluster.inflight)."""
    message = await read_message(request, 4096)
    return reply(request, _node(request).claims.table.answer_release(message))


async def _on_error(request: Request, exc: Exception) -> Response:
    return error_response(request, exc)


async def _not_found(request: Request, exc: Exception) -> Response:
    return reply(request, {"error": f"no such endpoint: {request.method} {request.url.path}"}, status=404)


async def _not_allowed(request: Request, exc: Exception) -> Response:
    return reply(request, {"error": f"{request.method} is not allowed on {request.url.path}"}, status=405)


def create_app(node: Node) -> Starlette:
    """The ASGI app of one node."""
    routes = [
        Route("/", dashboard, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/status", status, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/v1/blobs:missing", blobs.find_missing, methods=["POST"]),
        Route("/v1/blobs:upload", blobs.upload_batch, methods=["POST"]),
        Route("/v1/blobs:download", blobs.download_batch, methods=["POST"]),
        Route("/v1/blobs/{digest}", blobs.put_blob, methods=["PUT"]),
        Route("/v1/blobs/{digest}", blobs.get_blob, methods=["GET"]),
        Route("/v1/jobs", submit_job, methods=["POST"]),
        Route("/v1/jobs", list_jobs, methods=["GET"]),
        Route("/v1/jobs/{job_id}", get_job, methods=["GET"]),
        Route("/v1/jobs/{job_id}/cancel", cancel_job, methods=["POST"]),
        Route("/v1/jobs/{job_id}/events", job_events, methods=["GET"]),
        Route("/v1/gossip", gossip, methods=["POST"]),
        Route("/v1/steal", steal, methods=["POST"]),
        Route("/v1/cache:lookup", cache_lookup, methods=["POST"]),
        Route("/v1/cache:claim", cache_claim, methods=["POST"]),
        Route("/v1/cache:release", cache_release, methods=["POST"]),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={
            MeshError: _on_error,
            ClientDisconnect: _on_error,
            Exception: _on_error,
            404: _not_found,
            405: _not_allowed,
        },
    )
    app.state.node = node
    return app
