"""Task directories kept for reuse (mesh.exec.workpool): a reused checkout is exactly a fresh one.

Runs real tasks through a Runner with the process executor. Each test that changes
the workdir checks both sides: the directory is not kept (or is repaired), and the next
task with the same input sees the snapshot's tree and nothing else.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mesh.cas.checkout import checkout
from mesh.cas.digest import Digest
from mesh.cas.fsck import fsck
from mesh.cas.store import LocalStore
from mesh.exec.runner import Runner, remove_tree
from mesh.exec.taskusers import TaskUsers
from mesh.exec.workpool import Manifest, WorkdirPool
from tests import strategies, treeutil
from tests.test_runner import (  # noqa: F401 (fixtures)
    INPUT,
    Recorder,
    as_root,
    listing,
    make_runner,
    make_task_runner,
    runner,
    sh,
    snap,
    task_users,
    wait_for,
    workroot,
)

#: What a task sees of its input: every path with its mode and content (files hashed by cat).
SHOW = "find . -exec ls -ld {} + | awk '{print $1, $NF}' | sort; cat a.txt d/f bin/tool; ls -A \"$HOME\""


async def show(runner: Runner, snap: Digest) -> bytes:  # noqa: F811
    result = await runner.run(sh(SHOW, snap))
    assert result.exit_code == 0, runner.store.get(result.stderr)
    return runner.store.get(result.stdout)


async def test_a_task_that_changes_nothing_leaves_its_directory_to_the_next(runner: Runner, snap: Digest) -> None:  # noqa: F811
    first = await runner.run(sh("true", snap))
    assert first.output == snap  # the intact workdir is the input itself, not walked twice
    assert runner.workdirs.statistics().idle == 1
    second = await runner.run(sh("cat a.txt", snap))
    assert runner.store.get(second.stdout) == b"alpha\n"
    assert second.output == snap
    stats = runner.workdirs.statistics()
    assert (stats.reused, stats.kept, stats.idle) == (1, 2, 1)


async def test_what_a_reused_directory_shows_a_task_is_what_a_fresh_one_shows(
    store: LocalStore,
    snap: Digest,  # noqa: F811
    workroot: Path,  # noqa: F811
) -> None:
    fresh = make_runner(store, workroot, workdirs=WorkdirPool(dirs=0))
    pooled = make_runner(store, workroot)
    expected = await show(fresh, snap)
    assert await show(pooled, snap) == expected
    assert await show(pooled, snap) == expected
    assert pooled.workdirs.statistics().reused == 1
    assert fresh.workdirs.statistics().kept == 0


CHANGES = {
    "rewrite a file, same size": "printf 'ALPHA\\n' > a.txt",
    "append to a file": "echo more >> d/f",
    "chmod a file": "chmod 600 a.txt",
    "make a file executable": "chmod +x a.txt",
    "chmod a directory": "chmod 700 d",
    "delete a file": "rm d/f",
    "replace a file by a symlink": "rm a.txt && ln -s d/f a.txt",
    "retarget the symlink": "rm link && ln -s d/f link",
    "hardlink an input elsewhere": "ln d/big ../tmp/big-again",
    "touch a file": "touch a.txt",
    "replace a directory by a file": "rm -r bin && echo x > bin",
    "rename within a directory": "mv d/f d/g && mv d/g d/f",
}


@pytest.mark.parametrize("change", CHANGES.values(), ids=CHANGES.keys())
async def test_a_changed_checkout_is_not_kept_and_the_next_task_sees_the_snapshot(
    store: LocalStore,
    snap: Digest,  # noqa: F811
    workroot: Path,  # noqa: F811
    change: str,
) -> None:
    runner = make_runner(store, workroot)  # noqa: F811
    expected = await show(make_runner(store, workroot, workdirs=WorkdirPool(dirs=0)), snap)
    await show(runner, snap)  # a kept directory to change
    assert runner.workdirs.statistics().idle == 1
    result = await runner.run(sh(change, snap))
    assert result.exit_code == 0, store.get(result.stderr)
    stats = runner.workdirs.statistics()
    assert (stats.reused, stats.idle) == (1, 0), "a changed checkout must not be kept"
    assert await show(runner, snap) == expected
    report = fsck(store)
    assert report.clean, report.problems


@as_root
async def test_a_kept_checkout_a_file_of_which_is_open_for_writing_is_not_reused(
    store: LocalStore,
    task_users: TaskUsers,  # noqa: F811
    tmp_path: Path,
    snap: Digest,  # noqa: F811
) -> None:
    """A task opens a file of its checkout for writing and passes the descriptor to a task of
    another uid (here the test holds it), which writes through it once the next task with the
    same input has started: that task sees its input as the snapshot has it all the same."""
    runner = make_task_runner(store, task_users, tmp_path)  # noqa: F811
    assert (await runner.run(sh("true", snap))).success
    (kept,) = os.listdir(task_users.workroot)
    held = os.open(f"{task_users.workroot}/{kept}/work/a.txt", os.O_WRONLY)
    try:
        said = Recorder()
        script = 'mkfifo "$HOME/gate" && echo "$MESH_TASK_DIR" && read x < "$HOME/gate" && rm "$HOME/gate" && cat a.txt'
        async with trio.open_nursery() as nursery:
            results = []

            async def run() -> None:
                results.append(await runner.run(sh(script, snap), on_output=said))

            nursery.start_soon(run)
            await wait_for(lambda: said.text().endswith("\n"))
            os.pwrite(held, b"EVIL!\n", 0)  # written after every check a task's start could make

            def open_gate() -> None:
                with open(f"{said.text().strip()}/tmp/gate", "w") as gate:
                    gate.write("go\n")

            await trio.to_thread.run_sync(open_gate)
    finally:
        os.close(held)
    (result,) = results
    assert store.get(result.stdout).endswith(b"alpha\n"), store.get(result.stdout)
    stats = runner.workdirs.statistics()
    assert (stats.stale, stats.reused) == (1, 0)
    again = await runner.run(sh("cat a.txt", snap))  # nothing holds a file open now: reused
    assert store.get(again.stdout) == b"alpha\n"
    assert runner.workdirs.statistics().reused == 1


async def test_an_input_the_store_lost_meanwhile_is_stored_again_by_the_capture(
    runner: Runner,  # noqa: F811
    snap: Digest,  # noqa: F811
) -> None:
    await runner.run(sh("true", snap))  # a kept checkout of snap
    [root_blob] = [b for b in runner.store.iter_blobs() if b.hex == snap.hash.hex()]
    runner.store.remove(root_blob)  # as an eviction would (it starts a new epoch)
    assert not runner.store.has(snap)
    result = await runner.run(sh("true", snap))
    assert runner.workdirs.statistics().reused == 1
    assert result.output == snap and runner.store.has(snap), "the output must be in the store"


async def test_what_a_task_adds_is_removed_and_the_directory_kept(runner: Runner, snap: Digest) -> None:  # noqa: F811
    script = (
        "mkdir -p out/deep && echo o > out/deep/o && chmod 500 out/deep out && echo n > d/new && "
        'ln -s nowhere dangling && echo h > "$HOME/h" && mkdir "$TMPDIR/t"'
    )
    result = await runner.run(sh(script, snap))
    assert result.exit_code == 0, runner.store.get(result.stderr)
    captured = listing(runner.store, result.output)
    assert captured["out/deep/o"] == b"o\n" and captured["d/new"] == b"n\n"
    assert runner.workdirs.statistics().idle == 1
    after = await runner.run(sh('ls -A . d; ls -A "$HOME" | wc -l', snap))
    assert runner.store.get(after.stdout) == b".:\na.txt\nbin\nd\nlink\n\nd:\nbig\nf\n0\n"
    assert runner.workdirs.statistics().reused == 1


async def test_declared_outputs_leave_the_checkout_intact(runner: Runner, snap: Digest) -> None:  # noqa: F811
    result = await runner.run(sh("mkdir o && cat a.txt > o/copy", snap, outputs=("o",)))
    assert listing(runner.store, result.output) == {"o": "dir", "o/copy": b"alpha\n"}
    assert runner.workdirs.statistics().idle == 1
    again = await runner.run(sh("ls -A", snap, outputs=("o",)))
    assert runner.store.get(again.stdout) == b"a.txt\nbin\nd\nlink\n"
    assert runner.workdirs.statistics().reused == 1


async def test_the_pool_keeps_at_most_its_directories_and_bytes(
    store: LocalStore,
    tmp_path: Path,
    workroot: Path,  # noqa: F811
) -> None:
    snaps = []
    for i in range(3):
        scratch = tmp_path / f"s{i}"
        scratch.mkdir()
        snaps.append(treeutil.stored(store, scratch, {b"f": ("file", b"x" * (i + 1), False)}))
    runner = make_runner(store, workroot, workdirs=WorkdirPool(dirs=2, max_bytes=1 << 20))  # noqa: F811
    for s in snaps:
        await runner.run(sh("true", s))
    stats = runner.workdirs.statistics()
    assert (stats.idle, stats.kept, stats.evicted) == (2, 3, 1)
    assert len(os.listdir(workroot)) == 2  # the evicted directory is gone
    await runner.run(sh("true", snaps[0]))  # evicted: checked out afresh
    assert runner.workdirs.statistics().reused == 0
    big = make_runner(store, workroot, workdirs=WorkdirPool(max_bytes=1000))
    await big.run(sh("true", snaps[2]))  # 3 bytes: kept
    assert big.workdirs.statistics().idle == 1
    bigger = make_runner(store, workroot, workdirs=WorkdirPool(max_bytes=100_000))
    scratch = tmp_path / "large"
    scratch.mkdir()
    large = treeutil.stored(store, scratch, {b"f": ("file", os.urandom(200_000), False)})
    await bigger.run(sh("true", large))
    assert bigger.workdirs.statistics().idle == 0  # over the byte limit: never kept


async def test_a_racily_clean_file_is_read_again(store: LocalStore, snap: Digest, tmp_path: Path) -> None:  # noqa: F811
    work = tmp_path / "w"
    checkout(store, snap, work)
    manifest = Manifest.record(store, snap, str(work), epoch=store.epoch())
    assert manifest.verify(str(work)) is not None
    # A rewrite that the file's stat cannot show (as within one timestamp tick): the
    # record is brought up to date, as if nothing had changed.
    (work / "a.txt").write_bytes(b"ALPHA\n")
    st = os.lstat(work / "a.txt")
    entries = dict(manifest.entries)
    old = entries[b"a.txt"]
    entries[b"a.txt"] = replace(old, record=(*old.record[:4], st.st_size, st.st_nlink, st.st_mtime_ns, st.st_ctime_ns))
    hidden = replace(manifest, entries=entries)
    assert hidden.verify(str(work)) is None, "a recent change must be found by reading the file"
    # Only once the change is older than the racy window may the stat alone be trusted.
    later = replace(hidden, checked_at_ns=time.time_ns() + 3_000_000_000)
    assert later.verify(str(work)) is not None


def _intact(old: treeutil.Tree, new: treeutil.Tree) -> bool:
    """Whether every entry of ``old`` is in ``new`` as it was (``new`` may add entries)."""
    for name, spec in old.items():
        after = new.get(name)
        if after is None or after[0] != spec[0]:
            return False
        if spec[0] == "dir" and not _intact(spec[1], after[1]):
            return False
        if spec[0] != "dir" and after != spec:
            return False
    return True


def _added(old: treeutil.Tree, new: treeutil.Tree, prefix: bytes = b"") -> set[bytes]:
    """The paths ``new`` adds to ``old`` (an added directory as itself, not its contents)."""
    out = set()
    for name, spec in new.items():
        path = prefix + b"/" + name if prefix else name
        before = old.get(name)
        if before is None or before[0] != spec[0]:
            out.add(path)
        elif spec[0] == "dir":
            out |= _added(before[1], spec[1], path)
    return out


def _entries(tree: treeutil.Tree, prefix: tuple[bytes, ...] = ()) -> list[tuple[tuple[bytes, ...], Any]]:
    """Every entry of ``tree``: its path as a tuple of names, and its description."""
    out = []
    for name, spec in tree.items():
        out.append(((*prefix, name), spec))
        if spec[0] == "dir":
            out += _entries(spec[1], (*prefix, name))
    return out


def _one_change(tree: treeutil.Tree, path: tuple[bytes, ...], change: str) -> treeutil.Tree:
    """A copy of ``tree`` with one change at ``path``."""
    copy = copy_tree(tree)
    *parents, name = path
    here = copy
    for part in parents:
        here = here[part][1]
    spec = here[name]
    if change == "remove":
        del here[name]
    elif change == "retype":
        here[name] = ("dir", {}) if spec[0] != "dir" else ("file", b"was a directory", False)
    elif spec[0] == "file":
        kind, data, executable = spec
        here[name] = (kind, data, not executable) if change == "mode" else (kind, data[::-1] + b"!", executable)
    elif spec[0] == "link":
        here[name] = ("link", spec[1] + b"-moved")
    else:
        spec[1][b"added"] = ("file", b"new", False)
    return copy


def copy_tree(tree: treeutil.Tree) -> treeutil.Tree:
    return {k: ("dir", copy_tree(v[1])) if v[0] == "dir" else v for k, v in tree.items()}


@st.composite
def changed_trees(draw: st.DrawFn) -> tuple[treeutil.Tree, treeutil.Tree]:
    """(snapshot, what a task left): any other tree, the snapshot plus additions, or one change."""
    old = draw(strategies.trees)
    other = draw(strategies.trees)
    how = draw(st.sampled_from(["other", "added", "one change", "one change"]))
    if how == "other":
        return old, other
    added = {**old, **{k: v for k, v in other.items() if k not in old}}
    change = draw(st.sampled_from(["remove", "retype", "mode", "content"]))
    entries = _entries(old)
    paths = [path for path, _ in entries]
    if change in ("mode", "content"):  # these change files (others a link's target, a directory's entries)
        paths = [path for path, spec in entries if spec[0] == "file"] or paths
    if how == "added" or not paths:
        return old, added
    return old, _one_change(old, draw(st.sampled_from(paths)), change)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(trees=changed_trees())
def test_a_checkout_is_kept_exactly_when_it_still_holds_the_snapshot(
    tmp_path_factory: pytest.TempPathFactory, trees: tuple[treeutil.Tree, treeutil.Tree]
) -> None:
    """Any tree, changed in place into any other (another tree, one with entries added, one
    with one change): the manifest accepts the checkout exactly when every entry of the
    snapshot is as it was, names what was added, and with that removed the directory reads
    back as the snapshot."""
    old, new = trees
    scratch = tmp_path_factory.mktemp("pool")
    with LocalStore(scratch / "cas") as store:
        snap = treeutil.stored(store, scratch, old)
        work = scratch / "work"
        checkout(store, snap, work)
        manifest = Manifest.record(store, snap, str(work), epoch=store.epoch())
        treeutil.morph(work, old, new)
        verdict = manifest.verify(str(work))
        if not _intact(old, new):
            assert verdict is None
            return
        assert verdict is not None
        assert set(verdict.extras) == _added(old, new)
        for rel in verdict.extras:
            path = os.path.join(work, os.fsdecode(rel))
            if os.path.isdir(path) and not os.path.islink(path):
                remove_tree(path)
            else:
                os.unlink(path)
        assert treeutil.read(work) == old
        again = verdict.manifest.verify(str(work))
        assert again is not None and again.extras == []
