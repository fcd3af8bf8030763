"""Write what a task produced or changed into a directory (``mesh exec --out DIR``).

A task's output snapshot is compared with its input snapshot by Merkle tree
(:func:`mesh.cas.snapshot.diff`: a subtree whose digest is unchanged is skipped
without being read), and only the entries that differ are written: one changed
file of a 100,000-file tree writes one file, not 100,001. With declared outputs
(``only``), just those paths are compared and written. The rules, the same whether
DIR is the input directory itself or another directory, empty or not:

* an entry the task added or changed is written at its path in DIR, replacing what
  DIR holds there (a file or a symlink is replaced whole, by a rename of a new file
  made next to it, so a reader never sees half a file; a symlink is replaced, never
  followed); directories on the way are made, and a file or symlink where the output
  has a directory is replaced by the directory;
* an entry the task left as it was is not touched: its inode, times and contents
  stay as they are (``make`` in DIR sees no change);
* an entry the task deleted is not deleted from DIR: nothing is ever deleted, and
  :class:`WriteOut` lists those paths so that the caller can say so;
* a directory in DIR where the output has a file or symlink stops the write with
  CheckoutConflict (it would have to be deleted first), naming it;
* nothing is written outside DIR: every path is made relative to an open
  descriptor of its parent, opened with ``O_NOFOLLOW`` (a symlink in DIR is never
  followed; only DIR itself may be one);
* every file is verified as it is read from the store, and a damaged blob leaves
  the old file in place (its new bytes go to a temporary name first).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from mesh.cas.access import BlobAccess
from mesh.cas.digest import Digest
from mesh.cas.snapshot import Change, changes_below, diff, resolve, split_path
from mesh.cas.tree import Entry, Kind
from mesh.errors import CheckoutConflict, PathNotFound, SnapshotError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_TEMP_PREFIX = b".mesh-out-"


@dataclass
class WriteOut:
    """What :func:`write_changes` did: entries written, bytes of files written, and the
    paths the task deleted (left in DIR)."""

    files: int = 0
    directories: int = 0
    symlinks: int = 0
    bytes_written: int = 0
    deleted: list[bytes] = field(default_factory=list)


def changes(store: BlobAccess, before: Digest, after: Digest, only: Sequence[str] | None = None) -> Iterator[Change]:
    """The changes from snapshot ``before`` to ``after``, parents before what is below them.

    ``only``: the declared outputs, relative paths; ``after`` then holds just those, and
    only they are compared (a path absent from ``after`` that ``before`` has is deleted).
    """
    if only is None:
        yield from diff(store, before, after)
        return
    for path in sorted(set(only)):
        rel = b"/".join(split_path(path))
        old, new = _entry(store, before, rel), _entry(store, after, rel)
        if old is not None and new is not None and old.kind == new.kind == Kind.DIRECTORY:
            yield from diff(store, old.blob, new.blob, rel)
        elif old is not None and new is not None and old.same_content(new):
            continue
        else:
            if old is not None:
                yield Change("D", rel, old, None)
            if new is not None:
                yield from changes_below(store, "A", rel, new)


def _entry(store: BlobAccess, root: Digest, rel: bytes) -> Entry | None:
    try:
        return resolve(store, root, rel)
    except PathNotFound:
        return None


def write_changes(
    store: BlobAccess,
    before: Digest,
    after: Digest,
    target: str | os.PathLike[str],
    *,
    only: Sequence[str] | None = None,
) -> WriteOut:
    """Write into ``target`` (made if absent) what changed from ``before`` to ``after``, by the
    rules of this module. Raises CheckoutConflict, SnapshotError (naming the path), and
    BlobNotFound or BlobDamaged from the store (the file being written keeps its old bytes)."""
    path = os.fspath(target)
    try:
        os.makedirs(path, exist_ok=True)
        top = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # DIR itself may be a symlink
    except OSError as exc:
        raise SnapshotError(f"cannot write into {path}: {exc.strerror}") from None
    writer = _Writer(store, path, top)
    try:
        for change in changes(store, before, after, only):
            deleted = writer.report.deleted
            if change.new is None:
                deleted.append(change.path)
                continue
            if deleted and deleted[-1] == change.path:  # not deleted: a file that became a directory
                deleted.pop()
            writer.write(change.path, change.new)
    finally:
        writer.close()
    return writer.report


class _Writer:
    """Writes entries by path, keeping open the descriptors of the directories on the
    current path (changes come parents first, so the stack stays as deep as the tree)."""

    def __init__(self, store: BlobAccess, target: str, top: int) -> None:
        self.store = store
        self.target = target
        self.report = WriteOut()
        self._stack: list[tuple[bytes, int]] = [(b"", top)]
        self._serial = 0

    def close(self) -> None:
        for _, fd in self._stack:
            os.close(fd)
        self._stack.clear()

    def _where(self, rel: bytes) -> str:
        return os.path.join(self.target, os.fsdecode(rel))

    def _parent(self, rel: bytes) -> int:
        """The descriptor of ``rel``'s parent directory, made (or put in place of a file) if needed."""
        parent = rel.rpartition(b"/")[0]
        while len(self._stack) > 1 and not _within(parent, self._stack[-1][0]):
            os.close(self._stack.pop()[1])
        done = self._stack[-1][0]
        rest = parent[len(done) + 1 :] if done else parent
        for name in rest.split(b"/") if rest else ():
            here = done + b"/" + name if done else name
            self._stack.append((here, self._directory(self._stack[-1][1], name, here)))
            done = here
        return self._stack[-1][1]

    def _directory(self, dfd: int, name: bytes, rel: bytes) -> int:
        """An open descriptor of directory ``name`` in ``dfd``: as found, made, or made in place
        of a file or symlink (which is removed; a symlink is never followed)."""
        try:
            st = os.lstat(name, dir_fd=dfd)
        except FileNotFoundError:
            st = None
        except OSError as exc:
            raise SnapshotError(f"cannot write {self._where(rel)}: {exc.strerror}") from None
        try:
            if st is not None and not stat.S_ISDIR(st.st_mode):
                os.unlink(name, dir_fd=dfd)
                st = None
            if st is None:
                os.mkdir(name, 0o755, dir_fd=dfd)
                self.report.directories += 1
            return os.open(name, _DIR_FLAGS, dir_fd=dfd)
        except OSError as exc:
            raise SnapshotError(f"cannot write {self._where(rel)}: {exc.strerror}") from None

    def write(self, rel: bytes, entry: Entry) -> None:
        dfd = self._parent(rel)
        name = rel.rpartition(b"/")[2]
        if entry.kind == Kind.DIRECTORY:
            os.close(self._directory(dfd, name, rel))
            return
        temp = self._temp_name()
        try:
            if entry.kind == Kind.SYMLINK:
                os.symlink(entry.link, temp, dir_fd=dfd)
            else:
                self._copy(dfd, temp, entry)
        except OSError as exc:
            raise SnapshotError(f"cannot write {self._where(rel)}: {exc.strerror}") from None
        try:
            os.rename(temp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except OSError as exc:
            os.unlink(temp, dir_fd=dfd)
            if _is_directory(dfd, name):
                what = "symlink" if entry.kind == Kind.SYMLINK else "file"
                raise CheckoutConflict(
                    f"{self._where(rel)} is a directory, where the output has a {what}: remove it and run again"
                ) from None
            raise SnapshotError(f"cannot write {self._where(rel)}: {exc.strerror}") from None
        if entry.kind == Kind.SYMLINK:
            self.report.symlinks += 1
        else:
            self.report.files += 1
            self.report.bytes_written += entry.size

    def _temp_name(self) -> bytes:
        self._serial += 1
        return _TEMP_PREFIX + f"{os.getpid()}-{self._serial}".encode()

    def _copy(self, dfd: int, temp: bytes, entry: Entry) -> None:
        """The blob's bytes, verified as they are read, into a new file ``temp`` (removed on error)."""
        perm = 0o755 if entry.kind == Kind.EXECUTABLE else 0o644
        fd = os.open(temp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, perm, dir_fd=dfd)
        try:
            with self.store.open(entry.blob) as reader:
                while chunk := reader.read(1 << 20):
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view) :]
        except BaseException:
            os.close(fd)
            os.unlink(temp, dir_fd=dfd)
            raise
        os.close(fd)


def _within(path: bytes, top: bytes) -> bool:
    """Whether ``path`` is ``top`` or below it (``b""`` is the root, above everything)."""
    return not top or path == top or path.startswith(top + b"/")


def _is_directory(dfd: int, name: bytes) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(name, dir_fd=dfd).st_mode)
    except OSError:
        return False
