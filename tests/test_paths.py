"""mesh.exec.paths: where tasks see their directories, and the mount points that make it so."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from mesh.errors import ExecError
from mesh.exec.action import BASE_ENV
from mesh.exec.paths import PROCESS_VIEW, RUN_MESH, SANDBOX_VIEW, Namespaces, TaskView, mount_points
from mesh.exec.process import Command, NoCancel, ProcessExecutor

ROOT = os.geteuid() == 0
BWRAP = shutil.which("bwrap")


def command(task: Path, argv: tuple[str, ...] = ("true",), cwd: str = "") -> Command:
    work, tmp = task / "work", task / "tmp"
    work.mkdir(parents=True, exist_ok=True)
    tmp.mkdir(exist_ok=True)
    env = {**BASE_ENV, "HOME": str(tmp), "TMPDIR": str(tmp), "FOO": "bar"}
    return Command(argv=argv, workdir=str(work), cwd=cwd, env=env, home=str(tmp), tmpdir=str(tmp), timeout=30)


def run(executor: ProcessExecutor, cmd: Command) -> tuple[int, str]:
    said: list[bytes] = []
    with NoCancel() as cancel:
        status = executor.run(cmd, lambda stream, chunk: said.append(chunk) or True, cancel)
    return status.exit_code, b"".join(said).decode()


def test_the_environment_names_the_view_and_keeps_the_rest(tmp_path: Path) -> None:
    cmd = command(tmp_path / "task", cwd="sub/dir")
    env = SANDBOX_VIEW.environment(cmd)
    assert (env["HOME"], env["TMPDIR"], env["PWD"], env["FOO"]) == ("/tmp", "/tmp", "/work/sub/dir", "bar")
    own = Command(**{**_fields(cmd), "env": {**cmd.env, "HOME": "/somewhere/else"}})
    assert PROCESS_VIEW.environment(own)["HOME"] == "/somewhere/else"  # a HOME the action set is its own


def test_the_process_view_binds_the_whole_task_directory_once(tmp_path: Path) -> None:
    cmd = command(tmp_path / "task")
    assert PROCESS_VIEW.mounts(cmd) == [(str(tmp_path / "task"), RUN_MESH)]
    assert SANDBOX_VIEW.mounts(cmd) == [(cmd.workdir, "/work"), (cmd.tmpdir, "/tmp")]
    apart = Command(**{**_fields(cmd), "tmpdir": str(tmp_path / "elsewhere")})
    with pytest.raises(ExecError, match="work/ and tmp/ of one directory"):
        PROCESS_VIEW.mounts(apart)
    with pytest.raises(ExecError, match="must be one directory"):
        TaskView(work="/w", home="/t", tmp="/t").mounts(Command(**{**_fields(cmd), "home": str(tmp_path)}))


def _fields(cmd: Command) -> dict[str, object]:
    return {name: getattr(cmd, name) for name in cmd.__dataclass_fields__}


@pytest.mark.skipif(BWRAP is None, reason="bubblewrap is not installed")
def test_a_mount_point_the_host_lacks_is_made_in_a_fresh_layout_of_its_parent(tmp_path: Path) -> None:
    """The host's entries of the parent are all there (dirs, files, symlinks); the new path too."""
    parent = tmp_path / "parent"
    (parent / "dir").mkdir(parents=True)
    (parent / "dir" / "inside").write_text("in dir\n")
    (parent / "file").write_text("a file\n")
    (parent / "link").symlink_to("dir/inside")
    new = parent / "new" / "deeper"
    layout, laid = mount_points([str(new), "/usr"], "--ro-bind")
    assert laid == [str(parent)] and layout[:3] == ["--ro-bind", "/", "/"]  # /usr is there: nothing to do
    script = f"cd {parent} && ls -A && cat dir/inside file link && test -d {new} && echo made"
    argv = [str(BWRAP), *layout, "--proc", "/proc", "--remount-ro", str(parent), "--", "sh", "-c", script]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert (done.returncode, done.stdout) == (0, "dir\nfile\nlink\nnew\nin dir\na file\nin dir\nmade\n"), done.stderr
    assert not new.parent.exists()  # made in the sandbox's layout, never on the host


@pytest.mark.skipif(BWRAP is None, reason="bubblewrap is not installed")
def test_a_root_the_host_lacks_a_top_directory_for_is_laid_out_afresh(tmp_path: Path) -> None:
    top = "/mesh-test-absent-top"
    assert not os.path.lexists(top)
    layout, laid = mount_points([top + "/work"], "--ro-bind")
    assert laid == ["/"] and "--ro-bind" in layout and layout[:3] != ["--ro-bind", "/", "/"]
    script = f"test -d {top}/work && ls -A / && readlink /bin"
    argv = [str(BWRAP), *layout, "--proc", "/proc", "--dev", "/dev", "--remount-ro", "/", "--", "sh", "-c", script]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    shown = done.stdout.split()
    assert set(os.listdir("/")) | {top[1:]} == set(shown[:-1]) and shown[-1] == os.readlink("/bin")
    assert not os.path.lexists(top)


@pytest.mark.skipif(not ROOT, reason="a root node's namespaces need root (a node that is not root: tests of bwrap)")
def test_a_root_nodes_task_sees_its_task_directory_over_run_mesh_and_the_host_keeps_its_own(tmp_path: Path) -> None:
    namespaces, why_not = Namespaces.for_this_node()
    assert namespaces is not None and namespaces.bwrap is None, why_not
    before = sorted(os.listdir(RUN_MESH))
    where = (os.readlink("/proc/thread-self/ns/mnt"), os.getcwd())
    executor = ProcessExecutor()
    cmd = command(tmp_path / "task", ("sh", "-c", 'pwd; ls -A /run/mesh; ln "$HOME/h" hard && echo linked'))
    Path(cmd.tmpdir, "h").write_text("home file\n")
    code, out = run(executor, cmd)
    assert (code, out) == (0, "/run/mesh/work\ntmp\nwork\nlinked\n")  # one mount: a hard link across works
    assert Path(cmd.workdir, "hard").read_text() == "home file\n"
    assert sorted(os.listdir(RUN_MESH)) == before  # nothing mounted here, nothing made
    assert (os.readlink("/proc/thread-self/ns/mnt"), os.getcwd()) == where  # the thread is back
    mounts = Path("/proc/self/mountinfo").read_text()
    assert f" {RUN_MESH} " not in mounts and str(tmp_path) not in mounts


def test_a_command_that_cannot_start_is_still_told_apart(tmp_path: Path) -> None:
    from mesh.errors import SpawnFailed

    executor = ProcessExecutor()
    with pytest.raises(SpawnFailed, match="command not found") as missing:
        run(executor, command(tmp_path / "task", ("no-such-command-here",)))
    assert missing.value.exit_code == 127


def test_the_sandbox_lays_out_a_root_where_the_host_has_no_directory_at_its_workdir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As on a machine without /work: the task is at its view's path all the same, the host's
    system is there, read-only, and nothing is made on the host."""
    from mesh.exec import sandbox
    from mesh.exec.sandbox import SandboxExecutor, sandbox_unavailable

    why_not = sandbox_unavailable()
    if why_not is not None:
        pytest.skip(reason=f"the sandbox cannot run here: {why_not}")
    top = "/mesh-test-absent-top"
    monkeypatch.setattr(sandbox, "SANDBOX_VIEW", TaskView(work=f"{top}/work", home="/tmp", tmp="/tmp"))
    executor = SandboxExecutor(home=tmp_path / "home", term_grace=1.0, drain_grace=1.0)
    script = "pwd; touch mine && echo written; touch /new 2>&1; test -x /usr/bin/env && echo system"
    cmd = command(tmp_path / "holder" / "task", ("sh", "-c", script))
    executor.prepare(cmd)
    code, out = run(executor, cmd)
    assert (code, out.splitlines()) == (
        0,
        [f"{top}/work", "written", "touch: cannot touch '/new': Read-only file system", "system"],
    )
    assert os.path.exists(os.path.join(cmd.workdir, "mine")) and not os.path.lexists(top)
