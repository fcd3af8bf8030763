"""The wrapper's writing of an object (mesh.cc.wrapper.write_object): whole or not at all."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from mesh.cc import wrapper


def test_an_object_that_cannot_be_written_whole_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk mid-write: the error goes up (the wrapper then compiles here, where gcc
    says it in its own words), the old object is untouched, and no temporary file stays."""
    (tmp_path / "a.o").write_bytes(b"old object")

    def full(fd: int, data: bytes) -> None:
        os.write(fd, data[:3])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(wrapper, "_write_all", full)
    with pytest.raises(OSError, match="No space left"):
        wrapper.write_object(str(tmp_path / "a.o"), b"new object")
    assert os.listdir(tmp_path) == ["a.o"]
    assert (tmp_path / "a.o").read_bytes() == b"old object"


def test_an_object_is_written_whole_in_place_of_the_old_one(tmp_path: Path) -> None:
    (tmp_path / "a.o").write_bytes(b"old object")
    wrapper.write_object(str(tmp_path / "a.o"), b"new object" * 1000)
    assert os.listdir(tmp_path) == ["a.o"]
    assert (tmp_path / "a.o").read_bytes() == b"new object" * 1000
