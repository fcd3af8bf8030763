"""The events of a job, typed: one frozen dataclass per kind, one encoder, one decoder.

A job's log (mesh.sched.events.JobEvents) holds these; ``/v1/jobs/{id}/events`` sends
them as CBOR frames or NDJSON lines (:func:`to_wire`), and whoever follows a job (``mesh
exec``'s Follower, a peer that offered the task, ``mesh logs -f``) reads them back with
:func:`from_wire`, the one place that checks their fields. On the wire each event is a
map with ``type`` (the kind), ``seq`` (its number in the job's log, from 0) and, for
events of a live log, ``time``; fields at their defaults (``stolen``, ``dropped``,
``summary``, a job's ``reason``) are left out, as before the events were typed.

An event of a kind this version does not know decodes to None, so that a client follows
a newer node's jobs and skips what it cannot show; a known kind with a field that is
missing or of the wrong type is a CodecError.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, get_args

from mesh.errors import CodecError
from mesh.exec.action import ActionResult
from mesh.sched.jobs import JobState, TaskState, is_job_state, is_task_state

Stream = Literal["stdout", "stderr"]


def stream_named(name: str) -> Stream:
    """The stream ``name`` stands for (ValueError for another name)."""
    if name == "stdout":
        return "stdout"
    if name == "stderr":
        return "stderr"
    raise ValueError(f"no output stream {name!r}: stdout or stderr")


@dataclass(frozen=True, kw_only=True)
class _Event:
    seq: int = 0
    time: float | None = None  # None in a summary made from the database (no live log left)


@dataclass(frozen=True, kw_only=True)
class JobSubmitted(_Event):
    """The job was accepted: its id and its tasks' names, in the order submitted."""

    KIND: ClassVar[str] = "job_submitted"
    job: str
    tasks: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class TaskStarted(_Event):
    """A task began to run on ``node`` (a node id, or a peer's URL), its ``attempt``-th run."""

    KIND: ClassVar[str] = "task_started"
    task: str
    node: str
    attempt: int
    stolen: bool = False  # an idle peer took it from the queue (work stealing)


@dataclass(frozen=True, kw_only=True)
class Output(_Event):
    """A chunk of a task's stdout or stderr, at ``offset`` in that stream. A ``dropped``
    chunk's data was shed from a long log: the stream's blob holds every byte."""

    KIND: ClassVar[str] = "output"
    task: str
    stream: Stream
    data: bytes
    offset: int
    dropped: bool = False


@dataclass(frozen=True, kw_only=True)
class TaskRequeued(_Event):
    """A task goes back to the queue (its peer was lost, say), to run again."""

    KIND: ClassVar[str] = "task_requeued"
    task: str
    reason: str


@dataclass(frozen=True, kw_only=True)
class TaskFinished(_Event):
    """A task ended in a final state, with its result when it ran (or came from the cache)."""

    KIND: ClassVar[str] = "task_finished"
    task: str
    state: TaskState
    reason: str | None
    result: ActionResult | None
    summary: bool = False  # made from the database, the job's live log being gone


@dataclass(frozen=True, kw_only=True)
class JobFinished(_Event):
    """The job ended: the last event of its log."""

    KIND: ClassVar[str] = "job_finished"
    job: str
    state: JobState
    reason: str | None = None  # why the node failed the job itself
    summary: bool = False


JobEvent = JobSubmitted | TaskStarted | Output | TaskRequeued | TaskFinished | JobFinished
_KINDS: dict[str, type[JobEvent]] = {
    kind.KIND: kind for kind in (JobSubmitted, TaskStarted, Output, TaskRequeued, TaskFinished, JobFinished)
}
#: Fields left out of the wire form while they hold these values.
_OMITTED_AT: dict[str, object] = {"stolen": False, "dropped": False, "summary": False, "time": None}


def to_wire(event: JobEvent) -> dict[str, Any]:
    """The event as the map the API sends (CBOR or JSON)."""
    wire: dict[str, Any] = {"seq": event.seq, "type": event.KIND}
    for field in dataclasses.fields(event):
        value = getattr(event, field.name)
        if field.name == "seq" or (field.name in _OMITTED_AT and value == _OMITTED_AT[field.name]):
            continue
        if field.name == "reason" and value is None and isinstance(event, JobFinished):
            continue
        if isinstance(value, ActionResult):
            value = value.to_wire()
        elif isinstance(value, tuple):
            value = list(value)
        wire[field.name] = value
    return wire


def from_wire(wire: object) -> JobEvent | None:
    """The event a map from the API stands for; None for a kind this version does not know.
    CodecError when a known kind's fields are missing or of the wrong type."""
    if not isinstance(wire, dict):
        raise CodecError(f"a job event is a map, not {type(wire).__name__}")
    kind = _KINDS.get(str(wire.get("type")))
    if kind is None:
        return None
    what = f"a {kind.KIND} event"
    fields: dict[str, Any] = {}
    for field in dataclasses.fields(kind):
        if field.name not in wire:
            if field.default is dataclasses.MISSING:
                raise CodecError(f"{what} lacks its {field.name!r}")
            continue
        value = wire[field.name]
        if field.type == "ActionResult | None":
            fields[field.name] = None if value is None else ActionResult.from_wire(value, f"the result in {what}")
            continue
        if not _CHECKS[str(field.type)](value):
            raise CodecError(f"{what} has a malformed {field.name!r}: {value!r:.80}")
        if field.type == "tuple[str, ...]":
            value = tuple(value)
        elif field.type == "float | None" and value is not None:
            value = float(value)
        fields[field.name] = value
    return kind(**fields)


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


#: The check of a field's value, by the field's type as written in the dataclasses above.
_CHECKS: dict[str, Callable[[object], bool]] = {
    "int": lambda value: isinstance(value, int) and not isinstance(value, bool),
    "str": lambda value: isinstance(value, str),
    "str | None": lambda value: value is None or isinstance(value, str),
    "bool": lambda value: isinstance(value, bool),
    "bytes": lambda value: isinstance(value, bytes),
    "float | None": lambda value: value is None or _number(value),
    "tuple[str, ...]": lambda value: isinstance(value, list) and all(isinstance(name, str) for name in value),
    "Stream": lambda value: value in get_args(Stream),
    "TaskState": is_task_state,
    "JobState": is_job_state,
}
