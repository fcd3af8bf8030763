"""``mesh run``'s client side (mesh.pipeline_run) apart from a node: the branch it runs for."""

from __future__ import annotations

import subprocess
from pathlib import Path

from mesh.pipeline_run import current_branch


def git(*args: str, cwd: Path) -> None:
    command = ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args]
    subprocess.run(command, cwd=cwd, check=True, capture_output=True)


def test_the_branch_is_read_from_a_repository_and_from_a_worktree_of_it(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git("init", "-q", "-b", "main", cwd=repo)
    git("commit", "-q", "--allow-empty", "-m", "first", cwd=repo)
    assert current_branch(str(repo)) == "main"
    git("worktree", "add", "-q", "-b", "release/2", str(tmp_path / "wt"), cwd=repo)
    assert current_branch(str(tmp_path / "wt")) == "release/2"
    git("checkout", "-q", "--detach", cwd=repo)
    assert current_branch(str(repo)) is None
    assert current_branch(str(tmp_path)) is None  # no git at all
