"""``mesh up`` that cannot start says why in one line and exits 1, with no traceback.

The real CLI (``python -m mesh up``, mDNS off, a private MESH_HOME) against what stops a
node from starting: its port taken, its home used by another node, a ``mesh.toml`` or a
mesh key that cannot be read or is not what it should be, a state database that is not one.
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from tests.nodeutil import MESH, NodeProcess, free_port, node_env


def up(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``mesh up`` on a free loopback port (unless ``args`` give --listen), with only the process executor."""
    listen = [] if "--listen" in args else ["--listen", f"127.0.0.1:{free_port()}"]
    return subprocess.run(
        [*MESH, "up", "--executors", "process", *listen, *args],
        env=node_env(str(home), **env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def assert_one_line(done: subprocess.CompletedProcess[str], *words: str) -> None:
    """Exit status 1 and exactly one line on stderr, ``mesh: error: ...``, holding every one of ``words``."""
    lines = done.stderr.splitlines()
    assert done.returncode == 1, (done.returncode, done.stderr[-3000:])
    assert "Traceback" not in done.stderr and "ExceptionGroup" not in done.stderr, done.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("mesh: error: "), lines
    for word in words:
        assert word in lines[0], (word, lines[0])


def test_a_port_in_use(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        done = up(tmp_path / "home", "--listen", f"127.0.0.1:{port}")
    assert_one_line(done, f"cannot listen on 127.0.0.1:{port}", "Address already in use", "--listen")


def test_a_home_another_node_uses(tmp_path: Path) -> None:
    home = tmp_path / "home"
    first = NodeProcess(str(home), slots=1).start()
    try:
        done = up(home)
        assert_one_line(done, f"another mesh node already uses {home}", f"pid {first.process.pid}", "MESH_HOME")  # type: ignore[union-attr]
        assert first.answers()  # and the first one is untouched
    finally:
        first.stop()


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda home: (home / "mesh.toml").write_text("listen = \n"), ("mesh.toml is not valid TOML", "fix or remove")),
        (lambda home: (home / "mesh.toml").write_bytes(b'listen = "\xff"\n'), ("mesh.toml is not valid TOML",)),
        (lambda home: (home / "mesh.toml").mkdir(), ("cannot read", "mesh.toml", "Is a directory")),
    ],
    ids=["malformed", "not-utf8", "unreadable"],
)
def test_a_mesh_toml_that_cannot_be_read(tmp_path: Path, make: object, words: tuple[str, ...]) -> None:
    home = tmp_path / "home"
    home.mkdir()
    make(home)  # type: ignore[operator]
    assert_one_line(up(home), *words)


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("not a key\n", ("mesh.key holds no mesh key", "not hex", "mesh key show")),
        ("abcd\n", ("mesh.key holds no mesh key", "32 bytes", "mesh key show")),
        (None, ("cannot read the mesh key file", "mesh.key", "Is a directory")),
    ],
    ids=["not-hex", "too-short", "unreadable"],
)
def test_a_key_file_that_is_not_a_key(tmp_path: Path, content: str | None, words: tuple[str, ...]) -> None:
    home = tmp_path / "home"
    home.mkdir()
    if content is None:
        (home / "mesh.key").mkdir()
    else:
        (home / "mesh.key").write_text(content)
    assert_one_line(up(home), *words)


def test_a_key_file_given_that_is_absent(tmp_path: Path) -> None:
    missing = tmp_path / "elsewhere" / "mesh.key"
    assert_one_line(up(tmp_path / "home", "--key-file", str(missing)), f"--key-file {missing} does not exist")


def test_a_mesh_key_variable_that_is_not_a_key(tmp_path: Path) -> None:
    assert_one_line(up(tmp_path / "home", MESH_KEY="zz"), "MESH_KEY holds no mesh key", "mesh key show")


def test_a_state_database_that_is_not_one(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "state.db").write_bytes(b"this is not a database\n" * 100)
    assert_one_line(up(home), "state database", str(home / "state.db"))


def test_the_in_process_node_of_mesh_exec_on_a_busy_home(tmp_path: Path) -> None:
    """``mesh exec`` with no node at its address starts one in-process, which cannot share a home either."""
    home = tmp_path / "home"
    node = NodeProcess(str(home), slots=1).start()
    try:
        done = subprocess.run(
            [*MESH, "exec", "--", "true"],
            env=node_env(str(home), MESH_LISTEN=f"127.0.0.1:{free_port()}"),  # nothing answers there
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        node.stop()
    lines = [line for line in done.stderr.splitlines() if "in-process node" not in line]
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert len(lines) == 1 and f"another mesh node already uses {home}" in lines[0], done.stderr
