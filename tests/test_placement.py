"""Placement: requirements filter, then free slots, locality, queue length, node id."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh.sched.placement import NodeView, Unplaceable, rank, unmet

LINUX = {"os": "linux", "arch": "x86_64"}


def test_requirements_must_all_hold() -> None:
    nodes = [
        NodeView(node="a", capabilities=LINUX),
        NodeView(node="b", capabilities={**LINUX, "label.special": "1"}),
    ]
    assert [c.node for c in rank({"label.special": "1"}, nodes)] == ["b"]
    assert [c.node for c in rank({}, nodes)] == ["a", "b"]
    with pytest.raises(Unplaceable, match=r"label.gpu=1.*closest \(a\) lacks label.gpu=1"):
        rank({"label.gpu": "1"}, nodes)


def test_an_executor_no_node_offers_is_refused_naming_those_offered() -> None:
    nodes = [
        NodeView(node="a", capabilities={**LINUX, "executor.sandbox": "1"}),
        NodeView(node="b", capabilities={**LINUX, "executor.sandbox": "1", "executor.docker": "1"}),
    ]
    with pytest.raises(Unplaceable, match=r"lacks executor.process=1; the executors offered: docker, sandbox$"):
        rank({"executor.process": "1"}, nodes)


def test_dead_nodes_are_not_candidates() -> None:
    nodes = [NodeView(node="a", alive=False), NodeView(node="b")]
    assert [c.node for c in rank({}, nodes)] == ["b"]
    with pytest.raises(Unplaceable, match="no live node"):
        rank({}, [NodeView(node="a", alive=False)])


def test_free_slots_then_locality_then_queue() -> None:
    nodes = [
        NodeView(node="full-but-local", slots=2, busy=2),
        NodeView(node="free", slots=2, busy=1, queued=0),
        NodeView(node="free-and-local", slots=4, busy=3, queued=5),
        NodeView(node="free-short-queue", slots=2, busy=0, queued=0),
    ]
    local = {"full-but-local": 200 << 20, "free-and-local": 200 << 20}
    order = [c.node for c in rank({}, nodes, local)]
    assert order == ["free-and-local", "free-short-queue", "free", "full-but-local"]
    # Without locality, the shorter queue and then more free slots win.
    assert [c.node for c in rank({}, nodes)][:2] == ["free-short-queue", "free"]


def test_unmet_lists_what_fails() -> None:
    assert unmet({"arch": "arm64", "os": "linux"}, LINUX) == ["arch=arm64"]
    assert unmet({}, {}) == []


views = st.builds(
    NodeView,
    node=st.text("abcdefgh", min_size=1, max_size=3),
    capabilities=st.dictionaries(st.sampled_from(["os", "arch", "label.x"]), st.sampled_from(["0", "1"]), max_size=3),
    slots=st.integers(1, 4),
    busy=st.integers(0, 5),
    queued=st.integers(0, 5),
    alive=st.booleans(),
)


@given(
    st.lists(views, max_size=6, unique_by=lambda v: v.node),
    st.dictionaries(st.sampled_from(["os", "label.x"]), st.sampled_from(["0", "1"]), max_size=2),
    st.dictionaries(st.text("abcdefgh", min_size=1, max_size=3), st.integers(0, 1000)),
)
def test_ranking_properties(nodes: list[NodeView], requirements: dict[str, str], local: dict[str, int]) -> None:
    fitting = {n.node for n in nodes if n.alive and not unmet(requirements, n.capabilities)}
    if not fitting:
        with pytest.raises(Unplaceable):
            rank(requirements, nodes, local)
        return
    ranked = rank(requirements, nodes, local)
    assert {c.node for c in ranked} == fitting
    # A node with a free slot always comes before any node without one.
    seen_full = False
    for candidate in ranked:
        if candidate.free == 0:
            seen_full = True
        else:
            assert not seen_full
    # Among nodes with free slots, more local bytes never rank lower.
    free = [c for c in ranked if c.free]
    for first, second in zip(free, free[1:], strict=False):
        assert first.local_bytes >= second.local_bytes
    # The ranking does not depend on the order the nodes were listed in.
    assert rank(requirements, list(reversed(nodes)), local) == ranked


def test_capabilities_name_executors_labels_and_images() -> None:
    from mesh.cluster.peering import capabilities

    caps = capabilities(["docker", "process"], {"gpu": "1"}, ["localhost/tools:latest", "base:1.2"])
    assert caps["executor.docker"] == caps["docker"] == caps["executor.process"] == caps["label.gpu"] == "1"
    # A bare image name means its latest tag.
    assert caps["image.localhost/tools:latest"] == caps["image.localhost/tools"] == caps["image.base:1.2"] == "1"
    assert "image.base" not in caps and "executor.sandbox" not in caps
