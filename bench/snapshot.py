"""Benchmark mesh snapshots and checkouts against cp and git, measured in the same run.

The tree (a copy of the Python stdlib, padded to 30,000 files if smaller, or --tree) is
copied once into the scratch dir; stores, caches and checkouts live there too, so
everything is on one filesystem. Rows (best of --repeat; before each timed run,
untimed: fresh state, the run's inputs re-read into the page cache, ``sync``, and a
wait until disk and CPUs are idle):

- cold snapshot: ``ingest`` into an empty store with an empty StatCache, vs ``cp -r``,
  ``cp -r && sync`` (ingest ends with a syncfs) and ``git add -A`` in a fresh repo (once);
- warm re-snapshot of the unchanged tree (StatCache loaded in the timed part) vs
  ``git status``;
- checkout copy mode vs ``cp -r``; checkout link mode vs ``cp -al``;
- what ``mesh exec`` adds for modification times (mesh.cas.times): a warm re-snapshot that
  also makes and stores the times manifest, vs the plain one; checkouts that give every
  entry its time: copy mode, link mode the first time (timed copies made) and warm (linked);
- what a root node's sandbox pays per task for each ``sandbox_inputs`` setting: a checkout
  with times on one thread (``workers=1``, as the runner checks a task's input out), in copy
  mode owned by uid 65534 (``copy``, the default) vs linking the warm timed copies (``link``).

Usage: python bench/snapshot.py [--tree DIR] [--work DIR] [--repeat N]
Prints markdown tables on stdout, progress on stderr. Exit 1 if a check failed.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from typing import Any

import _common as c

c.use_repo()

from mesh.cas.checkout import checkout  # noqa: E402
from mesh.cas.digest import Digest  # noqa: E402
from mesh.cas.snapshot import ingest, ingest_timed  # noqa: E402
from mesh.cas.statcache import StatCache  # noqa: E402
from mesh.cas.store import LocalStore  # noqa: E402
from mesh.cas.times import decode as decode_times  # noqa: E402
from mesh.exec.sandbox import NOBODY  # noqa: E402

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


def snapshot_once(store_dir: str, home: str, tree: str, log: list[dict[str, Any]], *, timed: bool = False) -> Digest:
    """What ``mesh snapshot TREE`` does in process: open the store, load the tree's stat
    cache, ingest (which ends with a syncfs and saves the cache). Records statistics.
    ``timed``: what ``mesh exec`` does, which also makes and stores the times manifest."""
    with LocalStore(store_dir) as store:
        cache = StatCache.for_tree(home, tree, store.root, store.epoch())
        if timed:
            digest, times = ingest_timed(store, tree, cache=cache)
            log.append({"times": store.put(times.encode())})
        else:
            digest = ingest(store, tree, cache=cache)
    log.append({"digest": digest, "store": store.statistics(), "cache": cache.statistics()})
    return digest


def checkout_once(
    store_dir: str,
    digest: Digest,
    target: str,
    mode: str,
    log: list[Any],
    times: Digest | None = None,
    **task: Any,
) -> None:
    """What ``mesh checkout [--link] ID DIR`` does in process (with ``times``: giving every
    entry its mtime from that manifest, as a task's checkout does; ``task``: more of
    checkout's arguments, ``workers`` and ``owner``, as the runner gives them)."""
    with LocalStore(store_dir) as store:
        given = None if times is None else decode_times(store.get(times))
        log.append(checkout(store, digest, target, mode=mode, times=given, **task))  # type: ignore[arg-type]


def main() -> int:
    parser = c.base_parser(__doc__.split("\n\n")[0])
    args = parser.parse_args()
    src, min_files = c.tree_source(args)
    repeat: int = args.repeat
    ok = True
    with c.scratch_dir(args.work, "mesh-bench-snapshot-") as scratch:
        src_stats = c.tree_stats(src)
        # The tree, its git copy and objects, and (kept in the trash until the end, see
        # Scratch.discard) ~3 stores, ~7 copies and checkouts; the trash is emptied early if
        # space runs short, so the hard minimum is smaller.
        c.check_space(scratch.root, 5 * src_stats.bytes + (2 << 30))
        scratch.reserve = 2 * src_stats.bytes + (2 << 30)
        if shutil.disk_usage(scratch.root).free < 14 * src_stats.bytes:
            c.note("not much disk space: the trash will be emptied between runs (ext4 trims may then bill some runs)")
        c.print_header("mesh snapshot benchmark", scratch.root)
        print(
            f"repeat: best of {repeat} (git add -A: once); before each timed run (untimed): fresh state, "
            "inputs re-read into the page cache, `sync`, wait until disk and CPUs are idle\n"
        )

        tree = scratch.path("tree")
        c.note(f"copying {src} to {tree}")
        c.copy_tree(src, tree)
        added = c.pad_tree(tree, min_files)
        stats = c.tree_stats(tree)
        git_tree = scratch.path("git")
        c.note(f"copying the tree to {git_tree} for git (untimed)")
        c.copy_tree(tree, git_tree)
        os.sync()
        print(f"Tree: copy of {src}{f' + {added:,} generated files' if added else ''}: {stats.describe()}.")

        store_dir, home = scratch.path("store"), scratch.path("mesh-home")
        dest = scratch.path("dest")

        # Before each timed run (untimed): fresh state (old stores and targets are moved to
        # the trash, not deleted, see Scratch.discard) and the run's inputs re-read into the
        # page cache.
        def fresh_store() -> None:
            scratch.discard(store_dir)
            scratch.discard(home)
            c.warm_tree(tree)

        def warm_cache_file() -> None:
            c.warm_tree(home)
            c.tree_stats(tree)  # directories and inodes too (both warm contestants only stat)

        def fresh_dest() -> None:
            scratch.discard(dest)
            c.warm_tree(tree)

        def fresh_checkout() -> None:
            scratch.discard(dest)
            c.warm_tree(store_dir)

        def fresh_git_repo() -> None:
            scratch.discard(os.path.join(git_tree, ".git"))
            c.run(["git", "-c", "init.defaultBranch=main", "init", "-q"], cwd=git_tree, env=GIT_ENV)
            c.warm_tree(git_tree)

        def warm_git_index() -> None:
            c.warm_tree(os.path.join(git_tree, ".git"))
            c.tree_stats(git_tree)

        def git(*argv: str) -> subprocess.CompletedProcess[bytes]:
            return c.run(["git", *argv], cwd=git_tree, env=GIT_ENV)

        # -- git add -A, once (slow) ---------------------------------------------------
        c.note("timing git add -A in a fresh repo (once, ~25 s; once more if another process interfered)")
        t = c.compare(1, [c.Contestant("git add -A", lambda: git("add", "-A"), fresh_git_repo)], max_tries=2)
        git("status")  # untimed: the first status after add refreshes the index
        git_files = c.run(["git", "ls-files", "-z"], cwd=git_tree, env=GIT_ENV, capture=True).stdout.count(b"\0")

        waited = c.wait_until_settled(tree)
        print(
            f"Waited {waited:.1f} s before the first snapshot so that no file was changed within "
            f"{c.SETTLE_SECONDS} s of being hashed (the stat cache re-hashes racily clean files)."
        )

        # -- cold snapshot vs copies, round-robin --------------------------------------
        cold_log: list[dict[str, Any]] = []
        cp_sync = f"cp -r -- {shlex.quote(tree)} {shlex.quote(dest)} && sync"
        c.note("timing cold snapshots (empty store, empty stat cache), cp -r, cp -r && sync (round-robin)")
        t |= c.compare(
            repeat,
            [
                c.Contestant("mesh cold snapshot", lambda: snapshot_once(store_dir, home, tree, cold_log), fresh_store),
                c.Contestant("cp -r", lambda: c.run(["cp", "-r", "--", tree, dest]), fresh_dest),
                c.Contestant("cp -r && sync", lambda: c.run(cp_sync), fresh_dest),
            ],
        )
        digest: Digest = cold_log[-1]["digest"]
        # The last cold run's store and cache stay for the warm runs and the checkouts.

        # -- warm re-snapshot vs git status, round-robin --------------------------------
        warm_log: list[dict[str, Any]] = []
        c.note("timing warm re-snapshots (unchanged tree, stat cache loaded from its file) and git status")
        t |= c.compare(
            repeat,
            [
                c.Contestant(
                    "mesh warm re-snapshot", lambda: snapshot_once(store_dir, home, tree, warm_log), warm_cache_file
                ),
                c.Contestant("git status", lambda: git("status"), warm_git_index),
                c.Contestant(
                    "mesh warm re-snapshot + times",
                    lambda: snapshot_once(store_dir, home, tree, warm_log, timed=True),
                    warm_cache_file,
                ),
            ],
        )
        times: Digest = next(entry["times"] for entry in warm_log if "times" in entry)
        warm_log = [entry for entry in warm_log if "digest" in entry]

        # -- checkouts vs copies, round-robin -------------------------------------------
        co_log: list[Any] = []
        c.note("timing checkout (copy), checkout (link), cp -al (round-robin)")
        t |= c.compare(
            repeat,
            [
                c.Contestant(
                    "mesh checkout copy", lambda: checkout_once(store_dir, digest, dest, "copy", co_log), fresh_checkout
                ),
                c.Contestant(
                    "mesh checkout link", lambda: checkout_once(store_dir, digest, dest, "link", co_log), fresh_checkout
                ),
                c.Contestant("cp -al", lambda: c.run(["cp", "-al", "--", tree, dest]), fresh_dest),
            ],
        )

        # -- checkouts with times ---------------------------------------------------------
        def no_timed_copies() -> None:
            fresh_checkout()
            scratch.discard(os.path.join(store_dir, "timed"))
            os.mkdir(os.path.join(store_dir, "timed"))

        c.note("timing checkouts with times: copy, link with no timed copies yet, link warm (round-robin)")
        t |= c.compare(
            repeat,
            [
                c.Contestant(
                    "checkout copy + times",
                    lambda: checkout_once(store_dir, digest, dest, "copy", co_log, times),
                    fresh_checkout,
                ),
                c.Contestant(
                    "checkout link + times, first",
                    lambda: checkout_once(store_dir, digest, dest, "link", co_log, times),
                    no_timed_copies,
                ),
                c.Contestant(
                    "checkout link + times, warm",
                    lambda: checkout_once(store_dir, digest, dest, "link", co_log, times),
                    fresh_checkout,
                ),
            ],
        )
        # -- a task's checkout in the sandbox of a root node: sandbox_inputs copy vs link ----
        sandbox = {"workers": 1}
        nobody = {**sandbox, "owner": (NOBODY, NOBODY)} if os.geteuid() == 0 else sandbox
        c.note("timing a task's checkout (one thread, times): copy owned by 65534, link warm (round-robin)")
        t |= c.compare(
            repeat,
            [
                c.Contestant(
                    "task checkout copy (owner 65534)",
                    lambda: checkout_once(store_dir, digest, dest, "copy", co_log, times, **nobody),
                    fresh_checkout,
                ),
                c.Contestant(
                    "task checkout link (warm)",
                    lambda: checkout_once(store_dir, digest, dest, "link", co_log, times, **sandbox),
                    fresh_checkout,
                ),
            ],
        )
        scratch.discard(dest)
        c.note("checking out once more (copy, untimed) and comparing with the tree (diff -r)")
        verify_log: list[Any] = []
        checkout_once(store_dir, digest, dest, "copy", verify_log)
        copy_equal = _same(tree, dest)
        ok &= copy_equal
        link_log: list[Any] = []
        scratch.discard(dest)
        checkout_once(store_dir, digest, dest, "link", link_log)
        scratch.discard(dest)

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
        co = verify_log[-1]
        print(
            f"Checkout (copy): {co.files:,} files, {co.directories:,} directories, {co.symlinks:,} symlinks, "
            f"{co.bytes:,} bytes; equal to the tree (diff -r --no-dereference): {'yes' if copy_equal else 'NO'}"
        )
        lk = link_log[-1]
        print(f"Checkout (link): {lk.files:,} files, {lk.directories:,} directories, {lk.bytes:,} bytes")
        print(f"git: {git_files:,} files in the index after git add -A\n")

        rows = [
            c.time_row(
                "cold snapshot (ingest, empty store; ends with syncfs)",
                t["mesh cold snapshot"],
                "cp -r TREE DEST",
                t["cp -r"],
                max_ratio=1.0,
            ),
            c.time_row("cold snapshot", t["mesh cold snapshot"], "cp -r TREE DEST && sync", t["cp -r && sync"]),
            c.time_row(
                "cold snapshot",
                t["mesh cold snapshot"],
                "git add -A (fresh repo, 1 run)",
                t["git add -A"],
                max_ratio=0.2,
                target_note=" (mesh >= 5x faster)",
            ),
            c.time_row(
                "warm re-snapshot (unchanged tree, StatCache loaded)",
                t["mesh warm re-snapshot"],
                "git status",
                t["git status"],
                max_ratio=1.5,
            ),
            c.time_row(
                "checkout copy mode (verified)", t["mesh checkout copy"], "cp -r TREE DEST", t["cp -r"], max_ratio=1.2
            ),
            c.time_row("checkout link mode", t["mesh checkout link"], "cp -al TREE DEST", t["cp -al"], max_ratio=1.5),
            c.time_row(
                "warm re-snapshot + times manifest (mesh exec)",
                t["mesh warm re-snapshot + times"],
                "warm re-snapshot",
                t["mesh warm re-snapshot"],
            ),
            c.time_row("checkout copy + times", t["checkout copy + times"], "checkout copy", t["mesh checkout copy"]),
            c.time_row(
                "checkout link + times, first (timed copies made)",
                t["checkout link + times, first"],
                "checkout copy",
                t["mesh checkout copy"],
            ),
            c.time_row(
                "checkout link + times, warm (timed copies linked)",
                t["checkout link + times, warm"],
                "checkout link",
                t["mesh checkout link"],
            ),
            c.time_row(
                "a sandbox task's checkout, sandbox_inputs = copy (owner 65534, times, 1 thread)",
                t["task checkout copy (owner 65534)"],
                "sandbox_inputs = link (warm timed copies, 1 thread)",
                t["task checkout link (warm)"],
            ),
        ]
        c.print_table(rows)
        c.print_runs(list(t.items()))
    return 0 if ok else 1


def _same(a: str, b: str) -> bool:
    """True when ``diff -r --no-dereference a b`` finds no difference (exit 0)."""
    cmd = ["diff", "-r", "--no-dereference", "--", a, b]
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        c.note(f"diff -r found differences (exit {done.returncode}):\n{done.stdout.decode(errors='replace')[:2000]}")
    return done.returncode == 0


if __name__ == "__main__":
    c.run_main(main)
