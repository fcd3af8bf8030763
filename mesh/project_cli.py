"""``mesh project add|ls|rm``, ``mesh builds NAME``, ``mesh build NAME N``: projects and their
history on a node (the API of mesh.api.app, /v1/projects), and the start of a project's build
for ``mesh run --project``.

The webhook secret is read here from the file ``--webhook-secret-file`` names (its text, the
trailing newline dropped) and sent once, in the signed request that adds the project; the
node keeps it and never shows it again (``mesh project ls`` says only whether there is one).
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any
from urllib.parse import quote

from mesh.clifmt import when as _when
from mesh.errors import UsageError
from mesh.pipelines.pipefile import Notify
from mesh.wire.client import NodeClient


def _path(name: str, *rest: str) -> str:
    return "/".join(["/v1/projects", quote(name, safe=""), *rest])


def read_secret(path: str) -> str:
    """The webhook secret in ``path`` (UsageError for an unreadable or empty file)."""
    try:
        with open(path, encoding="utf-8") as f:
            secret = f.read().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--webhook-secret-file {path}: cannot read it: {exc}") from None
    if not secret:
        raise UsageError(f"--webhook-secret-file {path} is empty")
    return secret


def add(client: NodeClient, name: str, url: str, branch: str, secret_file: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"name": name, "url": url, "branch": branch}
    if secret_file is not None:
        body["secret"] = read_secret(secret_file)
    result: dict[str, Any] = client.request("POST", "/v1/projects", body=body)
    return result


def projects(client: NodeClient) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = client.request("GET", "/v1/projects")["projects"]
    return result


def remove(client: NodeClient, name: str) -> None:
    client.request("DELETE", _path(name))


def builds(client: NodeClient, name: str, *, limit: int = 50, before: int | None = None) -> dict[str, Any]:
    params: dict[str, Any] = {"limit": limit}
    if before is not None:
        params["before"] = before
    result: dict[str, Any] = client.request("GET", _path(name, "builds"), params=params)
    return result


def build(client: NodeClient, name: str, number: int) -> dict[str, Any]:
    result: dict[str, Any] = client.request("GET", _path(name, "builds", str(number)))
    return result


def start(
    client: NodeClient,
    name: str,
    job: dict[str, Any],
    *,
    commit: str | None,
    branch: str | None,
    notify: tuple[Notify, ...],
    trigger: str,
) -> dict[str, Any]:
    """Submit ``job`` as ``name``'s next build, with its pipeline's ``notify`` entries (the node
    sends them when the build ends): the node's answer (number, job, path)."""
    body: dict[str, Any] = {"job": job, "trigger": trigger, "notify": [entry.to_wire() for entry in notify]}
    if commit is not None:
        body["commit"] = commit
    if branch is not None:
        body["branch"] = branch
    result: dict[str, Any] = client.request("POST", _path(name, "builds"), body=body)
    return result


def head_commit(directory: str) -> str | None:
    """The commit checked out in ``directory`` (``git rev-parse HEAD``), or None (no git, no commit)."""
    try:
        done = subprocess.run(
            ["git", "-C", directory, "rev-parse", "--verify", "-q", "HEAD"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and commit else None


# -- printing ---------------------------------------------------------------------------


def print_projects(listed: list[dict[str, Any]]) -> None:
    if not listed:
        print("no projects on this node (add one with `mesh project add NAME GIT_URL`)", file=sys.stderr)
    for project in listed:
        secret = "webhook secret set" if project["webhook_secret"] else "no webhook secret"
        print(f"{project['name']}  {project['url']}  branch {project['branch']}  {secret}")


def print_builds(name: str, page: dict[str, Any]) -> None:
    if not page["builds"]:
        print(f"project {name} has no builds yet", file=sys.stderr)
    for b in page["builds"]:
        commit = (b.get("commit") or "-")[:12]
        started = _when(b["created_at"])
        print(f"#{b['number']:<5} {b['state']:<9}  {commit:<12}  {b['trigger']:<5}  {started}  {b['job']}")
    if page.get("next"):
        print(f"(more: mesh builds {name} --before {page['next']})", file=sys.stderr)


def print_build(b: dict[str, Any]) -> None:
    trigger = b["trigger"] + (f" of #{b['rerun_of']}" if b.get("rerun_of") else "")
    print(f"build #{b['number']} of {b['project']}  {b['state']}  commit {b.get('commit') or '-'}  ({trigger})")
    print(f"created {_when(b['created_at'])}  finished {_when(b['finished_at'])}  job {b['job']}")
    for step in b["steps"]:
        result = step.get("result") or {}
        took = f"{result['finished_at'] - result['started_at']:.1f}s" if result else "-"
        exit_code = result.get("exit_code", "-") if result else "-"
        cached = " cached" if result.get("cached") else ""
        node = result.get("node", "")
        print(f"  {step['name']:<20} {step['state']:<9} exit {exit_code!s:<4} {took:>8}  {node}{cached}")
