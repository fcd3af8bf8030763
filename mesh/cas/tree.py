"""Directory nodes: the canonical CBOR encoding of one directory of a snapshot.

A snapshot is a Merkle tree of these nodes stored as blobs in the CAS; its id is
the root node's digest. A node is the CBOR array::

    ["tree", 1, [[name, kind, ref, size], ...]]

* ``name``: bytes, the entry's file name exactly as the filesystem has it;
  entries are sorted by name (bytewise) and names are unique.
* ``kind``: 0 file, 1 executable file, 2 symlink, 3 directory.
* ``ref``: the 32-byte BLAKE3 hash of the file or child node; for a symlink, its
  target (bytes, stored verbatim, never interpreted).
* ``size``: the blob's size; for a symlink, the length of its target.

Nothing else is recorded (no mtimes, owners or permissions beyond the executable
bit), so the same tree gives the same id on every machine. Decoding validates
everything, including that the bytes are exactly the canonical encoding, so each
tree has one id; a hostile node (a name of ``..``, ``a/b``, empty or with NUL) is
refused with InvalidTree.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from mesh import codec
from mesh.cas.digest import HASH_SIZE, Digest
from mesh.errors import CodecError, InvalidTree

MAGIC = "tree"
VERSION = 1
#: Largest directory node accepted (about a million entries).
MAX_NODE_BYTES = 64 << 20
MAX_ENTRIES = 1_000_000
#: Limits of Linux itself (NAME_MAX, PATH_MAX).
MAX_NAME = 255
MAX_LINK_TARGET = 4096


class Kind(enum.IntEnum):
    """What a directory entry is."""

    FILE = 0
    EXECUTABLE = 1
    SYMLINK = 2
    DIRECTORY = 3

    @property
    def label(self) -> str:
        return _LABELS[self]


_LABELS = {Kind.FILE: "file", Kind.EXECUTABLE: "exec", Kind.SYMLINK: "link", Kind.DIRECTORY: "dir"}


@dataclass(frozen=True, slots=True)
class Entry:
    """One entry of a directory node. ``digest`` is None for symlinks, ``target`` for the rest."""

    name: bytes
    kind: Kind
    digest: Digest | None = None
    target: bytes | None = None

    @property
    def blob(self) -> Digest:
        """The digest of a file or directory entry (an error for a symlink)."""
        if self.digest is None:
            raise InvalidTree(f"entry {self.name!r} is a symlink, not a file or directory")
        return self.digest

    @property
    def link(self) -> bytes:
        """The target of a symlink entry (an error for anything else)."""
        if self.target is None:
            raise InvalidTree(f"entry {self.name!r} is not a symlink")
        return self.target

    @property
    def size(self) -> int:
        """Bytes of the file or child node; length of a symlink's target."""
        if self.digest is not None:
            return self.digest.size
        assert self.target is not None
        return len(self.target)

    def same_content(self, other: Entry) -> bool:
        """True when both entries have the same kind and content (names aside)."""
        return self.kind == other.kind and self.digest == other.digest and self.target == other.target


def check_name(name: object) -> bytes:
    """Return ``name`` if it is a valid entry name; else raise InvalidTree saying why."""
    if not isinstance(name, bytes):
        raise InvalidTree(f"entry name must be bytes, got {type(name).__name__}")
    if not name:
        raise InvalidTree("entry name is empty")
    if name in (b".", b".."):
        raise InvalidTree(f"entry name {name!r} is not allowed")
    if b"/" in name:
        raise InvalidTree(f"entry name {name!r} contains '/'")
    if b"\0" in name:
        raise InvalidTree(f"entry name {name!r} contains a NUL byte")
    if len(name) > MAX_NAME:
        raise InvalidTree(f"entry name of {len(name)} bytes is longer than {MAX_NAME}")
    return name


def encode_node(entries: list[Entry]) -> bytes:
    """Canonical bytes of a directory node. ``entries`` must be sorted by name."""
    rows: list[list[object]] = []
    for e in entries:
        if e.digest is not None:
            rows.append([e.name, int(e.kind), e.digest.hash, e.digest.size])
        else:
            assert e.target is not None
            rows.append([e.name, int(e.kind), e.target, len(e.target)])
    return codec.encode([MAGIC, VERSION, rows])


def decode_node(data: bytes) -> list[Entry]:
    """Parse and validate a directory node; raise InvalidTree (a CodecError) if it is not one."""
    try:
        # Every item's type is checked below, so the codec's generic type walk is skipped.
        value = codec.decode(data, max_size=MAX_NODE_BYTES, max_depth=4, check_types=False)
    except InvalidTree:
        raise
    except CodecError as exc:
        raise InvalidTree(f"not a directory node: {exc}") from None
    if not (isinstance(value, list) and len(value) == 3 and value[0] == MAGIC):
        raise InvalidTree("not a directory node: expected ['tree', version, entries]")
    if value[1] != VERSION:
        raise InvalidTree(f"directory node version {value[1]!r} is not supported (expected {VERSION})")
    rows = value[2]
    if not isinstance(rows, list):
        raise InvalidTree("directory node entries must be an array")
    if len(rows) > MAX_ENTRIES:
        raise InvalidTree(f"directory node has {len(rows)} entries, more than {MAX_ENTRIES}")
    entries: list[Entry] = []
    previous = b""
    for row in rows:
        if not (isinstance(row, list) and len(row) == 4):
            raise InvalidTree("directory entry must be [name, kind, ref, size]")
        name, kind, ref, size = row
        check_name(name)
        if entries and name <= previous:
            raise InvalidTree(f"entries are not sorted by name or not unique at {name!r}")
        previous = name
        if type(kind) is not int or kind not in _LABELS:
            raise InvalidTree(f"entry {name!r} has unknown kind {kind!r}")
        if not isinstance(ref, bytes):
            raise InvalidTree(f"entry {name!r} reference must be bytes")
        if type(size) is not int or size < 0:
            raise InvalidTree(f"entry {name!r} has invalid size {size!r}")
        if kind == Kind.SYMLINK:
            if not ref or len(ref) > MAX_LINK_TARGET or b"\0" in ref or size != len(ref):
                raise InvalidTree(f"entry {name!r} has an invalid symlink target")
            entries.append(Entry(name, Kind.SYMLINK, None, ref))
        else:
            if len(ref) != HASH_SIZE:
                raise InvalidTree(f"entry {name!r} hash must be {HASH_SIZE} bytes")
            entries.append(Entry(name, Kind(kind), Digest(ref, size)))
    if encode_node(entries) != bytes(data):
        raise InvalidTree("directory node is not in canonical form")
    return entries
