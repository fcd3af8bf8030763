"""End to end: ``mesh rerun`` of a job, of one task, and of a project's build, on a real node.

A real ``mesh up`` on loopback (tests/nodeutil.py, MESH_MDNS=0) and the ``mesh`` CLI as a
subprocess. Each step prints a fresh random id, so a step that ran again is told from one
answered from the cache or not run at all: ``mesh rerun JOB --task test`` runs ``test`` again
on the very output ``build`` made the first time (build is not run), then what depends on
it; ``mesh rerun JOB`` answers succeeded steps from the cache and ``--no-cache`` runs them;
``mesh rerun NAME N`` is the project's next build, of the same commit, saying which it re-runs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx

from tests.nodeutil import NodeProcess
from tests.test_pipeline_run_e2e import row
from tests.test_projects_e2e import mesh_json, repository

PIPELINE = """\
steps:
  - name: build
    run: mkdir out && cat /proc/sys/kernel/random/uuid > out/id && echo "built $(cat out/id)"
    outputs: [out/]
  - name: test
    depends_on: [build]
    run: echo "saw $(cat out/id) as $(cat /proc/sys/kernel/random/uuid)"; test ! -e fail-me
  - name: report
    depends_on: [test]
    run: echo "report $(cat /proc/sys/kernel/random/uuid)"
  - name: on-failure
    depends_on: [test]
    when: {status: [failure]}
    run: echo reacting
"""


def _said(stdout: str, task: str, pattern: str) -> str:
    """The one line of ``task`` matching ``pattern``: its first group."""
    found = re.findall(rf"^{re.escape(task)} *\| {pattern}$", stdout, re.M)
    assert len(found) == 1, stdout
    return str(found[0])


def _job_of(stderr: str) -> str:
    match = re.search(r"^pipeline \w+ \(job ([0-9a-f]{20})\)$", stderr, re.M)
    assert match, stderr
    return match.group(1)


def _job(node: NodeProcess, job_id: str) -> Any:
    done = node.mesh("job", job_id, "--json")
    assert done.returncode == 0, done.stderr.decode()
    return json.loads(done.stdout)


def test_a_task_runs_again_with_the_inputs_it_had_and_what_depends_on_it(node: NodeProcess, tmp_path: Path) -> None:
    tree = tmp_path / "repo"
    tree.mkdir()
    (tree / ".mesh.yml").write_text(PIPELINE)
    first = node.mesh("run", "-C", str(tree))
    stdout, stderr = first.stdout.decode(), first.stderr.decode()
    assert first.returncode == 0, stderr
    built = _said(stdout, "build", r"built (\S+)")
    ran = _said(stdout, "test", rf"saw {built} as (\S+)")
    job = _job_of(stderr)

    again = node.mesh("rerun", job, "--task", "test")
    stdout, stderr = again.stdout.decode(), again.stderr.decode()
    assert again.returncode == 0, stderr
    assert not re.search(r"^build *\|", stdout, re.M), stdout  # build did not run again ...
    rerun = _said(stdout, "test", rf"saw {built} as (\S+)")  # ... and test saw what it made then
    assert rerun != ran  # test ran again, not answered from the cache
    _said(stdout, "report", r"report (\S+)")  # what depends on it ran after it
    assert row(stderr, "on-failure").split()[-1] == "skipped", stderr
    new = _job_of(stderr)
    assert new != job
    status = _job(node, new)
    assert [task["name"] for task in status["tasks"]] == ["test", "report", "on-failure"]
    assert f"re-run of task test of job {job}" in status["label"]

    # The reaction alone: it runs (whatever test did), with the inputs it had.
    reaction = node.mesh("rerun", job, "--task", "on-failure")
    assert reaction.returncode == 0, reaction.stderr.decode()
    _said(reaction.stdout.decode(), "on-failure", "(reacting)")

    # The whole job: what succeeded is answered from the cache; --no-cache runs it all again.
    whole = node.mesh("rerun", job)
    assert whole.returncode == 0, whole.stderr.decode()
    for task in ("build", "test", "report"):
        assert row(whole.stderr.decode(), task).split()[2] == "yes", whole.stderr.decode()
    fresh = node.mesh("rerun", job, "--no-cache")
    assert fresh.returncode == 0, fresh.stderr.decode()
    assert _said(fresh.stdout.decode(), "build", r"built (\S+)") != built

    # What cannot be re-run is refused, and starts nothing.
    jobs_before = len(mesh_json(node, "jobs")["jobs"])
    unknown = node.mesh("rerun", job, "--task", "nope")
    assert unknown.returncode != 0
    assert f"job {job} has no task 'nope'" in unknown.stderr.decode()
    missing = node.mesh("rerun", "0" * 20)
    assert missing.returncode != 0 and "no job 00000000000000000000" in missing.stderr.decode()
    unsigned = httpx.post(f"{node.url}/v1/jobs/{job}/rerun", json={}, trust_env=False)
    assert unsigned.status_code == 401, unsigned.text
    assert len(mesh_json(node, "jobs")["jobs"]) == jobs_before


def test_a_task_whose_producer_failed_is_refused_and_its_producer_can_be_re_run(
    node: NodeProcess, tmp_path: Path
) -> None:
    tree = tmp_path / "repo"
    tree.mkdir()
    (tree / ".mesh.yml").write_text(PIPELINE.replace("mkdir out &&", "exit 4; mkdir out &&"))
    first = node.mesh("run", "-C", str(tree))
    assert first.returncode == 1, first.stderr.decode()
    job = _job_of(first.stderr.decode())
    refused = node.mesh("rerun", job, "--task", "test")  # it never ran: build made no output to see
    assert refused.returncode != 0
    message = refused.stderr.decode()
    assert "task 'test' takes the outputs it overlays from task 'build', which ended failed" in message, message
    reaction = node.mesh("rerun", job, "--task", "on-failure")  # a reaction runs without them, as then
    assert reaction.returncode == 0, reaction.stderr.decode()
    producer = node.mesh("rerun", job, "--task", "build")
    assert producer.returncode == 1  # it fails again, and what depends on it is skipped again
    assert row(producer.stderr.decode(), "build").split()[-3:] == ["failed", "(exit", "4)"]
    assert row(producer.stderr.decode(), "test").split()[-1] == "skipped"


def test_a_build_runs_again_as_the_projects_next_number_of_the_same_commit(node: NodeProcess, tmp_path: Path) -> None:
    tree = tmp_path / "repo"
    commit = repository(tree, "good")
    assert node.mesh("project", "add", "app", str(tree)).returncode == 0
    first = node.mesh("run", "-C", str(tree), "--project", "app")
    assert first.returncode == 0, first.stderr.decode()
    repository(tree, "bad")  # a later commit does not change what build 1 re-runs

    again = node.mesh("rerun", "app", "1")
    stderr = again.stderr.decode()
    assert again.returncode == 0, stderr
    assert "build #2 of app (re-run of #1)" in stderr
    table = stderr.split("\nSTEP")[1].split("\npipeline ")[0]
    assert row(table, "build").split()[2] == "yes"  # it succeeded before: the cache answers it
    build = mesh_json(node, "build", "app", "2")
    assert (build["commit"], build["trigger"], build["rerun_of"], build["state"]) == (commit, "rerun", 1, "succeeded")

    one = node.mesh("rerun", "app", "1", "--task", "check", "--no-cache")
    assert one.returncode == 0, one.stderr.decode()
    build = mesh_json(node, "build", "app", "3")
    assert [step["name"] for step in build["steps"]] == ["check"]
    assert build["steps"][0]["result"]["cached"] is False
    assert [b["number"] for b in mesh_json(node, "builds", "app")["builds"]] == [3, 2, 1]

    # A build's job re-run by its id is a build too: every run of a project has a number.
    job = mesh_json(node, "build", "app", "1")["job"]
    by_job = node.mesh("rerun", job, "--task", "check")
    assert by_job.returncode == 0, by_job.stderr.decode()
    assert "build #4 of app (re-run of #1)" in by_job.stderr.decode()
    build = mesh_json(node, "build", "app", "4")
    assert (build["commit"], build["rerun_of"], [s["name"] for s in build["steps"]]) == (commit, 1, ["check"])

    shown = node.mesh("build", "app", "4")
    assert f"build #4 of app  succeeded  commit {commit}  (rerun of #1)" in shown.stdout.decode()
    forgot = node.mesh("rerun", "app")
    assert forgot.returncode == 2 and "give its number too (mesh rerun app N)" in forgot.stderr.decode()
    absent = node.mesh("rerun", "app", "9")
    assert absent.returncode != 0 and "project app has no build 9" in absent.stderr.decode()
