"""Every route of the node's app refuses an unsigned request, except a short list of open ones.

The routes are read from the app itself (tests/httpfuzz.py app_routes walks
``create_app(...).routes``, every method, HEAD included), not from a list kept by
hand: a route added to create_app without a signature check fails
:func:`test_every_route_but_the_open_ones_refuses_an_unsigned_request`, and an
open route that is gone or needs a key fails :func:`test_the_open_routes_are_open`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from pathlib import Path
from typing import Any

import httpx
import pytest

from mesh import codec
from mesh.cas.digest import Digest
from mesh.cas.snapshot import ingest
from mesh.cas.store import LocalStore
from mesh.wire.auth import MeshKey, load_key
from mesh.wire.client import MeshAuth, NodeClient
from tests.httpfuzz import AppRoute, app_routes, record
from tests.nodeutil import NodeProcess, wait_for

#: The routes anyone may call, and why each is open. Nothing else is.
OPEN = {
    "/": "the UI's overview: open, it reads /status (counts); with a session (mesh ui) the details",
    "/ui/assets/app.js": "the UI's script: static, no data",
    "/ui/assets/app.css": "the UI's style: static, no data",
    "/health": "liveness, for `mesh up`'s own readiness wait, clients and load balancers",
    "/status": "node facts and counts for the dashboard (details stay behind the key: issue 13 item 4)",
    "/metrics": "Prometheus scrapes it without the key: counts only",
    "/v1/projects/{name}/badge.svg": "a project's badge, embedded in READMEs: only its latest build's state",
    "/v1/hooks/{name}": "a forge's webhook: it cannot sign with the mesh key; the project's webhook secret checks it",
}
#: The open routes that take a POST (every other open route is a GET).
OPEN_POST = {"/v1/hooks/{name}"}
#: Metrics that move only when something is done: stored, run, given, learnt.
WATCHED = (
    "mesh_store_blobs_written_total",
    "mesh_jobs",
    "mesh_tasks_run_total",
    "mesh_tasks_given_total",
    "mesh_peers",
)


def test_the_open_routes_are_open(node: NodeProcess) -> None:
    """Each open route is a route of the app, and answers 200 without the key (a project's
    badge and hook: once the project exists, which takes the key; the hook to a ping signed
    with the project's webhook secret)."""
    served = {(r.method, r.path) for r in app_routes()}
    secret = b"the webhook secret"
    with NodeClient(node.url, key=load_key(node.home)) as client:
        project = {"name": "demo", "url": "https://git.example/demo.git", "secret": secret.decode()}
        client.request("POST", "/v1/projects", body=project)
    ping = b'{"zen": "Design for failure.", "hook_id": 1}'
    hook_headers = {
        "x-github-event": "ping",
        "x-github-delivery": "d-1",
        "x-hub-signature-256": "sha256=" + hmac.new(secret, ping, hashlib.sha256).hexdigest(),
    }
    for path in OPEN:
        method = "POST" if path in OPEN_POST else "GET"
        assert (method, path) in served, f"{path} is listed as open but the app has no {method} route for it"
        url = node.url + path.replace("{name}", "demo")
        if method == "POST":
            response = httpx.post(url, content=ping, headers=hook_headers, trust_env=False)
        else:
            response = httpx.get(url, trust_env=False)
        assert response.status_code == 200, (path, response.status_code, response.text[:300])


@pytest.fixture
def world(node: NodeProcess, home: Path, tmp_path: Path) -> dict[str, Any]:
    """What an unsigned request could change: a running job (to cancel), a blob the node lacks
    (to store), a snapshot (to run a job on), a peer it has not heard of (to learn)."""
    src = tmp_path / "input"
    src.mkdir()
    (src / "f").write_text("x\n")
    with LocalStore(home / "cas") as store:
        snapshot = str(ingest(store, src))
    blob = secrets.token_bytes(100)
    key = load_key(node.home)
    with NodeClient(node.url, key=key) as client:
        running = client.submit(
            {"tasks": [{"name": "sleep", "argv": ["sleep", "600"], "input": snapshot}], "no_cache": True}
        )["id"]
        wait_for(lambda: client.job(running)["tasks"][0]["state"] == "running", what="the sleep task to run")
    job = {"tasks": [{"name": "t", "argv": ["true"], "input": snapshot}], "no_cache": True}
    member = {"node": "peer-unknown", "url": "http://127.0.0.1:1", "incarnation": 1}
    peer = member["url"]
    return {
        "digest": Digest.of(blob),
        "job_id": running,
        "bodies": {
            ("POST", "/v1/jobs"): codec.encode(job),
            ("PUT", "/v1/blobs/{digest}"): blob,
            ("POST", "/v1/blobs:upload"): record(str(Digest.of(blob)), blob),
            ("POST", "/v1/blobs:missing"): codec.encode({"digests": [str(Digest.of(blob))]}),
            ("POST", "/v1/blobs:download"): codec.encode({"digests": [snapshot]}),
            ("POST", "/v1/gossip"): codec.encode({"from": "peer-unknown", "members": [member]}),
            ("POST", "/v1/steal"): codec.encode({"thief": "http://127.0.0.1:1", "slots": 1}),
            ("POST", "/v1/cache:lookup"): codec.encode({"keys": [str(Digest.of(blob))]}),
            ("POST", "/v1/cache:claim"): codec.encode({"key": str(Digest.of(blob)), "holder": peer, "ttl": 60.0}),
            ("POST", "/v1/cache:release"): codec.encode(
                {"key": str(Digest.of(blob)), "holder": peer, "succeeded": False}
            ),
        },
    }


def _state(node: NodeProcess, world: dict[str, Any]) -> dict[str, Any]:
    """What the node holds and has done, as far as the requests of the test could change it."""
    with NodeClient(node.url, key=load_key(node.home)) as client:
        jobs = [(j["id"], j["state"]) for j in client.jobs(limit=1000)["jobs"]]
        tasks = [t["state"] for t in client.job(world["job_id"])["tasks"]]
        missing = client.find_missing([world["digest"]])
    metrics = httpx.get(node.url + "/metrics", trust_env=False).text.splitlines()
    watched = sorted(line for line in metrics if line.startswith(WATCHED))
    return {"jobs": jobs, "sleep task": tasks, "blob missing": missing, "metrics": watched}


def _fill(route: AppRoute, world: dict[str, Any]) -> str:
    values = {"digest": str(world["digest"]), "job_id": world["job_id"]}
    path = route.path
    for name in route.params:
        path = path.replace("{" + name + "}", values.get(name, "0"))
    return path


def _send(node: NodeProcess, route: AppRoute, world: dict[str, Any], key: MeshKey | None) -> httpx.Response:
    """The request ``route`` serves, signed with ``key`` (None: unsigned)."""
    return httpx.request(
        route.method,
        node.url + _fill(route, world),
        content=world["bodies"].get((route.method, route.path), b""),  # no body where the route takes none
        headers={"content-type": "application/cbor"},
        auth=None if key is None else MeshAuth(key),
        trust_env=False,
    )


def test_every_route_but_the_open_ones_refuses_an_unsigned_request(node: NodeProcess, world: dict[str, Any]) -> None:
    """Each (method, route) of the app not in OPEN answers 401 to the request it serves, sent
    without the x-mesh-* headers or signed with another mesh's key, and none of those changed
    anything; signed with the node's key, it is not refused for its signature."""
    guarded = [r for r in app_routes() if r.path not in OPEN]
    assert len(guarded) >= 15, f"only {len(guarded)} routes found: is the walk of the app's routes broken?"
    before = _state(node, world)
    let_through = []
    for route in guarded:
        for key, says in ((None, "unsigned request"), (MeshKey.generate(), "bad signature")):
            response = _send(node, route, world, key)
            if response.status_code != 401:
                let_through.append(
                    f"{route.method} {route.path} ({says}) -> {response.status_code} {response.content[:200]!r}"
                )
            elif route.method != "HEAD":
                assert says in codec.decode(response.content)["error"], (route, response.content)
    assert not let_through, (
        "routes that answer a request without the key (sign-check them, or list them in OPEN):\n"
        + ("\n".join(let_through))
    )
    assert _state(node, world) == before
    key = load_key(node.home)
    assert key is not None
    with NodeClient(node.url, key=key) as client:
        client.cancel(world["job_id"])  # its event stream then ends, whatever the order of the routes
    for route in guarded:
        response = _send(node, route, world, key)
        assert response.status_code != 401, (route, response.content[:300])
