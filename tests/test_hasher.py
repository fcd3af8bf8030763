"""The streaming hasher and `mesh hash` agree with b3sum byte for byte."""

from __future__ import annotations

import io
import os
import subprocess
from pathlib import Path

import blake3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.cas.digest import Digest
from mesh.cas.hasher import MMAP_THRESHOLD, StreamHasher, hash_bytes, hash_file, hash_stream, hash_tree
from mesh.errors import DigestMismatch
from tests.treeutil import b3sum, mesh

SIZES = [0, 1, 1023, 1024, 1025, 64 * 1024, (1 << 20) + 1, 100 * (1 << 20)]

needs_b3sum = pytest.mark.skipif(
    b3sum() is None, reason="b3sum is not installed (`make test` installs it as root: apt-get install b3sum)"
)


def make_file(path: Path, size: int, seed: int = 0) -> bytes:
    data = blake3.blake3(seed.to_bytes(8, "little")).digest(length=size) if size else b""
    path.write_bytes(data)
    return data


def b3sum_lines(*paths: str | Path) -> bytes:
    return subprocess.run(["b3sum", *map(str, paths)], capture_output=True, check=True).stdout


@needs_b3sum
@pytest.mark.parametrize("size", SIZES)
def test_hash_file_agrees_with_b3sum(tmp_path: Path, size: int) -> None:
    f = tmp_path / f"f{size}"
    data = make_file(f, size)
    digest = hash_file(f)
    assert digest.size == size == len(data)
    assert b3sum_lines(f).split()[0].decode() == digest.hex


@needs_b3sum
@settings(max_examples=25)
@given(st.integers(min_value=0, max_value=3 * MMAP_THRESHOLD), st.integers(0, 2**32))
def test_random_sizes_agree_with_b3sum(tmp_path: Path, size: int, seed: int) -> None:
    f = tmp_path / "r"
    make_file(f, size, seed)
    assert b3sum_lines(f).split()[0].decode() == hash_file(f).hex


@needs_b3sum
def test_mesh_hash_cli_output_is_byte_identical_to_b3sum(tmp_path: Path) -> None:
    paths = []
    for size in SIZES[:-1] + [3 * MMAP_THRESHOLD]:
        p = tmp_path / f"s{size}"
        make_file(p, size, size)
        paths.append(p)
    odd = [tmp_path / "back\\slash", tmp_path / "new\nline", tmp_path / "üñí cødé", tmp_path / "sp ace"]
    for p in odd:
        p.write_bytes(p.name.encode())
    args = [str(p) for p in paths + odd]
    ours = mesh("hash", *args)
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout == b3sum_lines(*args)


@needs_b3sum
def test_mesh_hash_stdin_and_errors_like_b3sum(tmp_path: Path) -> None:
    data = b"from stdin\n" * 1000
    ours = mesh("hash", input=data)
    theirs = subprocess.run(["b3sum"], input=data, capture_output=True, check=True)
    assert ours.stdout == theirs.stdout
    good = tmp_path / "good"
    good.write_bytes(b"x")
    missing = tmp_path / "missing"
    ours = mesh("hash", str(missing), str(good), str(tmp_path))
    theirs = subprocess.run(["b3sum", str(missing), str(good), str(tmp_path)], capture_output=True)
    assert ours.returncode == theirs.returncode == 1
    assert ours.stdout == theirs.stdout
    assert b"No such file or directory" in ours.stderr and b"Is a directory" in ours.stderr


@given(st.lists(st.binary(max_size=3000), max_size=20))
def test_stream_hasher_equals_one_shot(chunks: list[bytes]) -> None:
    h = StreamHasher()
    for c in chunks:
        h.update(c)
    whole = b"".join(chunks)
    assert h.digest() == Digest.of(whole) == hash_bytes(whole)
    assert hash_stream(io.BytesIO(whole)) == Digest.of(whole)


def test_stream_hasher_verify() -> None:
    h = StreamHasher()
    h.update(b"abc")
    assert h.verify(Digest.of(b"abc")) == Digest.of(b"abc")
    with pytest.raises(DigestMismatch, match="expected"):
        h.verify(Digest.of(b"abd"))


def test_hash_bytes_large_buffer_uses_threads_and_agrees() -> None:
    data = os.urandom(3 * MMAP_THRESHOLD + 17)
    assert hash_bytes(data) == Digest(blake3.blake3(data).digest(), len(data))


def test_hash_tree_lists_regular_files_only(tmp_path: Path) -> None:
    (tmp_path / "d" / "e").mkdir(parents=True)
    (tmp_path / "a").write_bytes(b"a")
    (tmp_path / "d" / "b").write_bytes(b"b" * (2 * MMAP_THRESHOLD))
    (tmp_path / "d" / "e" / "c").write_bytes(b"")
    os.symlink("a", tmp_path / "link")
    os.mkfifo(tmp_path / "fifo")
    found = dict(hash_tree(tmp_path))
    assert found == {
        b"a": Digest.of(b"a"),
        b"d/b": Digest.of(b"b" * (2 * MMAP_THRESHOLD)),
        b"d/e/c": Digest.of(b""),
    }
