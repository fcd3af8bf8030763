"""``.mesh.yml``: the parser (mesh.pipelines.pipefile) and its errors, which name the line and the key."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from mesh.errors import PipelineError, UsageError
from mesh.pipelines.pipefile import MAX_MATRIX, Notify, When, parse

ISSUE_EXAMPLE = """\
steps:
  - name: build
    run: make -j8            # a shell script (sh -c), or a list for an argv
    image: localhost/builder:1   # optional: docker executor; or executor: sandbox|process
    outputs: [build/]        # what dependent steps see
  - name: test
    depends_on: [build]      # a DAG; without depends_on, steps run in file order
    run: make test SHARD=$SHARD
    matrix: {SHARD: [1, 2, 3, 4]}   # fans out into one task per value, spread over the mesh
  - name: on-failure
    depends_on: [test]
    when: {status: [failure]}       # success (default), failure, always; also branch globs
    run: ./report.sh
notify:
  - webhook: https://chat.example/hooks/abc     # generic JSON; Slack-compatible "text" field
    on: [failure, fixed]
  - email: team@example.com
    on: [always]
"""


def error(text: str) -> str:
    with pytest.raises(PipelineError) as caught:
        parse(text)
    return str(caught.value)


def test_the_issues_example_parses_into_typed_steps() -> None:
    pipeline = parse(ISSUE_EXAMPLE)
    build, test, react = pipeline.steps
    assert build.argv == ("sh", "-c", "make -j8") and build.image == "localhost/builder:1"
    assert build.outputs == ("build",) and build.line == 2
    assert test.depends_on == ("build",) and test.matrix == (("SHARD", ("1", "2", "3", "4")),)
    assert [dict(c) for c in test.combinations()] == [{"SHARD": v} for v in "1234"]
    assert react.when == When(status="failure")
    assert pipeline.notify == (
        Notify(on=("failure", "fixed"), webhook="https://chat.example/hooks/abc"),
        Notify(on=("always",), email="team@example.com"),
    )
    assert not pipeline.ordered


def test_every_step_key_is_read() -> None:
    text = """\
env: {TOP: 1}
steps:
  - name: all
    run: [make, -j, "8"]
    executor: sandbox
    outputs: [a/b, ./c]
    when: {status: [success, failure], branch: [main, "release/*"]}
    matrix: {OS: [linux, bsd], N: [1, 2]}
    env: {A: "x", B: 2, C: true}
    requires: {gpu: "1"}
    timeout: 90.5
    network: true
    cache: false
"""
    pipeline = parse(text)
    (step,) = pipeline.steps
    assert pipeline.env == (("TOP", "1"),)
    assert step.argv == ("make", "-j", "8") and step.executor == "sandbox"
    assert step.outputs == ("a/b", "c")
    assert step.when == When(status="always", branch=("main", "release/*"))
    assert len(step.combinations()) == 4
    assert step.env == (("A", "x"), ("B", "2"), ("C", "true"))
    assert step.requires == (("gpu", "1"),) and step.timeout == 90.5 and step.network and not step.cache
    assert pipeline.ordered  # no depends_on anywhere: file order


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("steps: 3\n", ".mesh.yml:1: steps: must be a list, not a number ('3')"),
        ("steps:\n  - name: a\n    run: x\n    timeout: soon\n", ".mesh.yml:4: steps[0].timeout: must be a number"),
        ("steps:\n  - name: a\n    run: x\n    network: yes please\n", ".mesh.yml:4: steps[0].network: must be true"),
        ("steps:\n  - name: a\n    run: [1]\n", ".mesh.yml:3: steps[0].run[0]: must be a string"),
        ("steps:\n  - name: a\n    run: x\n    bogus: 1\n", ".mesh.yml:4: steps[0].bogus: unknown key"),
        ("stpes: []\n", ".mesh.yml:1: stpes: unknown key"),
        (
            "steps:\n  - name: a\n    run: x\n  - name: b\n    run: y\n    depends_on: [biuld]\n",
            ".mesh.yml:6: steps[1].depends_on: unknown step 'biuld'",
        ),
        (
            "steps:\n  - name: a\n    run: x\n    depends_on: [c]\n  - name: b\n    run: y\n    depends_on: [a]\n"
            "  - name: c\n    run: z\n    depends_on: [b]\n",
            ".mesh.yml:4: steps[0].depends_on: a cycle: a -> c -> b -> a",
        ),
        ("steps:\n  - name: a\n    run: x\n    depends_on: [a]\n", "a step cannot depend on itself"),
        ("steps:\n  - name: a\n    run: x\n  - name: a\n    run: y\n", ".mesh.yml:4: steps[1].name: 'a' is the name"),
        ("steps:\n  - name: a\n    run: x\n    outputs: [../up]\n", ".mesh.yml:4: steps[0].outputs[0]: output path"),
        ("steps:\n  - name: a\n    run: x\n    outputs: [/abs]\n", "must be relative"),
        ("steps:\n  - name: a\n    run: x\n    executor: vm\n", "steps[0].executor: 'vm' is not one of"),
        ("steps:\n  - name: a\n    run: x\n    image: i\n    executor: process\n", "an image runs in docker"),
        ("steps:\n  - name: a\n    run: x\n    when: {status: [failure]}\n", "a failure reaction needs a step before"),
        ("steps:\n  - name: a\n    run: x\n    when: {status: [sometimes]}\n", "'sometimes' is not one of"),
        ("steps:\n  - name: a b\n    run: x\n", "steps[0].name: 'a b': use up to 64 letters"),
        ("steps:\n  - run: x\n", "a step needs 'name'"),
        ("steps:\n  - name: a\n    run: x\n    env: {A: null}\n", "steps[0].env.A: must be a string or a number"),
        ("steps:\n  - name: a\n    run: x\nnotify:\n  - webhook: ftp://x\n", ".mesh.yml:5: notify[0].webhook"),
        ("steps:\n  - name: a\n    run: x\nnotify:\n  - email: a@b.c\n    on: [never]\n", "notify[0].on[0]"),
        ("steps:\n  - name: a\n    run: x\nnotify:\n  - email: a@b.c\n    webhook: http://h\n", "exactly one"),
        ("steps: [\n", "not valid YAML"),
        ("steps:\n  - !!python/object:os.system {}\n", ".mesh.yml:2: steps[0]: the tag"),  # no Python objects
        ("", ".mesh.yml:1: the file is empty"),
        ("steps: []\n", "needs at least one step"),
    ],
)
def test_a_malformed_file_is_refused_naming_the_line_and_key(text: str, expected: str) -> None:
    message = error(text)
    assert expected in message, message
    assert message.startswith(".mesh.yml")


def test_a_pipeline_error_is_a_usage_error() -> None:
    assert issubclass(PipelineError, UsageError)  # mesh run exits 2 on it


def test_a_matrix_is_bounded() -> None:
    values = list(range(MAX_MATRIX // 2 + 1))
    message = error(f"steps:\n  - name: a\n    run: x\n    matrix: {{A: {values}, B: [1, 2]}}\n")
    assert f"makes {len(values) * 2} combinations; at most {MAX_MATRIX}" in message


def test_a_bare_on_key_is_the_key_on_not_true() -> None:
    pipeline = parse("steps:\n  - name: a\n    run: x\nnotify:\n  - email: a@b.c\n    on: [success]\n")
    assert pipeline.notify[0].on == ("success",)


# -- properties -------------------------------------------------------------------------

step_names = st.from_regex(r"[a-z][a-z0-9_-]{0,8}", fullmatch=True)
env_values = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=20)


@st.composite
def pipelines(draw: st.DrawFn) -> dict[str, Any]:
    names = draw(st.lists(step_names, min_size=1, max_size=6, unique=True))
    steps = []
    for i, name in enumerate(names):
        step: dict[str, Any] = {"name": name, "run": draw(st.sampled_from(["make", ["make", "-j8"]]))}
        if i and draw(st.booleans()):
            step["depends_on"] = draw(st.lists(st.sampled_from(names[:i]), min_size=1, max_size=2, unique=True))
        if draw(st.booleans()):
            step["env"] = draw(st.dictionaries(st.from_regex(r"[A-Z_][A-Z0-9_]{0,5}", fullmatch=True), env_values))
        if draw(st.booleans()):
            step["matrix"] = {"SHARD": draw(st.lists(st.integers(0, 99), min_size=1, max_size=4, unique=True))}
        steps.append(step)
    return {"steps": steps}


@given(pipelines())
def test_a_generated_pipeline_reads_back_as_written(document: dict[str, Any]) -> None:
    pipeline = parse(yaml.safe_dump(document))
    for step, written in zip(pipeline.steps, document["steps"], strict=True):
        assert step.name == written["name"]
        run = written["run"]
        assert step.argv == (("sh", "-c", run) if isinstance(run, str) else tuple(run))
        assert step.depends_on == tuple(written.get("depends_on", ()))
        assert dict(step.env) == written.get("env", {})
        if "matrix" in written:
            assert [v for _, v in step.combinations()[0]] == [str(written["matrix"]["SHARD"][0])]


@given(pipelines(), st.data())
def test_an_unknown_key_anywhere_in_a_step_is_refused_at_its_line(
    document: dict[str, Any], data: st.DataObject
) -> None:
    index = data.draw(st.integers(0, len(document["steps"]) - 1))
    document["steps"][index]["unknwon"] = 1
    text = yaml.safe_dump(document, sort_keys=False)
    line = 1 + next(i for i, text_line in enumerate(text.splitlines()) if "unknwon" in text_line)
    assert error(text).startswith(f".mesh.yml:{line}: steps[{index}].unknwon: unknown key")


@given(st.text(max_size=200) | st.binary(max_size=200))
def test_any_text_either_parses_or_is_a_pipeline_error(text: str | bytes) -> None:
    try:
        parse(text)
    except PipelineError as exc:
        assert str(exc).startswith(".mesh.yml")
