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
import sys
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


_MISSING: Any = object()
_FLOAT_MAX = sys.float_info.max


class Fields:
    """Typed, checked access to the fields of one decoded CBOR (or JSON) map.

    Every getter names the field and the message in its error, so a client that
    sent a wrong type learns which field to fix. :meth:`done` refuses fields the
    schema does not know: a misspelt option must not be silently ignored.
    """

    def __init__(self, value: Any, what: str) -> None:
        if not isinstance(value, dict):
            raise CodecError(f"{what} must be a map, not {_kind(value)}")
        for key in value:
            if not isinstance(key, str):
                raise CodecError(f"{what} has a key of type {_kind(key)}; keys must be strings")
        self._value: dict[str, Any] = value
        self._seen: set[str] = set()
        self.what = what

    def __contains__(self, key: str) -> bool:
        return key in self._value

    def _get(self, key: str, types: type | tuple[type, ...], default: Any, type_name: str) -> Any:
        self._seen.add(key)
        if key not in self._value or self._value[key] is None:
            if default is _MISSING:
                raise CodecError(f"{self.what} lacks the required field {key!r}")
            return default
        item = self._value[key]
        if not isinstance(item, types) or (isinstance(item, bool) and bool not in _as_tuple(types)):
            raise CodecError(f"field {key!r} of {self.what} must be {type_name}, not {_kind(item)}")
        return item

    def text(self, key: str, default: Any = _MISSING) -> Any:
        return self._get(key, str, default, "a string")

    def integer(
        self, key: str, default: Any = _MISSING, *, minimum: int | None = None, maximum: int | None = None
    ) -> Any:
        item = self._get(key, int, default, "an integer")
        if isinstance(item, int) and not isinstance(item, bool):
            if minimum is not None and item < minimum:
                raise CodecError(f"field {key!r} of {self.what} must be at least {minimum}, not {item}")
            if maximum is not None and item > maximum:
                raise CodecError(f"field {key!r} of {self.what} must be at most {maximum}, not {item}")
        return item

    def number(self, key: str, default: Any = _MISSING, *, minimum: float = 0.0) -> Any:
        """A number a float can hold (callers compute with floats): an integer JSON allows
        beyond 1.8e308 is refused here rather than overflowing where it is used."""
        item = self._get(key, (int, float), default, "a number")
        if isinstance(item, int) and not isinstance(item, bool) and abs(item) > _FLOAT_MAX:
            raise CodecError(f"field {key!r} of {self.what} must be a number of at most {_FLOAT_MAX:g}")
        if isinstance(item, int | float) and not item >= minimum:  # also refuses NaN
            raise CodecError(f"field {key!r} of {self.what} must be a number of at least {minimum}, not {item}")
        return item

    def flag(self, key: str, default: Any = _MISSING) -> Any:
        return self._get(key, bool, default, "true or false")

    def sequence(self, key: str, default: Any = _MISSING) -> Any:
        return self._get(key, list, default, "a list")

    def mapping(self, key: str, default: Any = _MISSING) -> Any:
        return self._get(key, dict, default, "a map")

    def texts(self, key: str, default: Any = _MISSING) -> Any:
        items = self.sequence(key, default)
        if isinstance(items, list):
            for item in items:
                if not isinstance(item, str):
                    raise CodecError(f"field {key!r} of {self.what} must be a list of strings, holds {_kind(item)}")
        return items

    def text_map(self, key: str, default: Any = _MISSING) -> Any:
        items = self.mapping(key, default)
        if isinstance(items, dict):
            for k, v in items.items():
                if not isinstance(k, str) or not isinstance(v, str):
                    raise CodecError(f"field {key!r} of {self.what} must map strings to strings")
        return items

    def done(self) -> None:
        """Refuse fields that no getter asked for."""
        unknown = sorted(set(self._value) - self._seen)
        if unknown:
            raise CodecError(f"{self.what} has unknown field(s): {', '.join(map(repr, unknown))}")


def _as_tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


def _kind(value: Any) -> str:
    names = {dict: "a map", list: "a list", str: "a string", bytes: "bytes", bool: "a boolean", int: "an integer"}
    return names.get(type(value), "null" if value is None else type(value).__name__)
