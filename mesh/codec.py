"""Canonical CBOR: the one encoding of every wire and stored message.

Encoding is canonical (RFC 8949 core deterministic encoding as cbor2 implements
it), so equal values give equal bytes and therefore equal digests on every host.
Decoding is bounded: a size limit checked before parsing, a nesting-depth limit
enforced by the parser, no indefinite-length items, no duplicate map keys, no
tags. Any failure is raised as :class:`~mesh.errors.CodecError` with a message
that says what was wrong; schema checks on the decoded value are the caller's.
"""

from __future__ import annotations

import io
from typing import Any

import cbor2

from mesh.errors import CodecError

#: Default ceiling on an encoded message, checked before any parsing.
MAX_MESSAGE = 64 << 20
#: Default ceiling on nesting depth.
MAX_DEPTH = 32


def encode(value: Any) -> bytes:
    """Encode ``value`` as canonical CBOR. Raises CodecError for unencodable values."""
    try:
        return cbor2.dumps(value, canonical=True)
    except (cbor2.CBOREncodeError, TypeError, ValueError) as exc:
        raise CodecError(f"cannot encode {type(value).__name__} as CBOR: {exc}") from None


def _refuse_tag(decoder: object, tag: Any) -> Any:
    raise CodecError(f"CBOR tag {getattr(tag, 'tag', '?')} is not allowed in mesh messages")


def decode(
    data: bytes | bytearray | memoryview,
    *,
    max_size: int = MAX_MESSAGE,
    max_depth: int = MAX_DEPTH,
    check_types: bool = True,
) -> Any:
    """Decode one CBOR item that must fill ``data`` exactly.

    Raises CodecError when the data is larger than ``max_size``, nested deeper than
    ``max_depth``, malformed, truncated, followed by extra bytes, or uses tags,
    indefinite lengths or duplicate map keys. ``check_types=False`` skips the walk
    that refuses values built from semantic tags; only for callers whose own
    schema check tests the type of every item (the directory-node decoder).
    """
    if len(data) > max_size:
        raise CodecError(f"message of {len(data)} bytes exceeds the limit of {max_size} bytes")
    if not data:
        raise CodecError("empty message: expected one CBOR item")
    stream = io.BytesIO(data)
    try:
        value = cbor2.CBORDecoder(
            stream,
            max_depth=max_depth,
            allow_indefinite=False,
            allow_duplicate_keys=False,
            tag_hook=_refuse_tag,
        ).decode()
    except CodecError:
        raise
    except (cbor2.CBORError, ValueError, TypeError, OverflowError, RecursionError, MemoryError, EOFError) as exc:
        raise CodecError(f"malformed CBOR: {exc}") from None
    extra = len(data) - stream.tell()
    if extra:
        raise CodecError(f"malformed CBOR: {extra} bytes follow the message")
    if check_types:
        _check_plain(value, max_depth)
    return value


_PLAIN_LEAVES = (int, str, bytes, float, bool, type(None))


def _check_plain(value: Any, depth: int) -> None:
    """Refuse values cbor2 built from semantic tags (datetimes, bignums, sets ...)."""
    if isinstance(value, list):
        for item in value:
            _check_plain(item, depth - 1)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_plain(key, depth - 1)
            _check_plain(item, depth - 1)
    elif not isinstance(value, _PLAIN_LEAVES):
        raise CodecError(f"CBOR item of type {type(value).__name__} is not allowed in mesh messages (tags are refused)")
