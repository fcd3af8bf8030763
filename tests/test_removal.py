"""Removing a task's tree: any depth, any modes, never through a symlink."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mesh.exec import removal
from mesh.exec.removal import remove_tree


def deep_tree(top: Path, depth: int) -> None:
    """``depth`` nested directories ``d`` below ``top``, each with a file: made through
    descriptors, since the deepest paths are longer than the kernel takes."""
    here = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(depth):
        os.mkdir("d", dir_fd=here)
        os.close(os.open("f", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=here))
        below = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=here)
        os.close(here)
        here = below
    os.close(here)


def test_a_tree_deeper_than_python_recurses_is_removed(tmp_path: Path) -> None:
    """A task that made 1,200 nested directories made shutil.rmtree raise RecursionError
    (Python 3.11), which left the task directory and raised out of the runner."""
    top = tmp_path / "task"
    top.mkdir()
    deep_tree(top, 3_000)
    remove_tree(str(top))
    assert not top.exists()


@pytest.mark.parametrize("remove", [remove_tree, removal._remove_flat], ids=["remove_tree", "flat"])
def test_modes_are_overcome_and_symlinks_never_followed(tmp_path: Path, remove: object) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("mine")
    top = tmp_path / "task"
    (top / "a" / "b" / "c").mkdir(parents=True)
    (top / "a" / "b" / "c" / "f").write_text("x")
    (top / "a" / "link").symlink_to(outside)
    (top / "a" / "b" / "filelink").symlink_to(outside / "keep")
    (top / "a" / "b").chmod(0)
    (top / "a").chmod(0o500)
    assert callable(remove)
    remove(str(top))
    assert not top.exists()
    assert (outside / "keep").read_text() == "mine"
    remove(str(top))  # absent: nothing to do


def test_a_plain_file_or_symlink_is_removed_itself(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_text("t")
    link = tmp_path / "link"
    link.symlink_to(target)
    removal._remove_flat(str(link))
    assert not link.is_symlink() and target.exists()
