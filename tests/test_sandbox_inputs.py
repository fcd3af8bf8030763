"""How a sandbox checks its input out: copies of the task uid by default, links when chosen.

End to end, real ``mesh up`` processes on loopback (mDNS off): under a root node's default
sandbox a task may touch, append to and chmod its input files, as a local command may, and
its outputs show it; with ``--sandbox-inputs link`` (or MESH_SANDBOX_INPUTS=link) the files
are the store's, read-only; a node that is not root copies whatever it is told, and says
so. Also the setting's parsing (flag, environment, mesh.toml) and its refusal of bad values.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from mesh.config import NodeConfig
from mesh.errors import UsageError
from mesh.exec.sandbox import NOBODY, sandbox_unavailable
from tests import test_task_isolation as isolation
from tests.nodeutil import NodeProcess

UNAVAILABLE = sandbox_unavailable()
needs_sandbox = pytest.mark.skipif(UNAVAILABLE is not None, reason=f"the sandbox cannot run here: {UNAVAILABLE}")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="a root node's sandbox (run the tests as root)")
#: Prints, of each input file: hard links, owner uid, permission bits.
STAT = "stat -c '%h %u %a' a.txt log.txt"


def _tree(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "a.txt").write_text("alpha\n")
    (tree / "log.txt").write_text("one\n")
    return tree


@needs_sandbox
@needs_root
def test_a_task_may_change_its_input_files_as_a_local_command_may(node: NodeProcess, tmp_path: Path) -> None:
    """The default executor of a root node (the sandbox) with its default inputs (copies)."""
    tree = _tree(tmp_path)
    script = f"{STAT} && touch -d @1234567890 a.txt && stat -c %Y a.txt && echo two >> log.txt && chmod 0750 log.txt"
    out = tmp_path / "out"
    done = node.mesh("exec", "-C", str(tree), "--out", str(out), "--", "sh", "-c", script)
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().splitlines() == [f"1 {NOBODY} 644", f"1 {NOBODY} 644", "1234567890"]
    assert (out / "log.txt").read_text() == "one\ntwo\n"
    assert (out / "log.txt").stat().st_mode & stat.S_IXUSR  # the chmod made it executable
    assert (tree / "log.txt").read_text() == "one\n"  # the user's tree is the user's


@needs_sandbox
@needs_root
@pytest.mark.parametrize("how", ["flag", "environment"])
def test_link_mode_is_the_operators_choice(home: Path, tmp_path: Path, how: str) -> None:
    """``--sandbox-inputs link`` / MESH_SANDBOX_INPUTS=link: the store's read-only files, and
    what a task cannot do with them then (the setting's caveat)."""
    if how == "flag":
        node = NodeProcess(str(home), extra_args=["--sandbox-inputs", "link"])
    else:
        node = NodeProcess(str(home), env={"MESH_SANDBOX_INPUTS": "link"})
    node.start()
    try:
        tree = _tree(tmp_path)
        done = node.mesh("exec", "-C", str(tree), "--", "sh", "-c", STAT)
        assert done.returncode == 0, done.stderr
        for line in done.stdout.decode().splitlines():
            links, owner, mode = line.split()
            assert int(links) > 1 and owner == "0" and mode == "444", line
        refused = node.mesh("exec", "-C", str(tree), "--", "sh", "-c", "echo two >> log.txt")
        assert refused.returncode != 0 and b"Permission denied" in refused.stderr, refused.stderr
    finally:
        node.stop()


@needs_root
def test_a_node_that_is_not_root_copies_and_says_it_ignores_link(nobody_home: Path, tmp_path: Path) -> None:
    node = isolation.nobody_node(nobody_home, "--sandbox-inputs", "link").start()
    try:
        if "sandbox" not in isolation.offered_executors(node):
            pytest.skip("a node that is not root offers no sandbox here (unprivileged user namespaces?)")
        assert "link ignored" in node.log()
        script = STAT + " && echo x >> log.txt"
        done = node.mesh("exec", "--executor", "sandbox", "-C", str(_tree(tmp_path)), "--", "sh", "-c", script)
        assert done.returncode == 0, done.stderr
        assert done.stdout.decode().splitlines() == [f"1 {NOBODY} 644"] * 2
    finally:
        node.stop()


# -- the setting ------------------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.delenv("MESH_SANDBOX_INPUTS", raising=False)
    return monkeypatch


def test_the_setting_comes_from_flag_environment_file_or_default(home: Path, clean_env: pytest.MonkeyPatch) -> None:
    assert NodeConfig.load(home=str(home)).sandbox_inputs == "copy"
    (home / "mesh.toml").write_text('sandbox_inputs = "link"\n')
    assert NodeConfig.load(home=str(home)).sandbox_inputs == "link"
    clean_env.setenv("MESH_SANDBOX_INPUTS", " Copy ")
    assert NodeConfig.load(home=str(home)).sandbox_inputs == "copy"
    assert NodeConfig.load(home=str(home), sandbox_inputs="link").sandbox_inputs == "link"


@pytest.mark.parametrize("where", ["flag", "environment", "file"])
@pytest.mark.parametrize("value", ["hardlink", "", "1"])
def test_a_bad_value_is_refused_saying_what_is_allowed(
    home: Path, clean_env: pytest.MonkeyPatch, where: str, value: str
) -> None:
    flag = None
    if where == "flag":
        flag = value or " "
    elif where == "environment":
        clean_env.setenv("MESH_SANDBOX_INPUTS", value or " ")
    else:
        (home / "mesh.toml").write_text(
            f"sandbox_inputs = {value or 0}\n" if value.isdigit() or not value else f'sandbox_inputs = "{value}"\n'
        )
    with pytest.raises(UsageError, match="sandbox_inputs must be copy .* or link"):
        NodeConfig.load(home=str(home), sandbox_inputs=flag)


def test_mesh_up_refuses_a_bad_value_in_one_line(home: Path) -> None:
    node = NodeProcess(str(home), extra_args=["--sandbox-inputs", "links"])
    node.spawn()
    assert node.process is not None
    assert node.process.wait(timeout=60) != 0
    lines = [line for line in node.log().splitlines() if line.strip()]
    assert len(lines) == 1 and "sandbox_inputs must be copy" in lines[0] and "'links'" in lines[0], lines
