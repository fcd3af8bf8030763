"""End to end: projects, their build numbers, history and badge on a real node with the real CLI.

A real ``mesh up`` on loopback (tests/nodeutil.py, MESH_MDNS=0) and the ``mesh`` CLI as a
subprocess: add, list and remove projects; two ``mesh run --project`` are builds #1 and #2
with their commits and states in ``mesh builds``/``mesh build`` and the history endpoints;
numbers survive a restart and are never given again (not even to a project added again);
the badge follows the latest build and is read without the key, and the other project
routes refuse what is not signed with the node's key.
"""

from __future__ import annotations

import http.server
import json
import subprocess
import threading
from pathlib import Path
from typing import Any

import httpx

from mesh import codec
from mesh.pipelines.badge import COLOURS
from mesh.wire.auth import MeshKey, load_key
from mesh.wire.client import MeshAuth, NodeClient
from tests.nodeutil import NodeProcess, wait_for

PIPELINE = """\
steps:
  - name: build
    run: cat src.txt
  - name: check
    depends_on: [build]
    run: test "$(cat src.txt)" = good
"""


def repository(tree: Path, content: str) -> str:
    """A git repository at ``tree`` with ``.mesh.yml`` and ``src.txt`` committed: its HEAD."""
    tree.mkdir(exist_ok=True)
    (tree / ".mesh.yml").write_text(PIPELINE)
    (tree / "src.txt").write_text(content + "\n")
    git = ["git", "-C", str(tree), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    if not (tree / ".git").exists():
        subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", content], check=True)
    return subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()


def mesh_json(node: NodeProcess, *args: str) -> Any:
    done = node.mesh(*args, "--json")
    assert done.returncode == 0, done.stderr.decode()
    return json.loads(done.stdout)


def badge(node: NodeProcess, name: str) -> str:
    response = httpx.get(f"{node.url}/v1/projects/{name}/badge.svg", trust_env=False)  # unsigned
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("image/svg+xml")
    return response.text


def test_projects_are_added_listed_and_removed(node: NodeProcess, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cret-value\n")
    done = node.mesh("project", "add", "web", "https://git.example/web.git", "--branch", "main")
    assert done.returncode == 0, done.stderr.decode()
    done = node.mesh("project", "add", "api", "https://git.example/api.git", "--webhook-secret-file", str(secret))
    assert done.returncode == 0, done.stderr.decode()
    listed = mesh_json(node, "project", "ls")
    assert [(p["name"], p["url"], p["branch"], p["webhook_secret"]) for p in listed] == [
        ("api", "https://git.example/api.git", "*", True),
        ("web", "https://git.example/web.git", "main", False),
    ]
    assert "s3cret" not in json.dumps(listed)  # the secret never comes back
    text = node.mesh("project", "ls")
    assert b"web  https://git.example/web.git  branch main" in text.stdout
    duplicate = node.mesh("project", "add", "web", "https://git.example/other.git")
    assert duplicate.returncode != 0 and b"exists already" in duplicate.stderr
    bad = node.mesh("project", "add", "../etc", "https://git.example/x.git")
    assert bad.returncode != 0 and b"not a project name" in bad.stderr
    assert node.mesh("project", "rm", "web").returncode == 0
    assert [p["name"] for p in mesh_json(node, "project", "ls")] == ["api"]
    gone = node.mesh("project", "rm", "web")
    assert gone.returncode != 0 and b"no project web on this node" in gone.stderr
    key = load_key(node.home)
    assert key is not None
    for method, path, body, status in (  # the API's statuses
        ("POST", "/v1/projects", {"name": "api", "url": "u"}, 409),
        ("POST", "/v1/projects", {"name": "a b", "url": "u"}, 400),
        ("GET", "/v1/projects/nope/builds", None, 404),
        ("GET", "/v1/projects/api/builds/1", None, 404),
        ("GET", "/v1/projects/api/builds/x", None, 400),
    ):
        content = b"" if body is None else codec.encode(body)
        response = httpx.request(
            method,
            node.url + path,
            content=content,
            headers={"content-type": "application/cbor"},
            auth=MeshAuth(key),
            trust_env=False,
        )
        assert response.status_code == status, (path, response.status_code, response.content)


def test_runs_of_a_project_are_numbered_remembered_and_badged(node: NodeProcess, tmp_path: Path) -> None:
    tree = tmp_path / "repo"
    first = repository(tree, "good")
    assert node.mesh("project", "add", "demo", str(tree)).returncode == 0
    assert "no builds" in badge(node, "demo")
    one = node.mesh("run", "-C", str(tree), "--project", "demo")
    assert one.returncode == 0, one.stderr.decode()
    url = f"{node.url}/ui/builds/demo/1"  # its page in the web UI
    assert one.stderr.decode().count(f"build #1 of demo: {url}") == 2  # at the start and after the table
    page = httpx.get(url, headers={"accept": "text/html"}, trust_env=False)  # a person without a session
    assert page.status_code == 401 and "run <code>mesh ui</code>" in page.text, page.text[:300]
    wait_for(lambda: COLOURS["succeeded"] in badge(node, "demo"), what="a green badge after build #1")
    second = repository(tree, "bad")
    two = node.mesh("run", "-C", str(tree), "--project", "demo")
    assert two.returncode == 1, two.stderr.decode()  # the check step fails
    assert f"build #2 of demo: {node.url}/ui/builds/demo/2" in two.stderr.decode()
    wait_for(lambda: COLOURS["failed"] in badge(node, "demo"), what="a red badge after build #2")

    listed = mesh_json(node, "builds", "demo")["builds"]
    assert [(b["number"], b["commit"], b["state"], b["trigger"]) for b in listed] == [
        (2, second, "failed", "run"),
        (1, first, "succeeded", "run"),
    ]
    text = node.mesh("builds", "demo").stdout.decode()
    assert f"#2     failed     {second[:12]}" in text and f"#1     succeeded  {first[:12]}" in text
    build = mesh_json(node, "build", "demo", "2")
    assert (build["number"], build["commit"], build["state"]) == (2, second, "failed")
    steps = {step["name"]: step for step in build["steps"]}
    assert steps["build"]["result"]["exit_code"] == 0 and steps["check"]["result"]["exit_code"] == 1
    assert all(step["result"]["node"] and step["result"]["finished_at"] for step in steps.values())
    with NodeClient(node.url) as client:  # the history endpoints say the same; paged
        page = client.request("GET", "/v1/projects/demo/builds", params={"limit": 1})
        assert [b["number"] for b in page["builds"]] == [2] and page["next"] == 2
        page = client.request("GET", "/v1/projects/demo/builds", params={"limit": 1, "before": 2})
        assert [(b["number"], b["commit"]) for b in page["builds"]] == [(1, first)]
        assert client.request("GET", "/v1/projects/demo/builds/1")["state"] == "succeeded"
    wait_for(
        lambda: mesh_json(node, "build", "demo", "2")["finished_at"] is not None, what="build #2's end to be noted"
    )
    metrics = httpx.get(node.url + "/metrics", trust_env=False).text
    assert 'mesh_builds_total{project="demo",result="failed"} 1.0' in metrics
    assert 'mesh_builds_total{project="demo",result="succeeded"} 1.0' in metrics

    # Numbers survive a restart, and a project added again goes on from its last number.
    node.stop()
    node.start()
    assert [b["number"] for b in mesh_json(node, "builds", "demo")["builds"]] == [2, 1]
    repository(tree, "good")
    three = node.mesh("run", "-C", str(tree), "--project", "demo")
    assert three.returncode == 0 and b"build #3 of demo" in three.stderr, three.stderr.decode()
    wait_for(lambda: COLOURS["succeeded"] in badge(node, "demo"), what="a green badge after build #3")
    assert node.mesh("project", "rm", "demo").returncode == 0
    assert node.mesh("project", "add", "demo", str(tree)).returncode == 0
    assert mesh_json(node, "builds", "demo")["builds"] == []
    four = node.mesh("run", "-C", str(tree), "--project", "demo")
    assert four.returncode == 0 and b"build #4 of demo" in four.stderr, four.stderr.decode()


def test_the_project_routes_but_the_badge_refuse_what_is_not_signed(node: NodeProcess) -> None:
    key = load_key(node.home)
    assert key is not None
    with NodeClient(node.url) as client:
        client.request("POST", "/v1/projects", body={"name": "p", "url": "https://git.example/p.git"})
    targets = [
        ("POST", "/v1/projects"),
        ("GET", "/v1/projects"),
        ("DELETE", "/v1/projects/p"),
        ("POST", "/v1/projects/p/builds"),
        ("GET", "/v1/projects/p/builds"),
        ("GET", "/v1/projects/p/builds/1"),
    ]
    for method, path in targets:
        for auth in (None, MeshAuth(MeshKey.generate())):
            response = httpx.request(method, node.url + path, content=b"", auth=auth, trust_env=False)
            assert response.status_code == 401, (method, path, auth, response.text)
    with NodeClient(node.url) as client:
        assert [p["name"] for p in client.request("GET", "/v1/projects")["projects"]] == ["p"]
    assert "no builds" in badge(node, "p")
    assert httpx.get(f"{node.url}/v1/projects/nope/badge.svg", trust_env=False).status_code == 404


class _Receiver(http.server.BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802  (http.server's name)
        body = self.rfile.read(int(self.headers["content-length"]))
        self.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_a_builds_end_is_announced_to_its_pipelines_webhook_and_a_failed_one_recorded(
    node: NodeProcess, tmp_path: Path
) -> None:
    """The pipeline's ``notify`` goes with ``mesh run --project``: at the build's end the node
    posts to the webhook (a real HTTP server here), and an email it cannot send (this node has
    no SMTP server) is recorded on the build, whose state it does not change."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        tree = tmp_path / "repo"
        commit = repository(tree, "good")
        hook = f"http://127.0.0.1:{server.server_address[1]}/hook"
        notify = f"notify:\n  - webhook: {hook}\n    on: [always]\n  - email: team@example.com\n    on: [success]\n"
        (tree / ".mesh.yml").write_text(PIPELINE + notify)
        assert node.mesh("project", "add", "told", str(tree)).returncode == 0
        done = node.mesh("run", "-C", str(tree), "--project", "told")
        assert done.returncode == 0, done.stderr.decode()
        wait_for(lambda: _Receiver.received, what="the build's webhook notification")
        (sent,) = _Receiver.received
        assert (sent["project"], sent["number"], sent["status"], sent["commit"]) == ("told", 1, "succeeded", commit)
        assert sent["branch"] == "main" and sent["url"].endswith("/ui/builds/told/1") and sent["text"]
        wait_for(lambda: mesh_json(node, "build", "told", "1")["finished_at"], what="build #1's end to be noted")
        build = mesh_json(node, "build", "told", "1")
        assert build["state"] == "succeeded"
        (failure,) = build["notification_failures"]
        assert failure["target"] == "email team@example.com" and "smtp" in failure["error"].lower()
    finally:
        server.shutdown()
