"""Benchmark mesh's BLAKE3 hasher against cat and b3sum, measured in the same run.

a. One large file (random data, page cache warm): ``mesh.cas.hasher.hash_file`` in
   process vs ``cat FILE > /dev/null`` and ``b3sum FILE``; informational rows for
   ``b3sum --num-threads 1`` (one core's BLAKE3 speed) and the ``mesh hash`` CLI.
b. A large source tree (a copy of the Python stdlib, padded to 30,000 files if
   smaller; page cache warm): ``hash_tree`` consumed in process vs
   ``find . -type f -print0 | xargs -0 b3sum``; 200 sampled files cross-checked.

Usage: python bench/hash.py [--size 2G] [--tree DIR] [--work DIR] [--repeat N]
Prints markdown tables on stdout, progress on stderr. Exit 1 if the cross-check failed.
"""

from __future__ import annotations

import os
import random
from collections import deque

import _common as c

c.use_repo()

import blake3  # noqa: E402

from mesh.cas.hasher import hash_file, hash_tree  # noqa: E402

SAMPLE = 200
B3SUM = "b3sum FILE (default threads)"


def make_random_file(path: str, size: int) -> None:
    """Write ``size`` pseudo-random bytes (a BLAKE3 XOF stream: fast and incompressible)."""
    xof = blake3.blake3(b"mesh bench random file")
    chunk = 64 << 20
    with open(path, "wb", buffering=0) as f:
        done = 0
        while done < size:
            n = min(chunk, size - done)
            f.write(xof.digest(length=n, seek=done))
            done += n


def bench_file(scratch: c.Scratch, repeat: int, size: int) -> tuple[list[c.Row], list[tuple[str, c.Timing]], bool]:
    """Part a: one large file."""
    path = scratch.path("big.bin")
    c.note(f"writing {size / 1e9:.2f} GB of random data to {path}")
    make_random_file(path, size)
    os.sync()
    env = {**os.environ, "MESH_HOME": scratch.path("mesh-home")}

    def warm() -> None:
        c.warm_file(path)

    c.note("timing mesh hash_file, cat, b3sum, b3sum --num-threads 1, mesh hash (round-robin)")
    t = c.compare(
        repeat,
        [
            c.Contestant("mesh hash_file (in process)", lambda: hash_file(path), warm),
            c.Contestant("cat", lambda: c.run(["cat", path]), warm),
            c.Contestant("b3sum", lambda: c.run(["b3sum", path]), warm),
            c.Contestant("b3sum --num-threads 1", lambda: c.run(["b3sum", "--num-threads", "1", path]), warm),
            c.Contestant("mesh hash CLI", lambda: c.run([str(c.MESH_CLI), "hash", path], env=env), warm),
        ],
    )
    t_mesh, t_b3 = t["mesh hash_file (in process)"], t["b3sum"]

    # Same answer from all three (untimed).
    want = hash_file(path).hex
    b3 = c.run(["b3sum", path], capture=True).stdout.split()[0].decode()
    cli = c.run([str(c.MESH_CLI), "hash", path], env=env, capture=True).stdout.split()[0].decode()
    ok = want == b3 == cli
    print(f"Large file: {size:,} bytes ({size / 1e9:.2f} GB) of random data, in the page cache.")
    print(f"hash agrees with b3sum and the CLI: {'yes' if ok else f'NO (mesh {want}, b3sum {b3}, CLI {cli})'}\n")

    rows = [
        c.rate_row("large file: hash_file vs cat", size, t_mesh, "cat FILE > /dev/null", t["cat"], min_ratio=1.0),
        c.rate_row("large file: hash_file vs b3sum", size, t_mesh, B3SUM, t_b3, min_ratio=1.2),
        c.rate_row(
            "large file: hash_file vs one core (compute limit ~ cores x ref)",
            size,
            t_mesh,
            "b3sum --num-threads 1 FILE",
            t["b3sum --num-threads 1"],
        ),
        c.rate_row("large file: `mesh hash FILE` CLI end to end", size, t["mesh hash CLI"], B3SUM, t_b3),
    ]
    runs = list(t.items())
    return rows, runs, ok


def bench_tree(
    scratch: c.Scratch, repeat: int, src: str, min_files: int
) -> tuple[list[c.Row], list[tuple[str, c.Timing]], bool]:
    """Part b: a large source tree."""
    tree = scratch.path("tree")
    c.note(f"copying {src} to {tree}")
    c.copy_tree(src, tree)
    added = c.pad_tree(tree, min_files)
    stats = c.tree_stats(tree)

    def warm() -> None:
        c.warm_tree(tree)

    def mesh_consume() -> None:
        deque(hash_tree(tree), maxlen=0)

    c.note("timing mesh hash_tree and find | xargs b3sum (round-robin)")
    b3_cmd = "find . -type f -print0 | xargs -0 b3sum > /dev/null"
    t = c.compare(
        repeat,
        [
            c.Contestant("mesh hash_tree (in process)", mesh_consume, warm),
            c.Contestant("find | xargs b3sum", lambda: c.run(b3_cmd, cwd=tree), warm),
        ],
    )
    t_mesh, t_b3 = t["mesh hash_tree (in process)"], t["find | xargs b3sum"]

    # Cross-check (untimed): every file found, and 200 sampled hashes equal b3sum's.
    found = {rel: digest.hex for rel, digest in hash_tree(tree)}
    names = sorted(found)
    sample = random.Random(7).sample(names, min(SAMPLE, len(names)))
    out = c.run(["b3sum", "--", *[os.fsdecode(n) for n in sample]], cwd=tree, capture=True).stdout
    theirs = parse_b3sum(out)
    bad = [n for n in sample if theirs.get(n) != found[n]]
    mesh_bytes = stats.bytes
    print(f"Tree: copy of {src}{f' + {added:,} generated files' if added else ''}: {stats.describe()}.")
    print(
        f"hash_tree yielded {len(found):,} files (tree has {stats.files:,}); "
        f"{len(sample) - len(bad)}/{len(sample)} sampled files hash the same as b3sum"
        + ("" if not bad else f"; MISMATCH: {', '.join(os.fsdecode(n) for n in bad[:5])}")
    )
    print()
    rows = [
        c.time_row(
            f"source tree ({stats.files:,} files, {mesh_bytes / 1e6:,.0f} MB): hash_tree",
            t_mesh,
            "find . -type f -print0 | xargs -0 b3sum",
            t_b3,
            max_ratio=1.0,
        )
    ]
    ok = not bad and len(found) == stats.files
    return rows, list(t.items()), ok


def parse_b3sum(out: bytes) -> dict[bytes, str]:
    """``{name: hex}`` from b3sum's output (undoing its escaping of ``\\`` and newlines)."""
    result = {}
    for line in out.split(b"\n"):
        if not line:
            continue
        escaped = line.startswith(b"\\")
        if escaped:
            line = line[1:]
        hex_, name = line.split(b"  ", 1)
        if escaped:
            name = name.replace(b"\\n", b"\n").replace(b"\\\\", b"\\")
        result[name] = hex_.decode()
    return result


def main() -> int:
    parser = c.base_parser(__doc__.split("\n\n")[0])
    parser.add_argument(
        "--size", type=c.parse_size, default=2 << 30, help="size of the large file (default 2G = 2 GiB)"
    )
    args = parser.parse_args()
    src, min_files = c.tree_source(args)
    with c.scratch_dir(args.work, "mesh-bench-hash-") as scratch:
        src_bytes = c.tree_stats(src).bytes
        c.check_space(scratch.root, args.size + 2 * src_bytes + (1 << 30))
        c.print_header("mesh hash benchmark", scratch.root)
        print(
            f"repeat: best of {args.repeat}; before each run (untimed): inputs re-read into the page cache, "
            "`sync`, wait until disk and CPUs are idle; GB = 1e9 bytes\n",
            flush=True,
        )
        rows_a, runs_a, ok_a = bench_file(scratch, args.repeat, args.size)
        scratch.discard(scratch.path("big.bin"))
        rows_b, runs_b, ok = bench_tree(scratch, args.repeat, src, min_files)
        c.print_table(rows_a + rows_b)
        c.print_runs(runs_a + runs_b)
    return 0 if ok and ok_a else 1


if __name__ == "__main__":
    c.run_main(main)
