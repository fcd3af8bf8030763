"""A real node refuses requests not signed with its mesh key, and changes nothing for them."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from mesh import codec
from mesh.api.auth import MeshKey, load_key, sign
from mesh.api.client import NodeClient
from mesh.cas.snapshot import ingest
from mesh.cas.store import LocalStore
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

    forged = post(node, job, sign(MeshKey.generate(), "POST", "/v1/jobs", job))
    assert forged.status_code == 401 and "bad signature" in codec.decode(forged.content)["error"]

    tampered = post(node, job + b"", sign(key, "POST", "/v1/jobs", b"another body"))
    assert tampered.status_code == 401 and "body digest" in codec.decode(tampered.content)["error"]

    stale = post(node, job, sign(key, "POST", "/v1/jobs", job, now=1_000_000))
    assert stale.status_code == 401 and "stale" in codec.decode(stale.content)["error"]

    assert job_count(node) == before  # nothing above caused work

    headers = sign(key, "POST", "/v1/jobs", job)
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
    assert b"<title>mesh node</title>" in page.content and b'fetch("/status"' in page.content
    status = httpx.get(node.url + "/status", trust_env=False).json()
    fields = ("node", "version", "mesh", "uptime", "slots", "queue", "running_jobs", "cache", "peers", "jobs")
    for field in (*fields, "executors", "stealing"):
        assert field in status, field
    assert {"busy", "total"} <= set(status["slots"]) and {"entries", "hits"} <= set(status["cache"])
    assert {"default", "offered"} <= set(status["executors"]) and {"stolen", "given"} <= set(status["stealing"])
    assert b"s.executors.offered" in page.content and b"s.stealing.stolen" in page.content
    assert "recent" in status["jobs"]
