"""Removing a task's directory tree whatever the task did to its modes."""

from __future__ import annotations

import os
import shutil
import stat

__all__ = ["remove_tree"]


def remove_tree(path: str) -> None:
    """Remove the tree at ``path`` entirely, never following a symlink; no error if absent.

    A task may have left directories without write or search permission for its
    owner: when a plain removal fails, every directory is given u+rwx on the way
    down (parent before child) and the removal is tried again.
    """
    try:
        shutil.rmtree(path)
        return
    except FileNotFoundError:
        return
    except PermissionError:
        pass
    _grant_owner_access(path)
    shutil.rmtree(path)


def _grant_owner_access(path: str) -> None:
    stack = [path]
    while stack:
        here = stack.pop()
        try:
            st = os.lstat(here)
            if not stat.S_ISDIR(st.st_mode):
                continue
            if st.st_mode & 0o700 != 0o700:
                os.chmod(here, stat.S_IMODE(st.st_mode) | 0o700)
            with os.scandir(here) as entries:
                stack.extend(entry.path for entry in entries if entry.is_dir(follow_symlinks=False))
        except FileNotFoundError:
            continue
