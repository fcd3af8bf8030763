"""Crash safety and concurrency, with real processes: SIGKILL mid-ingest leaves a
consistent store; two concurrent ingests of one tree agree and corrupt nothing."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mesh.cas.checkout import checkout
from mesh.cas.digest import Digest
from mesh.cas.fsck import fsck
from mesh.cas.store import LocalStore
from tests import treeutil
from tests.nodeutil import host_processes, wait_for

# An ingest that uses named temp files (the fallback where O_TMPFILE is missing),
# so that a kill can leave temp files behind for the next open to remove.
NAMED_TEMP_INGEST = """
import sys
from mesh.cas.store import LocalStore
from mesh.cas.snapshot import ingest
store = LocalStore(sys.argv[1])
store._o_tmpfile = False
print(ingest(store, sys.argv[2]))
"""


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tree of 1,500 small files and 12 large ones (~60 MB): long enough to be killed mid-way."""
    root = tmp_path_factory.mktemp("crash") / "src"
    rng = random.Random(7)
    for d in range(30):
        sub = root / f"dir{d:02}"
        sub.mkdir(parents=True)
        for f in range(50):
            (sub / f"f{f}.txt").write_bytes(rng.randbytes(rng.randrange(0, 4000)))
    for i in range(12):
        (root / f"big{i}.bin").write_bytes(rng.randbytes(5 << 20))
    return root


@pytest.fixture(scope="module")
def reference_id(source: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    home = tmp_path_factory.mktemp("refhome")
    out = treeutil.mesh("snapshot", str(source), env={"MESH_HOME": str(home)}, check=True)
    return out.stdout.decode().strip()


def blob_files(cas: Path) -> int:
    blobs = cas / "blobs"
    if not blobs.is_dir():
        return 0
    return sum(len(os.listdir(blobs / shard)) for shard in os.listdir(blobs))


def kill_when(proc: subprocess.Popen[bytes], cas: Path, blobs_at_least: int, deadline_s: float = 60) -> None:
    """SIGKILL ``proc`` once the store holds ``blobs_at_least`` blobs (or it has exited)."""
    deadline = time.monotonic() + deadline_s
    while proc.poll() is None and blob_files(cas) < blobs_at_least:
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("ingest made no progress before the deadline")
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def check_consistent(cas: Path, source: Path, reference_id: str, tmp_path: Path) -> None:
    with LocalStore(cas) as store:
        assert os.listdir(cas / "tmp") == [], "stale temp files must be removed on open"
        report = fsck(store)
        assert report.clean, report.problems
    # The interrupted ingest can simply be run again.
    again = treeutil.mesh("snapshot", str(source), env={"MESH_HOME": str(cas.parent)})
    assert again.returncode == 0, again.stderr
    assert again.stdout.decode().strip() == reference_id
    with LocalStore(cas) as store:
        checkout(store, Digest.parse(reference_id), tmp_path / "out")
    assert treeutil.read(tmp_path / "out") == treeutil.read(source)


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(4))
@pytest.mark.parametrize("temp_files", ["anonymous", "named"])
def test_sigkill_at_a_random_moment_leaves_the_store_consistent(
    source: Path, reference_id: str, tmp_path: Path, trial: int, temp_files: str
) -> None:
    home = tmp_path / "home"
    cas = home / "cas"
    cas.mkdir(parents=True)
    target = random.Random(f"{trial}{temp_files}").randrange(0, 1500)
    if temp_files == "anonymous":
        cmd = [sys.executable, "-m", "mesh", "--home", str(home), "snapshot", str(source)]
    else:
        cmd = [sys.executable, "-c", NAMED_TEMP_INGEST, str(cas), str(source)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    kill_when(proc, cas, target)
    # The ingest stores files with a forked worker (mesh.cas.forkmap); it dies with it.
    wait_for(lambda: not host_processes(str(source)), timeout=10, what="the ingest's workers to die with it")
    check_consistent(cas, source, reference_id, tmp_path)


@pytest.mark.slow
def test_two_concurrent_ingests_agree_and_corrupt_nothing(source: Path, reference_id: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = dict(os.environ, MESH_HOME=str(home))
    cmd = [sys.executable, "-m", "mesh", "snapshot", "--no-cache", str(source)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
        assert out.decode().strip() == reference_id
    with LocalStore(home / "cas") as store:
        assert fsck(store).clean
        assert os.listdir(home / "cas" / "tmp") == []
