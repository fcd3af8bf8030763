"""A pipeline (mesh.pipelines.pipefile) to one job of the node (mesh.sched.jobs' wire form).

Each step becomes a task; a step with a ``matrix`` becomes one task per combination, named
``STEP:V1:V2`` by its values (``STEP:N``, the combination's number from 1, when a value
holds a character a task name may not), each with its values in its env. ``depends_on``
becomes the tasks' ``after`` (every task of a matrix step it names); without any
``depends_on`` in the file each step comes after the one before it. ``when.status``
is the task's ``when``; ``when.branch`` leaves the step out on other branches, and with
it every step that depends on it. ``cache: false`` is the task's ``no_cache``.

What a step sees: the repository's snapshot (with its times manifest: the mtimes of the
working tree, as ``mesh exec``) with the declared ``outputs`` of the steps it depends on laid
over it at their paths (the task's ``overlay``: every task of those steps, a matrix step's
included; mesh.sched.jobs, mesh.cas.overlay). A step with ``outputs`` captures only those
paths (its task's ``outputs``), so what a step sees is the repository plus what its
dependencies declared, not whatever else they wrote; the repository's files keep their
times, the outputs' files have the fixed one. Two tasks whose outputs hold the same path
fail the step that overlays them, naming the path and both tasks.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from mesh.cas.digest import Digest
from mesh.errors import PipelineError
from mesh.pipelines.pipefile import Pipeline, Step

_VALUE = re.compile(r"[A-Za-z0-9_.+@-]+")


@dataclass(frozen=True, kw_only=True)
class CompiledJob:
    """A job's wire form and, in order, each of its tasks with the step it runs."""

    wire: dict[str, Any]
    tasks: tuple[tuple[str, str], ...]  # (task name, step name)


def compile_job(
    pipeline: Pipeline,
    *,
    input: Digest,
    times: Digest | None = None,
    only: Iterable[str] = (),
    env: Mapping[str, str] | None = None,
    branch: str | None = None,
    label: str = "mesh run",
) -> CompiledJob:
    """The job that runs ``pipeline`` on the snapshot ``input``: ``only`` those steps and what
    they depend on (default: all), with ``env`` set for every step (over the file's), the steps
    whose ``when.branch`` does not match ``branch`` left out (None: no branch known, so every
    step with a branch filter is). PipelineError for an unknown step."""
    deps = effective_deps(pipeline)
    chosen = select(pipeline, deps, only)
    kept = [s for s in pipeline.steps if s.name in chosen and _on_branch(s, branch)]
    dropped = {s.name for s in pipeline.steps} - {s.name for s in kept}
    changed = True
    while changed:  # what depends on a step left out is left out too
        changed = False
        for step in list(kept):
            if any(d in dropped for d in deps[step.name]):
                kept.remove(step)
                dropped.add(step.name)
                changed = True
    if not kept:
        raise PipelineError(f"{pipeline.filename}: no step runs on branch {branch or '(unknown)'}")
    names = {step.name: task_names(step) for step in kept}
    tasks: list[dict[str, Any]] = []
    order: list[tuple[str, str]] = []
    for step in kept:
        after = [t for d in deps[step.name] for t in names[d]]
        sources = [t for d in deps[step.name] if pipeline.step(d).outputs for t in names[d]]
        for name, combination in zip(names[step.name], step.combinations(), strict=True):
            task = _task(pipeline, step, name, combination, env or {})
            task["input"] = str(input)
            if times is not None:
                task["times"] = str(times)
            if sources:
                task["overlay"] = sources
            if after:
                task["after"] = after
            if step.when.status != "success" and after:  # ``always`` with nothing before: a plain step
                task["when"] = step.when.status
            if step.outputs:
                task["outputs"] = list(step.outputs)
            tasks.append(task)
            order.append((name, step.name))
    return CompiledJob(wire={"tasks": tasks, "label": label}, tasks=tuple(order))


def effective_deps(pipeline: Pipeline) -> dict[str, tuple[str, ...]]:
    """Each step's dependencies: its ``depends_on``, or the step before it when none has any."""
    if not pipeline.ordered:
        return {step.name: step.depends_on for step in pipeline.steps}
    steps = pipeline.steps
    return {step.name: (steps[i - 1].name,) if i else () for i, step in enumerate(steps)}


def select(pipeline: Pipeline, deps: Mapping[str, tuple[str, ...]], only: Iterable[str]) -> set[str]:
    """The names of the steps ``only`` names and every step they depend on (all: when none named)."""
    wanted = list(only)
    if not wanted:
        return {step.name for step in pipeline.steps}
    for name in wanted:
        if name not in deps:
            known = ", ".join(step.name for step in pipeline.steps)
            raise PipelineError(f"{pipeline.filename}: no step named {name!r}; its steps: {known}")
    chosen: set[str] = set()
    while wanted:
        name = wanted.pop()
        if name not in chosen:
            chosen.add(name)
            wanted.extend(deps[name])
    return chosen


def task_names(step: Step) -> list[str]:
    """The task names of a step: its name, or one per matrix combination (module docstring)."""
    if not step.matrix:
        return [step.name]
    names = []
    for number, combination in enumerate(step.combinations(), 1):
        values = [value for _, value in combination]
        if all(_VALUE.fullmatch(v) for v in values) and len(step.name) + sum(len(v) + 1 for v in values) <= 128:
            names.append(":".join([step.name, *values]))
        else:
            names.append(f"{step.name}:{number}")
    return names


def _on_branch(step: Step, branch: str | None) -> bool:
    if not step.when.branch:
        return True
    return branch is not None and any(fnmatch.fnmatchcase(branch, glob) for glob in step.when.branch)


def _task(
    pipeline: Pipeline, step: Step, name: str, combination: tuple[tuple[str, str], ...], overrides: Mapping[str, str]
) -> dict[str, Any]:
    env = {**dict(pipeline.env), **dict(step.env), **dict(combination), **overrides}
    task: dict[str, Any] = {"name": name, "argv": list(step.argv), "env": env}
    optional = {
        "image": step.image,
        "executor": step.executor,
        "timeout": step.timeout,
        "network": True if step.network else None,
        "no_cache": None if step.cache else True,
        "requirements": {f"label.{key}": value for key, value in step.requires} or None,
    }
    task.update((key, value) for key, value in optional.items() if value is not None)
    return task
