"""Jobs and tasks: the model, its validation, and the state machine of a task.

A job is a set of named tasks forming a DAG. Each task holds an action; its
input is a snapshot or the output snapshot of another task (``input_task``),
``after`` orders it behind other tasks and ``when`` makes it a reaction:

- ``success`` (the default): runs when every task it depends on succeeded;
- ``failure``: runs when at least one of them failed (a reaction to failure);
- ``always``: runs when they have all finished, whatever their outcome.

A task whose condition can no longer hold is ``skipped``. A task whose input
comes from another task depends on it like an ``after`` entry.

``overlay`` names tasks of ``after`` whose output snapshots are laid over the task's
``input`` (mesh.cas.overlay) once they have finished: the task runs on the base snapshot
with their outputs at their paths (a pipeline step sees the repository plus the declared
outputs of the steps it depends on). The scheduler makes the overlay when the task becomes
ready (mesh.sched.scheduler); a named task that ended with no output (it failed, or was
skipped, before a ``failure`` or ``always`` reaction) adds nothing; two of them with an
entry at the same path fail the task, naming the path and both. With ``times``, the base's
entries keep their times and the outputs' entries get the fixed one (mesh.cas.times).

``prior`` gives the output snapshots of tasks of an earlier job, by name, for ``overlay`` to
name as well: a re-run (mesh.sched.rerun) runs a task again with the inputs it had, and the
tasks whose outputs it saw are not run again; their outputs are laid over its input as they
were, in the order ``overlay`` names them.

Task states::

    waiting ──> queued ──> running ──> succeeded | failed
       │          │           │
       └──────────┴───────────┴──> skipped | cancelled

A job is ``running`` until every task is final; then ``failed`` if any task
failed, ``cancelled`` if it was cancelled, else ``succeeded``.

The wire form of a job submission (CBOR, or JSON on the API)::

    {"tasks": [{"name": str, "argv": [str], "input": "b3:..." | "input_task": name,
                "env": {str: str}, "cwd": str, "outputs": [str] | null,
                "timeout": seconds, "executor": "process", "image": str | null,
                "network": bool, "requirements": {str: str}, "times": "b3:..." (with "input"),
                "stdin": "b3:..." (optional), "no_cache": bool (optional),
                "after": [name], "when": "success" | "failure" | "always",
                "overlay": [name] (optional, with "input", each also in "after" or "prior"),
                "prior": {name: "b3:..."} (optional: outputs of an earlier job's tasks)}, ...],
     "label": str, "no_cache": bool, "pinned": bool}

``times`` names the times manifest (mesh.cas.times) of the input: the mtimes the task
sees on its input's entries; it travels with the input (uploaded with it, fetched with it).

A task's ``no_cache`` runs it without the action cache (neither answered from it nor
recorded in it), as the job's does for every task (a pipeline step's ``cache: false``).

``pinned`` keeps every task on the node that accepted the job: a coordinator offering
a task to a peer sends it as a pinned one-task job, so the peer never passes it on,
with the job's ``no_cache`` set when the task runs without the cache (its job's or its own).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal, TypeGuard, get_args

from mesh import codec
from mesh.cas.digest import Digest
from mesh.errors import CodecError, InvalidJob
from mesh.exec.action import Action, ActionResult, parse_digest

#: When a task runs, given how its dependencies ended (Asphalt's reactions).
When = Literal["success", "failure", "always"]
#: A task's state: waiting for dependencies, queued for a slot, running, or one of the final four.
TaskState = Literal["waiting", "queued", "running", "succeeded", "failed", "skipped", "cancelled"]
#: A job's state: running until every task is final.
JobState = Literal["running", "succeeded", "failed", "cancelled"]

WHEN: tuple[When, ...] = get_args(When)
TASK_STATES: tuple[TaskState, ...] = get_args(TaskState)
FINAL_TASK_STATES: frozenset[TaskState] = frozenset({"succeeded", "failed", "skipped", "cancelled"})
JOB_STATES: tuple[JobState, ...] = get_args(JobState)


def _is_when(value: object) -> TypeGuard[When]:
    return value in WHEN


def is_task_state(value: object) -> TypeGuard[TaskState]:
    """Whether ``value`` names a task state (text read back from the database or the wire)."""
    return value in TASK_STATES


def is_job_state(value: object) -> TypeGuard[JobState]:
    """Whether ``value`` names a job state."""
    return value in JOB_STATES


#: Most tasks one job may hold.
MAX_TASKS = 10_000
#: Most tasks whose outputs one task's input may overlay (a step after a matrix of 256, and more).
MAX_OVERLAY = 1024
#: Longest label of a job, in characters.
MAX_LABEL = 500

_NAME = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.:+@-]{0,127}")


@dataclass(kw_only=True)
class TaskSpec:
    """One task as submitted: ``wire`` is its map as sent (name filled in), the rest parsed from it."""

    name: str
    wire: dict[str, Any]
    input: Digest | None
    input_task: str | None
    after: tuple[str, ...]
    when: When
    parsed: Action | None = field(default=None, repr=False, compare=False)  # the action, when ``input`` is set
    stdin: Digest | None = None  # the blob the task reads as stdin (None: empty)
    no_cache: bool = False  # this task runs without the action cache (the job's no_cache: every task)
    overlay: tuple[str, ...] = ()  # tasks of ``after`` (or ``prior``) whose outputs are laid over ``input``
    prior: dict[str, Digest] = field(default_factory=dict)  # outputs of an earlier job's tasks (a re-run's)

    @property
    def depends_on(self) -> tuple[str, ...]:
        """Every task that must finish before this one may start."""
        deps = list(self.after)
        if self.input_task is not None and self.input_task not in deps:
            deps.append(self.input_task)
        return tuple(deps)

    def action(self, input: Digest | None = None) -> Action:
        """The task's action; ``input`` is required when the input comes from a task."""
        if self.input is not None and self.parsed is not None:
            return self.parsed  # parsed once, when the job was validated
        fields = codec.Fields(self.wire, f"task {self.name!r}")
        if self.input is not None:
            input = self.input
        if input is None:
            raise InvalidJob(f"task {self.name!r} has no input snapshot yet")
        return Action.from_fields(fields, input=input)


@dataclass(kw_only=True)
class JobSpec:
    """A validated job submission."""

    tasks: list[TaskSpec]
    label: str = ""
    no_cache: bool = False
    pinned: bool = False  # run every task on the node that accepted the job (a task a peer offered it)
    by_name: dict[str, TaskSpec] = field(init=False)

    def __post_init__(self) -> None:
        self.by_name = {t.name: t for t in self.tasks}

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"tasks": [t.wire for t in self.tasks], "label": self.label, "no_cache": self.no_cache}
        if self.pinned:
            wire["pinned"] = True
        return wire


def parse_job(value: Any, *, default_executor: str = "process") -> JobSpec:
    """Validate a decoded job submission; raises InvalidJob or CodecError saying what is wrong.

    Checks every task's action (types, paths, executor), that names are unique and
    well formed, that ``after``/``input_task`` name tasks of this job, and that
    the graph has no cycle. A task that names no executor gets ``docker`` when it
    names an image, else ``default_executor`` (the accepting node's default:
    ``sandbox`` where bubblewrap works); the choice is written into the task, so
    it is part of the action and its cache key from then on.
    """
    fields = codec.Fields(value, "job")
    raw_tasks = fields.sequence("tasks")
    label = fields.text("label", "")
    no_cache = fields.flag("no_cache", False)
    pinned = fields.flag("pinned", False)
    fields.done()
    if not raw_tasks:
        raise InvalidJob("a job needs at least one task")
    if len(raw_tasks) > MAX_TASKS:
        raise InvalidJob(f"a job may hold at most {MAX_TASKS} tasks, not {len(raw_tasks)}")
    if len(label) > MAX_LABEL:
        raise InvalidJob(f"a job's label may be at most {MAX_LABEL} characters")
    tasks = [_parse_task(raw, index, default_executor) for index, raw in enumerate(raw_tasks)]
    names = [t.name for t in tasks]
    duplicates = sorted(n for n, count in Counter(names).items() if count > 1)
    if duplicates:
        raise InvalidJob(f"task names must be unique; repeated: {', '.join(duplicates)}")
    known = set(names)
    for task in tasks:
        for dep in task.depends_on:
            if dep not in known:
                raise InvalidJob(f"task {task.name!r} depends on {dep!r}, which is not a task of this job")
            if dep == task.name:
                raise InvalidJob(f"task {task.name!r} depends on itself")
        if task.when != "success" and not task.depends_on:
            raise InvalidJob(f"task {task.name!r} is a {task.when} reaction but depends on no task (set 'after')")
    cycle = find_cycle({t.name: t.depends_on for t in tasks})
    if cycle:
        raise InvalidJob(f"the task graph has a cycle: {' -> '.join(cycle)}")
    return JobSpec(tasks=tasks, label=label, no_cache=no_cache, pinned=pinned)


def _parse_task(raw: Any, index: int, default_executor: str) -> TaskSpec:
    if isinstance(raw, dict) and "executor" not in raw:
        raw = {**raw, "executor": "docker" if raw.get("image") else default_executor}
    fields = codec.Fields(raw, f"task #{index + 1}")
    name = fields.text("name", f"task{index + 1}")
    if not _NAME.fullmatch(name):
        raise InvalidJob(
            f"task name {name!r} is not valid: use up to 128 letters, digits and _ . : + @ -, not starting with -"
        )
    fields.what = f"task {name!r}"
    after = tuple(fields.texts("after", []))
    when = fields.text("when", "success")
    if not _is_when(when):
        raise InvalidJob(f"'when' of task {name!r} must be one of {', '.join(WHEN)}, not {when!r}")
    input_text = fields.text("input", None)
    input_task = fields.text("input_task", None)
    if (input_text is None) == (input_task is None):
        raise InvalidJob(f"task {name!r} needs exactly one of 'input' (a snapshot id) and 'input_task' (a task name)")
    input = None if input_text is None else parse_digest(input_text, f"field 'input' of task {name!r}")
    # Validate the action now (with a placeholder input when it comes from a task).
    probe = Digest.of(b"") if input is None else input
    action = Action.from_fields(fields, input=probe)
    no_cache = fields.flag("no_cache", False)
    overlay = tuple(fields.texts("overlay", []))
    prior = _prior(name, fields.mapping("prior", {}))
    fields.done()
    _check_overlay(name, overlay, after, input, prior)
    if input is None and action.times is not None:
        raise InvalidJob(f"task {name!r} takes its input from a task, whose output has no times manifest: drop 'times'")
    return TaskSpec(
        name=name,
        wire={**raw, "name": name},
        input=input,
        input_task=input_task,
        after=after,
        when=when,
        parsed=action if input is not None else None,
        stdin=action.stdin,
        no_cache=no_cache,
        overlay=overlay,
        prior=prior,
    )


def _prior(name: str, raw: dict[Any, Any]) -> dict[str, Digest]:
    """A task's ``prior``: task names to output snapshots (InvalidJob for a malformed one)."""
    if len(raw) > MAX_OVERLAY:
        raise InvalidJob(f"task {name!r} names {len(raw)} prior outputs; at most {MAX_OVERLAY}")
    prior = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not _NAME.fullmatch(key) or not isinstance(value, str):
            raise InvalidJob(f"'prior' of task {name!r} maps task names to snapshot ids")
        prior[key] = parse_digest(value, f"prior output {key!r} of task {name!r}")
    return prior


def _check_overlay(
    name: str, overlay: tuple[str, ...], after: tuple[str, ...], input: Digest | None, prior: dict[str, Digest]
) -> None:
    """Refuse an ``overlay`` that cannot be made: over no snapshot, too long, repeated, or naming
    a task the task does not run after (nor has a prior output of); and a ``prior`` that no
    ``overlay`` entry names, or that names a task the task also runs after."""
    unused = sorted(set(prior) - set(overlay))
    if unused:
        raise InvalidJob(f"task {name!r} has prior outputs of {', '.join(unused)}, which 'overlay' does not name")
    both = sorted(set(prior) & set(after))
    if both:
        raise InvalidJob(f"task {name!r} both runs after {', '.join(both)} and has a prior output of it")
    if not overlay:
        return
    if input is None:
        raise InvalidJob(f"task {name!r} overlays task outputs, which needs 'input' (a snapshot to lay them over)")
    if len(overlay) > MAX_OVERLAY:
        raise InvalidJob(f"task {name!r} overlays {len(overlay)} tasks' outputs; at most {MAX_OVERLAY}")
    repeated = sorted(n for n, count in Counter(overlay).items() if count > 1)
    if repeated:
        raise InvalidJob(f"task {name!r} names {', '.join(repeated)} more than once in 'overlay'")
    missing = [n for n in overlay if n not in after and n not in prior]
    if missing:
        raise InvalidJob(
            f"task {name!r} overlays the output of {', '.join(missing)}, which it does not run after: add to 'after'"
        )


def find_cycle(graph: dict[str, tuple[str, ...]]) -> list[str] | None:
    """A cycle of the dependency graph as a list of names (first repeated at the end), or None."""
    colour: dict[str, int] = {}
    for start in graph:
        if colour.get(start):
            continue
        stack: list[tuple[str, int]] = [(start, 0)]
        path: list[str] = []
        while stack:
            name, i = stack.pop()
            if i == 0:
                colour[name] = 1
                path.append(name)
            deps = graph.get(name, ())
            if i < len(deps):
                stack.append((name, i + 1))
                dep = deps[i]
                if colour.get(dep) == 1:
                    return path[path.index(dep) :] + [dep]
                if not colour.get(dep):
                    stack.append((dep, 0))
            else:
                colour[name] = 2
                path.pop()
    return None


def decide(when: When, dep_states: list[TaskState]) -> Literal["queued", "skipped"] | None:
    """What a task becomes once its dependencies are in ``dep_states``.

    Returns ``"queued"`` (its condition holds), ``"skipped"`` (it can no longer hold)
    or None (some dependency is not final yet).
    """
    if any(s not in FINAL_TASK_STATES for s in dep_states):
        return None
    ok = all(s == "succeeded" for s in dep_states)
    if when == "success":
        return "queued" if ok else "skipped"
    if when == "failure":
        return "queued" if any(s == "failed" for s in dep_states) else "skipped"
    return "queued"


def job_state(task_states: list[TaskState], cancelled: bool) -> JobState:
    """The state of a job given the states of its tasks."""
    if any(s not in FINAL_TASK_STATES for s in task_states):
        return "running"
    if cancelled:
        return "cancelled"
    if any(s == "failed" for s in task_states):
        return "failed"
    return "succeeded"


@dataclass(kw_only=True)
class TaskRecord:
    """A task as the node tracks it: its spec, state and result."""

    job: str
    name: str
    index: int
    spec: TaskSpec
    state: TaskState
    result: ActionResult | None = None
    reason: str | None = None
    attempts: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    action: Action | None = None  # built when the task became ready (not stored: rebuilt from the spec)
    cache_note: str | None = None  # why its cache lookup missed (not stored: looked up again on resume)
    leads: Digest | None = None  # the cache key it runs for the tasks waiting on it (mesh.sched.inflight)
    claimed_by: str | None = None  # the node that granted it the mesh's claim of that key

    def to_wire(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state,
            "argv": self.spec.wire.get("argv"),
            "after": list(self.spec.after),
            "when": self.spec.when,
            "input": None if self.spec.input is None else str(self.spec.input),
            "input_task": self.spec.input_task,
            "result": None if self.result is None else self.result.to_wire(),
            "reason": self.reason,
            "attempts": self.attempts,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        }


def check_job_id(text: str) -> str:
    """Refuse text that cannot be a job id (they are 20 lowercase hex digits)."""
    if not re.fullmatch(r"[0-9a-f]{20}", text):
        raise CodecError(f"{text!r} is not a job id (20 hex digits)")
    return text
