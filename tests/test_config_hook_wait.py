"""The node's ``hook_wait`` (mesh.config): how long a webhook delivery waits for its build."""

from __future__ import annotations

from pathlib import Path

import pytest

from mesh.config import DEFAULT_HOOK_WAIT, NodeConfig
from mesh.errors import UsageError


def test_hook_wait_comes_from_the_environment_then_mesh_toml_then_the_default(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MESH_HOOK_WAIT", raising=False)
    assert NodeConfig.load(home=str(home)).hook_wait == DEFAULT_HOOK_WAIT == 4.0
    (home / "mesh.toml").write_text("hook_wait = 2.5\n")
    assert NodeConfig.load(home=str(home)).hook_wait == 2.5
    monkeypatch.setenv("MESH_HOOK_WAIT", "0")
    assert NodeConfig.load(home=str(home)).hook_wait == 0.0


@pytest.mark.parametrize("value", ["-1", "soon", "nan", "7200"])
def test_a_bad_hook_wait_is_refused_naming_it(home: Path, monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("MESH_HOOK_WAIT", value)
    with pytest.raises(UsageError, match="hook_wait is a number of seconds from 0 to 3600"):
        NodeConfig.load(home=str(home))
