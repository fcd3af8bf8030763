"""Removing a task's directory tree whatever the task did to it: its modes, its depth."""

from __future__ import annotations

import itertools
import os
import shutil
import stat

__all__ = ["remove_tree"]

_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def remove_tree(path: str) -> None:
    """Remove the tree at ``path`` entirely, never following a symlink; no error if absent.

    ``shutil.rmtree`` first: it is the fast way for every tree a build makes. A task may
    also have left directories without write or search permission for their owner, or a
    tree deeper than rmtree can go (in Python 3.11 it recurses once per level and holds a
    descriptor per level: a task that made 1,200 nested directories made it raise
    RecursionError, and the node with it). Then the rest is removed by :func:`_remove_flat`,
    which grants owner access where needed and goes to any depth with two descriptors.
    """
    try:
        shutil.rmtree(path)
        return
    except FileNotFoundError:
        return
    except (OSError, RecursionError):
        pass
    _remove_flat(path)


def _remove_flat(path: str) -> None:
    """Remove the tree at ``path``: its files at once, and each subdirectory by moving its
    entries up into the top directory (so each pass makes the tree one level shallower)
    and removing it empty. Two open descriptors at a time whatever the depth; no path
    longer than a name below the top. Directories get u+rwx before they are opened."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(path)
        return
    _grant(st, path, None)
    top = os.open(path, _OPEN_DIR)
    try:
        fresh = (f".mesh-removed-{n}" for n in itertools.count())
        while True:
            with os.scandir(top) as listing:
                entries = [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in listing]
            if not entries:
                break
            for name, is_dir in entries:
                if not is_dir:
                    os.unlink(name, dir_fd=top)
                    continue
                _grant(os.stat(name, dir_fd=top, follow_symlinks=False), name, top)
                sub = os.open(name, _OPEN_DIR, dir_fd=top)
                try:
                    with os.scandir(sub) as listing:
                        inner = [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in listing]
                    for child, child_is_dir in inner:
                        if child_is_dir:  # moving a directory to another parent rewrites its ".."
                            _grant(os.stat(child, dir_fd=sub, follow_symlinks=False), child, sub)
                        target = next(fresh)
                        while _exists(target, top):
                            target = next(fresh)
                        os.rename(child, target, src_dir_fd=sub, dst_dir_fd=top)
                finally:
                    os.close(sub)
                os.rmdir(name, dir_fd=top)
    finally:
        os.close(top)
    os.rmdir(path)


def _grant(st: os.stat_result, name: str, dir_fd: int | None) -> None:
    """Give a directory's owner read, write and search permission, if it lacks any."""
    if st.st_mode & 0o700 != 0o700:
        os.chmod(name, stat.S_IMODE(st.st_mode) | 0o700, dir_fd=dir_fd, follow_symlinks=False)


def _exists(name: str, dir_fd: int) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True
