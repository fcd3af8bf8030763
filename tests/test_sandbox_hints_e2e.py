"""Helpful failures of sandboxed tasks: a hint when a task without network fails on the network,
and a message naming the hidden place when its program is where the sandbox hides things.

The real CLI against a real ``mesh up`` (the ``node`` fixture: loopback, mDNS off).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.nodeutil import NodeProcess

CONNECT = 'import socket; socket.create_connection(("127.0.0.1", 9))'
RESOLVE = 'import socket; socket.getaddrinfo("pypi.org", 443)'
#: The hint's line on the client's stderr (mesh.exec.hints.NETWORK_HINT).
HINT = re.compile(r"^mesh: the task has no network .*`mesh exec --network` gives it the network$", re.M)


@pytest.fixture(autouse=True)
def sandbox() -> None:
    from mesh.exec.sandbox import sandbox_unavailable

    why_not = sandbox_unavailable()
    if why_not is not None:
        pytest.skip(reason=f"no sandbox here: {why_not}")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """An empty directory to run in: these tasks read nothing of it."""
    (tmp_path / "tree").mkdir()
    return tmp_path / "tree"


def run(node: NodeProcess, tree: Path, *args: str) -> tuple[int, str, str]:
    done = node.mesh("exec", "-v", "--executor", "sandbox", "-C", str(tree), *args)
    return done.returncode, done.stdout.decode(), done.stderr.decode()


def job_id(stderr: str) -> str:
    match = re.search(r"^mesh: job (\w+) ", stderr, re.M)
    assert match, stderr
    return match.group(1)


@pytest.mark.parametrize(("code", "says"), [(CONNECT, "Connection refused"), (RESOLVE, "name resolution")])
def test_a_task_without_network_that_fails_on_it_gets_the_hint(
    node: NodeProcess, tree: Path, code: str, says: str
) -> None:
    status, _, stderr = run(node, tree, "--", "python3", "-c", code)
    assert status == 1, stderr
    hint = HINT.search(stderr)
    assert hint and 0 <= stderr.find(says) < hint.start(), stderr  # after the task's own words
    shown = node.mesh("job", job_id(stderr))
    assert shown.returncode == 0 and hint.group(0).removeprefix("mesh: ") in shown.stdout.decode(), shown.stdout


def test_no_hint_for_a_task_that_has_the_network(node: NodeProcess, tree: Path) -> None:
    status, _, stderr = run(node, tree, "--network", "--", "python3", "-c", CONNECT)
    assert status == 1 and "Connection refused" in stderr, stderr
    assert "has no network" not in stderr
    assert "has no network" not in node.mesh("job", job_id(stderr)).stdout.decode()


def test_no_hint_for_a_failure_of_another_kind(node: NodeProcess, tree: Path) -> None:
    status, _, stderr = run(node, tree, "--", "sh", "-c", "echo 'make: *** [all] Error 2' >&2; exit 2")
    assert status == 2 and "has no network" not in stderr, stderr


def test_a_program_in_the_private_tmp_is_said_to_be_hidden(node: NodeProcess, tree: Path, tmp_path: Path) -> None:
    assert str(tmp_path).startswith("/tmp/")  # pytest's tmp_path: where the sandbox has a /tmp of its own
    tool = tmp_path / "bin" / "tool"
    tool.parent.mkdir()
    shutil.copy("/bin/true", tool)
    status, _, stderr = run(node, tree, "--", str(tool))
    assert status == 127, stderr
    assert f"{tool} is under /tmp, which the sandbox hides" in stderr, stderr
    status, _, stderr = run(node, tree, "--env", f"PATH=/usr/bin:/bin:{tool.parent}", "--", "tool")
    assert status == 127 and f"{tool} is under /tmp, which the sandbox hides" in stderr, stderr


def test_a_program_in_the_nodes_home_is_said_to_be_hidden(node: NodeProcess, tree: Path) -> None:
    tool = Path(node.home) / "tool"
    shutil.copy("/bin/true", tool)
    status, _, stderr = run(node, tree, "--", str(tool))
    assert status == 127 and "which the sandbox hides (the node's home" in stderr, stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="the task runs as another uid only on a root node")
def test_a_program_in_a_directory_the_task_cannot_search_is_said_so(node: NodeProcess, tree: Path) -> None:
    private = Path(tempfile.mkdtemp(dir="/var/tmp", prefix="mesh-test-private-"))  # 0700, root's: not /tmp
    try:
        tool = private / "tool"
        shutil.copy("/bin/true", tool)
        status, _, stderr = run(node, tree, "--", str(tool))
        assert status in (126, 127), stderr
        assert f"{tool} is in {private}, which the task's uid" in stderr and "cannot search" in stderr, stderr
    finally:
        shutil.rmtree(private)


def test_a_program_under_the_hosts_work_is_said_to_be_hidden(node: NodeProcess, tree: Path) -> None:
    """The sandbox mounts the task's workdir at /work, so the host's /work is not seen."""
    made = not os.path.lexists("/work")
    if made:
        os.mkdir("/work", 0o755)  # a host without /work (a CI runner): make one for the test
    try:
        where = Path(tempfile.mkdtemp(dir="/work", prefix="mesh-test-hidden-"))
        os.chmod(where, 0o755)
        try:
            tool = where / "tool"
            shutil.copy("/bin/true", tool)
            status, _, stderr = run(node, tree, "--", str(tool))
            assert status == 127 and f"{tool} is under /work, which the sandbox hides" in stderr, stderr
        finally:
            shutil.rmtree(where)
    finally:
        if made:
            os.rmdir("/work")
