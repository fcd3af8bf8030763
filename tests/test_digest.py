"""Digest: one text form, strict parsing with clear messages."""

from __future__ import annotations

import blake3
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh.cas.digest import Digest
from mesh.errors import InvalidDigest


@given(st.binary(min_size=32, max_size=32), st.integers(min_value=0, max_value=2**63))
def test_text_round_trip(h: bytes, size: int) -> None:
    d = Digest(h, size)
    text = str(d)
    assert text == f"b3:{h.hex()}:{size}"
    assert Digest.parse(text) == d


def test_of_bytes_matches_blake3() -> None:
    assert Digest.of(b"abc") == Digest(blake3.blake3(b"abc").digest(), 3)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "must start with 'b3:'"),
        ("sha256:" + "0" * 64 + ":1", "must start with 'b3:'"),
        ("b3:" + "0" * 64, "three parts"),
        ("b3:" + "0" * 63 + ":1", "64 lowercase hex"),
        ("b3:" + "A" * 64 + ":1", "64 lowercase hex"),
        ("b3:" + "0" * 64 + ":01", "leading zeros"),
        ("b3:" + "0" * 64 + ":-1", "decimal number"),
        ("b3:" + "0" * 64 + ":1 ", "decimal number"),
        (" b3:" + "0" * 64 + ":1", "must start with 'b3:'"),
    ],
)
def test_malformed_text_is_refused_with_reason(text: str, why: str) -> None:
    with pytest.raises(InvalidDigest, match=why):
        Digest.parse(text)


@given(st.text(max_size=100))
def test_parse_of_arbitrary_text_either_round_trips_or_raises_invalid_digest(text: str) -> None:
    try:
        d = Digest.parse(text)
    except InvalidDigest:
        return
    assert str(d) == text


def test_fields_are_validated() -> None:
    with pytest.raises(InvalidDigest):
        Digest(b"short", 1)
    with pytest.raises(InvalidDigest):
        Digest(b"\0" * 32, -1)
    with pytest.raises(InvalidDigest):
        Digest(b"\0" * 32, True)  # a bool is not a size
    with pytest.raises(InvalidDigest):
        Digest.parse(123)  # type: ignore[arg-type]
