"""A CLI on a MESH_HOME (and a store) of its own, holding a node's key: as on another machine."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.nodeutil import MESH, NodeProcess, node_env


def client_home(node: NodeProcess, home: Path) -> Path:
    """Make ``home`` a client's MESH_HOME with ``node``'s mesh key in it."""
    home.mkdir()
    key = node.mesh("key", "show")
    assert key.returncode == 0, key.stderr
    (home / "mesh.key").write_bytes(key.stdout)
    os.chmod(home / "mesh.key", 0o600)
    return home


def client(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[bytes]:
    """The real CLI on its own MESH_HOME (no MESH_NODE unless given)."""
    return subprocess.run(MESH + list(args), env=node_env(str(home), **env), capture_output=True, timeout=120)
