"""A real node refuses requests not signed with its mesh key, or for another node, or replayed, and
changes nothing for them; what it answers without the key shows counts and node facts only."""

from __future__ import annotations

import os
import secrets
import socket
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from starlette.routing import Route

from mesh import codec
from mesh.api.app import create_app
from mesh.cas.snapshot import ingest
from mesh.cas.store import LocalStore
from mesh.wire.auth import MeshKey, load_key, sign
from mesh.wire.client import NodeClient
from tests.nodeutil import NodeProcess


@pytest.fixture
def job(home: Path, tmp_path: Path) -> bytes:
    src = tmp_path / "input"
    src.mkdir()
    (src / "f").write_text("x\n")
    with LocalStore(home / "cas") as store:
        snapshot = str(ingest(store, src))
    return codec.encode({"tasks": [{"name": "t", "argv": ["true"], "input": snapshot}], "no_cache": True})


def job_count(node: NodeProcess) -> int:
    with NodeClient(node.url, key=load_key(node.home)) as client:
        return len(client.jobs()["jobs"])


def post(node: NodeProcess, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(
        node.url + "/v1/jobs", content=body, headers={"content-type": "application/cbor", **headers}, trust_env=False
    )


def test_health_and_status_stay_open(node: NodeProcess) -> None:
    for path in ("/health", "/status"):
        response = httpx.get(node.url + path, trust_env=False)
        assert response.status_code == 200
    key = load_key(node.home)
    assert key is not None and httpx.get(node.url + "/health", trust_env=False).json()["mesh"] == key.mesh_id
    assert os.stat(os.path.join(node.home, "mesh.key")).st_mode & 0o077 == 0


def test_unsigned_forged_replayed_and_stale_requests_are_refused(node: NodeProcess, job: bytes) -> None:
    key = load_key(node.home)
    assert key is not None
    before = job_count(node)

    unsigned = post(node, job, {})
    assert unsigned.status_code == 401 and "unsigned request" in codec.decode(unsigned.content)["error"]

    forged = post(node, job, sign(MeshKey.generate(), "POST", "/v1/jobs", job, authority=node.addr))
    assert forged.status_code == 401 and "bad signature" in codec.decode(forged.content)["error"]

    tampered = post(node, job + b"", sign(key, "POST", "/v1/jobs", b"another body", authority=node.addr))
    assert tampered.status_code == 401 and "body digest" in codec.decode(tampered.content)["error"]

    stale = post(node, job, sign(key, "POST", "/v1/jobs", job, authority=node.addr, now=1_000_000))
    assert stale.status_code == 401 and "stale" in codec.decode(stale.content)["error"]

    assert job_count(node) == before  # nothing above caused work

    headers = sign(key, "POST", "/v1/jobs", job, authority=node.addr)
    assert post(node, job, headers).status_code == 201
    replayed = post(node, job, headers)
    assert replayed.status_code == 401 and "replayed" in codec.decode(replayed.content)["error"]
    assert job_count(node) == before + 1


def test_metrics_are_open_and_in_prometheus_text_format(node: NodeProcess, job: bytes) -> None:
    key = load_key(node.home)
    assert key is not None
    with NodeClient(node.url, key=key) as client:
        for _ in client.submit_and_follow(codec.decode(job)):
            pass
    response = httpx.get(node.url + "/metrics", trust_env=False)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    samples = {}
    for line in response.text.splitlines():
        if line.startswith("#"):
            assert line.startswith(("# HELP mesh_", "# TYPE mesh_"))
            continue
        name, value = line.rsplit(" ", 1)
        samples[name] = float(value)
    assert samples["mesh_slots"] == 2
    assert samples["mesh_tasks_run_total"] == 1
    assert samples['mesh_jobs{state="succeeded"}'] == 1
    assert samples['mesh_peers{state="alive"}'] == 0


def test_the_dashboard_is_served_and_status_has_what_it_shows(node: NodeProcess) -> None:
    page = httpx.get(node.url + "/", trust_env=False)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert b"<title>mesh</title>" in page.content and b'src="/ui/assets/app.js"' in page.content
    script = httpx.get(node.url + "/ui/assets/app.js", trust_env=False)  # the page's script reads /status
    assert script.status_code == 200 and b'get("/status"' in script.content
    status = httpx.get(node.url + "/status", trust_env=False).json()
    fields = ("node", "version", "mesh", "uptime", "slots", "queue", "running_jobs", "cache", "peers", "jobs")
    for field in (*fields, "executors", "stealing"):
        assert field in status, field
    assert {"busy", "total"} <= set(status["slots"]) and {"entries", "hits"} <= set(status["cache"])
    assert {"default", "offered"} <= set(status["executors"]) and {"stolen", "given"} <= set(status["stealing"])
    assert b"s.executors.offered" in script.content and b"s.stealing.stolen" in script.content
    assert set(status["jobs"]) == {"counts"} and b"s.jobs.counts" in script.content  # recent jobs need the key


def test_open_endpoints_show_no_argv_env_file_names_or_output(node: NodeProcess, tmp_path: Path) -> None:
    """A secret passed in argv and env, held in a file name, printed by the task and in a project's
    URL and webhook secret, appears in no answer to an unsigned request, on any route of the app;
    a signed /status shows it."""
    secret = "hunter2-" + secrets.token_hex(8)
    src = tmp_path / "src"
    src.mkdir()
    (src / f"{secret}.txt").write_text(secret)
    done = node.mesh(
        "exec", "--env", f"TOKEN={secret}", "--", "sh", "-c", f"echo {secret}; ls; echo $TOKEN >&2", cwd=str(src)
    )
    assert done.returncode == 0 and secret.encode() in done.stdout, done.stderr
    with NodeClient(node.url, key=load_key(node.home)) as client:
        job = client.jobs()["jobs"][0]
        status = client.job(job["id"])
        stdout = status["tasks"][0]["result"]["stdout"]
        assert secret in client.status()["jobs"]["recent"][0]["label"]  # signed: the details
        project = {"name": "demo", "url": f"https://git.example/{secret}.git", "secret": secret}
        client.request("POST", "/v1/projects", body=project)  # its badge is open; its URL and secret are not
    answers = {}
    for path in ("/", "/health", "/status", "/status?format=json", "/metrics"):
        for accept in ("application/json", "application/cbor", "*/*"):
            response = httpx.get(node.url + path, headers={"accept": accept}, trust_env=False)
            assert response.status_code == 200, (path, response.content)
            answers[f"GET {path} ({accept})"] = response.content
    app = create_app(cast(Any, None))  # the routes only: every one, so a new route is looked at too
    for route in app.routes:
        assert isinstance(route, Route) and route.methods
        path = route.path.replace("{job_id}", job["id"]).replace("{digest}", stdout).replace("{name}", "demo")
        for method in sorted(route.methods - {"HEAD"}):
            response = httpx.request(method, node.url + path, trust_env=False)
            # A project's hook is open (its webhook secret signs it): an empty POST names no event (400).
            refused = (400, 401) if path.startswith("/v1/hooks/") else (401,)
            assert response.status_code in (200, *refused), (method, path, response.status_code)
            answers[f"{method} {path}"] = response.content
    leaks = [what for what, content in answers.items() if secret.encode() in content]
    assert not leaks, leaks


def test_a_signature_captured_for_one_node_is_refused_by_another(tmp_path: Path) -> None:
    key = MeshKey.generate()
    a, b = (NodeProcess(str(tmp_path / name), env={"MESH_KEY": key.text()}).start() for name in "ab")
    try:
        captured = {"host": a.addr, **sign(key, "GET", "/v1/jobs", b"", authority=a.addr)}
        at_b = httpx.get(b.url + "/v1/jobs", headers=captured, trust_env=False)
        assert at_b.status_code == 401, at_b.content
        message = codec.decode(at_b.content)["error"]
        assert f"addressed to {a.addr}, which is not this node" in message
        assert "--advertise" in message
        moved = httpx.get(b.url + "/v1/jobs", headers={**captured, "host": b.addr}, trust_env=False)
        assert moved.status_code == 401 and "bad signature" in codec.decode(moved.content)["error"]
        assert httpx.get(a.url + "/v1/jobs", headers=captured, trust_env=False).status_code == 200  # it was good
    finally:
        a.stop()
        b.stop()


def test_a_request_replayed_after_a_restart_is_refused(node: NodeProcess) -> None:
    key = load_key(node.home)
    assert key is not None
    captured = {"host": node.addr, **sign(key, "GET", "/v1/jobs", b"", authority=node.addr)}
    assert httpx.get(node.url + "/v1/jobs", headers=captured, trust_env=False).status_code == 200
    node.kill()  # no chance to save anything on the way out
    node.start()
    replayed = httpx.get(node.url + "/v1/jobs", headers=captured, trust_env=False)
    assert replayed.status_code == 401 and "replayed" in codec.decode(replayed.content)["error"]
    fresh = {"host": node.addr, **sign(key, "GET", "/v1/jobs", b"", authority=node.addr)}
    assert httpx.get(node.url + "/v1/jobs", headers=fresh, trust_env=False).status_code == 200


@pytest.mark.parametrize(
    "change",
    [
        {"x-mesh-time": "9" * 400},
        {"x-mesh-time": "1e9"},
        {"x-mesh-time": "-5"},
        {"x-mesh-nonce": "AB" * 16},
        {"x-mesh-nonce": "ab" * 2000},
        {"x-mesh-body": "nope"},
        {"x-mesh-signature": "zz" * 32},
        {"x-mesh-peer": "yes"},
        {"x-mesh-bogus": "1"},
        {"host": "127.0.0.1:99999"},
        {"host": "a b"},
    ],
)
def test_malformed_auth_headers_get_a_4xx_before_the_body_is_read(node: NodeProcess, change: dict[str, str]) -> None:
    """Each request announces a 10 MB body it never sends: the answer comes without it."""
    key = load_key(node.home)
    assert key is not None
    for method, path in (("GET", "/v1/jobs"), ("GET", "/status"), ("POST", "/v1/jobs")):
        headers = {"host": node.addr, **sign(key, method, path, b"", authority=node.addr), **change}
        if method == "POST":
            headers["content-length"] = str(10 << 20)
        head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        with socket.create_connection(("127.0.0.1", node.port), timeout=10) as conn:
            conn.sendall(head.encode("latin-1"))
            answer = conn.recv(65536)
        status = int(answer.split(b" ", 2)[1])
        assert status in (400, 401), (method, path, change, answer[:500])
    assert httpx.get(node.url + "/health", trust_env=False).status_code == 200
