"""Digest: the name of a blob, its BLAKE3-256 hash plus its size in bytes.

The size travels with the hash so that a reader knows how many bytes to expect
before it has them (to refuse oversized transfers early, to account for space).
There is one text form everywhere (CLI, JSON, logs)::

    b3:<64 lowercase hex digits>:<size in decimal>

Parsing accepts exactly that and rejects anything else with a message that says
what was wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import blake3

from mesh.errors import InvalidDigest

HASH_SIZE = 32
PREFIX = "b3:"
_TEXT = re.compile(r"b3:([0-9a-f]{64}):(0|[1-9][0-9]{0,18})")


@dataclass(frozen=True, slots=True)
class Digest:
    """A blob's BLAKE3-256 hash and size. Immutable, hashable, ordered by hash."""

    hash: bytes
    size: int

    def __post_init__(self) -> None:
        if not isinstance(self.hash, bytes) or len(self.hash) != HASH_SIZE:
            raise InvalidDigest(f"a digest hash must be {HASH_SIZE} bytes, got {self.hash!r:.80}")
        if type(self.size) is not int or self.size < 0:
            raise InvalidDigest(f"a digest size must be a non-negative integer, got {self.size!r:.40}")

    @property
    def hex(self) -> str:
        """The hash as 64 lowercase hex digits (what b3sum prints)."""
        return self.hash.hex()

    def __str__(self) -> str:
        return f"{PREFIX}{self.hash.hex()}:{self.size}"

    def __repr__(self) -> str:
        return f"Digest({str(self)!r})"

    def __lt__(self, other: Digest) -> bool:
        return (self.hash, self.size) < (other.hash, other.size)

    @classmethod
    def parse(cls, text: str) -> Digest:
        """Parse the text form ``b3:<hex>:<size>``; raise InvalidDigest saying what is wrong."""
        if not isinstance(text, str):
            raise InvalidDigest(f"a digest must be text like b3:<64 hex>:<size>, got {type(text).__name__}")
        m = _TEXT.fullmatch(text)
        if m is None:
            raise InvalidDigest(_explain(text))
        return cls(bytes.fromhex(m.group(1)), int(m.group(2)))

    @classmethod
    def of(cls, data: bytes | bytearray | memoryview) -> Digest:
        """The digest of bytes held in memory."""
        return cls(blake3.blake3(data).digest(), len(data))


def _explain(text: str) -> str:
    shown = repr(text) if len(text) <= 90 else repr(text[:90]) + "..."
    parts = text.split(":")
    if not text.startswith(PREFIX):
        why = "it must start with 'b3:'"
    elif len(parts) != 3:
        why = "it must have three parts, b3:<hash>:<size>"
    elif len(parts[1]) != 64 or not re.fullmatch(r"[0-9a-f]*", parts[1]):
        why = "the hash must be 64 lowercase hex digits"
    else:
        why = "the size must be a decimal number without leading zeros"
    return f"not a digest: {shown}: {why} (expected b3:<64 hex>:<size>)"
