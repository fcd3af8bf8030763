"""The mesh-wide action cache on three real nodes in network namespaces (tests/netns.py).

Each node also runs in a mount namespace of its own, where a directory of test tools is
bound over one path on the tasks' PATH: the same ``cc`` on every node until the test
replaces one node's copy. A task appends to a file every node's tasks can write, so the
test counts the runs wherever they happen. Needs root; elsewhere skipped with the reason.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from subprocess import PIPE
from typing import Any

import pytest

from mesh.wire.auth import MeshKey
from tests.netns import Lan, require_namespaces
from tests.nodeutil import node_env, wait_for
from tests.treeutil import build, executable

PORT = 7474
NODE = f"http://127.0.0.1:{PORT}"


@pytest.fixture
def lan() -> Iterator[Lan]:
    require_namespaces("the namespace action-cache test")
    with Lan(3) as built:
        yield built


class Mesh:
    """Three nodes, one per namespace, each with its own copy of the tools at ``tools``."""

    def __init__(self, lan: Lan, tmp_path: Path, shared: Path) -> None:
        self.lan = lan
        self.homes = [tmp_path / f"node{i}" for i in range(3)]
        self.tools = shared / "tools"  # what the tasks' PATH names; each node binds its own copy here
        self.tools.mkdir(mode=0o755)
        self.runs = shared / "runs"  # each run of cc appends a line
        self.runs.touch(mode=0o666)
        self.runs.chmod(0o666)
        self.tree = tmp_path / "tree"
        self.tree.mkdir()
        build(self.tree, {b"a.txt": ("file", b"alpha\n", False)})
        key = MeshKey.generate().text()
        self.ids: list[str] = []
        for i, home in enumerate(self.homes):
            home.mkdir()
            (home / "mesh.key").write_text(key)
            (home / "mesh.key").chmod(0o600)
            own = shared / f"tools{i}"
            own.mkdir(mode=0o755)
            self.compiler(i, 1)
            seeds = [] if i == 0 else ["--peer", f"{lan.addresses[0]}:{PORT}"]
            up = [sys.executable, "-m", "mesh", "up", "--slots", "2", "--listen", f"0.0.0.0:{PORT}", *seeds]
            script = f"mount --bind {shlex.quote(str(own))} {shlex.quote(str(self.tools))} && exec {shlex.join(up)}"
            lan.spawn(i, ["unshare", "-m", "--propagation", "private", "sh", "-c", script], env=node_env(str(home)))
        for i in range(3):
            wait_for(lambda i=i: self.status(i), timeout=30, what=f"node {i} to serve")
            self.ids.append(self.status(i)["node"])
        for i in range(3):
            wait_for(
                lambda i=i: (
                    sorted(p["node"] for p in self.status(i)["peers"] if p["state"] == "alive")
                    == sorted(set(self.ids) - {self.ids[i]})
                ),
                timeout=30,
                what=f"node {i} to hear of the other two",
            )

    def compiler(self, i: int, version: int) -> None:
        """Put version ``version`` of ``cc`` in node ``i``'s tools (a new file, as an upgrade does)."""
        body = (
            f"#!/bin/sh\necho run >> {shlex.quote(str(self.runs))}\n"
            'if [ -n "$SLOW" ]; then sleep "$SLOW"; fi\n'
            f'echo "built by cc {version}"; cat "$1"\n'
        )
        new = self.tools.parent / f"tools{i}" / "cc.new"
        executable(new, body).replace(new.with_name("cc"))

    def mesh(self, i: int, *args: str) -> Any:
        return self.lan.run(i, [sys.executable, "-m", "mesh", *args], env=node_env(str(self.homes[i])), timeout=120)

    def status(self, i: int) -> dict[str, Any]:
        done = self.mesh(i, "status", "--json", "--node", NODE)
        return json.loads(done.stdout) if done.returncode == 0 else {}

    def compile_argv(self, *env: str) -> list[str]:
        """``mesh exec -v`` of ``cc a.txt`` (with ``env``), with the process executor (whose tasks
        may write the runs file)."""
        extra = [arg for pair in env for arg in ("--env", pair)]
        path = f"PATH={self.tools}:/usr/bin:/bin"
        return ["exec", "-v", "--executor", "process", "--env", path, *extra, "-C", str(self.tree), "--node", NODE]

    def compile(self, i: int, *env: str) -> Any:
        return self.mesh(i, *self.compile_argv(*env), "--", "cc", "a.txt")

    def compile_at_once(self, nodes: list[int], *env: str) -> list[tuple[str, str]]:
        """The same ``cc a.txt`` through each of ``nodes``, started at the same moment: each
        one's (stdout, stderr)."""
        argv = [sys.executable, "-m", "mesh", *self.compile_argv(*env), "--", "cc", "a.txt"]
        started = [
            subprocess.Popen(
                self.lan.exec_argv(i, argv), env=node_env(str(self.homes[i])), stdout=PIPE, stderr=PIPE, text=True
            )
            for i in nodes
        ]
        return [p.communicate(timeout=120) for p in started]

    def count_runs(self) -> int:
        return len(self.runs.read_text().splitlines())


def test_one_cache_for_the_mesh_keyed_by_each_nodes_toolchain(lan: Lan, tmp_path: Path, shared: Path) -> None:
    mesh = Mesh(lan, tmp_path, shared)
    a, b, c = 0, 1, 2
    made = mesh.compile(a)
    assert made.returncode == 0, made.stderr
    assert made.stdout == "built by cc 1\nalpha\n"
    assert ": not in the cache: first run; ran on node " in made.stderr
    assert mesh.count_runs() == 1

    # Node B answers the same action from A's cache: nothing runs anywhere.
    for node in (b, c):
        answered = mesh.compile(node)
        assert answered.returncode == 0, answered.stderr
        assert answered.stdout == made.stdout
        assert f"(cached): from the action cache of node {mesh.ids[a]} (" in answered.stderr, answered.stderr
        assert mesh.status(node)["tasks_run"] == 0
    assert mesh.count_runs() == 1

    # C's compiler is replaced: the same action is a miss there (and runs there, with it) ...
    mesh.compiler(c, 2)
    rebuilt = mesh.compile(c)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert rebuilt.stdout == "built by cc 2\nalpha\n"
    assert "not in the cache: toolchain changed (the argv[0] binary cc)" in rebuilt.stderr, rebuilt.stderr
    assert rebuilt.stderr.rstrip().endswith(f"ran on node {mesh.ids[c]}")
    assert mesh.count_runs() == 2
    # ... and a hit again there, from its own cache; A and B, whose cc did not change, keep theirs.
    assert f"(cached): from the action cache of node {mesh.ids[c]}" in mesh.compile(c).stderr
    for node in (a, b):
        again = mesh.compile(node)
        assert again.stdout == made.stdout and "(cached)" in again.stderr, again.stderr
    assert mesh.count_runs() == 2

    # Two identical actions submitted at the same moment to A and B run once: one node claims
    # the key, the other waits for its result.
    runs = mesh.count_runs()
    (out_a, err_a), (out_b, err_b) = mesh.compile_at_once([a, b], "SLOW=3")
    assert out_a == out_b == "built by cc 1\nalpha\n", (err_a, err_b)
    assert mesh.count_runs() == runs + 1, (err_a, err_b)
    waited = [err for err in (err_a, err_b) if "(cached): waited for http://" in err]
    assert len(waited) == 1, (err_a, err_b)
