"""Directory nodes: exact canonical form; hostile nodes refused on decode."""

from __future__ import annotations

import blake3
import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh.cas.digest import Digest
from mesh.cas.tree import Entry, Kind, decode_node, encode_node
from mesh.errors import InvalidTree

H = b"\x11" * 32


def raw(rows: list[list[object]]) -> bytes:
    return cbor2.dumps(["tree", 1, rows], canonical=True)


def test_encoding_is_the_documented_cbor() -> None:
    entries = [
        Entry(b"a", Kind.FILE, Digest(H, 5)),
        Entry(b"b", Kind.SYMLINK, None, b"../x"),
        Entry(b"c", Kind.DIRECTORY, Digest(H, 9)),
        Entry(b"d", Kind.EXECUTABLE, Digest(H, 0)),
    ]
    expected = raw([[b"a", 0, H, 5], [b"b", 2, b"../x", 4], [b"c", 3, H, 9], [b"d", 1, H, 0]])
    assert encode_node(entries) == expected
    assert decode_node(expected) == entries


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        ([[b"..", 0, H, 1]], "not allowed"),
        ([[b".", 0, H, 1]], "not allowed"),
        ([[b"a/b", 0, H, 1]], "contains '/'"),
        ([[b"", 0, H, 1]], "empty"),
        ([[b"a\0b", 0, H, 1]], "NUL"),
        ([["a", 0, H, 1]], "must be bytes"),
        ([[b"x" * 256, 0, H, 1]], "longer than"),
        ([[b"b", 0, H, 1], [b"a", 0, H, 1]], "not sorted"),
        ([[b"a", 0, H, 1], [b"a", 0, H, 1]], "not sorted"),
        ([[b"a", 7, H, 1]], "unknown kind"),
        ([[b"a", 0, b"short", 1]], "32 bytes"),
        ([[b"a", 0, H, -1]], "invalid size"),
        ([[b"a", 2, b"", 0]], "symlink target"),
        ([[b"a", 2, b"x\0y", 3]], "symlink target"),
        ([[b"a", 2, b"xy", 5]], "symlink target"),
        ([[b"a", 0, H]], r"\[name, kind, ref, size\]"),
    ],
)
def test_hostile_nodes_are_refused(rows: list[list[object]], match: str) -> None:
    with pytest.raises(InvalidTree, match=match):
        decode_node(raw(rows))


def test_wrong_envelope_and_version() -> None:
    with pytest.raises(InvalidTree):
        decode_node(cbor2.dumps(["blob", 1, []]))
    with pytest.raises(InvalidTree, match="version"):
        decode_node(cbor2.dumps(["tree", 2, []]))
    with pytest.raises(InvalidTree):
        decode_node(b"\xff\x00")


def test_non_canonical_encoding_is_refused() -> None:
    canonical = raw([[b"a", 0, H, 1]])
    # The same value with the integer 1 written in two bytes instead of one.
    loose = canonical[:-1] + b"\x18\x01"
    assert cbor2.loads(loose) == cbor2.loads(canonical)
    with pytest.raises(InvalidTree, match="canonical"):
        decode_node(loose)


@given(st.binary(max_size=300))
def test_random_bytes_never_pass_as_a_bad_node(data: bytes) -> None:
    try:
        entries = decode_node(data)
    except InvalidTree:
        return
    assert encode_node(entries) == data


def test_node_digest_is_independent_of_this_code() -> None:
    """The id of a known tree, computed here from the spec with cbor2 and blake3 directly."""
    content = b"hello\n"
    file_hash = blake3.blake3(content).digest()
    node = cbor2.dumps(["tree", 1, [[b"hello.txt", 0, file_hash, 6]]], canonical=True)
    entries = [Entry(b"hello.txt", Kind.FILE, Digest(file_hash, 6))]
    assert Digest.of(encode_node(entries)) == Digest(blake3.blake3(node).digest(), len(node))


def test_tagged_items_inside_a_node_are_refused() -> None:
    """The node decoder checks every item's type itself (the codec's type walk is skipped)."""
    import datetime

    stamp = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    for rows in ([[b"a", 0, H, stamp]], [[b"a", 0, H, 1.0]], [[b"a", True, H, 1]]):
        with pytest.raises(InvalidTree):
            decode_node(raw(rows))  # type: ignore[arg-type]
