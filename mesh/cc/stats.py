"""What ``mesh cc`` did with each call, counted on disk: ``mesh cc --stats`` (ccache's ``-s``).

Every call of the wrapper adds one to the count of what became of it: answered by the
mesh (from its cache, or compiled on a node, counted by node), compiled here and kept in
the mesh's cache (``-g`` with optimisation), compiled here because the mesh could not
(and why), compiled here because it had something to say, or not a compile mesh cc sends
(linking, an unknown flag: why). The counts are where the build's developer looks first
when a build is not spread, as ccache's statistics are.

They live in ``cc-stats`` beside the node's compile socket (``$MESH_HOME/cc-stats``), as
lines ``COUNT<TAB>CATEGORY<TAB>DETAIL`` after a header with the time of the last reset.
Calls of a parallel build count at once, so each is a read, change and rewrite under a
POSIX record lock (``os.lockf``: the ``fcntl`` module alone costs 0.7 ms to import, and
this runs once a compile). A count is never worth a failed compile: when the file
cannot be made or written (no node's home yet, a full disk), the call is not counted.
Counts only grow, so a rewrite is never shorter than the file it replaces, and a wrapper
killed mid-write leaves at worst a last line without its newline, which is not read.

Details are bounded: a file name in a reason becomes its suffix (``*.s``), and a
category keeps at most :data:`MAX_DETAILS` details, the rest counted under ``others``.
Only the standard library's ``os`` and ``time`` are imported here: the wrapper's start-up
is a compile's overhead.
"""

from __future__ import annotations

import os
import time

#: The file's name, beside the compile service's socket.
FILE_NAME = "cc-stats"
#: The first line: what the file is (and its format's version).
HEADER = "mesh cc statistics 1"
#: Details a category keeps; more are counted under :data:`OTHERS`.
MAX_DETAILS = 30
OTHERS = "others"
#: The categories in the order ``--stats`` shows them, with their headings.
CATEGORIES = {
    "mesh": "compiles the mesh answered",
    "kept": "compiles run here and cached mesh-wide (-g with optimisation, -g3, clang's -g, gcc's ASan)",
    "fallback": "compiled here: the mesh could not",
    "said": "compiled here: they had something to say (shown as the compiler gives it)",
    "here": "run here: not a compile mesh cc sends",
}
#: Largest file read (a bound on what a damaged or foreign file costs a compile).
MAX_BYTES = 1 << 20

#: One count's key: (category, detail).
Key = tuple[str, str]


def path_beside(socket: str) -> str:
    """The statistics of the compile service listening at ``socket``."""
    return os.path.join(os.path.dirname(socket) or ".", FILE_NAME)


def general(reason: str) -> str:
    """``reason`` with a leading file name (``src/x.s: not a C or C++ source``) replaced by
    its suffix (``*.s: ...``), so that the reason of every such file is one count; flags
    (``-march=native: ...``) stay as they are."""
    head, sep, tail = reason.partition(": ")
    if not sep or head.startswith("-") or " " in head:
        return reason
    return f"*{os.path.splitext(head)[1]}: {tail}"


def count(path: str, category: str, detail: str) -> None:
    """Add one to ``(category, detail)`` in the statistics at ``path``; nothing when the
    file cannot be made or written (see the module's docstring)."""
    detail = " ".join(detail.split())  # no tab or newline in a line
    try:
        fd = _open_locked(path)
    except OSError:
        return
    try:
        since, counts = _parse(os.pread(fd, MAX_BYTES, 0))
        key = (category, detail)
        if key not in counts and sum(1 for c, _ in counts if c == category) >= MAX_DETAILS:
            key = (category, OTHERS)
        counts[key] = counts.get(key, 0) + 1
        _write(fd, since or time.time_ns(), counts)
    except OSError:
        pass
    finally:
        os.close(fd)


def _open_locked(path: str) -> int:
    """The statistics at ``path`` opened for a rewrite (made if absent, and given to the
    home's owner) and locked; the lock goes with the descriptor's close."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        _owned_by_home(fd, path)
        os.lockf(fd, os.F_LOCK, 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _owned_by_home(fd: int, path: str) -> None:
    """Give a file root made in another user's home to that user: root's build through a
    user's node must not leave the user's wrappers a file they cannot count in."""
    if os.geteuid() == 0:
        owner = os.stat(os.path.dirname(path) or ".").st_uid
        if os.fstat(fd).st_uid != owner:
            os.fchown(fd, owner, -1)


def read(path: str, *, wait: bool = True) -> tuple[int, dict[Key, int]]:
    """(reset time in ns since the epoch, or 0 when never counted; the counts) of ``path``,
    read under the writers' lock (a rewrite is not atomic), or without it where this user
    may only read the file. ``wait=False`` (the node, in its event loop) never waits for
    the lock: a wrapper stopped while it holds it (make suspended by Ctrl-Z) would hold
    the node too; then the file is read as it is, a rewrite perhaps half done."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        locked = True
    except PermissionError:
        fd, locked = os.open(path, os.O_RDONLY | os.O_CLOEXEC), False
    except FileNotFoundError:
        return 0, {}
    try:
        if locked:
            try:
                os.lockf(fd, os.F_LOCK if wait else os.F_TLOCK, 0)
            except (BlockingIOError, PermissionError):  # F_TLOCK: held by another process
                pass
        return _parse(os.pread(fd, MAX_BYTES, 0))
    finally:
        os.close(fd)


def reset(path: str) -> None:
    """Zero every count (``--zero-stats``), from now."""
    fd = _open_locked(path)
    try:
        _write(fd, time.time_ns(), {})
    finally:
        os.close(fd)


def _parse(data: bytes) -> tuple[int, dict[Key, int]]:
    *lines, _torn = data.decode("utf-8", "replace").split("\n")  # a line is whole once its newline is written
    if not lines or lines[0] != HEADER:
        return 0, {}  # empty, or not ours: counting starts again
    since = 0
    counts: dict[Key, int] = {}
    for line in lines[1:]:
        if line.startswith("since\t"):
            value = line[6:]
            since = int(value) if value.isdigit() else 0
            continue
        parts = line.split("\t")
        if len(parts) == 3 and parts[0].isdigit() and parts[1] in CATEGORIES:
            key = (parts[1], parts[2])
            counts[key] = counts.get(key, 0) + int(parts[0])
    return since, counts


def _write(fd: int, since: int, counts: dict[Key, int]) -> None:
    lines = [HEADER, f"since\t{since}", *(f"{n}\t{c}\t{d}" for (c, d), n in counts.items())]
    data = ("\n".join(lines) + "\n").encode("utf-8", "replace")  # a file name need not be UTF-8
    view = memoryview(data)
    at = 0
    while at < len(data):
        at += os.pwrite(fd, view[at:], at)
    os.ftruncate(fd, len(data))


def render(path: str, since: int, counts: dict[Key, int]) -> str:
    """The text of ``mesh cc --stats``: each category with its count and share of the calls,
    then its details, most frequent first."""
    if not since:
        return f"mesh cc statistics ({path}): nothing counted yet\n"
    total = sum(counts.values())
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(since / 1e9))
    out = [f"mesh cc statistics since {when} ({path})", "", f"{'calls':>8} {'%':>6}"]
    for category, heading in CATEGORIES.items():
        details = sorted(((n, d) for (c, d), n in counts.items() if c == category), key=lambda nd: (-nd[0], nd[1]))
        subtotal = sum(n for n, _ in details)
        share = 100 * subtotal / total if total else 0.0
        out.append(f"{subtotal:>8} {share:>6.1f}  {heading}")
        out += [f"{n:>8} {'':>6}    {detail}" for n, detail in details]
    out += ["", f"{total} calls in all; mesh cc --zero-stats counts from zero again"]
    return "\n".join(out) + "\n"
