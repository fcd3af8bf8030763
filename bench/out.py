"""What ``mesh exec --out DIR`` costs when a task changes one file of a large tree.

Makes a tree of --files files (100 directories), starts a node on a scratch MESH_HOME,
runs ``mesh exec -- sh -c 'rm d000/f00000 && echo changed > d000/f00000'`` once (untimed: ingest and
run), then times cache hits of that command (best of --repeat): without ``--out``,
with ``--out`` into an empty directory, and with ``--out`` into the tree itself. The
difference to the first row is the cost of ``--out``. Run it with the mesh under test
on PYTHONPATH (a checkout of an older commit, say) to compare.

Usage: python bench/out.py [--files N] [--repeat N] [--work DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.nodeutil import MESH, NodeProcess, node_env  # noqa: E402

COMMAND = ["sh", "-c", "rm d000/f00000 && echo changed > d000/f00000"]  # inputs may be read-only links


def make_tree(root: Path, files: int) -> None:
    per_dir = max(1, files // 100)
    for i in range(files):
        d = root / f"d{i // per_dir:03}"
        if i % per_dir == 0:
            d.mkdir(parents=True)
        (d / f"f{i:05}").write_bytes(b"file %d\n" % i)


def timed(node: NodeProcess, tree: Path, *extra: str) -> float:
    """Seconds ``mesh exec`` took; NaN if it failed (an older mesh refuses --out into a non-empty DIR)."""
    started = time.perf_counter()
    done = subprocess.run(
        MESH + ["exec", "-C", str(tree), *extra, "--", *COMMAND],
        env=node_env(node.home, MESH_NODE=node.url),
        capture_output=True,
    )
    took = time.perf_counter() - started
    if done.returncode != 0:
        print(f"mesh exec {' '.join(extra)} failed: {done.stderr.decode().strip()}", file=sys.stderr)
        return float("nan")
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--work", default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mesh-bench-out-", dir=args.work))
    node = NodeProcess(str(work / "home"))
    try:
        tree = work / "tree"
        make_tree(tree, args.files)
        node.start()
        timed(node, tree)  # ingest and run; every later run is a cache hit
        rows: dict[str, list[float]] = {"no --out": [], "--out EMPTY": [], "--out TREE": []}
        for round in range(args.repeat):
            rows["no --out"].append(timed(node, tree))
            out = work / f"out{round}"
            rows["--out EMPTY"].append(timed(node, tree, "--out", str(out)))
            shutil.rmtree(out, ignore_errors=True)
            rows["--out TREE"].append(timed(node, tree, "--out", str(tree)))
            (tree / "d000" / "f00000").write_bytes(b"file 0\n")  # the input as it was
        print(f"PYTHONPATH={os.environ.get('PYTHONPATH', '')}, {args.files} files, best of {args.repeat}")
        for name, times in rows.items():
            print(f"| {name:12} | {min(times):7.2f} s |")
    finally:
        node.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
