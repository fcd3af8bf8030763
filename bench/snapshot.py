"""Benchmark mesh snapshots and checkouts against cp and git, measured in the same run.

The tree (a copy of the Python stdlib, padded to 30,000 files if smaller, or --tree) is
copied once into the scratch dir; stores, caches and checkouts live there too, so
everything is on one filesystem. Rows (best of --repeat, fresh state each time, page
cache warm, ``sync`` before every timed run):

- cold snapshot: ``ingest`` into an empty store with an empty StatCache, vs ``cp -r``,
  ``cp -r && sync`` (ingest ends with a syncfs) and ``git add -A`` in a fresh repo (once);
- warm re-snapshot of the unchanged tree (StatCache loaded in the timed part) vs
  ``git status``;
- checkout copy mode vs ``cp -r``; checkout link mode vs ``cp -al``.

Usage: python bench/snapshot.py [--tree DIR] [--work DIR] [--repeat N]
Prints markdown tables on stdout, progress on stderr. Exit 1 if a check failed.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from typing import Any

import _common as c

c.use_repo()

from mesh.cas.checkout import checkout  # noqa: E402
from mesh.cas.digest import Digest  # noqa: E402
from mesh.cas.snapshot import ingest  # noqa: E402
from mesh.cas.statcache import StatCache  # noqa: E402
from mesh.cas.store import LocalStore  # noqa: E402

GIT_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "mesh bench",
    "GIT_AUTHOR_EMAIL": "bench@mesh.invalid",
    "GIT_COMMITTER_NAME": "mesh bench",
    "GIT_COMMITTER_EMAIL": "bench@mesh.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",  # no system or user configuration: git's defaults only
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_TERMINAL_PROMPT": "0",
}


def snapshot_once(store_dir: str, home: str, tree: str, log: list[dict[str, Any]]) -> Digest:
    """What ``mesh snapshot TREE`` does in process: open the store, load the tree's stat
    cache, ingest (which ends with a syncfs and saves the cache). Records statistics."""
    with LocalStore(store_dir) as store:
        cache = StatCache.for_tree(home, tree, store.root, store.epoch())
        digest = ingest(store, tree, cache=cache)
    log.append({"digest": digest, "store": store.statistics(), "cache": cache.statistics()})
    return digest


def checkout_once(store_dir: str, digest: Digest, target: str, mode: str, log: list[Any]) -> None:
    """What ``mesh checkout [--link] ID DIR`` does in process."""
    with LocalStore(store_dir) as store:
        log.append(checkout(store, digest, target, mode=mode))  # type: ignore[arg-type]


def main() -> int:
    parser = c.base_parser(__doc__.split("\n\n")[0])
    args = parser.parse_args()
    src, min_files = c.tree_source(args)
    repeat: int = args.repeat
    ok = True
    with c.scratch_dir(args.work, "mesh-bench-snapshot-") as scratch:
        src_stats = c.tree_stats(src)
        # tree, git copy (+ its objects), store, a checkout or cp target at a time, slack
        c.check_space(scratch.root, 6 * src_stats.bytes + (2 << 30))
        c.print_header("mesh snapshot benchmark", scratch.root)
        print(f"repeat: best of {repeat} (git add -A: once); page cache warm; `sync` before every timed run\n")

        tree = scratch.path("tree")
        c.note(f"copying {src} to {tree}")
        c.copy_tree(src, tree)
        added = c.pad_tree(tree, min_files)
        stats = c.tree_stats(tree)
        git_tree = scratch.path("git")
        c.note(f"copying the tree to {git_tree} and running git init there (untimed)")
        c.copy_tree(tree, git_tree)
        c.run(["git", "-c", "init.defaultBranch=main", "init", "-q"], cwd=git_tree, env=GIT_ENV)
        os.sync()
        c.note("warming the page cache (reading both trees once)")
        c.warm_tree(tree)
        c.warm_tree(git_tree)
        print(f"Tree: copy of {src}{f' + {added:,} generated files' if added else ''}: {stats.describe()}.")

        store_dir, home = scratch.path("store"), scratch.path("mesh-home")
        dest = scratch.path("dest")

        def fresh_store() -> None:
            scratch.remove(store_dir)
            scratch.remove(home)

        def no_dest() -> None:
            scratch.remove(dest)

        waited = c.wait_until_settled(tree)
        print(
            f"Waited {waited:.1f} s before the first snapshot so that no file was changed within "
            f"{c.SETTLE_SECONDS} s of being hashed (the stat cache re-hashes racily clean files)."
        )

        # -- cold snapshot ------------------------------------------------------------
        cold_log: list[dict[str, Any]] = []
        c.note("timing cold snapshots (empty store, empty stat cache)")
        t_cold = c.best_of(repeat, lambda: snapshot_once(store_dir, home, tree, cold_log), before=fresh_store)
        digest: Digest = cold_log[-1]["digest"]
        # The last cold run's store and cache stay for the warm runs and the checkouts.

        # -- warm re-snapshot ---------------------------------------------------------
        warm_log: list[dict[str, Any]] = []
        c.note("timing warm re-snapshots (unchanged tree, stat cache loaded from its file)")
        t_warm = c.best_of(repeat, lambda: snapshot_once(store_dir, home, tree, warm_log))

        # -- references for the snapshot ----------------------------------------------
        c.note("timing cp -r")
        t_cp = c.best_of(repeat, lambda: c.run(["cp", "-r", "--", tree, dest]), before=no_dest)
        c.note("timing cp -r && sync")
        cp_sync = f"cp -r -- {shlex.quote(tree)} {shlex.quote(dest)} && sync"
        t_cp_sync = c.best_of(repeat, lambda: c.run(cp_sync), before=no_dest)
        no_dest()

        # -- checkouts ----------------------------------------------------------------
        co_log: list[Any] = []
        c.note("timing checkout --copy")
        t_co = c.best_of(repeat, lambda: checkout_once(store_dir, digest, dest, "copy", co_log), before=no_dest)
        c.note("comparing the copy-mode checkout with the tree (diff -r, untimed)")
        copy_equal = _same(tree, dest)
        ok &= copy_equal
        link_log: list[Any] = []
        c.note("timing checkout --link")
        t_link = c.best_of(repeat, lambda: checkout_once(store_dir, digest, dest, "link", link_log), before=no_dest)
        c.note("timing cp -al")
        t_cpal = c.best_of(repeat, lambda: c.run(["cp", "-al", "--", tree, dest]), before=no_dest)
        no_dest()

        # -- git ----------------------------------------------------------------------
        c.note("timing git add -A (once; ~25 s)")
        t_git_add = c.best_of(1, lambda: c.run(["git", "add", "-A"], cwd=git_tree, env=GIT_ENV))
        c.run(["git", "status"], cwd=git_tree, env=GIT_ENV)  # untimed: refreshes the index
        c.note("timing git status")
        t_git_status = c.best_of(repeat, lambda: c.run(["git", "status"], cwd=git_tree, env=GIT_ENV))
        git_files = len(c.run(["git", "ls-files", "-z"], cwd=git_tree, env=GIT_ENV, capture=True).stdout.split(b"\0")) - 1

        # -- report -------------------------------------------------------------------
        warm_digests = {entry["digest"] for entry in warm_log}
        same_id = warm_digests == {digest} and {e["digest"] for e in cold_log} == {digest}
        ok &= same_id
        cold_store = cold_log[-1]["store"]
        print(f"Snapshot id: {digest} (every cold and warm run gave this id: {'yes' if same_id else 'NO'})")
        print(
            f"Cold snapshot stored {cold_store.blobs_written:,} blobs, {cold_store.bytes_written:,} bytes "
            f"({cold_store.blobs_already_present:,} puts found the blob present already: duplicate contents)."
        )
        for i, entry in enumerate(warm_log, 1):
            s = entry["cache"]
            print(f"Warm run {i}: StatCache hits {s.hits:,}, misses {s.misses:,} (of which racy {s.racy:,})")
        co = co_log[-1]
        print(
            f"Checkout (copy): {co.files:,} files, {co.directories:,} directories, {co.symlinks:,} symlinks, "
            f"{co.bytes:,} bytes; equal to the tree (diff -r --no-dereference): {'yes' if copy_equal else 'NO'}"
        )
        lk = link_log[-1]
        print(f"Checkout (link): {lk.files:,} files, {lk.directories:,} directories, {lk.bytes:,} bytes")
        print(f"git: {git_files:,} files in the index after git add -A\n")

        rows = [
            c.time_row("cold snapshot (ingest, empty store; ends with syncfs)", t_cold.best, "cp -r TREE DEST", t_cp.best, max_ratio=1.0),
            c.time_row("cold snapshot", t_cold.best, "cp -r TREE DEST && sync", t_cp_sync.best),
            c.time_row(
                "cold snapshot",
                t_cold.best,
                "git add -A (fresh repo, 1 run)",
                t_git_add.best,
                max_ratio=0.2,
                target_note=" (mesh >= 5x faster)",
            ),
            c.time_row(
                "warm re-snapshot (unchanged tree, StatCache loaded)", t_warm.best, "git status", t_git_status.best, max_ratio=1.5
            ),
            c.time_row("checkout copy mode (verified)", t_co.best, "cp -r TREE DEST", t_cp.best, max_ratio=1.2),
            c.time_row("checkout link mode", t_link.best, "cp -al TREE DEST", t_cpal.best, max_ratio=1.5),
        ]
        c.print_table(rows)
        c.print_runs(
            [
                ("mesh cold snapshot", t_cold),
                ("mesh warm re-snapshot", t_warm),
                ("cp -r", t_cp),
                ("cp -r && sync", t_cp_sync),
                ("git add -A", t_git_add),
                ("git status", t_git_status),
                ("mesh checkout copy", t_co),
                ("mesh checkout link", t_link),
                ("cp -al", t_cpal),
            ]
        )
    return 0 if ok else 1


def _same(a: str, b: str) -> bool:
    """True when ``diff -r --no-dereference a b`` finds no difference (exit 0)."""
    done = subprocess.run(["diff", "-r", "--no-dereference", "--", a, b], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        c.note(f"diff -r found differences (exit {done.returncode}):\n{done.stdout.decode(errors='replace')[:2000]}")
    return done.returncode == 0


if __name__ == "__main__":
    sys.exit(main())
