"""No task runs on a damaged input blob: every executor, in link and copy mode, through the Runner.

A blob of a task's input is damaged on disk between two runs of the task: a flipped byte,
also with the file's mode and mtime put back so that only its ctime tells. The second run
raises BlobDamaged naming the blob before the command starts, so there is no result (to be
cached or otherwise); the blob is quarantined and fsck is clean. Once the blob is given back
(as a peer gives it: the scheduler fetches it again, tests/test_damaged_inputs_e2e.py), the
task runs on the right bytes. A link checkout links a timed copy of the blob (mesh.cas.times),
which is damaged too here: a damaged copy alone is made again from the intact blob, and the
task runs on the right bytes. Each executor runs in the mode it picks on this node and in the
other one, forced: the check is the checkout's, whatever then runs on the tree.

The sandbox runs where bubblewrap works, docker against the private Podman service of
tests.podmanutil; each is skipped with its printed reason where it cannot run.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mesh.cas.digest import Digest
from mesh.cas.fsck import fsck
from mesh.cas.snapshot import ingest
from mesh.cas.store import LocalStore
from mesh.errors import BlobDamaged
from mesh.exec.action import Action
from mesh.exec.process import Executor
from mesh.exec.runner import Runner, remove_tree
from mesh.exec.workpool import WorkdirPool
from tests import treeutil
from tests.damageutil import RESTORED, alter
from tests.podmanutil import IMAGE
from tests.test_executors import executor_for

DATA = os.urandom(200_000)
INPUT: treeutil.Tree = {
    b"a.txt": ("file", b"alpha\n", False),
    b"d": ("dir", {b"f": ("file", DATA, False)}),
}
EXECUTORS = ["process", "sandbox", "docker"]
HOW = ["same size", RESTORED]


@pytest.fixture
def home() -> Iterator[Path]:
    """A node's home outside /tmp (the sandbox has a /tmp of its own), readable by the task's uid."""
    top = Path(tempfile.mkdtemp(prefix="mesh-damaged-test-", dir="/var/tmp"))
    try:
        os.chmod(top, 0o755)
        (top / "home").mkdir(mode=0o755)
        yield top / "home"
    finally:
        remove_tree(str(top))


@pytest.fixture
def store(home: Path) -> Iterator[LocalStore]:
    with LocalStore(home / "cas") as s:
        yield s


@pytest.fixture
def snap(store: LocalStore, home: Path) -> Digest:
    src = home.parent / "src"
    src.mkdir()
    treeutil.build(src, INPUT)
    return ingest(store, src)


def runner_for(store: LocalStore, home: Path, executor: Executor) -> Runner:
    """A runner that keeps no task directory: every run checks its input out afresh."""
    return Runner(
        store,
        workroot=home / "work",
        node_id="n",
        executors={executor.name: executor},
        workdirs=WorkdirPool(dirs=0),
    )


def action(snap: Digest, executor: str) -> Action:
    return Action(
        argv=("sh", "-c", "cat d/f a.txt"),
        input=snap,
        executor=executor,
        image=IMAGE if executor == "docker" else None,
        timeout=60,
    )


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("mode", ["link", "copy"])
@pytest.mark.parametrize("name", EXECUTORS)
async def test_a_damaged_input_blob_is_found_before_the_task_runs(
    name: str, mode: str, how: str, request: pytest.FixtureRequest, home: Path, store: LocalStore, snap: Digest
) -> None:
    executor = executor_for(name, request, home)
    executor.checkout_mode = mode  # type: ignore[misc]
    runner = runner_for(store, home, executor)
    first = await runner.run(action(snap, name))
    assert first.success and store.get(first.stdout) == DATA + b"alpha\n", first

    damaged = Digest.of(DATA)
    alter(store.blob_path(damaged), how)
    for timed in (Path(store.root) / "timed" / damaged.hex[:2]).glob(damaged.hex + "-*"):
        alter(str(timed), how)  # what a link checkout links (a timed copy, damaged alone, is made again)
    with pytest.raises(BlobDamaged) as caught:
        await runner.run(action(snap, name))
    assert str(damaged) in str(caught.value) and "damaged" in str(caught.value)
    assert not store.has(damaged)
    assert [n for n in os.listdir(store.quarantine_dir) if n.startswith(damaged.hex)]
    report = fsck(store)
    assert report.clean and report.problems == [], report.problems

    store.put(DATA)  # given back, as a peer would
    again = await runner.run(action(snap, name))
    assert again.success and store.get(again.stdout) == DATA + b"alpha\n", again
    assert os.listdir(runner.workroot) == []


async def test_a_link_mode_input_is_hashed_once_over_many_tasks(
    request: pytest.FixtureRequest, home: Path, store: LocalStore, snap: Digest
) -> None:
    """The runner's removal of a task's links keeps the record: later tasks stat, never hash."""
    executor = executor_for("sandbox", request, home)
    executor.checkout_mode = "link"  # type: ignore[misc]
    runner = runner_for(store, home, executor)
    for _ in range(3):
        result = await runner.run(action(snap, "sandbox"))
        assert result.success and store.get(result.stdout) == DATA + b"alpha\n"
    stats = store.verified.statistics()
    assert (stats.hashed, stats.trusted) == (2, 4), stats
