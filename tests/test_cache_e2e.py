"""The action cache through the real CLI and a real node: the toolchain in the key, ``-v``'s reasons."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.nodeutil import NodeProcess, wait_for
from tests.treeutil import build, executable


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "tree").mkdir()
    build(tmp_path / "tree", {b"a.txt": ("file", b"alpha\n", False)})
    return tmp_path / "tree"


@pytest.fixture
def bin_dir(shared: Path) -> Path:
    """A directory on the task's PATH (one a task uid and the sandbox can read) with a test
    copy of a compiler, ``cc``."""
    path = shared / "bin"
    path.mkdir()
    path.chmod(0o755)
    executable(path / "cc", "#!/bin/sh\necho built by cc 1; cat a.txt\n")
    return path


def node_id(node: NodeProcess) -> str:
    return str(json.loads(node.mesh("status", "--json").stdout)["node"])


def test_exec_v_says_why_a_run_was_not_a_hit_and_a_replaced_compiler_is_a_miss(
    node: NodeProcess, tree: Path, bin_dir: Path
) -> None:
    command = ["exec", "-v", "--env", f"PATH={bin_dir}:/usr/bin:/bin", "-C", str(tree), "--", "cc"]
    first = node.mesh(*command)
    assert first.returncode == 0, first.stderr
    assert first.stdout == b"built by cc 1\nalpha\n"
    assert b": not in the cache: first run; ran on node " in first.stderr

    again = node.mesh(*command)
    assert again.stdout == first.stdout
    assert f"(cached): from the action cache of node {node_id(node)}".encode() in again.stderr, again.stderr

    executable(bin_dir / "cc.new", "#!/bin/sh\necho built by cc 2; cat a.txt\n").replace(bin_dir / "cc")
    replaced = node.mesh(*command)
    assert replaced.stdout == b"built by cc 2\nalpha\n", replaced.stderr
    assert b"(cached)" not in replaced.stderr
    assert b"not in the cache: toolchain changed (the argv[0] binary cc)" in replaced.stderr

    (tree / "a.txt").write_text("beta\n")
    changed = node.mesh(*command)
    assert changed.stdout == b"built by cc 2\nbeta\n"
    assert b"not in the cache: inputs changed;" in changed.stderr


def test_a_declared_tool_joins_the_key_and_a_bad_one_is_a_clear_error(
    node: NodeProcess, tree: Path, shared: Path
) -> None:
    helper = shared / "cc1"
    helper.write_text("helper 1\n")
    helper.chmod(0o644)
    command = ["exec", "-v", "--tool", str(helper), "-C", str(tree), "--", "cat", "a.txt"]
    assert b"not in the cache: first run" in node.mesh(*command).stderr
    assert b"(cached)" in node.mesh(*command).stderr
    helper.write_text("helper 2\n")
    changed = node.mesh(*command)
    assert changed.returncode == 0 and f"not in the cache: toolchain changed (tool {helper})".encode() in changed.stderr

    relative = node.mesh("exec", "--tool", "bin/cc", "-C", str(tree), "--", "true")
    assert relative.returncode == 2 and b"--tool bin/cc: give the absolute path" in relative.stderr
    missing = node.mesh("exec", "--tool", str(shared / "gone"), "-C", str(tree), "--", "true")
    assert missing.returncode == 1
    assert f"tool {shared}/gone (--tool) is not a file on this node".encode() in missing.stderr
    docker = node.mesh("exec", "--tool", str(helper), "--image", "busybox", "-C", str(tree), "--", "true")
    assert docker.returncode == 2 and b"docker task does not see" in docker.stderr


def test_a_container_action_is_keyed_by_its_image_id(docker_host: str, home: Path, tree: Path) -> None:
    """The engine says which image ID a tag names; an image the engine lacks is a miss (the
    run then fails on the image, and nothing is cached), never an error of the lookup."""
    from tests.podmanutil import IMAGE

    node = NodeProcess(str(home), env={"DOCKER_HOST": docker_host}).start()
    try:
        command = ["exec", "-v", "--image", IMAGE, "-C", str(tree), "--", "cat", "a.txt"]
        first = node.mesh(*command)
        assert first.returncode == 0 and b"not in the cache: first run" in first.stderr, first.stderr
        again = node.mesh(*command)
        assert again.stdout == b"alpha\n" and b"(cached): from the action cache" in again.stderr, again.stderr
        job = json.loads(node.mesh("jobs", "--json").stdout)["jobs"][0]["id"]
        result = json.loads(node.mesh("job", job, "--json").stdout)["tasks"][0]["result"]
        assert result["cached"] and result["cache_key"].startswith("b3:")
        absent = node.mesh("exec", "-v", "--image", "localhost/no-such-image:1", "-C", str(tree), "--", "true")
        assert absent.returncode != 0
        assert b"no toolchain identity for it (the image localhost/no-such-image:1 is not on this node" in absent.stderr
    finally:
        node.stop()


def status(node: NodeProcess) -> dict[str, Any]:
    answer: dict[str, Any] = httpx.get(node.url + "/status", timeout=5, trust_env=False).json()
    return answer


def test_a_result_made_on_one_node_is_a_hit_on_its_peer_and_its_blobs_are_fetched_there(
    tmp_path: Path, tree: Path
) -> None:
    a = NodeProcess(str(tmp_path / "a")).start()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "mesh.key").write_text((tmp_path / "a" / "mesh.key").read_text())
    b = NodeProcess(str(tmp_path / "b"), extra_args=["--peer", a.addr]).start()
    try:
        wait_for(lambda: [p["state"] for p in status(b)["peers"]] == ["alive"], what="b to hear of a")
        command = ["-C", str(tree), "--", "sh", "-c", "cat a.txt; mkdir out; date +%s%N > out/when"]
        made = a.mesh("exec", "-v", "--out", str(tmp_path / "out-a"), *command)
        assert made.returncode == 0 and b"not in the cache: first run" in made.stderr, made.stderr
        answered = b.mesh("exec", "-v", "--out", str(tmp_path / "out-b"), *command)
        assert answered.returncode == 0, answered.stderr
        assert f"(cached): from the action cache of node {status(a)['node']} (".encode() in answered.stderr
        assert answered.stdout == made.stdout == b"alpha\n"  # fetched from a through b
        assert (tmp_path / "out-b" / "out" / "when").read_text() == (tmp_path / "out-a" / "out" / "when").read_text()
        assert status(b)["tasks_run"] == 0 and status(a)["tasks_run"] == 1  # it ran once, on a
        assert status(b)["cache"]["mesh"]["found"] == 1 and status(a)["cache"]["mesh"]["served"] == 1
    finally:
        b.stop()
        a.stop()
