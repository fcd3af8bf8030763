"""The sandbox executor, through the runner, with real bubblewrap and a real store.

The node's home is laid out as a node lays it out (key, store ``cas/``, workroot
``work/``) in a directory outside /tmp (the sandbox replaces /tmp), and everything
in it is readable by anyone: what keeps a task out is the sandbox, not the modes.
Escape tests assert the specific refusal (the error text of its errno) and that
the store is still fsck-clean; every test ends with the workroot empty. The whole
module is skipped, with the reason, only where :func:`sandbox_unavailable` says
the sandbox cannot run. Waiting is always for a condition with a deadline.
"""

from __future__ import annotations

import errno
import os
import resource
import secrets
import signal
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from mesh.cas.checkout import Mode
from mesh.cas.digest import Digest
from mesh.cas.fsck import fsck
from mesh.cas.snapshot import ingest, reachable
from mesh.cas.store import LocalStore
from mesh.errors import ExecError
from mesh.exec.action import BASE_ENV, Action, ActionResult
from mesh.exec.paths import PROCESS_VIEW, SANDBOX_VIEW
from mesh.exec.process import Command, NoCancel, ProcessExecutor
from mesh.exec.runner import Limits, Runner, remove_tree
from mesh.exec.sandbox import NOBODY, NOGROUP, SandboxExecutor, SandboxLimits, sandbox_unavailable
from tests import treeutil
from tests.nodeutil import host_processes
from tests.runnerutil import check_workroot
from tests.test_runner import INPUT, Recorder, listing, wait_for

UNAVAILABLE = sandbox_unavailable()
pytestmark = pytest.mark.skipif(UNAVAILABLE is not None, reason=f"the sandbox cannot run here: {UNAVAILABLE}")
ROOT = os.geteuid() == 0


@dataclass
class Node:
    """A node's home as the node lays it out, its store, and a runner with both executors."""

    top: Path
    home: Path
    key: Path
    other_key: Path
    store: LocalStore
    runner: Runner
    sandbox: SandboxExecutor
    snap: Digest

    def assert_healthy(self) -> None:
        """The store is intact (no damaged blob, no mode repaired) and the workroot is empty."""
        report = fsck(self.store)
        assert report.clean and report.problems == [], report.problems
        for digest in reachable(self.store, self.snap):
            self.store.get(digest)  # verifies
        check_workroot(Path(self.runner.workroot), _RUNNERS)


#: Runners made by the current test (make_runner), checked when its node fixture ends.
_RUNNERS: list[Runner] = []


def make_runner(
    store: LocalStore,
    home: Path,
    other_key: Path,
    *,
    limits: SandboxLimits | None = None,
    stream_bytes: int = 64 << 20,
    inputs: Mode = "copy",
) -> tuple[Runner, SandboxExecutor]:
    sandbox = SandboxExecutor(
        home=home, hide=[other_key], limits=limits or SandboxLimits(), inputs=inputs, term_grace=0.5, drain_grace=0.5
    )
    executors = {"sandbox": sandbox, "process": ProcessExecutor(term_grace=0.5, drain_grace=0.5)}
    runner = Runner(
        store, workroot=home / "work", node_id="node-s", executors=executors, limits=Limits(stream_bytes=stream_bytes)
    )
    _RUNNERS.append(runner)
    return runner, sandbox


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    # /var/tmp, not /tmp: the sandbox has a /tmp of its own, which would hide the home anyway.
    top = Path(tempfile.mkdtemp(prefix="mesh-sandbox-test-", dir="/var/tmp"))
    try:
        os.chmod(top, 0o755)
        home = top / "home"
        home.mkdir(mode=0o755)
        key = home / "mesh.key"
        key.write_text("the node's secret key\n")
        other = top / "keys"
        other.mkdir(mode=0o755)
        other_key = other / "mesh.key"
        other_key.write_text("a key kept elsewhere\n")
        for path in (key, other_key):
            os.chmod(path, 0o644)  # readable by anyone: only the sandbox keeps tasks out
        src = tmp_path / "src"
        src.mkdir()
        treeutil.build(src, INPUT)
        with LocalStore(home / "cas") as store:
            snap = ingest(store, src)
            runner, sandbox = make_runner(store, home, other_key)
            yield Node(top, home, key, other_key, store, runner, sandbox, snap)
            check_workroot(Path(runner.workroot), _RUNNERS)
            _RUNNERS.clear()
    finally:
        remove_tree(str(top))


def sh(script: str, node: Node, executor: str = "sandbox", **kwargs: Any) -> Action:
    return Action(argv=("sh", "-c", script), input=node.snap, executor=executor, **kwargs)


async def run_sh(node: Node, script: str, runner: Runner | None = None, **kwargs: Any) -> tuple[ActionResult, str]:
    """Run ``script`` in the sandbox with stderr into stdout; (result, the text it printed)."""
    result = await (runner or node.runner).run(sh(f"exec 2>&1; {script}", node, **kwargs))
    return result, node.store.get(result.stdout).decode()


def nonce() -> str:
    """A unique number for ``sleep`` to carry in its command line: ``1000.<digits>`` seconds."""
    return f"1000.{secrets.randbelow(10**9):09d}"


# -- who the task is -----------------------------------------------------------------------


def status_fields(text: str) -> dict[str, str]:
    return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines()) if _}


async def test_the_task_runs_as_an_unprivileged_uid_without_capabilities(node: Node) -> None:
    result, out = await run_sh(node, "cat /proc/self/status; echo; grep -E '^(Uid|CapEff)' /proc/1/status")
    assert result.success, out
    own, init = out.split("\n\n")
    status = status_fields(own)
    uid, gid = (NOBODY, NOGROUP) if ROOT else (os.getuid(), os.getgid())
    assert status["Uid"].split() == [str(uid)] * 4 and status["Gid"].split() == [str(gid)] * 4
    for caps in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status[caps], 16) == 0, (caps, status[caps])
    assert status["NoNewPrivs"] == "1"
    if ROOT:
        assert status["Groups"] == ""
        # bwrap's own pid 1 stays root, but without capabilities too (and the task cannot signal it).
        assert status_fields(init) == {"Uid": "0\t0\t0\t0", "CapEff": "0000000000000000"}
        assert node.sandbox.checkout_mode == "copy" and "uid=65534" in repr(node.sandbox)
        assert node.sandbox.checkout_owner == (NOBODY, NOGROUP)  # copies of the task's uid
        linking = SandboxExecutor(inputs="link")
        assert linking.checkout_mode == "link" and linking.checkout_owner is None
    else:
        assert node.sandbox.checkout_mode == "copy" and "not root" in repr(node.sandbox)
        assert node.sandbox.checkout_owner is None
        assert SandboxExecutor(inputs="link").checkout_mode == "copy"  # ignored, with a log line


def test_construction_checks() -> None:
    if ROOT:
        with pytest.raises(ValueError, match="must not run as root"):
            SandboxExecutor(uid=0)
    with pytest.raises(ValueError, match="at least 1"):
        SandboxLimits(processes=0)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    lowered = SandboxLimits(open_files=1 << 40).within_node()
    assert lowered.open_files == (1 << 40 if hard == resource.RLIM_INFINITY else hard)
    assert SandboxLimits(address_space=None, processes=7, file_size=None, open_files=None).rlimits() == [
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_NPROC, 7),
    ]


# -- the filesystem ---------------------------------------------------------------------------


async def test_writes_outside_the_workdir_are_refused(node: Node) -> None:
    store_blobs = node.home / "cas" / "blobs"
    targets = {
        "/etc/mesh-escape": "Read-only file system",
        "/usr/mesh-escape": "Read-only file system",
        f"{node.home}/mesh-escape": "Read-only file system",  # the home: an empty read-only directory
        f"{node.home}/work/mesh-escape": "Directory nonexistent",  # the task directories: not there at all
        f"{store_blobs}/mesh-escape": "Directory nonexistent",  # dash's ENOENT: the store is hidden
        f"{node.top}/mesh-escape": "Read-only file system",
    }
    before = sorted(os.listdir(node.home))
    script = "; ".join(f"echo evil > {path}; echo status $?" for path in targets)
    result, out = await run_sh(node, script)
    lines = out.splitlines()
    assert len(lines) == 2 * len(targets), out
    for (path, refusal), message, status in zip(targets.items(), lines[::2], lines[1::2], strict=True):
        assert f"cannot create {path}: {refusal}" in message and status == "status 2", (path, message)
        assert not os.path.exists(path)
    assert sorted(os.listdir(node.home)) == before
    node.assert_healthy()


async def test_the_host_tmp_is_not_the_tasks(node: Node) -> None:
    fd, host_file = tempfile.mkstemp(prefix="mesh-sandbox-host-")
    try:
        os.write(fd, b"host\n")
        os.close(fd)
        os.chmod(host_file, 0o666)  # anyone could write it, were it visible
        script = (
            f"cat {host_file}; echo status $?; echo evil > {host_file} && echo private write ok; "
            f"cat {host_file}; ls -A /tmp"
        )
        result, out = await run_sh(node, script)
        assert result.success, out
        assert out.splitlines() == [
            f"cat: {host_file}: No such file or directory",
            "status 1",
            "private write ok",
            "evil",
            os.path.basename(host_file),
        ]
        with open(host_file, "rb") as f:
            assert f.read() == b"host\n"
    finally:
        os.unlink(host_file)
    node.assert_healthy()


async def test_the_mesh_keys_cannot_be_read(node: Node) -> None:
    script = f"cat {node.key}; cat {node.other_key}; echo x > {node.other_key}; ls -A {node.home}"
    result, out = await run_sh(node, script)
    assert out.splitlines() == [
        f"cat: {node.key}: No such file or directory",
        f"cat: {node.other_key}: Permission denied",
        f"sh: 1: cannot create {node.other_key}: Permission denied",
    ]  # and the home is empty: the task's own directories are at /work and /tmp
    assert node.key.read_text() == "the node's secret key\n"
    assert node.other_key.read_text() == "a key kept elsewhere\n"
    node.assert_healthy()


@pytest.mark.parametrize("mode", [0o755, 0o700], ids=["open", "private"])
async def test_other_task_directories_are_invisible(node: Node, mode: int) -> None:
    # A workroot outside the hidden home, below an open directory or a private one (as
    # under /root): the task reaches its own directories and nothing beside them.
    parent = node.top / "node"
    parent.mkdir()
    os.chmod(parent, mode)
    workroot = parent / "work"
    other = workroot / "task-other" / "work"
    other.mkdir(parents=True)
    for path in (workroot, other.parent, other):
        os.chmod(path, 0o777)  # anyone could write there, were it visible
    runner = Runner(node.store, workroot=workroot, node_id="node-s", executors={"sandbox": node.sandbox})
    script = f'pwd; ls -A {workroot}; echo x > {other}/x; echo status $?; touch "$HOME/h" x'
    try:
        result, out = await run_sh(node, script, runner=runner)
        assert os.listdir(other) == []
    finally:
        remove_tree(str(other.parent))
    # The task directories' directory is empty, or out of reach below the private one.
    listed, why = (
        ([], "Directory nonexistent")
        if mode == 0o755
        else ([f"ls: cannot access '{workroot}': Permission denied"], "Permission denied")
    )
    assert out.splitlines() == [
        "/work",  # its own directory, at the same path as every other task's
        *listed,
        f"sh: 1: cannot create {other}/x: {why}",
        "status 2",
    ]
    assert result.success and os.listdir(workroot) == []


@pytest.mark.parametrize("inputs", ["link", "copy"])
async def test_hardlinked_inputs_cannot_be_changed(node: Node, inputs: Mode) -> None:
    """Link mode (a root node's option): the store's files, which the task cannot change.
    Copy mode: the task's own copies (of its uid on a root node), which it may change
    as a local command may; either way the store's blobs stay intact."""
    runner, _ = make_runner(node.store, node.home, node.other_key, inputs=inputs)
    attempts = {
        "chmod u+w a.txt": "chmod: changing permissions of 'a.txt': Operation not permitted",
        "echo evil > a.txt": "sh: 1: cannot create a.txt: Permission denied",
        "echo evil >> bin/tool": "sh: 1: cannot create bin/tool: Permission denied",
        "truncate -s 0 d/f": "truncate: cannot open 'd/f' for writing: Permission denied",
        "touch -d 2001-01-01 d/big": "touch: cannot touch 'd/big': Permission denied",
        "chown 65534 a.txt": "chown: changing ownership of 'a.txt': Operation not permitted",
    }
    script = "stat -c '%h %u %a' a.txt; " + "; ".join(f"{a}; echo status $?" for a in attempts)
    result, out = await run_sh(node, script, runner)
    lines = out.splitlines()
    if ROOT and inputs == "link":  # the files are the store's own (several links, root's, read-only)
        links, owner, mode = lines[0].split()
        assert int(links) > 1 and owner == "0" and mode == "444", lines[0]
        assert lines[1::2] == list(attempts.values()), out
        assert all(status not in ("status 0", "") for status in lines[2::2]), out
    else:  # copy mode: the task may change its copies; the store must not notice
        links, owner, mode = lines[0].split()
        assert (int(links), int(owner), mode) == (1, NOBODY if ROOT else os.getuid(), "644"), lines[0]
        statuses = [line for line in lines[1:] if line.startswith("status")]
        assert statuses[:5] == ["status 0"] * 5, out  # all but chown, which only root may do
    # Replacing the files is the task's right (the directories are its own); the blobs stay intact.
    vandal = (
        "rm -f a.txt && echo replaced > a.txt && rm -rf bin && chmod -R u+w d 2>/dev/null; "
        "for f in d/*; do (: > $f) 2>/dev/null; done; true"
    )
    result, out = await run_sh(node, vandal, runner)
    assert result.success, out
    node.assert_healthy()
    again, out = await run_sh(node, "cat a.txt bin/tool d/f; wc -c < d/big", runner)
    assert out == "alpha\n#!/bin/sh\necho tool ran\ninner\n300000\n"
    node.assert_healthy()


async def test_outputs_written_by_the_task_are_captured_and_everything_removed(node: Node) -> None:
    script = (
        "mkdir -p out/sub && echo a > out/a && echo b > out/sub/b && head -c 1000 d/big > out/part "
        "&& chmod 000 out/a && chmod 500 out/sub && ln -s a out/link && echo home > $HOME/h && "
        "mkdir -p locked/deeper && chmod 000 locked $HOME"
    )
    result = await node.runner.run(sh(script, node, outputs=("out", "missing")))
    assert result.success, node.store.get(result.stdout)
    found = listing(node.store, result.output)
    assert set(found) == {"out", "out/a", "out/sub", "out/sub/b", "out/part", "out/link"}
    assert found["out/a"] == b"a\n" and found["out/sub/b"] == b"b\n" and found["out/link"] == ("link", "a")
    assert isinstance(found["out/part"], bytes) and len(found["out/part"]) == 1000
    whole = await node.runner.run(sh("echo new > new.txt && rm a.txt", node))
    found = listing(node.store, whole.output)
    assert found["new.txt"] == b"new\n" and "a.txt" not in found and found["d/f"] == b"inner\n"
    node.assert_healthy()


def test_the_sandbox_is_killed_when_its_limits_cannot_be_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work, tmp = tmp_path / "task" / "work", tmp_path / "task" / "tmp"
    work.mkdir(parents=True)
    tmp.mkdir()
    env = {**BASE_ENV, "HOME": str(tmp), "TMPDIR": str(tmp)}
    command = Command(
        argv=("touch", "started"), workdir=str(work), cwd="", env=env, home=str(tmp), tmpdir=str(tmp), timeout=10
    )
    executor = SandboxExecutor(term_grace=0.5, drain_grace=0.5)
    executor.prepare(command)

    def refuse(*args: object) -> None:
        raise PermissionError(errno.EPERM, "refused by the test")

    monkeypatch.setattr(resource, "prlimit", refuse)
    with NoCancel() as cancel, pytest.raises(ExecError, match="cannot set the limits of the sandbox: refused"):
        executor.run(command, lambda stream, chunk: True, cancel)
    assert os.listdir(work) == []  # the command never ran


@pytest.mark.parametrize("failing", [1, 2, 3], ids=["the filter's pipe", "the info pipe", "the block pipe"])
def test_no_descriptor_leaks_when_a_pipe_cannot_be_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: int
) -> None:
    """The node is out of descriptors (EMFILE) when the sandbox makes its pipes: the task
    fails with the reason, and every pipe made before is closed."""
    work, tmp = tmp_path / "task" / "work", tmp_path / "task" / "tmp"
    work.mkdir(parents=True)
    tmp.mkdir()
    env = {**BASE_ENV, "HOME": str(tmp), "TMPDIR": str(tmp)}
    command = Command(argv=("true",), workdir=str(work), cwd="", env=env, home=str(tmp), tmpdir=str(tmp), timeout=10)
    executor = SandboxExecutor(term_grace=0.5, drain_grace=0.5)
    executor.prepare(command)
    real, made = os.pipe2, [0]

    def pipe2(flags: int) -> tuple[int, int]:
        made[0] += 1
        if made[0] == failing:
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        return real(flags)

    with NoCancel() as cancel:
        before = sorted(os.listdir("/proc/self/fd"))
        monkeypatch.setattr(os, "pipe2", pipe2)
        with pytest.raises(ExecError, match="Too many open files"):
            executor.run(command, lambda stream, chunk: True, cancel)
        monkeypatch.undo()
        assert sorted(os.listdir("/proc/self/fd")) == before
    assert made[0] == failing


# -- the kernel's doors ------------------------------------------------------------------------


async def test_no_user_namespace_can_be_made_inside(node: Node) -> None:
    """``unshare -Ur`` (a user namespace: root over its own mounts and network) fails, and so does
    any other namespace, by unshare or clone."""
    script = (
        "unshare -Ur true; echo status $?; "
        "python3 -c 'import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "for flag in (0x10000000, 0x20000, 0x40000000):  # CLONE_NEWUSER, CLONE_NEWNS, CLONE_NEWNET\n"
        "  print(libc.unshare(flag), os.strerror(ctypes.get_errno()))'"
    )
    result, out = await run_sh(node, script)
    assert out.splitlines() == [
        "unshare: unshare failed: Operation not permitted",
        "status 1",
        *["-1 Operation not permitted"] * 3,
    ], out
    node.assert_healthy()


async def test_sys_shows_only_the_cpu_counts(node: Node) -> None:
    result, out = await run_sh(node, "find /sys | sort; cat /sys/devices/system/cpu/online; touch /sys/x")
    cpu = "/sys/devices/system/cpu"
    with open(f"{cpu}/online") as f:
        online = f.read()
    assert out == (
        f"/sys\n/sys/devices\n/sys/devices/system\n{cpu}\n{cpu}/online\n{cpu}/possible\n{cpu}/present\n"
        f"{online}touch: cannot touch '/sys/x': Read-only file system\n"
    ), out


#: Each denied call made through ctypes: what it is, then syscall number and arguments (x86_64).
DENIED_CALLS = {
    "keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_USER_KEYRING)": (250, 0, -4, 0),
    "add_key": (248, 0, 0, 0),
    "bpf(BPF_PROG_LOAD)": (321, 5, 0, 0),
    "perf_event_open": (298, 0, 0, -1),
    "userfaultfd": (323, 0, 0, 0),
    "io_uring_setup": (425, 1, 0, 0),
    "mount": (165, 0, 0, 0),
    "setns": (308, 0, 0, 0),
}


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the syscall numbers below are x86_64's")
async def test_denied_system_calls_fail_with_eperm(node: Node) -> None:
    calls = ", ".join(f"({name!r}, {args!r})" for name, args in DENIED_CALLS.items())
    script = f"""
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
for name, (nr, *args) in [{calls}]:
    ctypes.set_errno(0)
    result = libc.syscall(ctypes.c_long(nr), *(ctypes.c_long(a) for a in args))
    print(name, result, os.strerror(ctypes.get_errno()))
ctypes.set_errno(0)
print("clone3", libc.syscall(ctypes.c_long(435), None, ctypes.c_long(0)), os.strerror(ctypes.get_errno()))
"""
    result = await node.runner.run(Action(argv=("python3", "-c", script), input=node.snap, executor="sandbox"))
    out = node.store.get(result.stdout).decode()
    assert result.success, node.store.get(result.stderr)
    expected = [f"{name} -1 Operation not permitted" for name in DENIED_CALLS]
    # clone3 answers ENOSYS, on which glibc falls back to clone (whose flags the filter reads)
    assert out.splitlines() == [*expected, "clone3 -1 Function not implemented"], out


C_PROGRAM = b"""#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
int main(void) {
    long r = syscall(SYS_keyctl, 0, -4, 0);
    printf("keyctl %ld %s\\n", r, strerror(errno));
    return 0;
}
"""


async def test_ordinary_builds_still_work(node: Node) -> None:
    """sh, python3, gcc (compile, link, run) and the CPU counts (nproc, getconf, os.cpu_count)
    under the filter and the hidden /sys; the count is the host's."""
    script = (
        "cat > k.c <<'EOF'\n" + C_PROGRAM.decode() + "EOF\n"
        "gcc -O2 -o k k.c && ./k && "
        "nproc && getconf _NPROCESSORS_ONLN && getconf _NPROCESSORS_CONF && "
        "python3 -c 'import os, threading; t = threading.Thread(target=print, args=(os.cpu_count(),)); "
        "t.start(); t.join()' && sh -c 'echo $((6 * 7))'"
    )
    result, out = await run_sh(node, script, outputs=("k",))
    cores = str(len(os.sched_getaffinity(0)))
    online = str(os.cpu_count())
    assert result.success, out
    assert out.splitlines() == ["keyctl -1 Operation not permitted", cores, online, online, online, "42"], out
    assert listing(node.store, result.output)["k"][:4] == b"\x7fELF"  # type: ignore[index]
    node.assert_healthy()


# -- processes ------------------------------------------------------------------------------


async def test_host_processes_are_invisible(node: Node) -> None:
    me = os.getpid()
    script = f"kill -0 {me}; ls /proc/{me}; for p in /proc/[0-9]*; do cat $p/comm; done | sort -u"
    result, out = await run_sh(node, script)
    lines = [line for line in out.splitlines() if line]  # dash's kill adds an empty line
    assert lines[0] == "sh: 1: kill: No such process", out
    assert lines[1] == f"ls: cannot access '/proc/{me}': No such file or directory"
    assert set(lines[2:]) <= {"bwrap", "sh", "sort", "cat"} and "bwrap" in lines[2:], lines[2:]


async def test_no_process_outlives_its_task(node: Node) -> None:
    marks = [nonce() for _ in range(3)]
    # How many processes are a "sleep 1000.N" (the sandbox's whole /proc is the task's).
    count = "$(for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done | grep -c '^sleep 1000[.]')"
    script = (
        f"sleep {marks[0]} & "  # a background child
        f"setsid sleep {marks[1]} & "  # one in a session of its own
        f"(sh -c 'sleep {marks[2]}' &) ; "  # a daemon: reparented to the sandbox's pid 1
        f'i=0; while [ {count} -lt 3 ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done; echo "running: {count}"'
    )
    with trio.fail_after(20):
        result, out = await run_sh(node, script)
    assert result.success and out == "running: 3\n", out
    assert not any(host_processes(mark) for mark in marks)  # gone when the run returns


async def test_timeout_kills_everything_inside(node: Node) -> None:
    marks = [nonce() for _ in range(3)]
    script = (
        f"sleep {marks[0]} & sh -c 'trap \"\" TERM; sleep {marks[1]}' & "
        f"sh -c 'exec >/dev/null 2>&1 </dev/null; exec sleep {marks[2]}' & "  # holds no pipe of the task
        "echo started; wait"
    )
    recorder = Recorder()
    with trio.fail_after(20):
        result = await node.runner.run(sh(script, node, timeout=1.0), on_output=recorder)
    assert recorder.text() == "started\n"
    assert result.timed_out and result.exit_code == 137 and result.signal == signal.SIGKILL and not result.success
    assert not any(host_processes(mark) for mark in marks)  # gone when the run returns
    node.assert_healthy()


async def test_cancellation_kills_everything_inside_at_once(node: Node) -> None:
    mark = nonce()
    recorder = Recorder()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:

            async def run() -> None:
                await node.runner.run(sh(f"trap '' TERM; sleep {mark} & echo started; wait", node), on_output=recorder)
                raise AssertionError("the run should have been cancelled")

            nursery.start_soon(run)
            await wait_for(lambda: recorder.text() == "started\n")
            assert host_processes(mark)  # it runs, and is found by its mark
            nursery.cancel_scope.cancel()
            cancelled_at = trio.current_time()
    assert trio.current_time() - cancelled_at < 5
    assert not host_processes(mark)  # gone when the run raised
    node.assert_healthy()


# -- limits ----------------------------------------------------------------------------------


async def test_the_limits_are_set_soft_and_hard(node: Node) -> None:
    limits = SandboxLimits(address_space=3 << 30, processes=77, file_size=5 << 20, open_files=123)
    runner, _ = make_runner(node.store, node.home, node.other_key, limits=limits)
    result, out = await run_sh(node, "cat /proc/self/limits", runner=runner)
    assert result.success, out
    found = {line[:26].strip(): line[26:].split()[:2] for line in out.splitlines()[1:]}
    assert found["Max core file size"] == ["0", "0"]
    assert found["Max open files"] == ["123", "123"]
    assert found["Max processes"] == ["77", "77"]
    assert found["Max file size"] == [str(5 << 20)] * 2
    assert found["Max address space"] == [str(3 << 30)] * 2


async def test_an_action_may_lower_its_limits_but_not_raise_them(node: Node) -> None:
    limits = SandboxLimits(address_space=3 << 30, processes=77, file_size=5 << 20, open_files=123)
    runner, _ = make_runner(node.store, node.home, node.other_key, limits=limits)
    lower = (("file_size", 1 << 20), ("open_files", 50))
    result, out = await run_sh(node, "cat /proc/self/limits", runner=runner, limits=lower)
    assert result.success, out
    found = {line[:26].strip(): line[26:].split()[:2] for line in out.splitlines()[1:]}
    assert found["Max open files"] == ["50", "50"] and found["Max file size"] == [str(1 << 20)] * 2
    assert found["Max processes"] == ["77", "77"]  # the node's, where the action says nothing
    result, out = await run_sh(node, "true", runner=runner, limits=(("processes", 78),))
    assert result.exit_code == 126 and out == ""
    assert result.error is not None and "processes=78, more than this node allows (77)" in result.error


async def test_a_fork_bomb_stops_at_the_process_limit(node: Node) -> None:
    runner, _ = make_runner(node.store, node.home, node.other_key, limits=SandboxLimits(processes=24))
    bomb = (
        "for my $i (1..500) { my $pid = fork(); "
        'if (!defined $pid) { print "fork $i failed: $!\\n"; exit 0 } '
        "if ($pid == 0) { sleep 60; exit 0 } } "
        'print "no limit\\n";'
    )
    with trio.fail_after(20):
        result = await runner.run(Action(argv=("perl", "-e", bomb), input=node.snap, executor="sandbox"))
    out = node.store.get(result.stdout).decode()
    assert result.success and out.endswith(" failed: Resource temporarily unavailable\n"), out
    assert out.startswith("fork ") and 1 <= int(out.split()[1]) <= 24, out
    # The node is fine: the next task runs, and none of the bomb's processes is left.
    result, out = await run_sh(node, "echo still fine")
    assert result.success and out == "still fine\n"
    assert not host_processes("for my $i (1..500)")  # in the bomb's argv (cmdline is NUL-separated)
    node.assert_healthy()


async def test_a_file_cannot_grow_past_the_size_limit(node: Node) -> None:
    runner, _ = make_runner(node.store, node.home, node.other_key, limits=SandboxLimits(file_size=1 << 20))
    script = (
        "head -c 2000000 /dev/zero > killed; echo status $?; "  # SIGXFSZ kills the writer: 128 + 25
        "(trap '' XFSZ; head -c 2000000 /dev/zero > refused); echo status $?; "  # ignored: EFBIG
        "wc -c < killed; wc -c < refused"
    )
    result, out = await run_sh(node, script, runner=runner)
    assert result.success, out
    assert out.splitlines() == [
        "File size limit exceeded",  # the shell's word for a child killed by SIGXFSZ
        "status 153",
        "head: error writing 'standard output': File too large",
        "status 1",
        "1048576",
        "1048576",
    ]
    node.assert_healthy()


# -- the network -----------------------------------------------------------------------------


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A TCP socket listening on the host's loopback; connections wait in its backlog."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        sock.setblocking(False)
        yield sock


def connect_script(sock: socket.socket) -> str:
    port = sock.getsockname()[1]
    return f"bash -c 'exec 3<>/dev/tcp/127.0.0.1/{port} && echo ping >&3 && echo connected'"


async def test_no_network_without_asking(node: Node, listener: socket.socket) -> None:
    result, out = await run_sh(node, connect_script(listener) + "; echo status $?")
    assert "Connection refused" in out and "connected" not in out and out.endswith("status 1\n"), out
    with pytest.raises(BlockingIOError):
        listener.accept()  # nobody came
    node.assert_healthy()


async def test_the_network_when_asked_for(node: Node, listener: socket.socket) -> None:
    result, out = await run_sh(node, connect_script(listener), network=True)
    assert result.success and out == "connected\n", out
    conn, _ = listener.accept()
    with conn:
        conn.settimeout(10)
        assert conn.recv(100) == b"ping\n"


# -- like the process executor ------------------------------------------------------------------

EXECUTORS = ["process", "sandbox"]


@pytest.mark.parametrize("executor", EXECUTORS)
@pytest.mark.parametrize(
    ("script", "code", "sig"),
    [("exit 0", 0, None), ("exit 3", 3, None), ("kill -KILL $$", 137, signal.SIGKILL), ("kill -TERM $$", 143, 15)],
)
async def test_exit_codes(node: Node, executor: str, script: str, code: int, sig: int | None) -> None:
    result = await node.runner.run(sh(script, node, executor))
    if executor == "sandbox":
        sig = None  # bwrap passes a death by signal on as 128 + N, like a shell: only the code is known
    assert (result.exit_code, result.signal, result.timed_out, result.error) == (code, sig, False, None)


@pytest.mark.parametrize("executor", EXECUTORS)
async def test_commands_that_cannot_start(node: Node, executor: str) -> None:
    result = await node.runner.run(Action(argv=("no-such-command-here",), input=node.snap, executor=executor))
    assert result.exit_code == 127 and result.error is not None and "command not found" in result.error
    assert "no-such-command-here" in result.error
    result = await node.runner.run(Action(argv=("./a.txt",), input=node.snap, executor=executor))
    assert result.exit_code == 126 and result.error is not None and "cannot execute" in result.error
    # A command that started and then exits 127 (a script's own "not found") is not taken for one.
    result = await node.runner.run(sh("no-such-command-here", node, executor))
    assert result.exit_code == 127 and result.error is None
    assert node.store.get(result.stderr) == b"sh: 1: no-such-command-here: not found\n"


@pytest.mark.parametrize("executor", EXECUTORS)
async def test_streams_are_separate_and_ordered(node: Node, executor: str) -> None:
    script = "i=0; while [ $i -lt 2000 ]; do echo out$i; echo err$i >&2; i=$((i+1)); done; head -c 300000 d/big"
    recorder = Recorder()
    result = await node.runner.run(sh(script, node, executor), on_output=recorder)
    assert result.success, result
    expected_out = "".join(f"out{i}\n" for i in range(2000)).encode() + INPUT[b"d"][1][b"big"][1]
    assert node.store.get(result.stdout) == expected_out == bytes(recorder.seen["stdout"])
    assert node.store.get(result.stderr) == "".join(f"err{i}\n" for i in range(2000)).encode()


@pytest.mark.parametrize("executor", EXECUTORS)
async def test_environment_home_tmpdir_and_cwd(node: Node, executor: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESH_TEST_LEAK", "the node's own environment")
    script = 'env; echo "PWD=$(pwd)"; touch "$HOME/h" "$TMPDIR/t" new && echo writable; cat f'
    action = sh(script, node, executor, env=(("FOO", "bar baz"),), cwd="d")
    result = await node.runner.run(action)
    assert result.success, result
    lines = node.store.get(result.stdout).decode().splitlines()
    assert lines[-2:] == ["writable", "inner"]
    env = dict(line.split("=", 1) for line in lines[:-2] if "=" in line)
    assert "MESH_TEST_LEAK" not in env and env["FOO"] == "bar baz"
    for key in ("PATH", "LC_ALL", "TZ", "SOURCE_DATE_EPOCH"):
        assert env[key] == BASE_ENV[key]
    view = PROCESS_VIEW if executor == "process" else SANDBOX_VIEW  # the same on every run (mesh.exec.paths)
    assert env["TMPDIR"] == env["HOME"] == view.tmp == view.home
    assert env["PWD"] == os.path.join(view.work, "d")


@pytest.mark.parametrize("executor", EXECUTORS)
async def test_the_stream_limit_kills_the_task(node: Node, executor: str) -> None:
    runner, _ = make_runner(node.store, node.home, node.other_key, stream_bytes=10_000)
    with trio.fail_after(20):
        result = await runner.run(sh("yes 0123456789", node, executor))
    assert result.error is not None and "stdout passed its limit of 10000 bytes" in result.error
    assert result.exit_code == 137 and result.signal == signal.SIGKILL
    assert node.store.get(result.stdout) == b"0123456789\n" * 909 + b"0"


@pytest.mark.parametrize("executor", EXECUTORS)
async def test_same_outputs_as_the_process_executor(node: Node, executor: str) -> None:
    script = "mkdir -p o/p && cat a.txt d/f > o/cat && ./bin/tool > o/p/tool && ln -s ../a.txt o/link && exit 4"
    result = await node.runner.run(sh(script, node, executor, outputs=("o",)))
    assert result.exit_code == 4
    assert listing(node.store, result.output) == {
        "o": "dir",
        "o/cat": b"alpha\ninner\n",
        "o/link": ("link", "../a.txt"),
        "o/p": "dir",
        "o/p/tool": b"tool ran\n",
    }
