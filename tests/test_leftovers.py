"""What a task uid leaves behind is removed, and nothing else: mesh.exec.leftovers.

The hostile states that tasks of other uids could make while a sweep runs are set up
directly before it (a directory replaced by a symlink, say), rather than raced.
Entries of other uids are made by chown, as root.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from inotify_simple import Event, flags

from mesh.exec import leftovers
from mesh.exec.leftovers import RACY_WINDOW_NS, SharedDirs, kill_processes, process_uids, uid_is
from tests.nodeutil import wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="files of other uids are made with chown, as root")

#: Uids no account uses, as task uids (no process of theirs is started here).
U1, U2, U3 = 2_100_009_970, 2_100_009_971, 2_100_009_972
#: A uid whose processes tests start and kill.
RUNNER = 2_100_009_973
TASK_UIDS = (U1, U2, U3)
#: A user who is not a task uid (nobody).
NOBODY = 65_534


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
    dirs = SharedDirs([str(shared)], task_uids=TASK_UIDS)
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
    dirs = SharedDirs([str(shared)], task_uids=TASK_UIDS)
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
    dirs = SharedDirs([str(shared)], task_uids=TASK_UIDS)
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
    dirs = SharedDirs([str(shared)], task_uids=TASK_UIDS)
    dirs.sweep((U1,), {})
    assert sorted(p.name for p in mine.iterdir()) == ["theirs"]
    assert kept.exists()


def test_a_world_writable_directory_made_after_the_start_is_swept(shared: Path) -> None:
    """An operator makes shared/w between two tasks: the times of shared moved before the
    task's marks, never during the task, yet what the task leaves in w goes."""
    dirs = SharedDirs([str(shared)], task_uids=TASK_UIDS)
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


# -- what a sweep looks at: the names inotify gave since the last look ----------------------------


def past_racy_window(*directories: Path) -> None:
    """Wait until the times of ``directories`` are past the racy window: from then on, a
    sweep that goes by times lists them only if they change."""
    changed = max(max(d.stat().st_mtime_ns, d.stat().st_ctime_ns) for d in directories)
    while time.time_ns() < changed + RACY_WINDOW_NS:
        time.sleep(0.01)


@pytest.fixture
def stats(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the directory entries stat()ed (relative to a directory's descriptor, as
    sweeps do) while the test runs."""
    seen: list[str] = []
    real = os.stat

    def counted(path: object, *args: object, dir_fd: int | None = None, **kwargs: object) -> os.stat_result:
        if dir_fd is not None:
            seen.append(str(path))
        return real(path, *args, dir_fd=dir_fd, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "stat", counted)
    return seen


def test_a_sweep_of_a_large_changed_directory_stats_only_what_was_made_in_it(shared: Path, stats: list[str]) -> None:
    """A /tmp of 20,000 entries, where others make and remove files while the task runs: the
    sweep looks at the names made since, not at the 20,000 (which main stats every time)."""
    for i in range(20_000):
        os.close(os.open(shared / f"old-{i}", os.O_CREAT | os.O_WRONLY, 0o644))
    dirs = SharedDirs([str(shared)], task_uids=TASK_UIDS)
    (shared / "old-0").unlink()
    marks = dirs.mark()
    make(shared / "someone-elses", 0, 0o644)
    (shared / "old-1").unlink()
    left = make(shared / "left", U1, 0o600)
    stats.clear()
    assert dirs.sweep((U1,), marks) == 1
    assert not left.exists() and (shared / "someone-elses").exists()
    assert len(stats) < 10, f"{len(stats)} entries looked at"
    stats.clear()
    assert dirs.sweep((U1,), dirs.mark()) == 0  # and what was looked at is not looked at again
    assert stats == []


def test_what_another_running_task_left_survives_a_sweep_and_goes_with_its_own(shared: Path) -> None:
    """U1's and U2's tasks run at once; U1's ends first. U2's file in shared, and its file in a
    world-writable directory made meanwhile (listed whole by U1's sweep), stay until U2's
    task ends, and then go, although no event names them any more."""
    dirs = SharedDirs([str(shared)], task_uids=TASK_UIDS)
    marks_u2 = dirs.mark()
    marks_u1 = dirs.mark()
    mine = make(shared / "mine", U1, 0o600)
    theirs = make(shared / "theirs", U2, 0o600)
    w = make(shared / "w", NOBODY, 0o777, directory=True)
    inside = make(w / "inside", U2, 0o600)
    assert dirs.sweep((U1,), marks_u1) == 1
    assert not mine.exists() and theirs.exists() and inside.exists()
    assert dirs.sweep((U3,), dirs.mark()) == 0  # a third task ends in between
    assert dirs.sweep((U2,), marks_u2) == 2
    assert not theirs.exists() and not inside.exists() and w.exists()


def test_an_entry_moved_into_a_shared_directory_is_swept(shared: Path, tmp_path: Path) -> None:
    dirs = SharedDirs([str(shared)], task_uids=TASK_UIDS)
    marks = dirs.mark()
    made = make(tmp_path / "elsewhere", U1, 0o600)
    tree = make(tmp_path / "tree", U1, 0o700, directory=True)
    make(tree / "inner", U1, 0o600)
    past_racy_window(shared)
    made.rename(shared / "moved-in")
    tree.rename(shared / "tree-moved-in")
    assert dirs.sweep((U1,), marks) == 2
    assert list(shared.iterdir()) == []


def test_a_uids_file_in_a_world_writable_directory_another_user_made_is_swept(shared: Path) -> None:
    dirs = SharedDirs([str(shared)], task_uids=TASK_UIDS)
    marks = dirs.mark()
    w = make(shared / "w", NOBODY, 0o1777, directory=True)
    deeper = make(w / "deeper", NOBODY, 0o777, directory=True)
    files = [make(w / "secret", U1, 0o600), make(deeper / "secret", U1, 0o600)]
    assert dirs.sweep((U1,), marks) == 2
    assert not any(f.exists() for f in files)
    marks = dirs.mark()
    again = make(deeper / "again", U1, 0o600)  # w and deeper are watched from now on
    assert dirs.sweep((U1,), marks) == 1 and not again.exists()


def test_a_directory_made_world_writable_by_a_chmod_is_swept(shared: Path) -> None:
    """A directory of U3 that only U3 could write becomes world-writable while a task runs: the
    times of shared do not move (main never lists it again), yet what the task leaves
    in it goes."""
    d = make(shared / "d", U3, 0o755, directory=True)
    dirs = SharedDirs([str(shared)], task_uids=TASK_UIDS)
    past_racy_window(shared, d)
    dirs.sweep((U1,), dirs.mark())  # a task in between: from now on the times of shared are old
    marks = dirs.mark()
    d.chmod(0o777)
    secret = make(d / "secret", U1, 0o600)
    assert dirs.sweep((U1,), marks) == 1
    assert not secret.exists()


def test_after_lost_events_every_shared_directory_is_listed_whole_once(shared: Path, stats: list[str]) -> None:
    """The kernel's queue overflowed (fed to the sweep: making it overflow would take a setting
    of the whole machine): the events read are thrown away, and the sweep lists every
    directory, finds what they named, and goes on with events."""
    w = make(shared / "w", 0, 0o777, directory=True)
    dirs = SharedDirs([str(shared)], task_uids=TASK_UIDS)
    marks = dirs.mark()
    files = [make(shared / "lost", U1, 0o600), make(w / "lost", U1, 0o600)]
    assert dirs.inotify is not None
    while dirs.inotify.read(timeout=0):
        pass  # the events of the files are lost...
    dirs.take_events([Event(-1, flags.Q_OVERFLOW, 0, "")])  # ...and the overflow says so
    assert dirs.sweep((U1,), marks) == 2
    assert not any(f.exists() for f in files)
    later = make(w / "later", U1, 0o600)
    marks = dirs.mark()
    stats.clear()
    assert dirs.sweep((U1,), marks) == 1 and not later.exists()
    assert stats == ["later", "later"]  # looked at, then removed: w is not listed again


def test_without_inotify_a_sweep_lists_what_changed(shared: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    monkeypatch.setattr(leftovers.inotify_simple, "INotify", refused)
    w = make(shared / "w", 0, 0o777, directory=True)
    dirs = SharedDirs([str(shared)], task_uids=TASK_UIDS)
    assert dirs.inotify is None
    marks = dirs.mark()
    files = [make(shared / "left", U1, 0o600), make(w / "left", U1, 0o600)]
    assert dirs.sweep((U1,), marks) == 2
    assert not any(f.exists() for f in files)


def test_a_directory_that_cannot_be_watched_is_listed_when_it_changes(
    shared: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The per-user limit of inotify watches is reached: the directory goes by its times."""

    def full(self: object, path: object, mask: int) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(leftovers.inotify_simple.INotify, "add_watch", full)
    dirs = SharedDirs([str(shared)], task_uids=TASK_UIDS)
    marks = dirs.mark()
    left = make(shared / "left", U1, 0o600)
    assert dirs.sweep((U1,), marks) == 1 and not left.exists()


def test_a_watched_directory_removed_or_moved_and_made_again_is_swept(shared: Path) -> None:
    """The watch of w ends when w is removed (or follows w where it is moved): the new w at
    the same path, and the old one where it went, are both listed whole."""
    dirs = SharedDirs([str(shared)], task_uids=TASK_UIDS)
    removed = make(shared / "removed", 0, 0o777, directory=True)
    moved = make(shared / "moved", 0, 0o777, directory=True)
    assert dirs.sweep((U1,), dirs.mark()) == 0  # both watched
    marks = dirs.mark()
    removed.rmdir()
    moved.rename(shared / "elsewhere")
    files = [make(shared / "elsewhere" / "secret", U1, 0o600)]
    for again in (removed, moved):
        make(again, NOBODY, 0o777, directory=True)
        files.append(make(again / "secret", U1, 0o600))
    assert dirs.sweep((U1,), marks) == 3
    assert not any(f.exists() for f in files)
