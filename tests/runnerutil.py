"""The check every runner test ends with: no task directory is left but those kept for reuse."""

from __future__ import annotations

import os
from pathlib import Path

from mesh.exec.runner import Runner, remove_tree


def check_workroot(root: Path, runners: list[Runner]) -> None:
    """Assert that ``root`` holds exactly the directories ``runners`` keep for reuse, then remove them.

    Whatever happened to a task (it failed, was cancelled, made its files read-only),
    its directory is gone unless the runner kept it. The runners keep nothing afterwards.
    """
    kept = set()
    for made in runners:
        kept |= {os.path.basename(path) for path in made.workdirs.drain()}
    left = set(os.listdir(root)) if root.exists() else set()
    assert left == kept, f"task directories left behind: {sorted(left - kept)}"
    for name in kept:
        remove_tree(str(root / name))
