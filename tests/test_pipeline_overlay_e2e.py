"""End to end: a step sees the repository plus the declared outputs of the steps it depends on.

``mesh run`` against real ``mesh up`` nodes on loopback (tests/nodeutil.py, MESH_MDNS=0): a
step after two producers (one a matrix of two, run on a peer node that has the label it
requires) sees exactly the repository and their declared outputs (mesh.cas.overlay through
mesh.sched.overlays), not what else they wrote; the repository's files keep their times, the
outputs' get the fixed one; two producers writing one path fail the step, naming both.
"""

from __future__ import annotations

import os
from pathlib import Path

from mesh.cas.times import FIXED_MTIME_NS
from tests.nodeutil import NodeProcess
from tests.test_pipeline_run_e2e import row

REPO_MTIME = 1_600_000_000

PIPELINE = """\
steps:
  - name: build
    run: mkdir build && echo app > build/app && echo scratch > scratch.txt && echo changed > src.txt
    outputs: [build/]
  - name: gen
    run: mkdir gen && echo "gen $N" > gen/$N.txt && echo junk > junk-$N
    matrix: {N: [1, 2]}
    outputs: [gen/]
    @REQUIRES@
  - name: check
    depends_on: [build, gen]
    run: |
      echo "sees: $(find . -mindepth 1 | LC_ALL=C sort | tr '\\n' ' ')"
      echo "reads: $(cat src.txt build/app gen/1.txt gen/2.txt | tr '\\n' ' ')"
      echo "times: $(stat -c %Y src.txt) $(stat -c %Y build/app) $(stat -c %Y gen/2.txt)"
"""

SEEN = "./.mesh.yml ./build ./build/app ./gen ./gen/1.txt ./gen/2.txt ./src.txt "


def _repo(tree: Path, requires: str = "") -> Path:
    tree.mkdir()
    (tree / "src.txt").write_text("the source\n")
    (tree / ".mesh.yml").write_text(PIPELINE.replace("@REQUIRES@", requires))
    for path in (tree / "src.txt", tree / ".mesh.yml"):
        os.utime(path, (REPO_MTIME, REPO_MTIME))
    return tree


def _check(stdout: str) -> None:
    assert f"check | sees: {SEEN}" in stdout, stdout
    assert "check | reads: the source app gen 1 gen 2 " in stdout, stdout
    fixed = FIXED_MTIME_NS // 1_000_000_000
    assert f"check | times: {REPO_MTIME} {fixed} {fixed}" in stdout, stdout


def test_a_step_sees_the_repository_and_only_the_declared_outputs_of_its_producers(
    node: NodeProcess, tmp_path: Path
) -> None:
    tree = _repo(tmp_path / "repo")
    done = node.mesh("run", "-C", str(tree))
    stdout, stderr = done.stdout.decode(), done.stderr.decode()
    assert done.returncode == 0, stderr
    _check(stdout)
    for task in ("build", "gen:1", "gen:2", "check"):
        assert row(stderr, task).split()[-1] == "succeeded", stderr


def test_outputs_made_on_a_peer_are_overlaid_too(two_nodes: tuple[NodeProcess, NodeProcess], tmp_path: Path) -> None:
    a, b = two_nodes
    tree = _repo(tmp_path / "repo", requires="requires: {where: b}")
    done = a.mesh("run", "-C", str(tree))
    stdout, stderr = done.stdout.decode(), done.stderr.decode()
    assert done.returncode == 0, stderr
    b_id = row(stderr, "gen:1").split()[1]
    assert row(stderr, "gen:2").split()[1] == b_id
    assert row(stderr, "build").split()[1] != b_id  # the producers ran on two nodes
    _check(stdout)


def test_two_producers_writing_one_path_fail_the_step_naming_both(node: NodeProcess, tmp_path: Path) -> None:
    tree = tmp_path / "repo"
    tree.mkdir()
    text = "steps:\n"
    text += "  - name: one\n    run: mkdir out && echo 1 > out/f\n    outputs: [out/]\n"
    text += "  - name: two\n    run: mkdir out && echo 2 > out/f\n    outputs: [out/]\n"
    text += "  - name: use\n    depends_on: [one, two]\n    run: cat out/f\n"
    (tree / ".mesh.yml").write_text(text)
    done = node.mesh("run", "-C", str(tree))
    stderr = done.stderr.decode()
    assert done.returncode == 1, stderr
    assert "failed" in row(stderr, "use"), stderr
    assert "'out/f' is written by both task one and task two" in stderr + done.stdout.decode(), stderr
