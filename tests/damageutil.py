"""Damaging a stored blob's file in place, as someone with write access to the disk could."""

from __future__ import annotations

import os
import stat

#: How a blob's file is altered on disk.
ALTERATIONS = ["same size", "shorter", "longer"]
#: A flipped byte, then the file's mode and mtime put back: only its ctime tells.
RESTORED = "same size, mtime restored"


def alter(path: str, how: str) -> None:
    """Change a stored blob's file in place (chmod first: it is 0444). ``how`` is one of
    :data:`ALTERATIONS` or :data:`RESTORED`; "same size" flips the last byte, found only
    once everything before it was read."""
    before = os.stat(path)
    os.chmod(path, 0o644)
    size = before.st_size
    with open(path, "r+b") as f:
        if how in ("same size", RESTORED):
            f.seek(size - 1)
            last = f.read(1)
            f.seek(size - 1)
            f.write(bytes([last[0] ^ 0xFF]))
        elif how == "shorter":
            f.truncate(size - 1)
        elif how == "longer":
            f.seek(0, os.SEEK_END)
            f.write(b"appended")
        else:
            raise ValueError(f"no such alteration: {how!r}")
    if how == RESTORED:
        os.chmod(path, stat.S_IMODE(before.st_mode))
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        after = os.stat(path)
        assert (after.st_size, after.st_mtime_ns, after.st_mode) == (size, before.st_mtime_ns, before.st_mode)
        assert after.st_ctime_ns != before.st_ctime_ns
