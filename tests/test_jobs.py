"""The job model: validation of submissions, the graph rules, the reaction logic."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh.cas.digest import Digest
from mesh.errors import CodecError, InvalidJob
from mesh.exec.action import Action
from mesh.sched.jobs import FINAL_TASK_STATES, MAX_OVERLAY, decide, find_cycle, job_state, parse_job

SNAP = str(Digest.of(b"snapshot"))


def task(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "argv": ["true"], "input": SNAP, **extra}


def test_a_valid_job_round_trips() -> None:
    job = {
        "label": "build",
        "tasks": [
            task("a", env={"X": "1"}, timeout=5, outputs=["out/"]),
            {"name": "b", "argv": ["make"], "input_task": "a", "when": "always"},
        ],
    }
    spec = parse_job(job)
    assert [t.name for t in spec.tasks] == ["a", "b"]
    assert spec.by_name["b"].depends_on == ("a",)
    assert parse_job(spec.to_wire()).to_wire() == spec.to_wire()
    action = spec.by_name["a"].action()
    assert action.env == (("X", "1"),) and action.outputs == ("out",) and action.timeout == 5.0


def test_a_task_may_overlay_the_outputs_of_tasks_it_runs_after() -> None:
    spec = parse_job({"tasks": [task("a"), task("m:1"), task("c", after=["a", "m:1"], overlay=["m:1", "a"])]})
    assert spec.by_name["c"].overlay == ("m:1", "a") and spec.by_name["c"].depends_on == ("a", "m:1")
    assert parse_job(spec.to_wire()).by_name["c"].overlay == ("m:1", "a")
    too_many = [task(f"t{i}") for i in range(MAX_OVERLAY + 1)]
    names = [t["name"] for t in too_many]
    with pytest.raises(InvalidJob, match=f"at most {MAX_OVERLAY}"):
        parse_job({"tasks": [*too_many, task("c", after=names, overlay=names)]})


@pytest.mark.parametrize(
    ("job", "message"),
    [
        ({"tasks": []}, "at least one task"),
        ({"tasks": [task("a"), task("a")]}, "unique"),
        ({"tasks": [task("a", after=["ghost"])]}, "'ghost', which is not a task"),
        ({"tasks": [task("a", after=["b"]), task("b", after=["a"])]}, "cycle"),
        ({"tasks": [task("a", after=["a"])]}, "itself"),
        ({"tasks": [task("a", when="sometimes", after=[])]}, "'when'"),
        ({"tasks": [task("a", when="failure")]}, "depends on no task"),
        ({"tasks": [{"name": "a", "argv": ["true"]}]}, "exactly one of 'input'"),
        ({"tasks": [task("a", input_task="b"), task("b")]}, "exactly one of 'input'"),
        ({"tasks": [task("-bad")]}, "not valid"),
        ({"tasks": [task("a")], "extra": 1}, "unknown field"),
        ({"tasks": [task("a", colour="red")]}, "unknown field"),
        ({"tasks": [task("a", argv="true")]}, "'argv'"),
        ({"tasks": [task("a", argv=[])]}, "non-empty argv"),
        ({"tasks": [task("a", timeout="soon")]}, "'timeout'"),
        ({"tasks": [task("a", timeout=-1)]}, "'timeout'"),
        ({"tasks": [task("a", env={"A": 1})]}, "'env'"),
        ({"tasks": [task("a", cwd="../up")]}, "'..'"),
        ({"tasks": [task("a", outputs=["/etc"])]}, "relative"),
        ({"tasks": [task("a", executor="vm")]}, "unknown executor"),
        ({"tasks": [task("a", input="b3:zz")]}, "field 'input'"),
        ({"tasks": [task("a"), task("b", overlay=["a"])]}, "which it does not run after: add to 'after'"),
        ({"tasks": [task("a"), task("b", after=["a"], overlay=["a", "a"])]}, "names a more than once"),
        ({"tasks": [task("a"), {"name": "b", "argv": ["x"], "input_task": "a", "overlay": ["a"]}]}, "needs 'input'"),
        ({"tasks": [task("a"), task("b", after=["a"], overlay="a")]}, "'overlay'"),
        ({"tasks": "a"}, "'tasks'"),
        ([1, 2], "must be a map"),
    ],
)
def test_bad_jobs_are_refused_with_a_reason(job: Any, message: str) -> None:
    with pytest.raises((InvalidJob, CodecError), match=message.replace("(", r"\(")):
        parse_job(job)


@given(st.dictionaries(st.sampled_from("abcdef"), st.lists(st.sampled_from("abcdef"), max_size=3)))
def test_find_cycle_agrees_with_a_topological_sort(graph: dict[str, list[str]]) -> None:
    deps = {name: tuple(d for d in edges if d in graph) for name, edges in graph.items()}
    cycle = find_cycle(deps)
    # Kahn's algorithm: the graph is acyclic exactly when every node can be removed.
    remaining = dict(deps)
    while True:
        free = [n for n, ds in remaining.items() if not any(d in remaining for d in ds)]
        if not free:
            break
        for n in free:
            del remaining[n]
    assert (cycle is None) == (not remaining)
    if cycle is not None:
        assert cycle[0] == cycle[-1]
        for here, there in zip(cycle, cycle[1:], strict=False):
            assert there in deps[here]


FINAL = sorted(FINAL_TASK_STATES)


@given(st.sampled_from(["success", "failure", "always"]), st.lists(st.sampled_from(FINAL + ["running"]), max_size=4))
def test_reactions(when: str, states: list[str]) -> None:
    verdict = decide(when, states)
    if "running" in states:
        assert verdict is None
    elif when == "always":
        assert verdict == "queued"
    elif when == "success":
        assert verdict == ("queued" if all(s == "succeeded" for s in states) else "skipped")
    else:
        assert verdict == ("queued" if "failed" in states else "skipped")


def test_job_state() -> None:
    assert job_state(["succeeded", "running"], False) == "running"
    assert job_state(["succeeded", "skipped"], False) == "succeeded"
    assert job_state(["failed", "succeeded"], False) == "failed"
    assert job_state(["cancelled", "succeeded"], True) == "cancelled"


def test_action_digest_ignores_env_order_and_keys_on_requirements() -> None:
    base = Action(argv=("cc",), input=Digest.of(b"x"), env=(("A", "1"), ("B", "2")))
    same = Action(argv=("cc",), input=Digest.of(b"x"), env=(("B", "2"), ("A", "1")))
    assert base.digest() == same.digest()
    gpu = Action(argv=("cc",), input=Digest.of(b"x"), env=(("A", "1"), ("B", "2")), requirements=(("label.gpu", "1"),))
    assert gpu.digest() != base.digest()
    assert base.digest() != Action(argv=("cc",), input=Digest.of(b"y")).digest()
    assert base.digest() != Action(argv=("cc", "-O2"), input=Digest.of(b"x")).digest()


def test_a_task_without_an_executor_gets_the_nodes_default_or_docker_with_an_image() -> None:
    raw = {
        "tasks": [
            {"name": "plain", "argv": ["true"], "input": str(SNAP)},
            {"name": "boxed", "argv": ["true"], "input": str(SNAP), "image": "busybox"},
            {"name": "chosen", "argv": ["true"], "input": str(SNAP), "executor": "process"},
        ]
    }
    spec = parse_job(raw, default_executor="sandbox")
    executors = {t.name: t.action().executor for t in spec.tasks}
    assert executors == {"plain": "sandbox", "boxed": "docker", "chosen": "process"}
    # The choice is part of the stored task, so a node reading it back runs the same action.
    again = parse_job(spec.to_wire(), default_executor="process")
    assert [t.action().digest() for t in again.tasks] == [t.action().digest() for t in spec.tasks]
    with pytest.raises(CodecError, match="only meaningful with the docker executor"):
        parse_job({"tasks": [{"argv": ["true"], "input": str(SNAP), "image": "x", "executor": "sandbox"}]})


def test_limits_of_an_action() -> None:
    action = Action(
        argv=("true",), input=Digest.of(b"x"), executor="sandbox", limits=(("processes", 9), ("file_size", 5))
    )
    assert action.limits == (("file_size", 5), ("processes", 9))
    assert action.to_wire()["limits"] == {"file_size": 5, "processes": 9}
    plain = Action(argv=("true",), input=Digest.of(b"x"), executor="sandbox")
    assert "limits" not in plain.to_wire() and plain.digest() != action.digest()
    bad = [
        ({"executor": "sandbox", "limits": {"memory": 1}}, "unknown limit 'memory'"),
        ({"executor": "sandbox", "limits": {"processes": 0}}, "at least 1"),
        ({"executor": "sandbox", "limits": {"processes": "9"}}, "whole number"),
        ({"executor": "sandbox", "limits": {"processes": True}}, "whole number"),
        ({"executor": "process", "limits": {"processes": 9}}, "apply to the sandbox executor"),
    ]
    for extra, message in bad:
        with pytest.raises(CodecError, match=message):
            parse_job({"tasks": [{"argv": ["true"], "input": SNAP, **extra}]})


def test_stdin_of_an_action_is_in_its_wire_form_and_digest() -> None:
    stdin = Digest.of(b"hi\n")
    action = Action(argv=("cat",), input=Digest.of(b"x"), stdin=stdin)
    assert action.to_wire()["stdin"] == str(stdin)
    assert Action.from_wire(action.to_wire()) == action
    plain = Action(argv=("cat",), input=Digest.of(b"x"))
    assert "stdin" not in plain.to_wire()  # the keys of actions without stdin stay as they were
    other = Action(argv=("cat",), input=Digest.of(b"x"), stdin=Digest.of(b"ho\n"))
    assert len({plain.digest(), action.digest(), other.digest()}) == 3
    spec = parse_job({"tasks": [{"argv": ["cat"], "input": str(SNAP), "stdin": str(stdin)}]})
    assert spec.tasks[0].stdin == stdin and parse_job(spec.to_wire()).tasks[0].stdin == stdin
    for bad, message in [("nonsense", "field 'stdin'"), (7, "stdin")]:
        with pytest.raises(CodecError, match=message):
            parse_job({"tasks": [{"argv": ["cat"], "input": str(SNAP), "stdin": bad}]})


def test_a_task_may_ask_for_no_cache_alone() -> None:
    spec = parse_job({"tasks": [task("a", no_cache=True), task("b")]})
    assert [t.no_cache for t in spec.tasks] == [True, False]
    assert not spec.no_cache
    with pytest.raises(CodecError):
        parse_job({"tasks": [task("a", no_cache="yes")]})
