"""The compilers a node advertises for mesh cc, and placement by them (mesh.cc.compilers)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from mesh.cc.compilers import PREFIX, Compilers
from mesh.sched.placement import NodeView, Unplaceable, rank

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="the compiler tests need gcc")


def test_a_scan_advertises_the_usual_compilers_by_path_with_a_fingerprint() -> None:
    compilers = Compilers()
    compilers.scan()
    caps = compilers.capabilities()
    gcc = os.path.realpath(shutil.which("gcc") or "")
    assert PREFIX + "/usr/bin/gcc" in caps
    assert all(key.startswith(PREFIX) and len(value) == 32 for key, value in caps.items())
    assert caps[PREFIX + "/usr/bin/gcc"] == compilers.fingerprint(gcc, "c")  # a link and its target are one compiler


def test_a_fingerprint_is_the_same_each_time_and_another_binary_has_another(tmp_path: Path) -> None:
    compilers = Compilers()
    gcc = os.path.realpath(shutil.which("gcc") or "")
    assert Compilers().fingerprint(gcc, "c") == compilers.fingerprint(gcc, "c") == compilers.fingerprint(gcc, "c")
    other = tmp_path / "cc"
    other.write_text("#!/bin/sh\nexit 0\n")
    other.chmod(0o755)
    assert compilers.fingerprint(str(other), "c") not in (None, compilers.fingerprint(gcc, "c"))
    assert compilers.fingerprint(str(tmp_path / "missing"), "c") is None
    assert compilers.proper_of(gcc, "c") is not None and compilers.proper_of(gcc, "c").endswith("cc1")  # type: ignore[union-attr]


def test_placement_leaves_out_nodes_whose_compiler_differs_or_is_missing() -> None:
    compilers = Compilers()
    found = compilers.requirement("/usr/bin/gcc", "c")
    assert found is not None
    requirement, proper = found
    assert proper is not None and proper.endswith("/cc1")
    key, fingerprint = next(iter(requirement.items()))
    nodes = [
        NodeView(node="same", capabilities={key: fingerprint}, slots=2, busy=2),
        NodeView(node="other", capabilities={key: "0" * 32}, slots=2),
        NodeView(node="none", capabilities={}, slots=2),
    ]
    assert [c.node for c in rank(requirement, nodes)] == ["same"]
    with pytest.raises(Unplaceable, match="cc:/usr/bin/gcc"):
        rank(requirement, nodes[1:])
