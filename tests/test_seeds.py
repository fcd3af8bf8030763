"""Seeds (--peer, MESH_PEERS, mesh.toml) and executor lists of a node config; bad ones are usage errors."""

from __future__ import annotations

from typing import Any

import pytest

from mesh.errors import UsageError
from mesh.seeds import seed_url, seeds


def test_forms_of_a_seed() -> None:
    assert seed_url("10.0.0.2:7474") == "http://10.0.0.2:7474"
    assert seed_url("[fd00::2]:7474") == "http://[fd00::2]:7474"
    assert seed_url(" http://box:8000/ ") == "http://box:8000"
    for bad in ("nonsense", "host:", ":7474", "host:port", "host:70000", "ftp://x"):
        with pytest.raises(UsageError, match="HOST:PORT"):
            seed_url(bad)


def test_precedence_and_duplicates(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESH_PEERS", "a:1,b:2")
    assert seeds(["c:3", "c:3"], ["d:4"]) == ("http://c:3",)
    assert seeds(None, ["d:4"]) == ("http://a:1", "http://b:2")
    monkeypatch.delenv("MESH_PEERS")
    assert seeds(None, ["d:4"]) == ("http://d:4",)
    assert seeds(None, None) == ()
    with pytest.raises(UsageError, match="list like"):
        seeds(None, "d:4")


def test_executor_lists(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    from mesh.config import NodeConfig

    monkeypatch.setenv("MESH_HOME", str(tmp_path))
    monkeypatch.delenv("MESH_EXECUTORS", raising=False)
    assert NodeConfig.load().executors == ("process", "sandbox", "docker")
    assert NodeConfig.load(executors=[" sandbox", "process ", ""]).executors == ("process", "sandbox")
    monkeypatch.setenv("MESH_EXECUTORS", "docker, process")
    assert NodeConfig.load().executors == ("process", "docker")
    for bad, words in ((["", " "], "non-empty list"), (["teleport"], "unknown executor")):
        with pytest.raises(UsageError, match=words):
            NodeConfig.load(executors=bad)
