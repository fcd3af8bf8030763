"""The node's ``keep_jobs`` (mesh.config): how many finished jobs its state database keeps."""

from __future__ import annotations

from pathlib import Path

import pytest

from mesh.config import DEFAULT_KEEP_JOBS, NodeConfig
from mesh.errors import UsageError


@pytest.mark.parametrize(
    ("environment", "toml", "kept"),
    [(None, None, DEFAULT_KEEP_JOBS), (None, "50_000", 50_000), (" 5 ", "50_000", 5), ("", "7", 7)],
)
def test_keep_jobs_comes_from_the_environment_then_mesh_toml_then_the_default(
    home: Path, monkeypatch: pytest.MonkeyPatch, environment: str | None, toml: str | None, kept: int
) -> None:
    assert DEFAULT_KEEP_JOBS == 10_000
    if environment is None:
        monkeypatch.delenv("MESH_KEEP_JOBS", raising=False)
    else:
        monkeypatch.setenv("MESH_KEEP_JOBS", environment)
    if toml is not None:
        (home / "mesh.toml").write_text(f"keep_jobs = {toml}\n")
    assert NodeConfig.load(home=str(home)).keep_jobs == kept


@pytest.mark.parametrize("value", ["0", "-3", "many", "1.5", "1e4", "²", "2000000000"])
def test_a_bad_keep_jobs_is_refused_naming_it(home: Path, monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("MESH_KEEP_JOBS", value)
    with pytest.raises(UsageError, match="keep_jobs is the number of finished jobs a node keeps, a whole number"):
        NodeConfig.load(home=str(home))


@pytest.mark.parametrize("value", ["true", "2.5", '"ten"', "[1]"])
def test_a_bad_keep_jobs_in_mesh_toml_is_refused(home: Path, monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.delenv("MESH_KEEP_JOBS", raising=False)
    (home / "mesh.toml").write_text(f"keep_jobs = {value}\n")
    with pytest.raises(UsageError, match="keep_jobs is the number of finished jobs"):
        NodeConfig.load(home=str(home))
