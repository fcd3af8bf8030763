"""The counts of ``mesh cc --stats`` (mesh.cc.stats): exact under a parallel build's
concurrent calls, bounded, and never a reason for a compile to fail."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh.cc import frames, stats

#: Processes and counts each of the concurrency test (a make -j8 of 1,600 compiles).
WRITERS, EACH = 8, 200


def test_counts_add_up_by_category_and_detail_and_reset_starts_again(tmp_path: Path) -> None:
    path = str(tmp_path / "cc-stats")
    assert stats.read(path) == (0, {})
    assert "nothing counted yet" in stats.render(path, *stats.read(path))
    for detail in ["compiled on node a", "compiled on node a", "from the mesh's cache"]:
        stats.count(path, "mesh", detail)
    stats.count(path, "here", "not a compile to an object (no -c): linking, or another step")
    since, counts = stats.read(path)
    assert since > 0
    assert counts == {
        ("mesh", "compiled on node a"): 2,
        ("mesh", "from the mesh's cache"): 1,
        ("here", "not a compile to an object (no -c): linking, or another step"): 1,
    }
    text = stats.render(path, since, counts)
    assert "       3   75.0  compiles the mesh answered\n" in text
    assert "       2           compiled on node a\n" in text
    assert "       1   25.0  run here: not a compile mesh cc sends\n" in text
    assert "4 calls in all" in text
    assert os.stat(path).st_mode & 0o777 == 0o600
    stats.reset(path)
    again, counts = stats.read(path)
    assert counts == {} and again >= since


def test_concurrent_calls_lose_no_count(tmp_path: Path) -> None:
    """Processes counting at once, as the wrappers of make -j8 do, lose nothing."""
    path = str(tmp_path / "cc-stats")
    program = (
        "import sys\nfrom mesh.cc import stats\n"
        f"for i in range({EACH}):\n    stats.count(sys.argv[1], 'mesh', 'compiled on node ' + str(i % 3))\n"
    )
    writers = [subprocess.Popen([sys.executable, "-c", program, path]) for _ in range(WRITERS)]
    assert [w.wait(timeout=60) for w in writers] == [0] * WRITERS
    _, counts = stats.read(path)
    assert sum(counts.values()) == WRITERS * EACH
    assert counts[("mesh", "compiled on node 0")] == WRITERS * len(range(0, EACH, 3))


def test_a_category_keeps_a_bounded_number_of_details(tmp_path: Path) -> None:
    path = str(tmp_path / "cc-stats")
    for i in range(stats.MAX_DETAILS + 5):
        stats.count(path, "here", f"-fflag{i}: a flag mesh cc does not know")
    stats.count(path, "here", "-fflag0: a flag mesh cc does not know")  # a known detail still counts as itself
    _, counts = stats.read(path)
    assert len(counts) == stats.MAX_DETAILS + 1
    assert counts[("here", stats.OTHERS)] == 5
    assert counts[("here", "-fflag0: a flag mesh cc does not know")] == 2


def test_a_file_name_in_a_reason_counts_by_its_suffix() -> None:
    assert stats.general("src/x.s: not a C or C++ source") == "*.s: not a C or C++ source"
    assert stats.general("-march=native: the result depends on this machine's processor") == (
        "-march=native: the result depends on this machine's processor"
    )
    assert stats.general("__DATE__ is the time of the compile that expands it") == (
        "__DATE__ is the time of the compile that expands it"
    )


def test_a_damaged_or_foreign_file_is_counted_afresh_and_no_home_counts_nothing(tmp_path: Path) -> None:
    path = tmp_path / "cc-stats"
    path.write_bytes(b"\x00\xffnot ours\n")
    stats.count(str(path), "mesh", "from the mesh's cache")
    assert stats.read(str(path))[1] == {("mesh", "from the mesh's cache"): 1}
    with path.open("ab") as f:  # a wrapper killed mid-write: a last line without its newline
        f.write(b"12\tmesh\tcompiled on")
    stats.count(str(path), "mesh", "from the mesh's cache")
    assert stats.read(str(path))[1] == {("mesh", "from the mesh's cache"): 2}
    missing = tmp_path / "no-home" / "cc-stats"
    stats.count(str(missing), "mesh", "from the mesh's cache")  # no node's home: not counted, no error
    assert not missing.parent.exists()


@given(st.text(max_size=60))
def test_any_detail_is_one_line_that_reads_back(detail: str) -> None:
    """Tabs, newlines and any other text in a detail give one count that reads back."""
    path = f"/tmp/mesh-test-cc-stats-{os.getpid()}"
    try:
        stats.count(path, "fallback", detail)
        _, counts = stats.read(path)
        assert list(counts.values()) == [1]
        ((category, read_back),) = counts
        assert category == "fallback" and "\n" not in read_back and "\t" not in read_back
    finally:
        os.unlink(path)


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc (make test installs it)")
def test_a_node_answering_without_how_is_still_counted_by_its_note(tmp_path: Path) -> None:
    """A node of the version before answers ``["ok", EXIT, NODE, NOTE]``: the wrapper takes
    the object and counts the call from the note (a fake compile service on a real socket)."""
    answers = [
        ["ok", "0", "n1", "job j1: from the action cache of node n1"],
        ["ok", "0", "n2", "job j2: ran on node n2"],
    ]
    path = str(tmp_path / "cc.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(2)

    def serve() -> None:
        for answer in answers:
            conn, _ = listener.accept()
            with conn, conn.makefile("rb") as reader:
                frames.unpack(reader.read)
                conn.sendall(b"".join(frames.pack(answer, [b"", b"", b"OBJECT"])))

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    (tmp_path / "a.c").write_text("int a;\n")
    env = {**os.environ, "MESH_CC_SOCKET": path}
    for _ in answers:
        done = subprocess.run(
            [sys.executable, "-m", "mesh", "cc", "gcc", "-c", "a.c"], cwd=tmp_path, env=env, capture_output=True
        )
        assert done.returncode == 0, done.stderr
        assert (tmp_path / "a.o").read_bytes() == b"OBJECT"
    server.join(timeout=30)
    listener.close()
    assert stats.read(str(tmp_path / "cc-stats"))[1] == {
        ("mesh", "from the mesh's cache"): 1,
        ("mesh", "compiled on node n2"): 1,
    }


@pytest.mark.skipif(os.geteuid() != 0, reason="root makes the file in another user's home (CI runs as root)")
def test_a_file_root_makes_in_another_user_s_home_is_that_user_s(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    os.chown(home, 65534, 65534)
    stats.count(str(home / "cc-stats"), "mesh", "from the mesh's cache")
    stats.reset(str(home / "cc-stats"))
    assert (home / "cc-stats").stat().st_uid == 65534


def test_a_reader_that_must_not_wait_reads_past_a_held_lock(tmp_path: Path) -> None:
    """The node reads the counts in its event loop: a wrapper stopped while it holds the
    lock (make suspended by Ctrl-Z) must not hold the node; the CLI's read waits."""
    path = str(tmp_path / "cc-stats")
    stats.count(path, "mesh", "from the mesh's cache")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import os, sys; fd = os.open(sys.argv[1], os.O_RDWR); os.lockf(fd, os.F_LOCK, 0);"
         " print('held', flush=True); sys.stdin.read()", path],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        assert stats.read(path, wait=False)[1] == {("mesh", "from the mesh's cache"): 1}
    finally:
        holder.communicate("", timeout=30)
