"""mesh.stdin: ``mesh exec``'s stdin read to its end, within its limit."""

from __future__ import annotations

import os

import pytest

from mesh import stdin
from mesh.errors import UsageError


@pytest.mark.parametrize("size", [1000, 1001])
def test_stdin_is_passed_on_whole_up_to_the_limit_and_refused_past_it(
    monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    monkeypatch.setattr(stdin, "MAX_STDIN", 1000)
    monkeypatch.setattr(stdin, "READ_CHUNK", 300)
    read, write = os.pipe()
    try:
        os.write(write, b"x" * size)
        os.close(write)
        taken: list[bytes] = []
        if size > 1000:
            with pytest.raises(UsageError, match="--no-stdin"):  # the message says what to do
                stdin._copy(read, taken.append)
            assert sum(map(len, taken)) <= 1000  # nothing past the limit was passed on
        else:
            assert stdin._copy(read, taken.append) == size
            assert b"".join(taken) == b"x" * size
    finally:
        os.close(read)
