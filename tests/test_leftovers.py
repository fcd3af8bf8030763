"""What a task uid leaves behind is removed, and nothing else: mesh.exec.leftovers.

The hostile states that tasks of other uids could make while a sweep runs are set up
directly before it (a directory replaced by a symlink, say), rather than raced.
Entries of other uids are made by chown, as root.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mesh.exec import leftovers
from mesh.exec.leftovers import RACY_WINDOW_NS, SharedDirs, kill_processes, process_uids, uid_is
from tests.nodeutil import wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="files of other uids are made with chown, as root")

#: Uids no account uses, as task uids (no process of theirs is started here).
U1, U2, U3 = 2_100_009_970, 2_100_009_971, 2_100_009_972
#: A uid whose processes tests start and kill.
RUNNER = 2_100_009_973


def make(path: Path, uid: int, mode: int, *, directory: bool = False, text: str = "x") -> Path:
    if directory:
        path.mkdir()
    else:
        path.write_text(text)
    os.chown(path, uid, uid)
    path.chmod(mode)
    return path


@pytest.fixture
def shared(tmp_path: Path) -> Path:
    """A directory like /tmp (sticky, world-writable), as the root of a SharedDirs."""
    return make(tmp_path / "tmp", 0, 0o1777, directory=True)


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory no task uid can reach, holding a file of U1 (as a kept checkout of U1 would)."""
    top = make(tmp_path / "outside", 0, 0o700, directory=True)
    make(top / "passwd", U1, 0o644, text="not a task's to lose\n")
    return top


def test_a_sweep_removes_the_uids_entries_and_nothing_of_others(shared: Path) -> None:
    dirs = SharedDirs([str(shared)])
    marks = dirs.mark()
    left = make(shared / "left", U1, 0o600)
    tree = make(shared / "tree", U1, 0o500, directory=True)  # not even writable by its owner
    make(tree / "inner", U1, 0o000)
    others = make(shared / "others", U2, 0o600)
    assert dirs.sweep((U1,), marks) == 2
    assert not left.exists() and not tree.exists()
    assert others.exists()


def test_a_sweep_never_follows_a_directory_another_uid_replaced_with_a_symlink(shared: Path, outside: Path) -> None:
    """U2 makes e/d world-writable without the sticky bit, U1 leaves e/d/passwd there, and
    before U1 is swept U2 swaps d for a symlink to a directory outside: what is there stays,
    and U1's file, wherever U2 moved it below the shared root, goes."""
    e = make(shared / "e", U2, 0o777, directory=True)
    d = make(e / "d", U2, 0o777, directory=True)
    dirs = SharedDirs([str(shared)])
    marks = dirs.mark()
    make(d / "passwd", U1, 0o644)
    d.rename(e / "moved")
    (e / "d").symlink_to(outside)
    assert dirs.sweep((U1,), marks) == 1
    assert (outside / "passwd").read_text() == "not a task's to lose\n"
    assert not (e / "moved" / "passwd").exists()


def test_a_sweep_never_follows_an_intermediate_directory_replaced_with_a_symlink(
    shared: Path, outside: Path, tmp_path: Path
) -> None:
    e = make(shared / "e", U2, 0o777, directory=True)
    make(e / "d", U2, 0o777, directory=True)
    dirs = SharedDirs([str(shared)])
    marks = dirs.mark()
    decoy = make(tmp_path / "decoy", 0, 0o700, directory=True)
    (decoy / "d").symlink_to(outside)  # e/d resolves to outside through the symlink e
    e.rename(shared / "e2")
    (shared / "e").symlink_to(decoy)
    dirs.sweep((U1,), marks)
    assert (outside / "passwd").exists()


def test_a_sweep_removes_no_more_in_the_uids_directory_than_the_uid_could(shared: Path) -> None:
    """Inside a directory of U1 that others could write, another uid's files go (U1 could
    unlink them), but another owner's directory and what it holds stay (U1 could not
    empty it), and with it the directory of U1 that holds it."""
    mine = make(shared / "mine", U1, 0o777, directory=True)
    sub = make(mine / "sub", U1, 0o700, directory=True)
    make(sub / "file", U1, 0o600)
    theirs = make(mine / "theirs", U3, 0o755, directory=True)
    kept = make(theirs / "file", U3, 0o644)
    make(mine / "dropped", U2, 0o644)
    dirs = SharedDirs([str(shared)])
    dirs.sweep((U1,), {})
    assert sorted(p.name for p in mine.iterdir()) == ["theirs"]
    assert kept.exists()


def test_a_world_writable_directory_made_after_the_start_is_swept(shared: Path) -> None:
    """An operator makes shared/w between two tasks: the times of shared moved before the
    task's marks, never during the task, yet what the task leaves in w goes."""
    dirs = SharedDirs([str(shared)])
    w = make(shared / "w", 0, 0o777, directory=True)
    changed = max(shared.stat().st_mtime_ns, shared.stat().st_ctime_ns)
    while time.time_ns() < changed + RACY_WINDOW_NS:  # past the racy window: the times alone decide
        time.sleep(0.01)
    marks = dirs.mark()
    secret = make(w / "secret", U1, 0o600)
    assert dirs.sweep((U1,), marks) == 1
    assert not secret.exists()
    assert dirs.sweep((U1,), dirs.mark()) == 0  # and w is known from now on
    again = make(w / "again", U1, 0o600)
    marks = dirs.mark()
    assert dirs.sweep((U1,), marks) == 1 and not again.exists()


def as_uid(uid: int, *argv: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--", *argv])


def pidfd_pid(fd: int) -> int:
    """The pid of the process a pidfd holds."""
    with open(f"/proc/self/fdinfo/{fd}") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Pid:"))


def spawn_with_pid(pid: int) -> subprocess.Popen[bytes]:
    """An unrelated process (root's) that gets ``pid``, by setting the last pid allocated."""
    for _ in range(100):
        with open("/proc/sys/kernel/ns_last_pid", "w") as f:
            f.write(str(pid - 1))
        other = subprocess.Popen(["sleep", "60"])
        if other.pid == pid:
            return other
        other.kill()
        other.wait()
    pytest.fail(f"could not make a process with pid {pid} (other processes kept taking it)")


@pytest.fixture
def reused() -> Iterator[tuple[subprocess.Popen[bytes], list[subprocess.Popen[bytes]]]]:
    """A process of RUNNER, and a list that gets the unrelated process its pid is reused for."""
    victim = as_uid(RUNNER, "sleep", "60")
    wait_for(lambda: RUNNER in process_uids(victim.pid), timeout=10, what="setpriv to switch to the uid")
    others: list[subprocess.Popen[bytes]] = []
    try:
        yield victim, others
    finally:
        for process in [victim, *others]:
            process.kill()
            process.wait()


def test_a_killed_process_whose_pid_is_reused_at_once_is_neither_waited_for_nor_mistaken(
    reused: tuple[subprocess.Popen[bytes], list[subprocess.Popen[bytes]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Right after the SIGKILL, the process is reaped and its pid given to an unrelated
    process (the hostile state, made at the moment a kill is sent): the kill is done at
    once, and the unrelated process is not signalled."""
    victim, others = reused

    def then_reuse(real: Callable[..., None], pid_from: Callable[[int], int]) -> Callable[..., None]:
        def call(target: int, sig: int, *rest: object) -> None:
            pid = pid_from(target)
            real(target, sig, *rest)
            if pid == victim.pid and sig == signal.SIGKILL and not others:
                victim.wait()
                others.append(spawn_with_pid(pid))

        return call

    monkeypatch.setattr(os, "kill", then_reuse(os.kill, int))
    monkeypatch.setattr(signal, "pidfd_send_signal", then_reuse(signal.pidfd_send_signal, pidfd_pid))
    monkeypatch.setattr(leftovers, "_GONE_TIMEOUT", 3.0)
    started = time.monotonic()
    assert kill_processes(uid_is(RUNNER)) == 1
    assert time.monotonic() - started < 2.0
    assert victim.returncode == -signal.SIGKILL
    assert len(others) == 1 and others[0].poll() is None
