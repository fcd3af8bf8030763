"""Typed job events (mesh.sched.jobevents): one encoder, one decoder, and what they refuse."""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh import codec
from mesh.cas.digest import Digest
from mesh.errors import CodecError
from mesh.exec.action import ActionResult
from mesh.sched.jobevents import (
    _CHECKS,
    _KINDS,
    JobEvent,
    JobFinished,
    JobSubmitted,
    Output,
    TaskFinished,
    TaskRequeued,
    TaskStarted,
    from_wire,
    to_wire,
)
from mesh.sched.jobs import JOB_STATES, TASK_STATES

names = st.text(min_size=1, max_size=12)
times = st.none() | st.floats(min_value=0, max_value=2e9, allow_nan=False)
results = st.none() | st.builds(
    ActionResult,
    exit_code=st.integers(0, 255),
    stdout=st.just(Digest.of(b"out")),
    stderr=st.just(Digest.of(b"")),
    output=st.none() | st.just(Digest.of(b"tree")),
    started_at=st.just(time.time()),
    finished_at=st.just(time.time()),
    node=names,
    cached=st.booleans(),
)
events: st.SearchStrategy[JobEvent] = st.one_of(
    st.builds(JobSubmitted, seq=st.integers(0, 10**6), time=times, job=names, tasks=st.lists(names).map(tuple)),
    st.builds(
        TaskStarted,
        seq=st.integers(0),
        time=times,
        task=names,
        node=names,
        attempt=st.integers(1, 9),
        stolen=st.booleans(),
    ),
    st.builds(
        Output,
        seq=st.integers(0),
        time=times,
        task=names,
        stream=st.sampled_from(["stdout", "stderr"]),
        data=st.binary(max_size=64),
        offset=st.integers(0, 2**40),
        dropped=st.booleans(),
    ),
    st.builds(TaskRequeued, seq=st.integers(0), time=times, task=names, reason=names),
    st.builds(
        TaskFinished,
        seq=st.integers(0),
        time=times,
        task=names,
        state=st.sampled_from(TASK_STATES),
        reason=st.none() | names,
        result=results,
        summary=st.booleans(),
    ),
    st.builds(
        JobFinished,
        seq=st.integers(0),
        time=times,
        job=names,
        state=st.sampled_from(JOB_STATES),
        reason=st.none() | names,
        summary=st.booleans(),
    ),
)


@given(events)
def test_every_event_comes_back_from_cbor_as_it_went(event: JobEvent) -> None:
    assert from_wire(codec.decode(codec.encode(to_wire(event)))) == event


@given(events)
def test_events_without_bytes_come_back_from_json_too(event: JobEvent) -> None:
    if isinstance(event, Output):
        event = dataclasses.replace(event, data=b"")
    wire = to_wire(event)
    if isinstance(event, Output):
        del wire["data"]
    back = json.loads(json.dumps(wire))
    if isinstance(event, Output):
        back["data"] = b""
    assert from_wire(back) == event


def test_the_wire_form_is_the_one_followers_read_before_events_were_typed() -> None:
    started = to_wire(TaskStarted(seq=3, time=1.5, task="t", node="n", attempt=1))
    assert started == {"seq": 3, "type": "task_started", "time": 1.5, "task": "t", "node": "n", "attempt": 1}
    assert to_wire(TaskStarted(seq=3, task="t", node="n", attempt=1, stolen=True))["stolen"] is True
    assert "reason" not in to_wire(JobFinished(job="j", state="succeeded"))
    assert to_wire(TaskFinished(task="t", state="failed", reason=None, result=None))["reason"] is None


def test_a_kind_this_version_does_not_know_is_skipped() -> None:
    assert from_wire({"seq": 0, "type": "task_paused", "task": "t"}) is None


@pytest.mark.parametrize(
    "wire",
    [
        [],
        {"seq": 0, "type": "output", "task": "t", "stream": "stdin", "data": b"", "offset": 0},
        {"seq": 0, "type": "output", "task": "t", "stream": "stdout", "data": "text", "offset": 0},
        {"seq": 0, "type": "output", "task": "t", "stream": "stdout", "data": b"", "offset": True},
        {"seq": 0, "type": "task_finished", "task": "t", "state": "paused", "reason": None, "result": None},
        {"seq": 0, "type": "task_finished", "task": "t", "state": "failed", "reason": None, "result": {"x": 1}},
        {"seq": 0, "type": "job_finished", "state": "succeeded"},  # no job
        {"seq": "0", "type": "job_finished", "job": "j", "state": "succeeded"},
        {"seq": 0, "type": "job_submitted", "job": "j", "tasks": ["a", 1]},
    ],
    ids=["not-a-map", "stream", "data", "offset", "state", "result", "missing", "seq", "tasks"],
)
def test_malformed_events_are_codec_errors(wire: Any) -> None:
    with pytest.raises(CodecError):
        from_wire(wire)


def test_every_field_of_every_kind_has_a_check() -> None:
    unchecked = [
        f"{kind.KIND}.{field.name}: {field.type}"
        for kind in _KINDS.values()
        for field in dataclasses.fields(kind)
        if field.type not in _CHECKS and field.type != "ActionResult | None"
    ]
    assert not unchecked
