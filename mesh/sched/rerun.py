"""A re-run: a new job that runs an earlier job's tasks again (``mesh rerun``).

Two kinds, both a new job (a new id, and for a project's build a new number), the earlier
job left as it was:

- **The whole job** (:func:`rerun_job`): the same tasks with the same inputs. A task that
  succeeded before is answered from the action cache (the same action: the same result, by
  the cache's rule), so a re-run after a flaky failure runs what failed and what came after
  it; ``no_cache`` runs every task again.
- **One task and what depends on it** (:func:`rerun_task`): the task runs again with the
  inputs it had, and every task that depends on it, directly or not, runs after it on its
  new result (but for a dependent that would be skipped: one that also depends on a task left
  out that did not succeed). The tasks it depended on are not run again: a task whose input was another
  task's output gets that output as its input; one that overlaid their outputs gets them as
  ``prior`` outputs (mesh.sched.jobs), laid over its input in the same order; its ``after``
  and ``when`` go (it runs whatever they did before, as asked). A dependent keeps only its
  dependencies among the re-run tasks. The task asked for runs without the action cache
  (it *runs* again, even when it succeeded); its dependents use the cache as before.

Refused (RerunRefused) when the task is unknown, when a task it depends on has not finished,
or when a task whose output it needs (its input, or a layer it overlays) ended without one (it
failed, or was skipped): that task never ran with those inputs; re-run the one that failed.
A reaction (``when: failure|always``) never saw the outputs of the tasks that failed, and
runs without them again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mesh.cas.digest import Digest
from mesh.errors import RerunRefused
from mesh.sched import overlays
from mesh.sched.jobs import MAX_LABEL, JobSpec, TaskRecord

#: What a re-run's label adds to the earlier job's.
_SUFFIX = " (re-run{what} of job {job})"


def rerun_job(job_id: str, spec: JobSpec, *, no_cache: bool = False) -> dict[str, Any]:
    """The wire form of a job running every task of ``spec`` (job ``job_id``) again."""
    wire = spec.to_wire()
    wire.pop("pinned", None)
    wire["label"] = _label(spec.label, "", job_id)
    wire["no_cache"] = no_cache or spec.no_cache
    return wire


def rerun_task(
    job_id: str, spec: JobSpec, tasks: Sequence[TaskRecord], name: str, *, no_cache: bool = False
) -> dict[str, Any]:
    """The wire form of a job running task ``name`` of job ``job_id`` again with the inputs it
    had, and what depends on it (module docstring). RerunRefused when that cannot be done."""
    by_name = {task.name: task for task in tasks}
    if name not in by_name:
        known = ", ".join(sorted(by_name)[:20])
        raise RerunRefused(f"job {job_id} has no task {name!r} (its tasks: {known})")
    chosen = _dependents(spec, name, by_name)
    wires = []
    for task in spec.tasks:
        if task.name not in chosen:
            continue
        wire = dict(task.wire)
        outside = [dep for dep in task.depends_on if dep not in chosen]
        _check_finished(by_name, task.name, outside)
        source = task.input_task
        if source is not None and source not in chosen:
            wire.pop("input_task")
            wire["input"] = str(_output(by_name, task.name, source, "its input"))
        for layer in task.overlay:  # a reaction never saw a failed task's output: it adds nothing, as then
            if layer not in chosen and layer not in task.prior and task.when == "success":
                if by_name[layer].state != "succeeded":
                    raise _refused(task.name, by_name[layer], "the outputs it overlays")
        # what it laid over its input then (mesh.sched.overlays), but for the tasks that run again
        prior = {
            layer: str(digest) for layer, digest in overlays.layers(by_name[task.name], by_name) if layer not in chosen
        }
        wire["overlay"] = [layer for layer in task.overlay if layer in chosen or layer in prior]
        wire["prior"] = prior
        wire["after"] = [dep for dep in task.after if dep in chosen]
        if task.name == name:
            wire["when"] = "success"  # it runs, whatever its dependencies did
            wire["no_cache"] = True
        for key in ("overlay", "prior"):
            if not wire.get(key):
                wire.pop(key, None)
        wires.append(wire)
    return {
        "tasks": wires,
        "label": _label(spec.label, f" of task {name}", job_id),
        "no_cache": no_cache or spec.no_cache,
    }


def _dependents(spec: JobSpec, name: str, tasks: Mapping[str, TaskRecord]) -> set[str]:
    """``name`` and every task of ``spec`` that depends on it, directly or not, but for those
    that would be skipped: a dependent (``when: success``) of a task left out that did not
    succeed, and what depended on the re-run only through such a task."""
    chosen = {name}
    changed = True
    while changed:  # tasks come in any order: repeat until nothing is added
        changed = False
        for task in spec.tasks:
            if task.name not in chosen and any(dep in chosen for dep in task.depends_on):
                chosen.add(task.name)
                changed = True
    changed = True
    while changed:  # and until nothing more is taken out
        changed = False
        for task in spec.tasks:
            if task.name == name or task.name not in chosen:
                continue
            outside = [dep for dep in task.depends_on if dep not in chosen]
            skipped = task.when == "success" and any(tasks[dep].state != "succeeded" for dep in outside)
            if skipped or len(outside) == len(task.depends_on):  # it no longer depends on the re-run
                chosen.discard(task.name)
                changed = True
    return chosen


def _check_finished(tasks: Mapping[str, TaskRecord], name: str, needed: list[str]) -> None:
    unfinished = [dep for dep in needed if tasks[dep].state in ("waiting", "queued", "running")]
    if unfinished:
        raise RerunRefused(
            f"task {name!r} needs {', '.join(unfinished)}, which has not finished yet: wait for the job, or"
            " re-run the whole job"
        )


def _output(tasks: Mapping[str, TaskRecord], name: str, source: str, what: str) -> Digest:
    """The output snapshot of ``source``, which ``name`` needs (RerunRefused if there is none)."""
    upstream = tasks[source]
    if upstream.state != "succeeded" or upstream.result is None or upstream.result.output is None:
        raise _refused(name, upstream, what)
    return upstream.result.output


def _refused(name: str, upstream: TaskRecord, what: str) -> RerunRefused:
    return RerunRefused(
        f"task {name!r} takes {what} from task {upstream.name!r}, which ended {upstream.state} without an output:"
        f" re-run {upstream.name!r} instead"
    )


def _label(label: str, what: str, job_id: str) -> str:
    suffix = _SUFFIX.format(what=what, job=job_id)
    return label[: MAX_LABEL - len(suffix)] + suffix
