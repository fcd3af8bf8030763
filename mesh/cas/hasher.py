"""The streaming BLAKE3 hasher: the performance-critical core of the store.

Strategy by size, chosen from measurements on the project's machines:

* small files (below :data:`MMAP_THRESHOLD`): one ``read`` of the whole file, one
  hash call. The fixed cost of a syscall dominates, so the fewer the better.
* large files: ``mmap`` the file and hand the whole mapping to BLAKE3 with
  ``max_threads=AUTO``, which hashes it on every core (BLAKE3's tree mode) without
  copying it through user-space buffers and without holding the GIL.

:class:`StreamHasher` hashes bytes as they pass (uploads, downloads, blob
writers) and checks an expected digest at the end.

Mapping a file that another process truncates while it is hashed raises SIGBUS in
any mmap-based hasher (b3sum too); the store only maps files that it owns.
"""

from __future__ import annotations

import mmap
import os
import stat
from collections.abc import Iterator
from typing import BinaryIO

import blake3

from mesh.cas.digest import Digest
from mesh.cas.forkmap import fork_map
from mesh.errors import DigestMismatch

#: Files at least this large are hashed through mmap on all cores.
MMAP_THRESHOLD = 1 << 20
#: Read size for streams whose length is unknown (stdin, sockets).
STREAM_CHUNK = 1 << 20
_AUTO = blake3.blake3.AUTO
#: What large inputs are hashed with: every core, unless :func:`single_threaded` said not to.
_threads = _AUTO

EMPTY = Digest(blake3.blake3(b"").digest(), 0)


class StreamHasher:
    """Hash bytes as they stream past; counts them too.

    ``verify(expected)`` raises :class:`DigestMismatch` when the bytes seen so far
    are not the expected blob, so a receiver can refuse it before publishing it.

    ``inline`` hashes on the calling thread only: for bytes that pass in pieces of a
    few MiB on their way to or from a socket or a file (the store's blob readers and
    writers). BLAKE3's thread pool gains nothing on pieces that small (256 MiB in
    1 or 4 MiB pieces: 38-42 ms of CPU and about as long either way, 2 cores) and
    costs a hand-off per piece: the caller waits for the pool's threads to wake and
    finish; serving a blob, 13% of the serving thread's samples (py-spy) were that wait.
    """

    __slots__ = ("_hasher", "size")

    def __init__(self, *, inline: bool = False) -> None:
        self._hasher = blake3.blake3(max_threads=1 if inline else _threads)
        self.size = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Add the next chunk of bytes."""
        self._hasher.update(data)
        self.size += len(data)

    def digest(self) -> Digest:
        """The digest of everything added so far."""
        return Digest(self._hasher.digest(), self.size)

    def verify(self, expected: Digest, where: str = "") -> Digest:
        """Return the digest if it equals ``expected``; else raise DigestMismatch."""
        actual = self.digest()
        if actual != expected:
            raise DigestMismatch(expected, actual, where)
        return actual


def single_threaded() -> None:
    """Hash on the calling thread only, from now on, in this process.

    For worker processes forked by :mod:`mesh.cas.forkmap`: BLAKE3's thread pool
    (rayon's) does not survive a fork, and a child that handed it work would wait
    forever. The workers themselves use the other cores.
    """
    global _threads
    _threads = 1


def hash_bytes(data: bytes | bytearray | memoryview) -> Digest:
    """The digest of bytes in memory (multi-threaded when they are large)."""
    if len(data) >= MMAP_THRESHOLD:
        h = blake3.blake3(max_threads=_threads)
        h.update(data)
        return Digest(h.digest(), len(data))
    return Digest(blake3.blake3(data).digest(), len(data))


def read_fd(fd: int, size_hint: int) -> bytes:
    """Read a file descriptor to its end, in one syscall when ``size_hint`` is right.

    Asking for one byte more than the expected size tells a file that grew apart
    from one that did not without a second read (regular files never read short
    before their end).
    """
    data = os.read(fd, size_hint + 1)
    if len(data) <= size_hint:
        return data
    chunks = [data]
    while chunk := os.read(fd, STREAM_CHUNK):
        chunks.append(chunk)
    return b"".join(chunks)


def hash_fd(fd: int, size: int | None = None) -> Digest:
    """Hash an open regular file from its current offset 0 to its end.

    ``size`` is the caller's ``fstat`` size if it has one (saves a syscall); the
    digest always covers the bytes really read.
    """
    if size is None:
        size = os.fstat(fd).st_size
    if size < MMAP_THRESHOLD:
        return hash_bytes(read_fd(fd, size))
    with mmap.mmap(fd, 0, prot=mmap.PROT_READ) as mapped:
        h = blake3.blake3(max_threads=_threads)
        h.update(mapped)
        return Digest(h.digest(), len(mapped))


def hash_file(path: str | bytes, *, follow_symlinks: bool = True) -> Digest:
    """Hash the regular file at ``path``. Raises OSError (e.g. IsADirectoryError)."""
    flags = os.O_RDONLY | os.O_CLOEXEC | (0 if follow_symlinks else os.O_NOFOLLOW)
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(21, "Is a directory", path)
        if not stat.S_ISREG(st.st_mode):
            return hash_stream_fd(fd)
        return hash_fd(fd, st.st_size)
    finally:
        os.close(fd)


def hash_stream_fd(fd: int) -> Digest:
    """Hash a descriptor of unknown length (a pipe, a terminal) to its end."""
    h = StreamHasher()
    while chunk := os.read(fd, STREAM_CHUNK):
        h.update(chunk)
    return h.digest()


def hash_stream(stream: BinaryIO) -> Digest:
    """Hash a binary stream to its end (stdin for ``mesh hash -``)."""
    h = StreamHasher()
    while chunk := stream.read(STREAM_CHUNK):
        h.update(chunk)
    return h.digest()


#: Files hashed per item of work that :func:`hash_tree` hands to a worker process.
_TREE_BATCH = 64


def hash_tree(root: str | bytes, *, workers: int | None = None) -> Iterator[tuple[bytes, Digest]]:
    """Yield ``(relative path, digest)`` for every regular file below ``root``.

    Symlinks are not followed and other special files are skipped; paths are bytes
    (relative, ``/``-separated) so that any name the filesystem holds survives. The
    order is a depth-first walk with each directory's entries sorted by name.

    The tree is listed first, then hashed by ``workers`` processes (default: one per
    core; see :mod:`mesh.cas.forkmap`), since the per-file work of a source tree is
    mostly Python holding the GIL.
    """
    files = list(_regular_files(os.fsencode(root)))
    batches = [files[i : i + _TREE_BATCH] for i in range(0, len(files), _TREE_BATCH)]
    count = workers if workers is not None else os.cpu_count() or 1
    for batch, digests in zip(batches, fork_map(_hash_batch, batches, count, child_init=single_threaded), strict=True):
        for (name, _), digest in zip(batch, digests, strict=True):
            yield name, digest


def _regular_files(base: bytes) -> Iterator[tuple[bytes, bytes]]:
    """``(relative path, path)`` of every regular file below ``base``, depth first, sorted."""
    stack: list[bytes] = [b""]
    while stack:
        rel = stack.pop()
        here = base + b"/" + rel if rel else base
        with os.scandir(here) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            name = rel + b"/" + entry.name if rel else entry.name
            if entry.is_dir(follow_symlinks=False):
                stack.append(name)
            elif entry.is_file(follow_symlinks=False):
                yield name, entry.path


def _hash_batch(batch: list[tuple[bytes, bytes]]) -> list[Digest]:
    """The digests of a batch of regular files, opened without following symlinks."""
    digests = []
    for _, path in batch:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            digests.append(hash_fd(fd))
        finally:
            os.close(fd)
    return digests
