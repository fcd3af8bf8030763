"""Times manifests: the modification times of a snapshotted tree, apart from its content.

A snapshot's id is its content only (mesh.cas.tree), so two trees with the same files
share it whatever their mtimes. But make and ninja decide what to rebuild from mtimes,
so a task must see its input files' times as they were in the user's tree, and the
action-cache key must cover them (mesh.exec.action: ``Action.times``). The times go in a
blob of their own, made by the same walk as the snapshot (one ``lstat`` per entry, which
the walk makes anyway), and applied by the checkout (mesh.cas.checkout). A manifest is
the canonical CBOR array::

    ["times", 1, paths, mtimes]

* ``paths``: bytes, the relative path of every entry of the tree (files, executables,
  symlinks, directories; the root itself is the empty path), sorted bytewise, unique,
  joined by NUL (which no path can hold); the root comes first.
* ``mtimes``: bytes, each entry's mtime in integer nanoseconds since the epoch, as
  little-endian signed 64-bit integers, in the order of ``paths``.

Columns, not one ``[path, mtime]`` pair per entry, because a manifest is made on every
``mesh exec`` and read on every checkout: measured on 30,000 entries, cbor2 encodes the
pairs in ~9 ms and decodes them in ~12 ms (plus a Python loop to check each), where the
columns cost under 1 ms each way and the checks are a regular expression over the joined
paths. Decoding validates everything, and refuses with InvalidTimes: a path with an
empty, ``.`` or ``..`` component, a component over 255 bytes, a path over 4096 bytes,
paths out of order or repeated, a root missing, columns of different lengths, more than
:data:`MAX_BYTES`, and bytes that are not exactly the canonical encoding (so a manifest
has one digest).

A task whose action has no manifest (API clients that send none, tasks whose input is
another task's output) sees :data:`FIXED_MTIME_NS` on every entry: never the store's
blob files' times, which change with use, so a timeless action is deterministic too.
"""

from __future__ import annotations

import re
import sys
from array import array
from collections.abc import Iterable

from mesh import codec
from mesh.errors import CodecError, InvalidTimes

MAGIC = "times"
VERSION = 1
#: Largest manifest accepted (about a million entries of 60-byte paths).
MAX_BYTES = 64 << 20
#: Limits of Linux itself (NAME_MAX, PATH_MAX).
MAX_NAME = 255
MAX_PATH = 4096
#: The mtime every entry gets when an action has no manifest: 1980-01-01T00:00:00Z. Fixed,
#: so that such a task is deterministic; the earliest time a ZIP archive can hold (Python's
#: zipfile refuses older files, which 0, SOURCE_DATE_EPOCH's usual value, would be), and
#: older than anything a task writes, so make takes what the task builds as up to date.
FIXED_MTIME_NS = 315_532_800 * 1_000_000_000

_INT64 = "q"
# An empty, "." or ".." component, or one over MAX_NAME bytes; a path over MAX_PATH bytes.
_BAD_COMPONENT = re.compile(rb"(?:^|[/\0])\.{0,2}(?=[/\0]|$)|[^/\0]{%d}" % (MAX_NAME + 1))
_LONG_PATH = re.compile(rb"[^\0]{%d}" % (MAX_PATH + 1))


class Times:
    """The mtimes of one tree's entries by path (relative, bytes; ``b""`` is the root)."""

    __slots__ = ("paths", "mtimes", "_index")

    def __init__(self, paths: list[bytes], mtimes: array[int]) -> None:
        self.paths = paths
        self.mtimes = mtimes
        self._index: dict[bytes, int] | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        return f"Times({len(self.paths)} entries)"

    @classmethod
    def of(cls, items: Iterable[tuple[bytes, int]]) -> Times:
        """A manifest of ``(path, mtime_ns)`` pairs in any order (paths must be unique)."""
        ordered = sorted(items)
        return cls([p for p, _ in ordered], array(_INT64, [m for _, m in ordered]))

    def get(self, path: bytes) -> int | None:
        """The mtime of the entry at ``path``, or None if the manifest does not list it."""
        index = self._index
        if index is None:
            index = self._index = {p: i for i, p in enumerate(self.paths)}
        i = index.get(path)
        return None if i is None else self.mtimes[i]

    def encode(self) -> bytes:
        """The canonical bytes of this manifest."""
        mtimes = self.mtimes
        if sys.byteorder != "little":
            mtimes = array(_INT64, mtimes)
            mtimes.byteswap()
        return codec.encode([MAGIC, VERSION, b"\0".join(self.paths), mtimes.tobytes()])


def decode(data: bytes) -> Times:
    """Parse and validate a times manifest; InvalidTimes (a CodecError) if it is not one."""
    try:
        value = codec.decode(data, max_size=MAX_BYTES, max_depth=2, check_types=False)
    except CodecError as exc:
        raise InvalidTimes(f"not a times manifest: {exc}") from None
    if not (isinstance(value, list) and len(value) == 4 and value[0] == MAGIC):
        raise InvalidTimes("not a times manifest: expected ['times', version, paths, mtimes]")
    if value[1] != VERSION:
        raise InvalidTimes(f"times manifest version {value[1]!r} is not supported (expected {VERSION})")
    joined, packed = value[2], value[3]
    if not isinstance(joined, bytes) or not isinstance(packed, bytes):
        raise InvalidTimes("a times manifest's paths and mtimes must be bytes")
    if joined and not joined.startswith(b"\0"):
        raise InvalidTimes("a times manifest must list the root (the empty path) first")
    rest = joined[1:]  # the paths after the root's
    bad = _BAD_COMPONENT.search(rest) if joined else None
    if bad is not None:
        near = rest[max(0, bad.start() - 40) : bad.end() + 40]
        raise InvalidTimes(f"times manifest holds an invalid path near {near!r}")
    if _LONG_PATH.search(rest) is not None:
        raise InvalidTimes(f"times manifest holds a path longer than {MAX_PATH} bytes")
    paths = joined.split(b"\0")
    if len(packed) != 8 * len(paths):
        raise InvalidTimes(f"times manifest lists {len(paths)} paths but {len(packed) / 8:g} mtimes")
    for a, b in zip(paths, paths[1:]):  # noqa: B905 - one shorter by design
        if a >= b:
            raise InvalidTimes(f"times manifest paths are not sorted or not unique at {b!r}")
    mtimes = array(_INT64)
    mtimes.frombytes(packed)
    if sys.byteorder != "little":
        mtimes.byteswap()
    times = Times(paths, mtimes)
    if times.encode() != bytes(data):
        raise InvalidTimes("times manifest is not in canonical form")
    return times
