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


@pytest.mark.parametrize("value", [10**400, -(10**400), 2**1024], ids=["1e400", "-1e400", "2**1024"])
def test_a_number_field_refuses_an_integer_no_float_can_hold(value: int) -> None:
    """JSON carries integers of any size; a number field is used as a float (a task's timeout),
    so one beyond 1.8e308 is a CodecError (a 400), not an OverflowError (a 500) later."""
    fields = codec.Fields({"timeout": value}, "task 't'")
    with pytest.raises(CodecError, match="field 'timeout' of task 't' must be a number of at most 1.79769e"):
        fields.number("timeout", minimum=-1e400)


def test_a_number_field_takes_large_integers_a_float_can_hold() -> None:
    assert codec.Fields({"n": 10**300}, "m").number("n") == 10**300
