"""End to end: a real node with ``MESH_KEEP_JOBS=5`` forgets its oldest finished jobs, and keeps a
project's build's job (mesh.sched.retention).

A real ``mesh up`` on loopback (tests/nodeutil.py, MESH_MDNS=0) and the ``mesh`` CLI as a
subprocess: a build of a project, then more ``mesh exec`` jobs than the bound; the oldest are
unknown (``mesh job``, ``mesh rerun``: "no job ... finished jobs beyond the newest 5 are
forgotten"), ``mesh jobs`` lists the newest five and the build's, and the build's job answers.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.nodeutil import NodeProcess, wait_for
from tests.test_projects_e2e import mesh_json, repository

KEEP = 5


@pytest.fixture
def keeping_node(home: Path) -> Iterator[NodeProcess]:
    process = NodeProcess(str(home), env={"MESH_KEEP_JOBS": str(KEEP)}).start()
    try:
        yield process
    finally:
        process.stop(timeout=30)


def listed(node: NodeProcess) -> list[str]:
    return [job["id"] for job in mesh_json(node, "jobs", "--limit", "100")["jobs"]]


def test_a_node_forgets_finished_jobs_beyond_the_bound_but_not_a_builds(
    keeping_node: NodeProcess, tmp_path: Path
) -> None:
    node = keeping_node
    tree = tmp_path / "repo"
    repository(tree, "good")
    assert node.mesh("project", "add", "app", str(tree)).returncode == 0
    built = node.mesh("run", "-C", str(tree), "--project", "app")
    assert built.returncode == 0, built.stderr.decode()
    (build_job,) = listed(node)

    empty = tmp_path / "empty"  # what each job runs in: nothing to upload
    empty.mkdir()
    ran = []
    for n in range(KEEP + 3):
        done = node.mesh("exec", "--", "sh", "-c", f"echo {n}", cwd=str(empty))
        assert done.returncode == 0, done.stderr.decode()
        ran.append(listed(node)[0])
    assert len(set(ran)) == KEEP + 3 and build_job not in ran

    wait_for(lambda: listed(node) == [*ran[:2:-1], build_job], timeout=30, what="the oldest jobs forgotten")
    for job_id in ran[:3]:
        for args in (("job", job_id), ("rerun", job_id)):
            gone = node.mesh(*args)
            assert gone.returncode != 0
            message = gone.stderr.decode()
            assert f"no job {job_id} on this node (finished jobs beyond the newest {KEEP} are forgotten)" in message
    assert mesh_json(node, "job", build_job)["state"] == "succeeded"
    builds = mesh_json(node, "builds", "app")
    assert [build["job"] for build in builds["builds"]] == [build_job], builds
