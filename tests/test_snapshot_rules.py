"""What a snapshot of a user's tree holds, one set of rules for ``mesh snapshot`` and ``mesh exec``:
``.meshignore`` and ``.git`` leave paths out (``mesh snapshot --all`` keeps them), and the FIFOs,
sockets and devices a snapshot cannot hold are named all at once, with the way to leave them out."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.nodeutil import NodeProcess
from tests.treeutil import mesh


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    (root / ".git" / "objects").mkdir(parents=True)
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (root / "build").mkdir()
    (root / "build" / "main.o").write_bytes(b"\x7fELF")
    (root / "src").mkdir()
    (root / "src" / "main.c").write_text("int main(void) { return 0; }\n")
    (root / "src" / "notes.log").write_text("scratch\n")
    (root / ".meshignore").write_text("build/\n*.log\n")
    return root


def listing(snap: str) -> list[str]:
    out = mesh("ls", "-r", "--json", snap)
    assert out.returncode == 0, out.stderr
    return [entry["path"] for entry in json.loads(out.stdout)]


def test_snapshot_leaves_out_what_meshignore_names_and_git(home: Path, project: Path) -> None:
    out = mesh("snapshot", str(project))
    assert out.returncode == 0, out.stderr
    assert listing(out.stdout.decode().strip()) == [".meshignore", "src", "src/main.c"]


def test_snapshot_all_keeps_everything(home: Path, project: Path) -> None:
    kept = mesh("snapshot", "--all", str(project))
    assert kept.returncode == 0, kept.stderr
    assert listing(kept.stdout.decode().strip()) == [
        ".git",
        ".git/HEAD",
        ".git/objects",
        ".meshignore",
        "build",
        "build/main.o",
        "src",
        "src/main.c",
        "src/notes.log",
    ]
    # The stat cache of one set of rules does not answer for the other.
    assert listing(mesh("snapshot", str(project)).stdout.decode().strip()) == [".meshignore", "src", "src/main.c"]


@pytest.fixture
def specials(project: Path) -> Iterator[list[str]]:
    """Two FIFOs and a bound socket in the project; their paths, relative to it."""
    os.mkfifo(project / "src" / "pipe")
    (project / "run").mkdir()
    os.mkfifo(project / "run" / "events")
    with ExitStack() as stack:
        sock = stack.enter_context(socket.socket(socket.AF_UNIX))
        sock.bind(str(project / "run" / "agent.sock"))
        yield ["run/agent.sock", "run/events", "src/pipe"]


def check_named_together(stderr: bytes, project: Path, paths: list[str]) -> None:
    text = stderr.decode()
    assert text.count("\n") == 1 and "Traceback" not in text, text
    for rel in paths:
        assert f"{project}/{rel}: it is a" in text, text
    assert "it is a socket" in text and "it is a FIFO" in text
    assert ".meshignore" in text


def test_snapshot_names_every_fifo_and_socket_at_once(home: Path, project: Path, specials: list[str]) -> None:
    out = mesh("snapshot", str(project))
    assert out.returncode == 1
    check_named_together(out.stderr, project, specials)
    (project / ".meshignore").write_text("build/\n*.log\npipe\nrun/\n")
    left_out = mesh("snapshot", str(project))
    assert left_out.returncode == 0, left_out.stderr


def test_many_special_files_are_counted_after_the_first_ones(home: Path, project: Path) -> None:
    (project / "fifos").mkdir()
    for i in range(45):
        os.mkfifo(project / "fifos" / f"p{i:02}")
    out = mesh("snapshot", str(project))
    assert out.returncode == 1
    text = out.stderr.decode()
    assert text.count("it is a FIFO") == 20 and "and 25 more" in text, text


def test_exec_names_every_fifo_and_socket_at_once(node: NodeProcess, project: Path, specials: list[str]) -> None:
    out = node.mesh("exec", "-C", str(project), "--", "true")
    assert out.returncode == 1
    check_named_together(out.stderr, project, specials)
    (project / ".meshignore").write_text("build/\n*.log\npipe\nrun/\n")
    left_out = node.mesh("exec", "-C", str(project), "--", "sh", "-c", "ls -A . src")
    assert left_out.returncode == 0, left_out.stderr
    assert left_out.stdout.decode().split() == [".:", ".meshignore", "src", "src:", "main.c"]
