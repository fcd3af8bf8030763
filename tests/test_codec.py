"""Canonical CBOR with limits: malformed input only ever raises CodecError."""

from __future__ import annotations

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh import codec
from mesh.errors import CodecError

plain = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.binary(max_size=40) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=30,
)


@given(plain)
def test_round_trip_and_canonical(value: object) -> None:
    data = codec.encode(value)
    assert codec.decode(data) == value
    assert codec.encode(codec.decode(data)) == data


def test_map_key_order_does_not_change_bytes() -> None:
    assert codec.encode({"b": 1, "a": 2}) == codec.encode({"a": 2, "b": 1})


@given(st.binary(max_size=200))
def test_random_bytes_decode_or_raise_codec_error(data: bytes) -> None:
    try:
        codec.decode(data)
    except CodecError:
        pass


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "empty"),
        (b"\x01\x02", "follow the message"),
        (b"\x9f\x01\xff", "indefinite"),
        (b"\xa2\x01\x01\x01\x02", "Duplicate"),
        (b"\xc1\x01", "not allowed"),  # tag 1: a datetime
        (b"\xd8\x63\x01", "tag"),  # unknown tag 99
        (b"\x82\x01", "malformed"),
        (b"\x5b\xff\xff\xff\xff\xff\xff\xff\xff", "malformed"),  # a byte string of 2**64-1 bytes
    ],
)
def test_specific_malformations(data: bytes, match: str) -> None:
    with pytest.raises(CodecError, match=match):
        codec.decode(data)


def test_depth_limit() -> None:
    deep = b"\x81" * 100 + b"\x01"
    with pytest.raises(CodecError, match="depth"):
        codec.decode(deep, max_depth=32)


def test_size_limit_checked_before_parsing() -> None:
    with pytest.raises(CodecError, match="exceeds the limit"):
        codec.decode(cbor2.dumps(b"x" * 100), max_size=50)
