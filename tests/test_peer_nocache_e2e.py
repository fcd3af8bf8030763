"""A task without the action cache stays without it on the peer that runs it.

Two real nodes (loopback, seeds, MESH_MDNS=0): a has no label, b has ``where=b``, so a
task that requires ``label.where=b`` submitted to a runs on b, offered by a. Each run of
the task appends a line to a file outside its workdir (the ``shared`` fixture), so the
test counts how often it really ran, whatever the client is told.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mesh.wire.client import NodeClient
from tests.nodeutil import NodeProcess
from tests.treeutil import build


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "tree").mkdir()
    build(tmp_path / "tree", {b"a.txt": ("file", b"alpha\n", False)})
    return tmp_path / "tree"


def test_a_no_cache_task_on_a_peer_is_neither_answered_from_nor_recorded_in_its_cache(
    two_nodes: tuple[NodeProcess, NodeProcess], tree: Path, shared: Path
) -> None:
    a, b = two_nodes
    runs = shared / "runs"
    command = ["--require", "label.where=b", "--executor", "process", "-C", str(tree), "--"]
    command += ["sh", "-c", f"echo ran >> {runs}; cat a.txt"]
    with NodeClient(b.url) as client:
        b_id = client.health()["node"]

    def run(*flags: str) -> bytes:
        done = a.mesh("exec", "-v", *flags, *command)
        assert done.returncode == 0 and done.stdout == b"alpha\n", done.stderr
        return done.stderr

    first = run("--no-cache")  # b must not record it...
    assert f"ran on node {b_id}".encode() in first, first
    assert runs.read_text() == "ran\n"
    second = run()  # ...so this one runs, and is recorded (on b, and on a)
    assert b"(cached)" not in second and runs.read_text() == "ran\n" * 2, second
    third = run("--no-cache")  # and b must not answer this one from what it recorded
    assert b"(cached)" not in third and runs.read_text() == "ran\n" * 3, third
    assert f"ran on node {b_id}".encode() in third, third
    cached = run()  # without --no-cache the recorded result answers (the test can fail)
    assert b"(cached)" in cached and runs.read_text() == "ran\n" * 3, cached


def test_a_cache_false_step_on_a_peer_runs_every_time(
    two_nodes: tuple[NodeProcess, NodeProcess], tmp_path: Path, shared: Path
) -> None:
    """A pipeline step's ``cache: false`` (the task's own no_cache, its job's is not set)
    holds on the peer too: `mesh run` twice runs the step twice there."""
    a, b = two_nodes
    runs = shared / "runs"
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / ".mesh.yml").write_text(
        "steps:\n"
        "  - name: once-more\n"
        f"    run: echo ran >> {runs}\n"
        "    executor: process\n"
        "    requires: {where: b}\n"
        "    cache: false\n"
    )
    for count in (1, 2):
        done = a.mesh("run", "-C", str(repo))
        assert done.returncode == 0, done.stderr
        assert runs.read_text() == "ran\n" * count, done.stderr
