"""A pipeline to a job (mesh.pipelines.compile): the tasks, their order, inputs and reactions,
checked against the node's own job validation (mesh.sched.jobs.parse_job)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from hypothesis import given

from mesh.cas.digest import Digest
from mesh.errors import PipelineError
from mesh.pipelines.compile import compile_job
from mesh.pipelines.pipefile import parse
from mesh.sched.jobs import parse_job
from tests.test_pipefile import ISSUE_EXAMPLE, pipelines

SNAP = Digest.of(b"the repository")
TIMES = Digest.of(b"its times")


def compiled(text: str, **options: Any) -> dict[str, dict[str, Any]]:
    """The tasks of the compiled job by name, after the node's validation accepted the job."""
    job = compile_job(parse(text), input=SNAP, times=TIMES, **options)
    parse_job(job.wire)
    return {task["name"]: task for task in job.wire["tasks"]}


def test_the_issues_example_becomes_a_dag_with_a_matrix_and_a_reaction() -> None:
    tasks = compiled(ISSUE_EXAMPLE)
    assert list(tasks) == ["build", "test:1", "test:2", "test:3", "test:4", "on-failure"]
    build = tasks["build"]
    assert build["input"] == str(SNAP) and build["times"] == str(TIMES) and build["image"] == "localhost/builder:1"
    assert build["outputs"] == ["build"]  # only what it declared: what the steps after it see
    for shard in "1234":
        test = tasks[f"test:{shard}"]
        assert test["input"] == str(SNAP) and test["times"] == str(TIMES) and test["overlay"] == ["build"]
        assert "input_task" not in test
        assert test["env"]["SHARD"] == shard and test["argv"] == ["sh", "-c", "make test SHARD=$SHARD"]
    reaction = tasks["on-failure"]
    assert reaction["when"] == "failure" and reaction["after"] == ["test:1", "test:2", "test:3", "test:4"]
    assert reaction["input"] == str(SNAP)


def test_without_depends_on_steps_run_in_file_order() -> None:
    tasks = compiled("steps:\n  - name: a\n    run: x\n  - name: b\n    run: y\n  - name: c\n    run: z\n")
    assert "after" not in tasks["a"] and tasks["b"]["after"] == ["a"] and tasks["c"]["after"] == ["b"]


def test_a_step_keeps_its_declared_outputs_when_nothing_reads_them() -> None:
    tasks = compiled("steps:\n  - name: a\n    run: x\n    outputs: [dist/]\n")
    assert tasks["a"]["outputs"] == ["dist"]


def test_env_is_layered_file_then_step_then_matrix_then_set() -> None:
    text = "env: {A: file, B: file, C: file}\nsteps:\n  - name: s\n    run: x\n    env: {B: step, C: step}\n"
    text += "    matrix: {C: [matrix]}\n"
    assert compiled(text, env={"D": "set"})["s:matrix"]["env"] == {"A": "file", "B": "step", "C": "matrix", "D": "set"}


def test_selected_steps_bring_what_they_depend_on_only() -> None:
    assert list(compiled(ISSUE_EXAMPLE, only=["test"])) == ["build", "test:1", "test:2", "test:3", "test:4"]
    assert list(compiled(ISSUE_EXAMPLE, only=["build"])) == ["build"]
    with pytest.raises(PipelineError, match="no step named 'tst'; its steps: build, test, on-failure"):
        compiled(ISSUE_EXAMPLE, only=["tst"])


def test_a_branch_filter_leaves_the_step_and_what_depends_on_it_out_elsewhere() -> None:
    text = "steps:\n  - name: a\n    run: x\n  - name: deploy\n    run: y\n    depends_on: [a]\n"
    text += "    when: {branch: [main, 'release/*']}\n  - name: tell\n    run: z\n    depends_on: [deploy]\n"
    assert list(compiled(text, branch="release/2")) == ["a", "deploy", "tell"]
    assert list(compiled(text, branch="feature")) == ["a"]
    assert list(compiled(text, branch=None)) == ["a"]


def test_cache_false_runs_that_step_without_the_cache_and_labels_become_requirements() -> None:
    text = "steps:\n  - name: a\n    run: x\n    cache: false\n    requires: {gpu: 1}\n  - name: b\n    run: y\n"
    job = compile_job(parse(text), input=SNAP)
    a, b = parse_job(job.wire).tasks
    assert a.no_cache and not b.no_cache
    assert job.wire["tasks"][0]["requirements"] == {"label.gpu": "1"}


def test_a_matrix_value_a_task_name_cannot_hold_is_numbered() -> None:
    tasks = compiled("steps:\n  - name: t\n    run: x\n    matrix: {OS: ['debian 12', alpine], N: [1]}\n")
    assert list(tasks) == ["t:1", "t:alpine:1"]
    assert tasks["t:1"]["env"] == {"OS": "debian 12", "N": "1"}


def test_a_step_overlays_the_outputs_of_every_task_of_the_steps_it_depends_on() -> None:
    text = "steps:\n  - name: a\n    run: x\n    outputs: [a/]\n  - name: b\n    run: y\n    outputs: [b/]\n"
    text += "  - name: m\n    run: x\n    outputs: [o/]\n    matrix: {N: [1, 2]}\n  - name: n\n    run: n\n"
    text += "  - name: c\n    run: z\n    depends_on: [a, b, m, n]\n"
    tasks = compiled(text)
    c = tasks["c"]
    assert c["overlay"] == ["a", "b", "m:1", "m:2"]  # n declares no outputs: nothing to see of it
    assert c["after"] == ["a", "b", "m:1", "m:2", "n"]
    assert c["input"] == str(SNAP) and c["times"] == str(TIMES)
    assert tasks["m:1"]["outputs"] == ["o"] and "overlay" not in tasks["a"]


@given(pipelines())
def test_every_valid_pipeline_compiles_to_a_job_the_node_accepts(document: dict[str, Any]) -> None:
    pipeline = parse(yaml.safe_dump(document))
    job = compile_job(pipeline, input=SNAP, times=TIMES)
    spec = parse_job(job.wire)
    assert len(spec.tasks) == sum(len(step.combinations()) for step in pipeline.steps)
    assert [step for _, step in job.tasks] == [s.name for s in pipeline.steps for _ in s.combinations()]
