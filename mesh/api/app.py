"""The node's HTTP API as a Starlette app (served by hypercorn on trio; see mesh.node).

| path | what |
| --- | --- |
| ``GET /``, ``/ui/...`` | the web UI (mesh.api.ui; its login, ``POST /v1/ui/logins``, and logout too) |
| ``GET /health`` | JSON: ok, node id, version, store id |
| ``GET /status`` | JSON: node, uptime, slots, queue, job counts, watches, peers; signed or a session: recent jobs too |
| ``GET /metrics`` | Prometheus text: slots, queue, jobs, cache, store, peers, builds |
| ``POST /v1/blobs:missing`` | CBOR ``{"digests": [...]}`` -> ``{"missing": [...]}`` |
| ``POST /v1/blobs:upload`` | batched upload (see mesh.wire.formats) |
| ``PUT/GET /v1/blobs/{digest}`` | one blob's raw bytes, verified on the way in |
| ``POST /v1/jobs`` | submit a job (mesh.sched.jobs); ``?follow=1`` streams its events; 507 if it cannot be recorded |
| ``GET /v1/jobs`` | jobs newest first: ``?limit=&before=&state=``; ``next`` pages on |
| ``GET /v1/jobs/{id}`` | a job with its tasks, states, results; ``recorded``: false while changes wait to be written |
| ``POST /v1/jobs/{id}/cancel`` | cancel a job (kills its running tasks); 507 if it cannot be recorded |
| ``GET /v1/jobs/{id}/events`` | its events from ``?from=N``, live until it finishes; ``&wait=0``: those there now |
| ``POST /v1/projects``, ``GET /v1/projects`` | add a project (name, git URL, branch glob, webhook secret), list them |
| ``DELETE /v1/projects/{name}`` | remove a project and its builds (its numbers are never given again) |
| ``POST /v1/projects/{name}/builds`` | ``{"job", "commit", "trigger"}``: the next build (its number, job, path) |
| ``GET /v1/projects/{name}/builds`` | builds newest first with their states: ``?limit=&before=``; ``next`` pages on |
| ``GET /v1/projects/{name}/builds/{n}`` | a build: state, commit, trigger, steps (node, cached, timings, exit codes) |
| ``GET /v1/projects/{name}/badge.svg`` | open: an SVG badge of the latest build's state, to embed |
| ``POST /v1/hooks/{name}`` | open: a forge's push, checked with the project's webhook secret, starts a build |
| ``POST /v1/watches``, ``POST/DELETE /v1/watches/{id}`` | a watcher registers, beats, stops (mesh.api.watches) |
| ``GET /files`` | signed or a UI session: the sorted files of every healthy watcher of the mesh (mesh.api.watches) |
| ``POST /v1/gossip`` | a peer's membership table in, ours out (mesh.cluster.gossip) |
| ``POST /v1/steal`` | an idle peer asks for queued tasks (mesh.sched.scheduler: work stealing) |
| ``POST /v1/cache:lookup`` | a peer asks for action-cache entries by key (mesh.cluster.actioncache) |
| ``POST /v1/cache:claim``, ``:release`` | a peer claims (releases) a cache key this node owns (mesh.cluster.inflight) |

The handlers marked ``@for_people`` also take a UI session instead of a signature
(mesh.api.sessions): the UI's reads, its log streams and its actions.

Handlers only translate between HTTP and the node's services (mesh.api.services):
validation lives in the model (mesh.sched.jobs), what it takes to accept a job in
mesh.cluster.intake, and errors are mapped to statuses in mesh.api.http.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from mesh import codec
from mesh.api import blobs, ui, watches
from mesh.api.http import (
    ApiError,
    authenticate,
    error_response,
    good_session,
    read_body,
    read_message,
    reply,
    signed,
    wants_json,
)
from mesh.api.services import NodeServices, services
from mesh.api.sessions import for_people
from mesh.cluster.actioncache import MAX_LOOKUP_BODY
from mesh.errors import MeshError
from mesh.pipelines.hooks import MAX_BODY
from mesh.sched.events import PACE
from mesh.sched.jobevents import JobEvent, to_wire
from mesh.sched.jobs import JOB_STATES, check_job_id, is_job_state, parse_job
from mesh.urls import peer_url
from mesh.wire.formats import EVENTS_CBOR, NDJSON, frame, to_json

#: Largest job submission, in bytes.
MAX_JOB_BODY = 16 << 20
#: Most jobs one listing returns.
MAX_PAGE = 1000
#: Largest webhook delivery read (413 above): mesh.pipelines.hooks refuses larger ones itself.
MAX_HOOK_BODY = MAX_BODY


async def health(request: Request) -> Response:
    answer = services(request).health()
    return JSONResponse(answer, status_code=200 if answer["ok"] else 503)


@for_people
async def status(request: Request) -> Response:
    """``GET /status``: counts and node facts for anyone; a signed request (it must be a good
    signature) or a UI session also gets the recent jobs, whose labels are command lines."""
    detailed = signed(request) or good_session(request) is not None
    if detailed:
        authenticate(request, await read_body(request, 0))
    return JSONResponse(services(request).status(detailed=detailed))


async def metrics(request: Request) -> Response:
    """``GET /metrics``: the node's counters for Prometheus (mesh.api.metrics)."""
    return Response(generate_latest(services(request).metrics), media_type=CONTENT_TYPE_LATEST)


async def submit_job(request: Request) -> Response:
    """``POST /v1/jobs``: a client's job (or, with ``?offer=1``, a task a peer offers)."""
    jobs = services(request).jobs
    spec = parse_job(await read_message(request, MAX_JOB_BODY), default_executor=jobs.default_executor)
    if request.query_params.get("offer") == "1":
        job_id = await jobs.take_offer(spec, request.query_params.get("source"))
    else:
        job_id = await jobs.submit(spec)
    if request.query_params.get("follow") in ("1", "true"):
        return _event_stream(request, job_id, 0)
    return reply(request, jobs.status(job_id), status=201)


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


@for_people
async def list_jobs(request: Request) -> Response:
    limit = _int_param(request, "limit", 50, 1, MAX_PAGE)
    before = _int_param(request, "before", None, 1, 2**62)
    state = request.query_params.get("state")
    if state is not None and not is_job_state(state):
        raise ApiError(400, f"state must be one of {', '.join(JOB_STATES)}, not {state!r}")
    assert limit is not None
    authenticate(request, await read_body(request, 0))
    jobs, next_page = services(request).jobs.page(limit, before, state)
    return reply(request, {"jobs": jobs, "next": next_page})


@for_people
async def get_job(request: Request) -> Response:
    job_id = check_job_id(request.path_params["job_id"])
    authenticate(request, await read_body(request, 0))
    return reply(request, services(request).jobs.status(job_id))


@for_people
async def cancel_job(request: Request) -> Response:
    jobs = services(request).jobs
    job_id = check_job_id(request.path_params["job_id"])
    authenticate(request, await read_body(request, 0))
    jobs.cancel(job_id)
    return reply(request, jobs.status(job_id))


@for_people
async def rerun_job(request: Request) -> Response:
    """``POST /v1/jobs/ID/rerun``: ``{"task"?: NAME, "no_cache"?: bool}``: the job again, as a new
    job (every task, or that task with the inputs it had and what depends on it), and as its
    project's next build when it ran one: 201, ``{"job": NEW_ID, "build": BUILD | null}``."""
    job_id = check_job_id(request.path_params["job_id"])
    task, no_cache = _rerun_request(await read_message(request, MAX_RERUN_BODY, empty={}))
    answer = await services(request).projects.rerun_job(job_id, task, no_cache=no_cache)
    return reply(request, answer, status=201)


def _rerun_request(message: Any) -> tuple[str | None, bool]:
    """The task and no_cache of a re-run's body (an empty map: the whole job, with the cache)."""
    fields = codec.Fields(message, "a re-run")
    task, no_cache = fields.text("task", None), fields.flag("no_cache", False)
    fields.done()
    return task, no_cache


@for_people
async def job_events(request: Request) -> Response:
    job_id = check_job_id(request.path_params["job_id"])
    start = _int_param(request, "from", 0, 0, 2**62)
    assert start is not None
    wait = request.query_params.get("wait", "1")
    if wait not in ("0", "1"):
        raise ApiError(400, f"query parameter 'wait' must be 0 or 1, not {wait!r}")
    authenticate(request, await read_body(request, 0))
    services(request).jobs.status(job_id)  # 404 for an unknown job
    return _event_stream(request, job_id, start, wait=wait == "1")


def _event_stream(request: Request, job_id: str, start: int, *, wait: bool = True) -> Response:
    """The job's events from ``start``: live from its log, or a summary once the log is gone."""
    jobs = services(request).jobs
    log = jobs.events(job_id)
    as_json = wants_json(request)

    def encode(event: JobEvent) -> bytes:
        wire = to_wire(event)
        return to_json(wire) + b"\n" if as_json else frame(codec.encode(wire))

    async def stream() -> AsyncIterator[bytes]:
        if log is not None and not wait:  # what the log holds now (``mesh logs`` without -f)
            yield b"".join(encode(event) for event in log.events[start:])
            return
        if log is not None:
            async for batch in log.follow(start, pace=PACE):
                yield b"".join(encode(event) for event in batch)
            return
        # The node no longer holds this job's live log: summarise it from the database.
        for event in jobs.summary(job_id):
            yield encode(event)

    return StreamingResponse(stream(), media_type=NDJSON if as_json else EVENTS_CBOR)


#: Largest project registration, in bytes (a URL, a glob and a webhook secret).
MAX_PROJECT_BODY = 16 << 10
#: Largest body of a re-run request (a task name and a flag).
MAX_RERUN_BODY = 4 << 10


async def add_project(request: Request) -> Response:
    """``POST /v1/projects``: ``{"name", "url", "branch"?, "secret"?}`` (the webhook secret's text);
    answers the project as listed (the secret never comes back)."""
    fields = codec.Fields(await read_message(request, MAX_PROJECT_BODY), "a project")
    name, url = fields.text("name"), fields.text("url")
    branch, secret = fields.text("branch", "*"), fields.text("secret", None)
    fields.done()
    added = services(request).projects.add(name, url, branch, None if secret is None else secret.encode())
    return reply(request, added, status=201)


@for_people
async def list_projects(request: Request) -> Response:
    authenticate(request, await read_body(request, 0))
    return reply(request, {"projects": services(request).projects.all()})


async def remove_project(request: Request) -> Response:
    authenticate(request, await read_body(request, 0))
    services(request).projects.remove(request.path_params["name"])
    return reply(request, {"removed": request.path_params["name"]})


async def start_build(request: Request) -> Response:
    """``POST /v1/projects/NAME/builds``: ``{"job": JOB, "commit"?, "trigger", "branch"?,
    "notify"?}``: the job runs as the project's next build; answers its number, job id and path."""
    fields = codec.Fields(await read_message(request, MAX_JOB_BODY), "a build")
    projects = services(request).projects
    job, commit, trigger = fields.mapping("job"), fields.text("commit", None), fields.text("trigger")
    branch, notify = fields.text("branch", None), fields.sequence("notify", [])
    fields.done()
    spec = parse_job(job, default_executor=services(request).jobs.default_executor)
    build = await projects.start(request.path_params["name"], spec, commit, trigger, branch=branch, notify=notify)
    return reply(request, build, status=201)


@for_people
async def list_builds(request: Request) -> Response:
    limit = _int_param(request, "limit", 50, 1, MAX_PAGE)
    before = _int_param(request, "before", None, 1, 2**62)
    assert limit is not None
    authenticate(request, await read_body(request, 0))
    builds, next_page = services(request).projects.page(request.path_params["name"], limit, before)
    return reply(request, {"builds": builds, "next": next_page})


@for_people
async def get_build(request: Request) -> Response:
    authenticate(request, await read_body(request, 0))
    return reply(request, services(request).projects.build(request.path_params["name"], _build_number(request)))


def _build_number(request: Request) -> int:
    number: str = request.path_params["number"]
    if not number.isdigit() or not 1 <= int(number) < 2**62:
        raise ApiError(400, f"a build number is a whole number from 1, not {number[:40]!r}")
    return int(number)


@for_people
async def rerun_build(request: Request) -> Response:
    """``POST /v1/projects/NAME/builds/N/rerun``: ``{"task"?: NAME, "no_cache"?: bool}``: build N
    again as the project's next build: 201, its number, job id and path."""
    task, no_cache = _rerun_request(await read_message(request, MAX_RERUN_BODY, empty={}))
    number = _build_number(request)
    build = await services(request).projects.rerun(request.path_params["name"], number, task, no_cache=no_cache)
    return reply(request, build, status=201)


async def project_badge(request: Request) -> Response:
    """``GET /v1/projects/NAME/badge.svg``: open (no key), to be embedded; it shows only the
    latest build's state (mesh.pipelines.badge). Not cached by browsers: it changes per build."""
    svg = services(request).projects.badge(request.path_params["name"])
    return Response(svg, media_type="image/svg+xml", headers={"cache-control": "no-cache"})


async def hook(request: Request) -> Response:
    """``POST /v1/hooks/NAME``: a forge's webhook delivery (mesh.pipelines.hookintake). Open:
    the forge cannot sign with the mesh key; the project's webhook secret authenticates it.
    Answers are JSON, errors too: a forge shows them to a person as they are."""
    try:
        body = await read_body(request, MAX_HOOK_BODY)
        answer = await services(request).hooks.receive(request.path_params["name"], request.headers, body)
    except MeshError as exc:
        return error_response(request, exc, as_json=True)
    return JSONResponse(answer.body, status_code=answer.status)


async def gossip(request: Request) -> Response:
    """``POST /v1/gossip``: merge a peer's table, answer with ours (mesh.cluster.gossip)."""
    message = await read_message(request, 4 << 20)
    return reply(request, services(request).gossip(message))


async def steal(request: Request) -> Response:
    """``POST /v1/steal``: a peer with free slots, ``{"thief": URL, "slots": N}``, asks for
    queued tasks; they are offered to it at once; answers ``{"given": n}``."""
    fields = codec.Fields(await read_message(request, 4096), "a steal request")
    thief, slots = peer_url(fields.text("thief")), fields.integer("slots")  # InvalidUrl: 400
    fields.done()
    if not 1 <= slots <= 4096:
        raise ApiError(400, f"'slots' must be between 1 and 4096, not {slots}")
    return reply(request, {"given": services(request).jobs.give(thief, slots)})


async def cache_lookup(request: Request) -> Response:
    """``POST /v1/cache:lookup``: a peer asks which of ``keys`` this node's own action cache
    holds (mesh.cluster.actioncache); answered from the local cache only, with the blobs of
    small hits when it offers a budget (mesh.cluster.inline: read here on the loop, at most
    4 MiB, under a millisecond from the page cache)."""
    message = await read_message(request, MAX_LOOKUP_BODY)
    return reply(request, services(request).cache.answer_lookup(message))


async def cache_claim(request: Request) -> Response:
    """``POST /v1/cache:claim``: a peer about to run a cacheable action claims its key, which
    this node owns (mesh.cluster.inflight); a waiting claim is answered within seconds."""
    message = await read_message(request, 4096)
    return reply(request, await services(request).cache.answer_claim(message))


async def cache_release(request: Request) -> Response:
    """``POST /v1/cache:release``: the holder of a claim ran its action (mesh.cluster.inflight)."""
    message = await read_message(request, 4096)
    return reply(request, services(request).cache.answer_release(message))


async def _on_error(request: Request, exc: Exception) -> Response:
    return error_response(request, exc)


async def _not_found(request: Request, exc: Exception) -> Response:
    return reply(request, {"error": f"no such endpoint: {request.method} {request.url.path}"}, status=404)


async def _not_allowed(request: Request, exc: Exception) -> Response:
    return reply(request, {"error": f"{request.method} is not allowed on {request.url.path}"}, status=405)


def create_app(node: NodeServices) -> Starlette:
    """The ASGI app of one node, serving its ``node`` services."""
    routes = [
        Route("/", ui.overview, methods=["GET"]),
        *(Route(f"/ui/assets/{name}", ui.asset, methods=["GET"]) for name in ui.ASSETS),
        Route("/ui/login", ui.login, methods=["GET"]),
        Route("/ui/logout", ui.logout, methods=["POST"]),
        Route("/ui/{page:path}", ui.page, methods=["GET"]),
        Route("/v1/ui/logins", ui.new_login, methods=["POST"]),
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
        Route("/v1/jobs/{job_id}/rerun", rerun_job, methods=["POST"]),
        Route("/v1/projects", add_project, methods=["POST"]),
        Route("/v1/projects", list_projects, methods=["GET"]),
        Route("/v1/projects/{name}", remove_project, methods=["DELETE"]),
        Route("/v1/projects/{name}/builds", start_build, methods=["POST"]),
        Route("/v1/projects/{name}/builds", list_builds, methods=["GET"]),
        Route("/v1/projects/{name}/builds/{number}", get_build, methods=["GET"]),
        Route("/v1/projects/{name}/builds/{number}/rerun", rerun_build, methods=["POST"]),
        Route("/v1/projects/{name}/badge.svg", project_badge, methods=["GET"]),
        Route("/v1/hooks/{name}", hook, methods=["POST"]),
        Route("/v1/watches", watches.register, methods=["POST"]),
        Route("/v1/watches/{watcher_id}", watches.beat, methods=["POST"]),
        Route("/v1/watches/{watcher_id}", watches.stop, methods=["DELETE"]),
        Route("/files", watches.files, methods=["GET"]),
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
    app.state.services = node
    return app
