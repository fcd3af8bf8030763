"""The re-run of a job or of one task (mesh.sched.rerun), and the ``prior`` outputs of a task.

A job of a producer whose output is the input of one task and an overlay layer of another,
and a reaction: re-running a task keeps the dependents it has and turns what it took from
tasks left out into ``input`` and ``prior`` (in the order its overlay names them); what
cannot be re-run is refused with a message that says what to do.
"""

from __future__ import annotations

from typing import Any

import pytest

from mesh.cas.digest import Digest
from mesh.errors import CodecError, InvalidJob, RerunRefused
from mesh.exec.action import ActionResult
from mesh.sched.jobs import JobSpec, TaskRecord, TaskState, parse_job
from mesh.sched.rerun import rerun_job, rerun_task

BASE = Digest.of(b"base")
OUT = {name: Digest.of(name.encode()) for name in ("make", "gen", "pack", "lint")}


def _task(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "argv": ["true"], "executor": "process", **extra}


def _spec() -> JobSpec:
    return parse_job(
        {
            "tasks": [
                _task("make", input=str(BASE), outputs=["out"]),
                _task("gen", input=str(BASE), outputs=["gen"]),
                _task("pack", input_task="make", outputs=["pkg"]),
                _task("check", input=str(BASE), after=["gen", "make"], overlay=["gen", "make"]),
                _task("react", input=str(BASE), after=["check"], when="failure"),
            ],
            "label": "mesh run repo",
        }
    )


def _records(spec: JobSpec, states: dict[str, TaskState]) -> list[TaskRecord]:
    records = []
    for index, task in enumerate(spec.tasks):
        state = states.get(task.name, "succeeded")
        result = None
        if state in ("succeeded", "failed"):
            output = OUT.get(task.name) if state == "succeeded" else None
            result = ActionResult(
                exit_code=0 if state == "succeeded" else 1,
                stdout=BASE,
                stderr=BASE,
                output=output,
                started_at=1.0,
                finished_at=2.0,
                node="n",
            )
        records.append(TaskRecord(job="j", name=task.name, index=index, spec=task, state=state, result=result))
    return records


def _by_name(wire: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {task["name"]: task for task in wire["tasks"]}


def test_a_task_runs_again_on_the_outputs_it_saw_and_its_dependents_after_it() -> None:
    spec = _spec()
    wire = rerun_task("j" * 20, spec, _records(spec, {}), "check")
    parsed = parse_job(wire)  # a valid job
    tasks = _by_name(wire)
    assert list(tasks) == ["check", "react"]
    check = tasks["check"]
    assert check["overlay"] == ["gen", "make"]  # the order it laid them in
    assert check["prior"] == {"gen": str(OUT["gen"]), "make": str(OUT["make"])}
    assert (check["after"], check["when"], check["no_cache"]) == ([], "success", True)
    assert tasks["react"]["after"] == ["check"] and tasks["react"]["when"] == "failure"
    assert "no_cache" not in tasks["react"]  # its dependents use the cache as before
    assert parsed.by_name["check"].prior == {"gen": OUT["gen"], "make": OUT["make"]}
    assert wire["label"] == f"mesh run repo (re-run of task check of job {'j' * 20})"


def test_a_task_whose_input_was_a_task_output_gets_that_output_as_its_input() -> None:
    spec = _spec()
    tasks = _by_name(rerun_task("j" * 20, spec, _records(spec, {}), "pack"))
    assert list(tasks) == ["pack"]
    assert tasks["pack"]["input"] == str(OUT["make"]) and "input_task" not in tasks["pack"]


def test_the_producer_again_brings_what_depends_on_it_with_its_links() -> None:
    spec = _spec()
    tasks = _by_name(rerun_task("j" * 20, spec, _records(spec, {}), "make"))
    assert list(tasks) == ["make", "pack", "check", "react"]
    assert tasks["pack"]["input_task"] == "make"
    assert tasks["check"]["overlay"] == ["gen", "make"]
    assert tasks["check"]["prior"] == {"gen": str(OUT["gen"])}  # gen is not run again
    assert tasks["check"]["after"] == ["make"]


def test_what_cannot_be_re_run_is_refused_saying_why() -> None:
    spec = _spec()
    with pytest.raises(RerunRefused, match="has no task 'nope'"):
        rerun_task("j" * 20, spec, _records(spec, {}), "nope")
    failed = _records(spec, {"make": "failed", "pack": "skipped", "check": "skipped"})
    with pytest.raises(RerunRefused, match="task 'check' takes the outputs it overlays from task 'make', which ended"):
        rerun_task("j" * 20, spec, failed, "check")
    with pytest.raises(RerunRefused, match="task 'pack' takes its input from task 'make'"):
        rerun_task("j" * 20, spec, failed, "pack")
    running = _records(spec, {"gen": "running", "check": "waiting", "react": "waiting"})
    with pytest.raises(RerunRefused, match="needs gen, which has not finished"):
        rerun_task("j" * 20, spec, running, "check")


def test_a_reaction_runs_again_without_the_outputs_of_what_failed() -> None:
    spec = parse_job(
        {
            "tasks": [
                _task("make", input=str(BASE), outputs=["out"]),
                _task("report", input=str(BASE), after=["make"], overlay=["make"], when="failure"),
            ]
        }
    )
    tasks = _by_name(rerun_task("j" * 20, spec, _records(spec, {"make": "failed"}), "report"))
    assert "overlay" not in tasks["report"] and "prior" not in tasks["report"]
    assert tasks["report"]["when"] == "success"  # it runs, as asked


def test_the_whole_job_again_is_the_same_tasks_unpinned() -> None:
    spec = _spec()
    spec.pinned = True
    wire = rerun_job("j" * 20, spec, no_cache=True)
    assert [t["name"] for t in wire["tasks"]] == [t.name for t in spec.tasks]
    assert wire["no_cache"] is True and "pinned" not in wire


@pytest.mark.parametrize(
    ("prior", "message"),
    [
        ({"gen": "nonsense"}, "prior output 'gen'"),
        ({"other": str(OUT["gen"])}, "prior outputs of other, which 'overlay' does not name"),
        ({"-bad": str(OUT["gen"])}, "maps task names to snapshot ids"),
    ],
)
def test_a_malformed_prior_is_refused(prior: dict[str, str], message: str) -> None:
    task = _task("check", input=str(BASE), overlay=["gen"], prior=prior)
    with pytest.raises((InvalidJob, CodecError), match=message):  # both are a 400 on the API
        parse_job({"tasks": [task]})


def test_a_prior_output_of_a_task_it_also_runs_after_is_refused() -> None:
    tasks = [
        _task("gen", input=str(BASE)),
        _task("check", input=str(BASE), after=["gen"], overlay=["gen"], prior={"gen": str(OUT["gen"])}),
    ]
    with pytest.raises(InvalidJob, match="both runs after gen and has a prior output of it"):
        parse_job({"tasks": tasks})


def test_a_dependent_that_would_be_skipped_is_left_out() -> None:
    spec = parse_job(
        {
            "tasks": [
                _task("lint", input=str(BASE), outputs=["lint"]),
                _task("make", input=str(BASE), outputs=["out"]),
                _task("ship", input=str(BASE), after=["lint", "make"], overlay=["lint", "make"]),
                _task("tell", input=str(BASE), after=["ship"]),
                _task("react", input=str(BASE), after=["ship"], when="always"),
            ]
        }
    )
    records = _records(spec, {"lint": "failed", "ship": "skipped", "tell": "skipped"})
    tasks = _by_name(rerun_task("j" * 20, spec, records, "make"))
    assert list(tasks) == ["make"]  # ship needs lint, which failed: ship (and tell) would be skipped
    tasks = _by_name(rerun_task("j" * 20, spec, _records(spec, {}), "make"))
    assert list(tasks) == ["make", "ship", "tell", "react"]
