"""Messages that name a file that is not UTF-8 are text every encoder takes (mesh.text)."""

from __future__ import annotations

import json
import os
import pickle

from hypothesis import given
from hypothesis import strategies as st

from mesh import codec
from mesh.errors import SnapshotError, describe
from mesh.text import encodable


@given(st.binary(max_size=40))
def test_a_file_name_reads_as_backslashreplace_shows_its_bytes(name: bytes) -> None:
    """The name as os.fsdecode gives it (a lone surrogate per byte that is not UTF-8) comes out
    as Python's backslashreplace decodes the bytes: 0xff as \\xff, the rest as it was."""
    assert encodable(os.fsdecode(name)) == name.decode("utf-8", "backslashreplace")


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=40))
def test_text_without_lone_surrogates_is_left_as_it_is(text: str) -> None:
    assert encodable(text) == text


@given(st.text(max_size=40))
def test_any_text_comes_out_encodable(text: str) -> None:
    made = encodable(text)
    made.encode("utf-8")
    codec.encode(made)


def test_a_mesh_errors_message_names_the_file_with_escapes() -> None:
    """As ingest raises it for a FIFO named b"\\xff": CBOR, JSON and a pickle take it, and
    describe() of any error is encodable too."""
    path = os.fsdecode(b"/w/\xff")
    error = SnapshotError(f"cannot snapshot {path}: it is a FIFO")
    assert str(error) == "cannot snapshot /w/\\xff: it is a FIFO"
    codec.encode({"error": str(error)})
    json.dumps(str(error), ensure_ascii=False).encode("utf-8")
    assert str(pickle.loads(pickle.dumps(error))) == str(error)
    assert describe(RuntimeError(f"a bug in {path}")) == "RuntimeError: a bug in /w/\\xff"
