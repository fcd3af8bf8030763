"""The walk of a directory tree that ingest and planning start with.

One ``lstat`` per entry: the stat cache answers for unchanged files and
directories, the rest are listed as pending files to hash or store. Every entry's
mtime is kept from that same ``lstat`` (the cache answers for content, never for
times), for the tree's times manifest (:func:`tree_times`, mesh.cas.times). On a warm
re-snapshot this walk is nearly all of the work, and it is Python's per-entry loop
(holding the GIL) more than system calls, so :func:`walk_tree` spreads large trees
over forked processes (:mod:`mesh.cas.forkmap`): the top levels are listed here
until there are enough subtrees to share out, the workers walk those, and each
hands back only what the caller must still look at (directories whose cached node
cannot be reused) plus which cache entries it used.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from functools import partial

from mesh.cas.digest import Digest
from mesh.cas.forkmap import fork_map
from mesh.cas.statcache import CacheUsage, StatCache
from mesh.cas.times import Times
from mesh.cas.tree import Kind
from mesh.errors import SnapshotError, UnsupportedFile
from mesh.ignore import Ignore

#: A walk shares out at least this many subtrees (when the tree has them), so that
#: workers taking them one at a time end at about the same moment.
SUBTREES = 64
#: Trees whose previous snapshot had fewer files than this are walked in this process:
#: forking would cost more than it saves.
PARALLEL_MIN_FILES = 4000


@dataclass(slots=True, eq=False)
class DirNode:
    """A directory met by the walk: its entries, some still waiting for a digest."""

    rel: bytes
    st: os.stat_result
    cached: Digest | None  # the node the stat cache offers, if the directory's own stat is unchanged
    # value: (hash, size) from the cache | bytes (link target) | DirNode | int (index of a pending file)
    # | Digest (a subdirectory whose cached node a worker process found reusable)
    rows: list[tuple[bytes, Kind, object]]
    changed: bool = False  # a file below it (directly) was not answered by the cache
    digest: Digest | None = None
    reused: bool = False
    # entries directly in it that a snapshot cannot hold: (path, what it is), all reported at once
    special: list[tuple[bytes, str]] = field(default_factory=list)
    # (name, mtime_ns) of each file and symlink in it, from the walk's lstat (mesh.cas.times)
    mtimes: list[tuple[bytes, int]] = field(default_factory=list)
    # (path, mtime_ns) of every entry of subtrees below it that a worker process found reusable
    # and sent back as a Digest only (directories included)
    pruned: list[tuple[bytes, int]] = field(default_factory=list)


@dataclass(slots=True)
class PendingFile:
    """A file the stat cache could not vouch for: it must be read (hashed or stored)."""

    rel: bytes
    path: bytes
    st: os.stat_result


_SPECIAL = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def tree_root(root: str | os.PathLike[str]) -> tuple[bytes, os.stat_result]:
    """The absolute path (bytes) and stat of a directory to snapshot; SnapshotError, naming
    it, when it cannot be read or is not a directory. Ingest and plans start here."""
    path = os.fsencode(os.path.abspath(os.fspath(root)))
    try:
        root_st = os.stat(path)
    except OSError as exc:
        raise SnapshotError(f"cannot snapshot {os.fsdecode(path)}: {exc.strerror}") from None
    if not stat.S_ISDIR(root_st.st_mode):
        raise SnapshotError(f"cannot snapshot {os.fsdecode(path)}: not a directory")
    return path, root_st


def _describe(mode: int) -> str:
    for test, text in _SPECIAL:
        if test(mode):
            return text
    return "not a regular file, directory or symlink"


def _walk_from(
    top: DirNode, path: bytes, cache: StatCache | None, ignore: Ignore | None
) -> tuple[list[DirNode], list[PendingFile]]:
    """Walk the directory ``top`` found at ``path`` and everything below it."""
    order: list[DirNode] = []
    pending: list[PendingFile] = []
    stack: list[tuple[DirNode, bytes]] = [(top, path)]
    while stack:
        node, path = stack.pop()
        order.append(node)
        _list_dir(node, path, cache, ignore, pending, stack)
    return order, pending


def _list_dir(
    node: DirNode,
    path: bytes,
    cache: StatCache | None,
    ignore: Ignore | None,
    pending: list[PendingFile],
    subdirs: list[tuple[DirNode, bytes]],
) -> None:
    """Fill ``node.rows`` from the directory at ``path``: one ``lstat`` per entry.

    Files the cache cannot vouch for are appended to ``pending``, subdirectories (not
    yet listed) to ``subdirs``.
    """
    rel = node.rel
    rows = node.rows
    mtimes = node.mtimes
    try:
        with os.scandir(path) as it:
            entries = list(it)
    except OSError as exc:
        raise SnapshotError(f"cannot read directory {os.fsdecode(path)}: {exc.strerror}") from None
    for entry in entries:
        name = entry.name
        child_rel = rel + b"/" + name if rel else name
        try:
            if entry.is_dir(follow_symlinks=False):
                if ignore is not None and ignore(child_rel, True):
                    continue
                st = entry.stat(follow_symlinks=False)
                child = DirNode(child_rel, st, cache.lookup_dir(child_rel, st) if cache is not None else None, [])
                rows.append((name, Kind.DIRECTORY, child))
                subdirs.append((child, entry.path))
                continue
            if ignore is not None and ignore(child_rel, False):
                continue
            st = entry.stat(follow_symlinks=False)
            mode = st.st_mode
            mtimes.append((name, st.st_mtime_ns))
            if stat.S_ISREG(mode):
                kind = Kind.EXECUTABLE if mode & 0o100 else Kind.FILE
                cached = cache.lookup(child_rel, st) if cache is not None else None
                if cached is not None:
                    rows.append((name, kind, (cached, st.st_size)))
                else:
                    node.changed = True
                    rows.append((name, kind, len(pending)))
                    pending.append(PendingFile(child_rel, entry.path, st))
            elif stat.S_ISLNK(mode):
                rows.append((name, Kind.SYMLINK, os.readlink(entry.path)))
            else:
                node.changed = True  # never reusable: the walk must see it to report it
                node.special.append((entry.path, _describe(mode)))
        except FileNotFoundError:
            continue  # deleted while we walked: it is simply not in this snapshot
        except PermissionError as exc:
            raise SnapshotError(f"cannot read {os.fsdecode(entry.path)}: {exc.strerror}") from None


#: How many of the entries a snapshot cannot hold an error names before "and N more".
SPECIAL_NAMED = 20


def walk_tree(
    root: bytes,
    root_st: os.stat_result,
    cache: StatCache | None,
    ignore: Ignore | None,
    *,
    workers: int = 1,
) -> tuple[list[DirNode], list[PendingFile]]:
    """Walk ``root``: its directories (parents before children) and the files to look at.

    With a warm ``cache`` of a large tree and ``workers`` > 1 the walk runs in worker
    processes, and a subdirectory whose cached node is reusable (its stat and every
    entry below it unchanged) may come back as a row holding just its Digest, its
    nodes left out of the result. Callers that need every node walk with one worker.

    Raises UnsupportedFile naming every FIFO, socket and device of the tree (up to
    :data:`SPECIAL_NAMED`, then how many more) once the whole tree is walked, so that
    one run tells the user all that stands in the way, not one entry per attempt.
    """
    order, pending = _walk_tree(root, root_st, cache, ignore, workers)
    special = [item for node in order for item in node.special]
    if special:
        raise UnsupportedFile(special_message(special))
    return order, pending


def special_message(special: list[tuple[bytes, str]]) -> str:
    """The one line that names the entries a snapshot cannot hold, and what to do about them."""
    special = sorted(special)
    named = "; ".join(f"{os.fsdecode(path)}: it is {what}" for path, what in special[:SPECIAL_NAMED])
    more = f"; and {len(special) - SPECIAL_NAMED} more" if len(special) > SPECIAL_NAMED else ""
    them = "it" if len(special) == 1 else "them"
    return (
        f"cannot snapshot {named}{more} (a snapshot holds only files, directories and symlinks): "
        f"remove {them}, or leave {them} out of the tree with a .meshignore"
    )


def _walk_tree(
    root: bytes, root_st: os.stat_result, cache: StatCache | None, ignore: Ignore | None, workers: int
) -> tuple[list[DirNode], list[PendingFile]]:
    top = DirNode(b"", root_st, cache.lookup_dir(b"", root_st) if cache is not None else None, [])
    if workers <= 1 or cache is None or len(cache) < PARALLEL_MIN_FILES:
        return _walk_from(top, root, cache, ignore)
    order: list[DirNode] = []
    pending: list[PendingFile] = []
    level: list[tuple[DirNode, bytes]] = [(top, root)]
    while level and len(level) < SUBTREES:  # breadth first: parents stay before children
        below: list[tuple[DirNode, bytes]] = []
        for node, path in level:
            order.append(node)
            _list_dir(node, path, cache, ignore, pending, below)
        level = below
    if not level:
        return order, pending
    results = fork_map(partial(_walk_subtree, cache=cache, ignore=ignore), level, workers)
    where = {id(value): (node, i) for node in order for i, (_, _, value) in enumerate(node.rows)}
    for (subtree, _), (sub_order, sub_pending, reused, usage, pruned) in zip(level, results, strict=True):
        cache.add_usage(usage)
        parent, i = where[id(subtree)]
        parent.pruned.extend(pruned)
        name, kind, _ = parent.rows[i]
        if reused is not None:
            parent.rows[i] = (name, kind, reused)
            continue
        parent.rows[i] = (name, kind, sub_order[0])
        if sub_pending:
            offset = len(pending)
            for node in sub_order:
                node.rows = [(n, k, v + offset if type(v) is int else v) for n, k, v in node.rows]
            pending.extend(sub_pending)
        order.extend(sub_order)
    return order, pending


def _walk_subtree(
    item: tuple[DirNode, bytes], *, cache: StatCache, ignore: Ignore | None
) -> tuple[list[DirNode], list[PendingFile], Digest | None, CacheUsage, list[tuple[bytes, int]]]:
    """In a worker: walk one subtree; return its nodes (pruned), pending files, cache usage,
    and the mtimes of the entries of the nodes left out.

    The third value is the subtree's cached node when the whole subtree is reusable;
    the nodes are then left out.
    """
    before = cache.take_usage()  # count this subtree apart from what was used before it
    top, path = item
    order, pending = _walk_from(top, path, cache, ignore)
    usage = cache.take_usage()
    cache.add_usage(before)
    for node in reversed(order):  # children before their parents
        if reusable(node):
            node.digest, node.reused = node.cached, True
    pruned = [item for node in order if node.reused for item in node_times(node)]
    if top.reused:
        return [], [], top.digest, usage, pruned
    kept = [node for node in order if not node.reused]
    for node in kept:  # send a reused subdirectory as its digest, not as its whole subtree
        node.rows = [(n, k, v.digest if isinstance(v, DirNode) and v.reused else v) for n, k, v in node.rows]
    return kept, pending, None, usage, pruned


def reusable(node: DirNode) -> bool:
    """Whether the node the stat cache offers for ``node`` still holds: the directory's own
    stat is unchanged, no file in it needs reading, and every subdirectory kept its node
    (rows that are already a Digest did). Its subdirectories must be decided first."""
    return (
        node.cached is not None
        and not node.changed
        and all(value.reused for _, _, value in node.rows if isinstance(value, DirNode))
    )


def node_times(node: DirNode) -> list[tuple[bytes, int]]:
    """``(path, mtime_ns)`` of directory ``node`` itself and of its files and symlinks."""
    rel = node.rel
    prefix = rel + b"/" if rel else b""
    return [(rel, node.st.st_mtime_ns), *((prefix + name, mtime) for name, mtime in node.mtimes)]


def tree_times(order: list[DirNode]) -> Times:
    """The times manifest of a walked tree: every entry's mtime as the walk's lstat saw it
    (the stat cache answers for content, never for times, so they are always current)."""
    items: list[tuple[bytes, int]] = []
    for node in order:
        items.extend(node_times(node))
        items.extend(node.pruned)
    return Times.of(items)
