"""``/files`` across a mesh: three real nodes in network namespaces (found by mDNS, as in
tests/test_mesh_netns.py), a ``mesh watch`` on each; every node lists all three
directories' files, and a node that is killed takes its watcher's files out of the others'.

Needs root; elsewhere it is skipped with the reason printed (tests/netns.py).
"""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mesh.cluster.membership import DEAD_AFTER
from tests.netns import Lan, require_namespaces
from tests.nodeutil import node_env, wait_for
from tests.test_mesh_netns import PORT, start_mesh

NODE = f"http://127.0.0.1:{PORT}"


@pytest.fixture
def lan() -> Iterator[Lan]:
    require_namespaces("the namespace /files test")
    with Lan(3) as built:
        yield built


def files_seen(lan: Lan, i: int, home: Path) -> dict[str, set[str]]:
    """directory -> its paths, as ``mesh files`` on node i lists them (asked inside its namespace)."""
    done = lan.run(i, [sys.executable, "-m", "mesh", "files", "--json", "--node", NODE], env=node_env(str(home)))
    if done.returncode != 0:
        return {}
    seen: dict[str, set[str]] = {}
    for row in json.loads(done.stdout):
        seen.setdefault(row["directory"], set()).add(row["path"])
    return seen


def test_files_on_any_node_lists_every_nodes_watcher_and_drops_a_killed_node(lan: Lan, tmp_path: Path) -> None:
    homes, nodes, ids = start_mesh(lan, tmp_path, {})
    dirs = []
    for i in range(3):
        directory = tmp_path / f"watched{i}"
        (directory / "sub").mkdir(parents=True)
        (directory / f"only-on-{i}.txt").write_text(f"node {i}\n")
        (directory / "sub" / "shared.txt").write_text("everywhere\n")
        dirs.append(directory)
        watch = [sys.executable, "-m", "mesh", "watch", str(directory), "--node", NODE, "--debounce", "0.1"]
        lan.spawn(i, watch, env=node_env(str(homes[i])))
    everything = {str(d): {f"only-on-{i}.txt", "sub/shared.txt"} for i, d in enumerate(dirs)}
    for i in range(3):
        wait_for(lambda i=i: files_seen(lan, i, homes[i]) == everything, timeout=30, what=f"node {i} to list all three")
    # A change on node 1's directory reaches node 0's list.
    (dirs[1] / "new.txt").write_text("new\n")
    everything[str(dirs[1])].add("new.txt")
    wait_for(lambda: files_seen(lan, 0, homes[0]) == everything, timeout=10, what="node 0 to see node 1's new file")
    nodes[2].stop(signal.SIGKILL)
    del everything[str(dirs[2])]
    for i in range(2):
        wait_for(
            lambda i=i: files_seen(lan, i, homes[i]) == everything,
            timeout=DEAD_AFTER + 10,
            what=f"node {i} to drop the killed node's files",
        )
