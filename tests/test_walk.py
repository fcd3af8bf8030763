"""mesh.cas.walk: the walk in worker processes gives what the walk in one process gives.

The workers only run in a process with one thread (see mesh.cas.forkmap), so each
test runs its script in a fresh interpreter, with the walk's size thresholds lowered
so that a small tree is shared out too.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from tests.freshpy import run_fresh

SETUP = """
import os, shutil, stat, sys
from mesh.cas import walk
from mesh.cas.plan import plan_cache, plan_tree
from mesh.cas.snapshot import ingest
from mesh.cas.statcache import StatCache
from mesh.cas.store import LocalStore
from mesh.errors import UnsupportedFile

walk.PARALLEL_MIN_FILES = 1
walk.SUBTREES = 3
base = sys.argv[1]
tree = base + "/tree"

def make_tree():
    for a in range(5):
        for b in range(4):
            d = f"{tree}/a{a}/b{b}"
            os.makedirs(d + "/deep/er")
            for f in range(6):
                with open(f"{d}/f{f}", "w") as out:
                    out.write(f"{a} {b} {f}\\n")
            with open(f"{d}/deep/er/x", "w") as out:
                out.write(f"deep {a} {b}\\n")
            os.symlink("f0", f"{d}/link")
        os.makedirs(f"{tree}/a{a}/empty")
    with open(f"{tree}/top", "w") as out:
        out.write("top\\n")

def snapshot(store_dir, workers, cache_home=None):
    with LocalStore(store_dir) as store:
        cache = None
        if cache_home is not None:
            cache = StatCache.for_tree(cache_home, tree, store.root, store.epoch(), now_ns=lambda: 1 << 62)
        digest = ingest(store, tree, cache=cache, workers=workers)
        return digest, cache.statistics() if cache is not None else None

def fresh_id():
    shutil.rmtree(base + "/fresh", ignore_errors=True)
    return snapshot(base + "/fresh", 1)[0]
"""


def run_script(body: str, tmp_path: Path) -> str:
    return run_fresh(SETUP + textwrap.dedent(body), tmp_path)


def test_warm_walk_in_workers_matches_a_fresh_ingest_after_every_kind_of_change(tmp_path: Path) -> None:
    out = run_script(
        """
        from mesh.cas import forkmap
        assert forkmap.can_fork()
        make_tree()
        store, home = base + "/store", base + "/home"
        # The cache's clock is far in the future, so no entry is racily clean.
        first, _ = snapshot(store, 2, home)
        assert first == fresh_id()
        again, stats = snapshot(store, 2, home)
        assert again == first and stats.misses == 0 and stats.hits == 5 * 4 * 7 + 1, stats
        changes = [
            lambda: open(f"{tree}/a3/b2/deep/er/x", "a").write("more"),
            lambda: open(f"{tree}/a1/b0/new", "w").write("new"),
            lambda: shutil.rmtree(f"{tree}/a4/b1"),
            lambda: os.chmod(f"{tree}/a0/b3/f2", 0o755),
            lambda: os.rename(f"{tree}/a2/b2/f1", f"{tree}/a2/b2/g1"),
            lambda: os.makedirs(f"{tree}/a2/empty/now-not"),
            lambda: open(f"{tree}/top", "a").write("changed"),
            lambda: [  # files to store in several subtrees at once, and at the top
                open(path, "a").write("all at once")
                for path in (f"{tree}/top", f"{tree}/a0/b0/f5", f"{tree}/a1/b3/deep/er/x", f"{tree}/a4/b2/f0")
            ],
        ]
        for change in changes:
            change()
            warm, stats = snapshot(store, 2, home)
            assert warm == fresh_id(), "a warm walk in workers missed a change"
            again, stats = snapshot(store, 2, home)
            assert again == warm and stats.misses == 0, stats  # the cache kept every entry
        print("ok")
        """,
        tmp_path,
    )
    assert out.strip() == "ok"


def test_an_unsupported_file_found_by_a_worker_is_reported_with_its_path(tmp_path: Path) -> None:
    out = run_script(
        """
        make_tree()
        store, home = base + "/store", base + "/home"
        snapshot(store, 2, home)
        os.mkfifo(f"{tree}/a3/b1/deep/fifo")
        try:
            snapshot(store, 2, home)
        except UnsupportedFile as exc:
            print(exc)
        """,
        tmp_path,
    )
    assert "a3/b1/deep/fifo" in out and "FIFO" in out


def test_planning_with_a_warm_cache_in_workers_gives_the_ingest_id(tmp_path: Path) -> None:
    out = run_script(
        """
        make_tree()
        home = base + "/plan-home"
        expected = fresh_id()
        serial = plan_tree(tree, workers=1)
        for round in range(2):
            cache = plan_cache(home, tree, now_ns=lambda: 1 << 62)
            plan = plan_tree(tree, cache=cache, workers=2)
            assert plan.root == expected == serial.root
            assert plan.nodes == serial.nodes and plan.files.keys() == serial.files.keys()
        print(cache.statistics().hits)
        """,
        tmp_path,
    )
    assert out.strip() == str(5 * 4 * 7 + 1)
