"""End to end: ``mesh run`` runs a directory's ``.mesh.yml`` on a real node as one job.

The real CLI as a subprocess against a real ``mesh up`` on loopback (tests/nodeutil.py,
MESH_MDNS=0): live output prefixed by step, the summary table, the exit status, a step
seeing its dependency's declared output, STEP selection, and malformed files refused with
their line before anything reaches the node.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from mesh.wire.client import NodeClient
from tests.nodeutil import MESH, NodeProcess, node_env
from tests.test_exec_client_e2e import Reader

PIPELINE = """\
env: {GREETING: hello}
steps:
  - name: build
    run: mkdir -p out && echo "built from $(cat src.txt)" > out/artifact && echo "$GREETING from build" && @WAIT@
    outputs: [out/]
  - name: test
    depends_on: [build]
    run: echo "shard $SHARD sees $(cat out/artifact) and $(cat src.txt) ${EXTRA:-}"; test "$SHARD" != @FAILING@
    matrix: {SHARD: [1, 2, 3]}
  - name: report
    depends_on: [test]
    when: {status: [failure]}
    run: echo "reacting to a failed test"
"""


def write_pipeline(tree: Path, *, failing: int = 2, wait: str = "true") -> None:
    tree.mkdir(exist_ok=True)
    (tree / "src.txt").write_text("the source\n")
    (tree / ".mesh.yml").write_text(PIPELINE.replace("@FAILING@", str(failing)).replace("@WAIT@", wait))


def run_process(node: NodeProcess, tree: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*MESH, "run", "-C", str(tree), *args],
        env=node_env(node.home, MESH_NODE=node.url),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def jobs_of(node: NodeProcess) -> list[dict[str, object]]:
    with NodeClient(node.url) as client:
        jobs: list[dict[str, object]] = client.jobs()["jobs"]
        return jobs


def row(stderr: str, task: str) -> str:
    """The summary table's row of ``task``."""
    (line,) = [line for line in stderr.splitlines() if re.match(rf"{re.escape(task)}\s", line)]
    return line


def test_a_pipeline_runs_live_with_prefixed_output_a_summary_and_its_status(
    node: NodeProcess, tmp_path: Path, shared: Path
) -> None:
    go = shared / "go"
    write_pipeline(tmp_path / "repo", wait=f"while [ ! -e {go} ]; do sleep 0.05; done")
    process = run_process(node, tmp_path / "repo")
    out = Reader(process.stdout)
    out.read_until(b"build  | hello from build\n")  # live: the build step still waits for `go`
    (job,) = jobs_of(node)
    assert job["state"] == "running"
    go.touch()
    assert process.wait(120) == 1  # the test of shard 2 failed
    stdout = out.rest().decode()
    stderr = process.stderr.read().decode()  # type: ignore[union-attr]
    for shard in (1, 2, 3):  # each shard saw the build's declared output and the repository
        assert f"test:{shard} | shard {shard} sees built from the source and the source" in stdout, stdout
    assert "report | reacting to a failed test" in stdout
    assert row(stderr, "build").split()[-1] == "succeeded"
    assert row(stderr, "test:1").split()[-1] == "succeeded"
    assert row(stderr, "test:2").endswith("failed (exit 1)")
    assert row(stderr, "report").split()[-1] == "succeeded"
    assert re.search(r"^STEP\s+NODE\s+CACHED\s+TIME\s+STATUS$", stderr, re.M), stderr
    assert "pipeline failed" in stderr


def test_a_pipeline_that_succeeds_exits_0_and_skips_its_failure_reaction(node: NodeProcess, tmp_path: Path) -> None:
    write_pipeline(tmp_path / "repo", failing=7)
    done = node.mesh("run", "-C", str(tmp_path / "repo"), "--set", "EXTRA=from-set")
    stdout, stderr = done.stdout.decode(), done.stderr.decode()
    assert done.returncode == 0, stderr
    assert "test:3 | shard 3 sees built from the source and the source from-set" in stdout
    assert "reacting" not in stdout
    assert row(stderr, "report").split()[-1] == "skipped"
    again = node.mesh("run", "-C", str(tmp_path / "repo"), "--set", "EXTRA=from-set")
    assert again.returncode == 0, again.stderr
    assert row(again.stderr.decode(), "build").split()[2] == "yes"  # the same step again: from the cache


def test_named_steps_run_with_what_they_depend_on_and_nothing_else(node: NodeProcess, tmp_path: Path) -> None:
    write_pipeline(tmp_path / "repo", failing=7)
    done = node.mesh("run", "-C", str(tmp_path / "repo"), "test")
    assert done.returncode == 0, done.stderr
    (job,) = jobs_of(node)
    with NodeClient(node.url) as client:
        tasks = [task["name"] for task in client.job(str(job["id"]))["tasks"]]
    assert sorted(tasks) == ["build", "test:1", "test:2", "test:3"]
    unknown = node.mesh("run", "-C", str(tmp_path / "repo"), "tset")
    assert unknown.returncode == 2
    assert b"no step named 'tset'" in unknown.stderr
    assert len(jobs_of(node)) == 1


MALFORMED = {
    "a wrong type": ("steps:\n  - name: build\n    run: make\n    timeout: soon\n", 4, "steps[0].timeout"),
    "an unknown key": ("steps:\n  - name: build\n    run: make\n    artefacts: [x]\n", 4, "steps[0].artefacts"),
    "a cycle": (
        "steps:\n  - name: a\n    run: x\n    depends_on: [b]\n  - name: b\n    run: y\n    depends_on: [a]\n",
        4,
        "a cycle: a -> b -> a",
    ),
    "an unknown step": (
        "steps:\n  - name: build\n    run: make\n  - name: test\n    run: t\n    depends_on: [biuld]\n",
        6,
        "steps[1].depends_on: unknown step 'biuld'",
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_pipeline_names_its_line_and_submits_nothing(node: NodeProcess, tmp_path: Path, case: str) -> None:
    text, line, words = MALFORMED[case]
    (tmp_path / ".mesh.yml").write_text(text)
    done = node.mesh("run", "-C", str(tmp_path))
    stderr = done.stderr.decode()
    assert done.returncode == 2, stderr
    assert f".mesh.yml:{line}: " in stderr and words in stderr, stderr
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert jobs_of(node) == []


def test_a_directory_without_a_pipeline_is_told_so(node: NodeProcess, tmp_path: Path) -> None:
    done = node.mesh("run", "-C", str(tmp_path))
    assert done.returncode == 2
    assert b".mesh.yml: no such file" in done.stderr
    assert jobs_of(node) == []


def test_a_step_with_cache_false_runs_every_time_and_the_others_come_from_the_cache(
    node: NodeProcess, tmp_path: Path
) -> None:
    tree = tmp_path / "repo"
    tree.mkdir()
    text = "steps:\n  - name: cached\n    run: echo same\n  - name: fresh\n    run: echo again\n    cache: false\n"
    (tree / ".mesh.yml").write_text(text)
    first = node.mesh("run", "-C", str(tree))
    assert first.returncode == 0, first.stderr
    second = node.mesh("run", "-C", str(tree))
    assert second.returncode == 0, second.stderr
    stderr = second.stderr.decode()
    assert row(stderr, "cached").split()[2] == "yes", stderr
    assert row(stderr, "fresh").split()[2] == "no", stderr
    assert "fresh  | again" in second.stdout.decode()
