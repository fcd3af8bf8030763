"""Ingest that stores files and nodes with worker processes stores what one process stores,
and planning that hashes with them gives the same id.

Workers only fork in a process that runs one thread (mesh.cas.forkmap), so the test
runs its script in a fresh interpreter, with the threshold lowered so that a small
tree is stored by several processes.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from tests.freshpy import run_fresh

SCRIPT = """
import os, sys
from mesh.cas import forkmap, snapshot
from mesh.cas.fsck import fsck
from mesh.cas.snapshot import ingest
from mesh.cas.statcache import StatCache
from mesh.cas.store import LocalStore

snapshot.FORK_MIN_BLOBS = 8
base = sys.argv[1]
tree = base + "/tree"
for d in range(12):
    os.makedirs(f"{tree}/d{d}/sub")
    for f in range(20):
        with open(f"{tree}/d{d}/f{f}", "wb") as out:
            out.write(os.urandom(f * 300))
        with open(f"{tree}/d{d}/sub/same{f}", "wb") as out:
            out.write(b"shared %d" % f)  # the same twenty contents in every directory
assert forkmap.can_fork()

calls = []
def progress(files, files_total, done, total):
    calls.append((files, files_total, done, total))

with LocalStore(base + "/forked") as store:
    cache = StatCache.for_tree(base + "/home", tree, store.root, store.epoch(), now_ns=lambda: 1 << 62)
    forked = ingest(store, tree, cache=cache, progress=progress, workers=2)
    forked_stats = store.statistics()
    assert fsck(store).clean
with LocalStore(base + "/serial") as store:
    serial = ingest(store, tree, workers=1)
    serial_stats = store.statistics()
assert forked == serial, (forked, serial)
assert forked_stats == serial_stats, (forked_stats, serial_stats)

files = [c[0] for c in calls]
assert files == sorted(files) and len(calls) >= 2, calls
assert calls[-1][0] == calls[-1][1] == 12 * 40 and calls[-1][2] == calls[-1][3], calls[-1]

with LocalStore(base + "/forked") as store:
    cache = StatCache.for_tree(base + "/home", tree, store.root, store.epoch(), now_ns=lambda: 1 << 62)
    assert ingest(store, tree, cache=cache, workers=2) == forked
    assert cache.statistics().misses == 0 and store.statistics().blobs_written == 0
# Planning (mesh exec's hashing, no store) shares the forked path.
from mesh.cas.plan import plan_tree
calls.clear()
plan = plan_tree(tree, progress=progress, workers=2)
assert plan.root == forked, (plan.root, forked)
assert calls and calls[-1][0] == calls[-1][1] == 12 * 40, calls[-1:]
print(forked_stats.blobs_written, forked_stats.blobs_already_present)
"""


def test_forked_ingest_stores_and_counts_what_a_serial_one_does(tmp_path: Path) -> None:
    out = run_fresh(textwrap.dedent(SCRIPT), tmp_path)
    # 12 x 20 distinct files (one of them empty in every directory: 11 repeats), 20 shared
    # contents written once and found 11 more times, 25 directory nodes (12 "sub" are equal).
    written, present = map(int, out.split())
    assert written == 12 * 19 + 1 + 20 + 1 + 12 + 1 and present == 11 + 20 * 11 + 11, (written, present)
