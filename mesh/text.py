"""Text that every encoder takes: a message with a file name that is not UTF-8, made safe.

Python hands a file name that is not valid UTF-8 back as text with lone surrogates (PEP 383:
byte 0xff becomes '\\udcff'), from ``os.fsdecode``, from ``os.scandir`` of a str path, in an
OSError's ``filename``. The OS takes such text back, but no strict encoder does: cbor2, SQLite
and UTF-8 itself raise UnicodeEncodeError. Mesh's messages (an error's text, a task's reason,
a result's ``error``) are stored in the state database and sent as CBOR or JSON, and a task
decides the names in its workdir (``mkfifo "$(printf '\\377')"``), so a message must never
carry one: one such reason once kept the state database from committing anything more.

:func:`encodable` writes each lone surrogate as an escape, as Python's ``backslashreplace``
shows bytes: the escaped byte 0xff as ``\\xff``, any other surrogate as ``\\udXXX``.
mesh.errors applies it to every MeshError's message and to :func:`~mesh.errors.describe`;
the scheduler to a task's reason and its result's error (a runner's text need not come from
an error); the state database to the text of whatever it records (mesh.sched.statedb).
"""

from __future__ import annotations

import re

_SURROGATE = re.compile("[\ud800-\udfff]")


def encodable(text: str) -> str:
    """``text`` with each lone surrogate written as an escape (``\\xff`` for the byte 0xff of a
    file name); ``text`` itself when it has none, which is nearly always."""
    if text.isascii():
        return text
    return _SURROGATE.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if 0xDC80 <= code <= 0xDCFF:  # a byte that is not UTF-8, as surrogateescape decoded it
        return f"\\x{code - 0xDC00:02x}"
    return f"\\u{code:04x}"
