"""End to end: a forge's push to ``POST /v1/hooks/NAME`` builds the pushed commit on a real node.

A real ``mesh up`` on loopback (tests/nodeutil.py, MESH_MDNS=0), the real ``mesh`` CLI and real
git: a bare repository (a file path URL) holds a 3-step ``.mesh.yml`` (build, test, a failure
reaction); the project is added with a webhook secret; GitHub-format push deliveries (the
octokit example's shape, with the real commit) build #1 (green) and #2 (red, its reaction
runs), listed with their commits; a bad signature (401), a replayed delivery (202) and a ping
(200) start nothing; a commit without a ``.mesh.yml`` is answered 422 and its fixed redelivery
is taken.
"""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path
from typing import Any

import httpx

from mesh.pipelines.badge import COLOURS
from mesh.pipelines.hooks import MAX_BODY
from tests.nodeutil import NodeProcess, wait_for
from tests.test_hooks import _github, _octokit, _present

SECRET = b"the hook's secret, not the mesh key"

PIPELINE = """\
steps:
  - name: build
    run: cat src.txt
  - name: test
    depends_on: [build]
    run: test "$(cat src.txt)" = good
  - name: on-failure
    depends_on: [test]
    when: {status: [failure]}
    run: echo "test failed for $(cat src.txt)"
"""


class Repository:
    """A working tree that pushes to a bare repository, as a developer's clone does."""

    def __init__(self, root: Path) -> None:
        self.bare = root / "origin.git"
        self.tree = root / "work"
        subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(self.bare)], check=True)
        subprocess.run(["git", "init", "-q", "-b", "main", str(self.tree)], check=True)
        self.git("remote", "add", "origin", str(self.bare))

    def git(self, *args: str) -> str:
        command = ["git", "-C", str(self.tree), "-c", "user.name=t", "-c", "user.email=t@example.com", *args]
        return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()

    def push(self, files: dict[str, str], message: str) -> str:
        """Commit ``files`` (None-free contents) and push main: the new commit's id."""
        for name, text in files.items():
            (self.tree / name).write_text(text)
        self.git("add", "-A")
        self.git("commit", "-q", "-m", message)
        self.git("push", "-q", "origin", "main")
        return self.git("rev-parse", "HEAD")


def push_payload(commit: str, before: str, message: str) -> dict[str, Any]:
    """GitHub's push to refs/heads/main, the octokit example's body with our commit in it."""
    example = next(p for p in (_present(x.values[0]) for x in _octokit("push")) if p["ref"].startswith("refs/heads/"))
    payload = copy.deepcopy(example)
    payload.update(ref="refs/heads/main", before=before, after=commit)
    payload["head_commit"] = {**(payload.get("head_commit") or {}), "id": commit, "message": message}
    return payload


def deliver(
    node: NodeProcess, event: str, payload: dict[str, Any], delivery: str, secret: bytes = SECRET
) -> httpx.Response:
    """POST ``payload`` to the project's hook as GitHub does: unsigned by the mesh key."""
    headers, body = _github(event, payload, secret)
    headers["X-GitHub-Delivery"] = delivery
    return httpx.post(f"{node.url}/v1/hooks/demo", content=body, headers=headers, trust_env=False, timeout=60)


def mesh_json(node: NodeProcess, *args: str) -> Any:
    done = node.mesh(*args, "--json")
    assert done.returncode == 0, done.stderr.decode()
    return json.loads(done.stdout)


def ended(node: NodeProcess, number: int) -> dict[str, Any]:
    """Build ``number`` once its job has ended (a deadline, not a sleep)."""
    found: dict[str, Any] = {}

    def done() -> bool:
        found.update(mesh_json(node, "build", "demo", str(number)))
        return found["state"] not in ("running", "unknown")

    wait_for(done, timeout=120, what=f"build #{number} to end")
    return found


def badge(node: NodeProcess) -> str:
    response = httpx.get(f"{node.url}/v1/projects/demo/badge.svg", trust_env=False)
    assert response.status_code == 200, response.text
    return response.text


def test_pushes_to_the_hook_build_numbered_commits(node: NodeProcess, tmp_path: Path) -> None:
    repo = Repository(tmp_path)
    first = repo.push({".mesh.yml": PIPELINE, "src.txt": "good\n"}, "a good commit")
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET + b"\n")
    done = node.mesh("project", "add", "demo", str(repo.bare), "--webhook-secret-file", str(secret))
    assert done.returncode == 0, done.stderr.decode()

    ping = deliver(node, "ping", {"zen": "Keep it logically awesome.", "hook_id": 1}, "ping-1")
    assert (ping.status_code, ping.json()) == (200, {"pong": True})

    answer = deliver(node, "push", push_payload(first, "0" * 40, "a good commit"), "delivery-1")
    assert answer.status_code == 201, answer.text
    assert answer.json()["number"] == 1 and answer.json()["path"] == "/v1/projects/demo/builds/1"
    assert answer.json()["page"] == "/ui/builds/demo/1"
    one = ended(node, 1)
    assert (one["state"], one["commit"], one["trigger"], one["branch"]) == ("succeeded", first, "hook", "main")
    assert sorted(step["name"] for step in one["steps"] if step["state"] == "succeeded") == ["build", "test"]
    wait_for(lambda: COLOURS["succeeded"] in badge(node), what="a green badge after build #1")

    second = repo.push({"src.txt": "bad\n"}, "a bad commit")
    answer = deliver(node, "push", push_payload(second, first, "a bad commit"), "delivery-2")
    assert answer.status_code == 201, answer.text
    assert answer.json()["number"] == 2
    two = ended(node, 2)
    assert (two["state"], two["commit"]) == ("failed", second)
    states = {step["name"]: step["state"] for step in two["steps"]}
    assert states["test"] == "failed" and states["on-failure"] == "succeeded", states
    wait_for(lambda: COLOURS["failed"] in badge(node), what="a red badge after build #2")

    listed = mesh_json(node, "builds", "demo")["builds"]
    assert [(b["number"], b["commit"], b["state"]) for b in listed] == [(2, second, "failed"), (1, first, "succeeded")]

    # Nothing else starts a build: a bad signature, a replayed delivery, an unknown project.
    third = repo.push({"src.txt": "good\n"}, "good again")
    forged = deliver(node, "push", push_payload(third, second, "good again"), "delivery-3", secret=b"a guess")
    assert forged.status_code == 401 and "X-Hub-Signature-256" in forged.json()["error"], forged.text
    replayed = deliver(node, "push", push_payload(third, second, "good again"), "delivery-2")
    assert replayed.status_code == 202 and "already taken" in replayed.json()["ignored"], replayed.text
    unknown = httpx.post(f"{node.url}/v1/hooks/nope", content=b"{}", trust_env=False)
    assert unknown.status_code == 404, unknown.text
    headers, _ = _github("push", push_payload(third, second, "good again"), SECRET)
    huge = httpx.post(
        f"{node.url}/v1/hooks/demo", content=b" " * (MAX_BODY + 1), headers=headers, trust_env=False, timeout=60
    )
    assert huge.status_code == 413 and "exceeds the limit" in huge.json()["error"], huge.text[:500]
    assert [b["number"] for b in mesh_json(node, "builds", "demo")["builds"]] == [2, 1]
    assert node.mesh("build", "demo", "3", "--json").returncode != 0

    # The node remembers the deliveries it took across a restart: a replay still starts nothing.
    node.stop()
    node.start()
    replayed = deliver(node, "push", push_payload(third, second, "good again"), "delivery-2")
    assert replayed.status_code == 202 and "already taken" in replayed.json()["ignored"], replayed.text
    assert [b["number"] for b in mesh_json(node, "builds", "demo")["builds"]] == [2, 1]


def without_pipeline(node: NodeProcess, tmp_path: Path) -> tuple[Repository, str]:
    """Project demo of a repository whose one commit (returned) has no .mesh.yml."""
    repo = Repository(tmp_path)
    bare = repo.push({"src.txt": "good\n"}, "no pipeline yet")
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    done = node.mesh("project", "add", "demo", str(repo.bare), "--webhook-secret-file", str(secret))
    assert done.returncode == 0, done.stderr.decode()
    return repo, bare


def test_a_commit_without_a_pipeline_is_refused_and_its_fixed_redelivery_taken(
    node: NodeProcess, tmp_path: Path
) -> None:
    repo, bare = without_pipeline(node, tmp_path)
    refused = deliver(node, "push", push_payload(bare, "0" * 40, "no pipeline yet"), "delivery-1")
    assert refused.status_code == 422 and ".mesh.yml" in refused.json()["error"], refused.text
    assert mesh_json(node, "builds", "demo")["builds"] == []
    malformed = repo.push({".mesh.yml": "steps: [{name: build, rn: x}]\n"}, "a typo")
    refused = deliver(node, "push", push_payload(malformed, bare, "a typo"), "delivery-2")
    assert refused.status_code == 422 and f".mesh.yml@{malformed[:12]}:1: steps[0].rn" in refused.text, refused.text
    # The forge redelivers delivery-2 once the commit it names... cannot change; a push fixes it,
    # and the same delivery id is taken again because the refused one was forgotten.
    fixed = repo.push({".mesh.yml": PIPELINE}, "fixed")
    answer = deliver(node, "push", push_payload(fixed, malformed, "fixed"), "delivery-2")
    assert answer.status_code == 201, answer.text
    assert ended(node, 1)["state"] == "succeeded"


def test_other_branches_and_events_are_answered_202_and_start_nothing(node: NodeProcess, tmp_path: Path) -> None:
    repo = Repository(tmp_path)
    commit = repo.push({".mesh.yml": PIPELINE, "src.txt": "good\n"}, "a good commit")
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    done = node.mesh("project", "add", "demo", str(repo.bare), "--branch", "main", "--webhook-secret-file", str(secret))
    assert done.returncode == 0, done.stderr.decode()
    payload = {**push_payload(commit, "0" * 40, "a good commit"), "ref": "refs/heads/feature"}
    other = deliver(node, "push", payload, "delivery-1")
    assert other.status_code == 202 and "'feature' does not match" in other.json()["ignored"], other.text
    issue = deliver(node, "issues", {"action": "opened"}, "delivery-2")
    assert issue.status_code == 202 and "'issues' event is not a push" in issue.json()["ignored"], issue.text
    skipped = deliver(node, "push", push_payload(commit, "0" * 40, "docs only [skip ci]"), "delivery-3")
    assert skipped.status_code == 202 and "[skip ci]" in skipped.json()["ignored"], skipped.text
    assert mesh_json(node, "builds", "demo")["builds"] == []


def test_a_build_that_does_not_start_within_the_wait_is_answered_202_and_goes_on(tmp_path: Path) -> None:
    """MESH_HOOK_WAIT=0 stands for a first clone slower than the forge waits."""
    node = NodeProcess(str(tmp_path / "home"), env={"MESH_HOOK_WAIT": "0"}).start()
    try:
        repo, bare = without_pipeline(node, tmp_path)

        # Answered at once; the work that then fails is logged and the delivery forgotten.
        early = deliver(node, "push", push_payload(bare, "0" * 40, "no pipeline yet"), "delivery-1")
        assert early.status_code == 202 and "starts once the repository is fetched" in early.json()["accepted"]
        wait_for(lambda: "could not start" in node.log(), what="the failure in the node's log")
        assert f"commit {bare} of {repo.bare} has no .mesh.yml" in node.log()

        fixed = repo.push({".mesh.yml": PIPELINE}, "fixed")
        again = deliver(node, "push", push_payload(fixed, bare, "fixed"), "delivery-1")  # taken again
        assert again.status_code == 202, again.text
        one = ended(node, 1)
        assert (one["state"], one["commit"], one["trigger"]) == ("succeeded", fixed, "hook")
        replayed = deliver(node, "push", push_payload(fixed, bare, "fixed"), "delivery-1")
        assert replayed.status_code == 202 and "already taken" in replayed.json()["ignored"], replayed.text
    finally:
        node.stop()
