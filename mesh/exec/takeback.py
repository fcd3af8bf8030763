"""Taking a task's directory back from the uid it ran as, before the node reads anything in it.

A task that runs as a uid of its own (a root node's task uids, :mod:`mesh.exec.taskusers`;
the sandbox's uid, :mod:`mesh.exec.sandbox`) owns the directories of its task directory
while it runs, and may open them to everyone (mode 0777) or make directories of another
uid appear in them. After it, the node reads the tree as root: it verifies the checkout
(:mod:`mesh.exec.workpool`), snapshots the outputs (by path: :func:`mesh.cas.snapshot.ingest`
never follows a symlink it finds, but it walks by paths through the directories it
listed) and removes what the task added. If a process of another uid could still rename
entries in the tree meanwhile, it could swap a directory for a symlink to the node's
home between two of those steps, and make root snapshot the mesh key into the task's
outputs or unlink files elsewhere.

So once every process that ran as the task's uid is gone, :func:`take_back` walks the
whole tree by directory descriptors, never following a symlink, and makes each
directory writable by its owner only (removing group and other write also masks off
what a POSIX ACL granted others), giving it to the node's user first unless the task's
uid owns it (and that uid runs nothing until the node is done: the runner frees it
only then). The top directory becomes the node's, mode 0700. Each directory is changed
before it is listed, so what it holds when listed is what it keeps: a directory another
uid moved away is no longer in the tree, one it moved in is taken back with the rest.
Files are left as they are: their bytes may still change through a descriptor another
process holds, which changes what is snapshotted (the task's own doing) but not where
the node reads. Costs two system calls and a listing per directory.
"""

from __future__ import annotations

import os
import stat

__all__ = ["take_back"]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def take_back(root: str, owner: int | None) -> None:
    """Make the task directory ``root`` the node's to read: see the module docstring.

    Directories of ``owner`` (the task's uid, which must run nothing until the node is done
    with the tree) keep their owner; every other directory becomes the node's user's.
    Walks depth first with one descriptor per level. Raises OSError if a directory cannot
    be taken back (then the tree must not be read).
    """
    me, group = os.geteuid(), os.getegid()
    top = os.open(root, _DIR_FLAGS)  # the workroot is the node's: no task can replace root itself
    stack: list[tuple[int, list[str]]] = [(top, [])]
    try:
        os.fchown(top, me, group)
        os.fchmod(top, 0o700)
        stack[-1] = (top, _subdirectories(top))
        while stack:
            fd, names = stack[-1]
            if not names:
                os.close(fd)
                stack.pop()
                continue
            below = os.open(names.pop(), _DIR_FLAGS, dir_fd=fd)
            try:
                st = os.fstat(below)
                if st.st_uid not in (owner, me):
                    os.fchown(below, me, group)  # first: its owner could chmod it again
                mode = stat.S_IMODE(st.st_mode)
                if mode & 0o022:
                    os.fchmod(below, mode & ~0o022)
                stack.append((below, _subdirectories(below)))  # listed once it is closed to others
            except BaseException:
                os.close(below)
                raise
    finally:
        for fd, _ in stack:
            os.close(fd)


def _subdirectories(fd: int) -> list[str]:
    with os.scandir(fd) as entries:
        return [entry.name for entry in entries if entry.is_dir(follow_symlinks=False)]
