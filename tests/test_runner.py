"""The runner and the process executor, with real processes and a real store.

Every test checks at the end that the workroot holds no task directory but those its
runner keeps for reuse (mesh.exec.workpool): whatever happened, every other task
directory is gone. Waiting is always for a condition with a deadline.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio

from mesh.cas.digest import Digest
from mesh.cas.fsck import fsck
from mesh.cas.snapshot import ingest, reachable, walk
from mesh.cas.store import LocalStore
from mesh.cas.tree import Kind
from mesh.errors import BlobNotFound, UnknownExecutor
from mesh.exec.action import BASE_ENV, Action, ActionResult
from mesh.exec.paths import PROCESS_VIEW
from mesh.exec.process import ProcessExecutor
from mesh.exec.runner import Limits, Runner, RunnerStatistics, remove_tree
from mesh.exec.taskusers import TaskUsers
from mesh.exec.workpool import PoolStatistics, WorkdirPool
from tests import treeutil
from tests.runnerutil import check_workroot

INPUT: treeutil.Tree = {
    b"a.txt": ("file", b"alpha\n", False),
    b"bin": ("dir", {b"tool": ("file", b"#!/bin/sh\necho tool ran\n", True)}),
    b"d": ("dir", {b"f": ("file", b"inner\n", False), b"big": ("file", os.urandom(300_000), False)}),
    b"link": ("link", b"a.txt"),
}


@pytest.fixture
def snap(store: LocalStore, tmp_path: Path) -> Digest:
    return treeutil.stored(store, tmp_path, INPUT)


#: Runners made by the current test (make_runner), closed by the workroot fixture.
_RUNNERS: list[Runner] = []


@pytest.fixture
def workroot(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "work"
    yield root
    check_workroot(root, _RUNNERS)
    _RUNNERS.clear()


@pytest.fixture
def runner(store: LocalStore, workroot: Path) -> Runner:
    return make_runner(store, workroot)


def make_runner(
    store: LocalStore,
    workroot: Path,
    limits: Limits | None = None,
    term_grace: float = 0.5,
    workdirs: WorkdirPool | None = None,
) -> Runner:
    executor = ProcessExecutor(term_grace=term_grace, drain_grace=0.5)
    made = Runner(
        store,
        workroot=workroot,
        node_id="node-a",
        executors={"process": executor},
        limits=limits or Limits(),
        workdirs=workdirs,
    )
    _RUNNERS.append(made)
    return made


def sh(script: str, snap: Digest, **kwargs: object) -> Action:
    return Action(argv=("sh", "-c", script), input=snap, **kwargs)  # type: ignore[arg-type]


class Recorder:
    """An on_output follower that keeps what it saw, per stream."""

    def __init__(self) -> None:
        self.seen: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}

    async def __call__(self, stream: str, chunk: bytes) -> None:
        self.seen[stream] += chunk

    def text(self, stream: str = "stdout") -> str:
        return self.seen[stream].decode()


async def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds."""
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.01)


def gone(pid: int) -> bool:
    """True when process ``pid`` has exited (absent, or a zombie nobody reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return data.rsplit(b")", 1)[1].split()[0] in (b"Z", b"X")


def listing(store: LocalStore, root: Digest | None) -> dict[str, object]:
    """An output snapshot as {path: file bytes | "dir" | ("link", target)}."""
    assert root is not None
    out: dict[str, object] = {}
    for path, entry in walk(store, root):
        if entry.kind == Kind.DIRECTORY:
            out[path.decode()] = "dir"
        elif entry.kind == Kind.SYMLINK:
            out[path.decode()] = ("link", entry.link.decode())
        else:
            out[path.decode()] = store.get(entry.blob)
    return out


# -- exit codes ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "code", "sig"), [("exit 0", 0, None), ("exit 1", 1, None), ("kill -KILL $$", 137, signal.SIGKILL)]
)
async def test_exit_codes(runner: Runner, snap: Digest, script: str, code: int, sig: int | None) -> None:
    result = await runner.run(sh(script, snap))
    assert (result.exit_code, result.signal, result.timed_out, result.error) == (code, sig, False, None)
    assert result.success == (code == 0)
    assert result.node == "node-a" and result.started_at <= result.finished_at and not result.cached


async def test_command_not_found_is_a_result_not_an_exception(runner: Runner, snap: Digest) -> None:
    result = await runner.run(Action(argv=("no-such-command-here",), input=snap))
    assert result.exit_code == 127 and result.error is not None and "command not found" in result.error
    result = await runner.run(Action(argv=("./a.txt",), input=snap))  # exists, not executable
    assert result.exit_code == 126 and result.error is not None and "cannot execute" in result.error


async def test_unknown_executor_is_refused(runner: Runner, snap: Digest) -> None:
    with pytest.raises(UnknownExecutor, match="sandbox"):
        await runner.run(Action(argv=("true",), input=snap, executor="sandbox"))


# -- output streams --------------------------------------------------------------------


async def test_streams_are_separate_ordered_and_match_what_followers_saw(
    runner: Runner, store: LocalStore, snap: Digest
) -> None:
    script = (
        "i=0; while [ $i -lt 3000 ]; do echo out$i; echo err$i >&2; i=$((i+1)); done; "
        "head -c 400000 d/big; echo done >&2"
    )
    recorder = Recorder()
    result = await runner.run(sh(script, snap), on_output=recorder)
    assert result.success, result
    big = treeutil.read(Path(runner.workroot).parent / "src")[b"d"][1][b"big"][1]
    expected_out = "".join(f"out{i}\n" for i in range(3000)).encode() + big
    expected_err = "".join(f"err{i}\n" for i in range(3000)).encode() + b"done\n"
    assert store.get(result.stdout) == expected_out == bytes(recorder.seen["stdout"])
    assert store.get(result.stderr) == expected_err == bytes(recorder.seen["stderr"])


async def test_empty_streams_are_the_empty_blob(runner: Runner, store: LocalStore, snap: Digest) -> None:
    result = await runner.run(Action(argv=("true",), input=snap))
    assert result.stdout == result.stderr == Digest.of(b"")
    assert store.get(result.stdout) == b""


async def test_stream_limit_kills_the_task_and_keeps_the_first_bytes(
    store: LocalStore, workroot: Path, snap: Digest
) -> None:
    runner = make_runner(store, workroot, Limits(stream_bytes=10_000))
    recorder = Recorder()
    with trio.fail_after(20):
        result = await runner.run(sh("echo to-stderr >&2; yes 0123456789", snap), on_output=recorder)
    assert result.error is not None and "stdout passed its limit of 10000 bytes" in result.error
    assert result.exit_code == 137 and result.signal == signal.SIGKILL and not result.success
    assert store.get(result.stdout) == bytes(recorder.seen["stdout"]) == b"0123456789\n" * 909 + b"0"
    assert store.get(result.stderr) == b"to-stderr\n"


# -- environment and cwd -----------------------------------------------------------------


async def test_environment_home_tmpdir_and_cwd(
    runner: Runner, store: LocalStore, snap: Digest, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MESH_TEST_LEAK", "the node's own environment")
    action = sh(
        'env; echo "PWD=$(pwd)"; touch "$HOME/h" "$TMPDIR/t"; cat f',
        snap,
        env=(("FOO", "bar baz"), ("LANG", "C")),
        cwd="d",
    )
    result = await runner.run(action)
    assert result.success, result
    lines = store.get(result.stdout).decode().splitlines()
    assert lines[-1] == "inner"
    env = dict(line.split("=", 1) for line in lines[:-1] if "=" in line)
    assert "MESH_TEST_LEAK" not in env
    assert env["FOO"] == "bar baz" and env["LANG"] == "C"  # the action's env is laid over the base
    for key in ("PATH", "LC_ALL", "TZ", "SOURCE_DATE_EPOCH"):
        assert env[key] == BASE_ENV[key]
    assert env["TMPDIR"] == env["HOME"] == PROCESS_VIEW.tmp  # the same on every run (mesh.exec.paths)
    assert env["PWD"] == os.path.join(PROCESS_VIEW.work, "d")


@pytest.mark.parametrize(("cwd", "why"), [("nope", "does not exist"), ("a.txt", "not a directory")])
async def test_a_cwd_that_is_not_a_directory_is_a_clear_error(runner: Runner, snap: Digest, cwd: str, why: str) -> None:
    result = await runner.run(Action(argv=("true",), input=snap, cwd=cwd))
    assert result.error is not None and why in result.error and cwd in result.error
    assert result.exit_code == 127 and result.output is None and not result.success


# -- killing -------------------------------------------------------------------------


async def test_timeout_kills_the_process_group_with_a_grandchild(runner: Runner, snap: Digest) -> None:
    recorder = Recorder()
    script = "sh -c 'sleep 1000 & echo $!; wait' & echo $!; wait"
    with trio.fail_after(20):
        result = await runner.run(sh(script, snap, timeout=1.5), on_output=recorder)
    assert result.timed_out and result.exit_code == 137 and result.signal == signal.SIGKILL
    pids = [int(p) for p in recorder.text().split()]
    assert len(pids) == 2  # the child shell and the grandchild sleep
    await wait_for(lambda: all(gone(pid) for pid in pids))


async def test_cancellation_kills_the_group_even_when_it_ignores_sigterm(
    store: LocalStore, workroot: Path, snap: Digest
) -> None:
    runner = make_runner(store, workroot, term_grace=0.3)
    recorder = Recorder()
    script = "trap '' TERM; sleep 1000 & echo $!; echo $$; wait; wait"
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:

            async def run() -> None:
                await runner.run(sh(script, snap), on_output=recorder)
                raise AssertionError("the run should have been cancelled")

            nursery.start_soon(run)
            await wait_for(lambda: recorder.text().count("\n") == 2)
            nursery.cancel_scope.cancel()
    pids = [int(p) for p in recorder.text().split()]
    await wait_for(lambda: all(gone(pid) for pid in pids))


async def test_output_is_live_and_cancellation_reaches_a_silent_task_at_once(
    store: LocalStore, workroot: Path, snap: Digest
) -> None:
    # The task's thread is blocked waiting for a process that prints nothing more: the
    # cancellation must wake it at once (not after the 30 s grace), and the group gets SIGTERM.
    runner = make_runner(store, workroot, term_grace=30)
    recorder = Recorder()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:

            async def run() -> None:
                await runner.run(sh("echo $$; exec sleep 1000", snap), on_output=recorder)
                raise AssertionError("the run should have been cancelled")

            nursery.start_soon(run)
            await wait_for(lambda: recorder.text().endswith("\n"))  # seen while the task runs
            nursery.cancel_scope.cancel()
            cancelled_at = trio.current_time()
    assert trio.current_time() - cancelled_at < 5
    # a cancelled task's directory is removed, never kept
    assert runner.statistics() == RunnerStatistics(running=0, finished=1, workdirs=PoolStatistics(0, 0, 0, 0))
    pid = int(recorder.text())
    await wait_for(lambda: gone(pid))


async def test_a_background_child_holding_the_pipe_does_not_hang_the_task(runner: Runner, snap: Digest) -> None:
    recorder = Recorder()
    with trio.fail_after(20):
        result = await runner.run(sh("sleep 1000 & echo $!; echo main done", snap), on_output=recorder)
    assert result.success and recorder.text().endswith("main done\n")
    pid = int(recorder.text().split()[0])
    await wait_for(lambda: gone(pid))


async def test_a_process_that_left_the_group_cannot_hold_the_task_past_the_drain_grace(
    runner: Runner, snap: Digest
) -> None:
    recorder = Recorder()
    try:
        with trio.fail_after(20):
            result = await runner.run(sh("setsid sleep 1000 & echo $!", snap), on_output=recorder)
        assert result.success and recorder.text().strip().isdigit()
    finally:
        os.kill(int(recorder.text()), signal.SIGKILL)  # it escaped the group: ours to clean up


async def test_a_slow_follower_loses_no_output(runner: Runner, store: LocalStore, snap: Digest) -> None:
    seen = bytearray()

    async def slow(stream: str, chunk: bytes) -> None:
        await trio.sleep(0.7)  # slower than the drain grace (0.5 s) in total
        seen.extend(chunk)

    result = await runner.run(sh("echo one; echo two >&2", snap), on_output=slow)
    assert store.get(result.stdout) == b"one\n" and store.get(result.stderr) == b"two\n"
    assert sorted(seen.splitlines()) == [b"one", b"two"]


async def test_a_failing_follower_kills_the_task_and_propagates(runner: Runner, snap: Digest) -> None:
    class FollowerGone(Exception):
        pass

    async def follower(stream: str, chunk: bytes) -> None:
        raise FollowerGone

    with trio.fail_after(20), pytest.raises(FollowerGone):
        await runner.run(sh("echo hi; exec sleep 1000", snap), on_output=follower)


async def test_tasks_run_concurrently_without_sharing_pipes(runner: Runner, store: LocalStore, snap: Digest) -> None:
    results: dict[int, ActionResult] = {}

    async def one(i: int) -> None:
        # Each task leaves a background child behind: if a pipe leaked into another
        # task's process, that task would wait for it.
        results[i] = await runner.run(sh(f"sleep 1000 & echo task{i}", snap))

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for i in range(6):
                nursery.start_soon(one, i)
    assert {i: store.get(r.stdout) for i, r in results.items()} == {i: f"task{i}\n".encode() for i in range(6)}


# -- outputs ---------------------------------------------------------------------------


MAKE_OUTPUTS = (
    "mkdir -p out/sub x/y && echo a > out/a && echo b > out/sub/b && echo c > c.txt && echo junk > junk "
    "&& echo z > x/y/z && echo other > x/other && ln -s /etc sneaky && ln -s c.txt c.link"
)


async def test_declared_outputs_keep_just_those_paths(runner: Runner, store: LocalStore, snap: Digest) -> None:
    outputs = ("out", "c.txt", "missing", "x/y/z", "x/nope/deeper", "sneaky/passwd", "c.link", "out/sub/b")
    result = await runner.run(sh(MAKE_OUTPUTS, snap, outputs=outputs))
    assert result.success, result
    assert listing(store, result.output) == {
        "c.link": ("link", "c.txt"),
        "c.txt": b"c\n",
        "out": "dir",
        "out/a": b"a\n",
        "out/sub": "dir",
        "out/sub/b": b"b\n",
        "x": "dir",
        "x/y": "dir",
        "x/y/z": b"z\n",
    }


async def test_no_declared_output_present_is_the_empty_snapshot(
    runner: Runner, store: LocalStore, snap: Digest
) -> None:
    result = await runner.run(sh("true", snap, outputs=("missing", "a.txt/below")))
    assert result.success and listing(store, result.output) == {}


async def test_whole_workdir_is_captured_without_outputs(runner: Runner, store: LocalStore, snap: Digest) -> None:
    result = await runner.run(sh(MAKE_OUTPUTS + " && rm a.txt", snap))
    assert result.success, result
    found = listing(store, result.output)
    assert "a.txt" not in found and found["d/f"] == b"inner\n" and found["bin/tool"] == b"#!/bin/sh\necho tool ran\n"
    assert found["junk"] == b"junk\n" and found["x/other"] == b"other\n" and found["sneaky"] == ("link", "/etc")


async def test_output_limit(store: LocalStore, workroot: Path, snap: Digest) -> None:
    runner = make_runner(store, workroot, Limits(output_bytes=1000))
    result = await runner.run(sh("head -c 600 d/big > o1; head -c 600 d/big > o2", snap, outputs=("o1", "o2")))
    assert result.output is None and result.error is not None and "limit of 1000 bytes" in result.error
    assert result.exit_code == 0 and not result.success
    result = await runner.run(sh("head -c 600 d/big > o1", snap, outputs=("o1",)))
    assert result.success and result.output is not None
    result = await runner.run(sh("true", snap))  # the whole workdir is over the limit too
    assert result.output is None and result.error is not None


# -- the store is safe from the task -----------------------------------------------------


async def test_a_task_cannot_change_the_store_through_its_inputs(
    runner: Runner, store: LocalStore, snap: Digest
) -> None:
    vandal = (
        "chmod -R u+w . && echo evil > a.txt && echo evil >> bin/tool && chmod 000 d/f && "
        "rm d/big && echo replaced > d/big.new && mv d/big.new d/big && rm -rf bin && "
        "for f in $(find . -type f); do : > $f; done"
    )
    result = await runner.run(sh(vandal, snap))
    assert result.success, result
    report = fsck(store)
    assert report.clean and report.problems == [], report.problems
    for digest in reachable(store, snap):
        store.get(digest)  # verifies
    again = await runner.run(sh("cat a.txt bin/tool d/f; wc -c < d/big", snap))
    assert store.get(again.stdout) == b"alpha\n#!/bin/sh\necho tool ran\ninner\n300000\n"


FLAT: treeutil.Tree = {
    b"a.txt": ("file", b"alpha\n", False),
    b"run.sh": ("file", b"#!/bin/sh\necho ran\n", True),
    b"link": ("link", b"a.txt"),
}


async def test_a_small_flat_input_is_checked_out_the_same(runner: Runner, store: LocalStore, tmp_path: Path) -> None:
    src = tmp_path / "flat"
    src.mkdir()
    treeutil.build(src, FLAT)
    flat = ingest(store, src)
    result = await runner.run(sh("./run.sh && cat link && test -x run.sh && test ! -x a.txt && test -L link", flat))
    assert result.success and store.get(result.stdout) == b"ran\nalpha\n"
    assert listing(store, result.output) == {
        "a.txt": b"alpha\n",
        "run.sh": b"#!/bin/sh\necho ran\n",
        "link": ("link", "a.txt"),
    }
    vandal = await runner.run(sh("chmod u+w a.txt run.sh && echo evil > a.txt && echo evil >> run.sh", flat))
    assert vandal.success and fsck(store).problems == []
    assert listing(store, flat)["a.txt"] == b"alpha\n"


# -- the task directory is always removed -------------------------------------------------


async def test_read_only_directories_left_by_the_task_are_removed(runner: Runner, snap: Digest) -> None:
    script = (
        "mkdir -p ro/sub && touch ro/sub/f && chmod 500 ro/sub && chmod 000 ro && "
        'mkdir "$HOME/locked" && chmod 0 "$HOME/locked" "$HOME" "$TMPDIR" && chmod 500 d . && exit 3'
    )
    result = await runner.run(sh(script, snap, outputs=("a.txt",)))
    assert result.exit_code == 3
    # the workroot fixture checks that nothing is left


async def test_workroot_is_empty_after_errors(runner: Runner, snap: Digest, store: LocalStore) -> None:
    missing = Digest.of(b"not a snapshot in this store")
    with pytest.raises(BlobNotFound):
        await runner.run(Action(argv=("true",), input=missing))
    await runner.run(Action(argv=("no-such-command-here",), input=snap))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")
def test_remove_tree_as_an_unprivileged_owner() -> None:
    """remove_tree as a non-root owner: permission bits really stop a plain rmtree here."""
    nobody = 65534
    top = tempfile.mkdtemp(prefix="mesh-rm-")
    os.chown(top, nobody, nobody)
    target = os.path.join(top, "task")
    pid = os.fork()
    if pid == 0:  # the child becomes nobody, builds a hostile tree and removes it
        code = 1
        try:
            os.setgid(nobody)
            os.setuid(nobody)
            os.makedirs(os.path.join(target, "a", "b", "c"))
            for d in ("a/b/c", "a/b", "a"):
                with open(os.path.join(target, d, "f"), "w") as f:
                    f.write("x")
            os.symlink("/", os.path.join(target, "a", "root-link"))
            os.chmod(os.path.join(target, "a", "b", "c"), 0)
            os.chmod(os.path.join(target, "a", "b"), stat.S_IRUSR | stat.S_IXUSR)
            os.chmod(os.path.join(target, "a"), 0)
            remove_tree(target)
            code = 0 if not os.path.lexists(target) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    try:
        assert os.waitstatus_to_exitcode(status) == 0
        assert os.listdir(top) == []
    finally:
        remove_tree(top)


def test_remove_leftovers(store: LocalStore, workroot: Path) -> None:
    runner = make_runner(store, workroot)
    (workroot / "task-left").mkdir()
    (workroot / "task-left" / "x").mkdir(mode=0)
    assert runner.remove_leftovers() == 1


def test_remove_leftovers_kills_what_a_dead_nodes_tasks_left_and_waits_until_it_is_gone(
    store: LocalStore, workroot: Path
) -> None:
    """A process that carries a task's marker is killed and gone (not just signalled) when
    remove_leftovers returns: one holding 1 GiB takes tens of milliseconds to die. A process
    of another directory's tasks is left alone."""
    runner = make_runner(store, workroot)
    (workroot / "task-left").mkdir()
    hold = "import sys, time; b = bytearray(1 << 30); print('ready', flush=True); time.sleep(60)"
    mine = {**os.environ, "MESH_TASK_DIR": f"{workroot}/task-left"}
    theirs = {**os.environ, "MESH_TASK_DIR": f"{workroot}-other/task-left"}
    left = subprocess.Popen([sys.executable, "-c", hold], env=mine, stdout=subprocess.PIPE)
    other = subprocess.Popen([sys.executable, "-c", hold], env=theirs, stdout=subprocess.PIPE)
    try:
        assert left.stdout is not None and other.stdout is not None
        assert left.stdout.readline() == other.stdout.readline() == b"ready\n"
        assert runner.remove_leftovers() == 1
        assert gone(left.pid), "remove_leftovers returned while the process it killed still ran"
        assert left.wait() == -signal.SIGKILL
        assert other.poll() is None
    finally:
        for process in (left, other):
            process.kill()
            process.wait()


# -- a root node's task uids ------------------------------------------------------------------

#: Task uids for these tests (the node's default range starts at 2100000000).
TEST_UIDS = (2_100_009_950, 2_100_009_959)
#: A uid that stands for a task of another uid running meanwhile.
OTHER_UID = 2_100_009_969
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="task uids: a root node's process executor")
#: Runners made on task_users by the current test, checked and closed by that fixture.
_TASK_RUNNERS: list[Runner] = []


@pytest.fixture
def task_users(tmp_path: Path) -> Iterator[TaskUsers]:
    """One task uid, as a root node with one slot holds it; at the end, its task directories'
    directory holds nothing but the directories its runners keep."""
    users = TaskUsers.claim(*TEST_UIDS, 1, record=str(tmp_path / "task-users"))
    try:
        yield users
        check_workroot(Path(users.workroot), _TASK_RUNNERS)
    finally:
        for made in _TASK_RUNNERS:
            made.close()
        _TASK_RUNNERS.clear()
        users.close()


def make_task_runner(store: LocalStore, users: TaskUsers, tmp_path: Path, cls: type[Runner] = Runner) -> Runner:
    executor = ProcessExecutor(users=users, term_grace=0.5, drain_grace=0.5)
    made = cls(store, workroot=tmp_path / "own", node_id="node-a", executors={"process": executor})
    _TASK_RUNNERS.append(made)
    return made


def as_other_uid(script: str, cwd: str) -> subprocess.Popen[bytes]:
    """A Python process of OTHER_UID in ``cwd``, as a task of another uid that got there."""
    argv = ["setpriv", f"--reuid={OTHER_UID}", f"--regid={OTHER_UID}", "--clear-groups", "/usr/bin/python3", "-c"]
    return subprocess.Popen([*argv, script], cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE)


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A directory only root reads (as the node's home), holding a secret file."""
    home = tmp_path / "home-of-the-node"
    home.mkdir(mode=0o700)
    (home / "mesh.key").write_text("the node's key\n")
    return home


@as_root
async def test_a_task_that_replaces_its_workdir_with_a_symlink_gets_no_outputs_from_there(
    store: LocalStore, task_users: TaskUsers, tmp_path: Path, snap: Digest, secret: Path
) -> None:
    """The task cannot read the secret; the node, snapshotting the workdir as root, must not
    follow the symlink the task put in its place."""
    runner = make_task_runner(store, task_users, tmp_path)
    script = f'cat {secret}/mesh.key; cd "$MESH_TASK_DIR" && mv work gone && ln -s {secret} work'  # its host path
    result = await runner.run(sh(script, snap))
    assert b"Permission denied" in store.get(result.stderr)
    assert result.output is None or "mesh.key" not in listing(store, result.output), listing(store, result.output)
    assert result.error is not None and "replaced its working directory" in result.error


@as_root
async def test_no_other_uid_changes_a_task_directory_once_the_task_ended(
    store: LocalStore, task_users: TaskUsers, tmp_path: Path, snap: Digest
) -> None:
    """The task opens its directory and a subdirectory to everyone; a process of another uid
    gets into the subdirectory while the task runs, and tries to plant a symlink there once
    the task has ended (the moment the runner's _end is done), before the node reads the
    directory: it is refused, and the outputs hold nothing of it."""
    other: list[subprocess.Popen[bytes]] = []
    tried: list[str] = []

    class Watched(Runner):
        @staticmethod
        def _end(*args: object) -> None:
            Runner._end(*args)  # type: ignore[arg-type]
            (spy,) = other
            assert spy.stdin is not None and spy.stdout is not None
            spy.stdin.write(b"go\n")
            spy.stdin.flush()
            tried.append(spy.stdout.readline().decode().strip())

    runner = make_task_runner(store, task_users, tmp_path, Watched)
    script = (
        'mkdir sub && chmod 777 sub && chmod 711 "$MESH_TASK_DIR" && mkfifo gate && echo "$MESH_TASK_DIR" && '
        "read x < gate && rm gate"
    )
    spy_script = (
        "import os, sys\nprint('in', flush=True)\nsys.stdin.readline()\n"
        "try:\n    os.symlink('/', 'planted')\n    print('planted', flush=True)\n"
        "except OSError as exc:\n    print(exc.strerror, flush=True)\n"
    )
    said = Recorder()
    try:
        async with trio.open_nursery() as nursery:
            results: list[ActionResult] = []

            async def run() -> None:
                results.append(await runner.run(sh(script, snap), on_output=said))

            nursery.start_soon(run)
            await wait_for(lambda: said.text().endswith("\n"))
            task_dir = said.text().strip()
            other.append(as_other_uid(spy_script, f"{task_dir}/work/sub"))
            assert other[0].stdout is not None
            assert await trio.to_thread.run_sync(other[0].stdout.readline) == b"in\n"

            def open_gate() -> None:
                with open(f"{task_dir}/work/gate", "w") as gate:
                    gate.write("go\n")

            await trio.to_thread.run_sync(open_gate)
        (result,) = results
        assert result.success, result
        assert tried == ["Permission denied"], tried
        assert "sub/planted" not in listing(store, result.output)
    finally:
        for process in other:
            process.kill()
            process.wait()


@as_root
async def test_a_task_waiting_for_a_task_uid_is_cancelled_at_once(
    store: LocalStore, task_users: TaskUsers, tmp_path: Path, snap: Digest
) -> None:
    """More tasks than uids (as when one was dropped): the second waits for the first's uid,
    and its cancellation ends the wait at once, while the first still runs."""
    runner = make_task_runner(store, task_users, tmp_path)
    said = Recorder()
    holder = 'mkfifo "$HOME/gate" && echo "$MESH_TASK_DIR" && read x < "$HOME/gate" && rm "$HOME/gate"'
    results: list[ActionResult] = []
    waited: list[ActionResult | None] = []
    async with trio.open_nursery() as nursery:

        async def hold() -> None:
            results.append(await runner.run(sh(holder, snap), on_output=said))

        nursery.start_soon(hold)
        await wait_for(lambda: said.text().endswith("\n"))
        scope = trio.CancelScope()

        async def wait_for_the_uid() -> None:
            with scope:
                waited.append(await runner.run(sh("echo ran", snap)))
                return
            waited.append(None)

        nursery.start_soon(wait_for_the_uid)
        await wait_for(lambda: runner.statistics().running == 2)
        scope.cancel()
        with trio.move_on_after(5):
            while not waited:
                await trio.sleep(0.01)
        cancelled_while_the_first_ran = waited == [None] and not results

        def open_gate() -> None:
            with open(f"{said.text().strip()}/tmp/gate", "w") as gate:
                gate.write("go\n")

        await trio.to_thread.run_sync(open_gate)
    assert cancelled_while_the_first_ran, (waited, results)
    assert results[0].success


def test_limits_repr_and_validation() -> None:
    assert "stream_bytes" in repr(Limits())
    with pytest.raises(ValueError):
        Limits(stream_bytes=-1)
