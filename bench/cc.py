"""Benchmark ``mesh cc`` against a local build, distcc, icecream and ccache on brotli's C sources.

The project: the 35 C files of brotli 1.2.1's source distribution from PyPI (c/common,
c/dec, c/enc; ``make cc-deps`` fetches it into tests/.data), built by a Makefile with
``-MMD -MP`` dependency files at ``-O2``. Three hosts: network namespaces on a private
bridge (tests/netns.py), sharing this machine's cores; every build runs in namespace 0.

Contestants, one after the other in one run, each build after ``make clean``:

- local ``make -j1`` and ``-j2`` (the reference objects: the ``-j2`` build);
- distcc: ``distccd`` in each namespace (2 jobs each), ``DISTCC_HOSTS`` naming the three
  (namespace 0's own daemon is reached over TCP, like the others): ``-j1``, ``-j2``, ``-j6``;
- icecream: a scheduler in namespace 0 (named to the daemons with ``-s``: tests/netns.py's
  addresses have no broadcast address) and an ``iceccd`` (2 jobs) in each namespace, namespace 0's with
  ``--no-remote`` so that every compile goes to another host; an untimed first build
  packs the compiler: ``-j1``, ``-j2``, ``-j6``;
- ccache (local): cold (an emptied cache) and warm (again after ``make clean``), ``-j2``;
- ``mesh cc``: a node in each namespace (2 slots, mDNS), the wrapper talking to node 0 through
  the fast scripts of ``mesh cc --links``: cold at ``-j1``, ``-j2`` and ``-j6`` (each with a
  ``-D`` of its own, which makes the preprocessed text, and so the cache key, new, and
  changes no object), warm on the same node (node 0 again, after ``make clean``), and warm
  from another node (node 1, which has none of it: the ``-j1`` cold build ran on node 0's
  own slots), answered from its peers' caches.

Per-compile overhead = (distributed build time - local build time) / 35, at ``-j1`` and
``-j2``. Byte identity: every object and dependency file of every build against the
reference build's, with ``cmp``'s rule (equal bytes).

With ``--rounds N`` (N > 0), the builds the issue's targets compare are then repeated N
times round-robin with distcc and a fresh mesh both up: local ``-j1``, distcc ``-j1``,
``mesh cc`` cold ``-j1`` on node 0, warm on node 0, warm from node 1 (each round with a
``-D`` of its own, so node 1 has none of it), and a table of best and median times and
the targets' ratios of medians follows: one build of each is too noisy on this machine
to tell 30 ms a compile (1 s a build) from the load of others. Each round also times the
floor of a compiler wrapper written in Python that preprocesses, one compile after the
other as at ``-j1``: 35 starts of ``python -I -S`` and 35 runs of ``gcc -E
-fdirectives-only`` (the per-compile sum is what such a wrapper pays before any node is
asked, to set beside distcc's whole overhead).

``--debug-optimised`` then builds at ``-O2 -g``, which ``mesh cc`` compiles where the
wrapper runs and keeps in the mesh's cache (mesh.cc.keptcompiles): local ``-j2`` (the
reference of that table), ccache cold and warm, ``mesh cc`` cold, warm on the same node
and warm from another node.

``--warm-rounds N`` then repeats only the warm pair N times (each round after an untimed
cold ``-j2`` build on node 0 with a ``-D`` of its own): warm on node 0, warm from node 1,
and their ratio each round, for the one target whose builds are short.

Usage: python bench/cc.py [--work DIR] [--tools LIST] [--rounds N] [--warm-rounds N]
Prints a markdown table on stdout, progress on stderr. Needs root (namespaces), gcc, make,
distcc, icecc and ccache (``apt-get install distcc icecc ccache``).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from functools import partial
from pathlib import Path

import _common as c

c.use_repo()

from tests.netns import Lan, NsProcess  # noqa: E402
from tests.nodeutil import MESH, node_env, wait_for  # noqa: E402
from tests.test_cc_netns import SDIST, outputs, start_cc_mesh  # noqa: E402
from tests.test_cc_netns import unpack as unpack_brotli  # noqa: E402

CFLAGS = "-O2"
SOURCES = 35


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def unpack(work: Path) -> Path:
    """brotli's C sources and the Makefile of tests/test_cc_netns.py, fresh in ``work``."""
    if not SDIST.exists():
        subprocess.run(["make", "-C", str(c.REPO_ROOT), "cc-deps"], check=True)
    if (work / "brotli-1.2.1").exists():
        shutil.rmtree(work / "brotli-1.2.1")
    return unpack_brotli(work)


class Bench:
    def __init__(self, lan: Lan, root: Path, work: Path) -> None:
        self.lan = lan
        self.root = root
        self.work = work
        self.rows: list[tuple[str, float, str, str]] = []  # what, seconds, identical, note
        self.reference: dict[str, bytes] = {}
        self.times: dict[str, float] = {}

    def build(self, what: str, jobs: int, cc: str, env: dict[str, str], *, cflags: str = CFLAGS, note: str = "") -> str:
        """``make clean``, then the timed ``make -jN CC=cc`` in namespace 0: its stderr."""
        subprocess.run(["make", "-s", "clean"], cwd=self.root, check=True)
        began = time.perf_counter()
        done = self.lan.run(
            0, ["make", f"-j{jobs}", f"CC={cc}", f"CFLAGS={cflags}"], cwd=self.root, env=env, timeout=900
        )
        took = time.perf_counter() - began
        if done.returncode != 0:
            raise SystemExit(f"{what}: make failed:\n{done.stderr[-3000:]}")
        built = outputs(self.root)
        if not self.reference:
            self.reference = built
        objects = [k for k in self.reference if k.endswith(".o")]
        same = sum(built.get(k) == self.reference[k] for k in objects)
        deps = sum(built.get(k) == self.reference[k] for k in self.reference if k.endswith(".d"))
        identical = f"{same}/{len(objects)} .o, {deps}/{len(self.reference) - len(objects)} .d"
        differing = [k for k in self.reference if k.endswith(".d") and built.get(k) != self.reference[k]]
        if differing:  # say how, once: the first line of the first one, both ways
            mine = built.get(differing[0], b"(missing)").decode(errors="replace").splitlines()[:1]
            theirs = self.reference[differing[0]].decode(errors="replace").splitlines()[:1]
            log(f"{what}: {differing[0]} starts {mine} here, {theirs} in the local build")
        self.rows.append((what, took, identical, note))
        self.times[what] = took
        log(f"{what}: {took:.2f} s, identical {identical} {note}")
        return done.stderr

    def note(self, text: str) -> None:
        """Say where the last build's compiles went (its table row's last column)."""
        self.rows[-1] = (*self.rows[-1][:3], text)
        log(f"  {text}")


def plain_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("MESH_", "DISTCC_", "CCACHE_", "ICECC"))}


@contextmanager
def distcc(lan: Lan, work: Path) -> Iterator[dict[str, str]]:
    logs = work / "distcc"
    logs.mkdir(exist_ok=True)
    logs.chmod(0o777)
    assert lan.subnet is not None
    daemons: list[NsProcess] = []
    for i, address in enumerate(lan.addresses):
        argv = ["distccd", "--daemon", "--no-detach", "--allow", str(lan.subnet), "--listen", address, "--jobs", "2"]
        daemons.append(lan.spawn(i, [*argv, "--log-file", str(logs / f"distccd{i}.log")]))

    def answers(address: str) -> bool:
        probe = f"import socket; socket.create_connection(({address!r}, 3632), timeout=1).close()"
        return lan.run(0, [sys.executable, "-c", probe]).returncode == 0

    for address in lan.addresses:
        wait_for(partial(answers, address), timeout=20, what=f"distccd at {address}")
    state = work / "distcc-state"
    state.mkdir(exist_ok=True)
    env = dict(plain_env(), DISTCC_DIR=str(state), DISTCC_HOSTS=" ".join(f"{a}/2" for a in lan.addresses))
    try:
        yield env
    finally:
        for daemon in daemons:
            daemon.stop()


@contextmanager
def icecream(lan: Lan, work: Path) -> Iterator[dict[str, str]]:
    name = f"meshbench{os.getpid()}"
    logs = work / "icecc"
    logs.mkdir(exist_ok=True)
    logs.chmod(0o777)
    os.makedirs("/run/icecc", exist_ok=True)
    scheduler_log = logs / "scheduler.log"
    processes = [lan.spawn(0, ["icecc-scheduler", "-n", name, "-l", str(scheduler_log)])]
    for i in range(lan.n):
        envs = work / f"icecc-env{i}"
        envs.mkdir(exist_ok=True)
        shutil.chown(envs, "icecc", "icecc")  # iceccd chowns it, as user icecc
        daemon = f"iceccd -vvv -n {name} -s {lan.addresses[0]} -m 2 -b {envs} -N node{i} -l {logs / f'iceccd{i}.log'}"
        if i == 0:
            daemon += " --no-remote"  # namespace 0 compiles nothing: every compile goes to another host
            processes.append(lan.spawn(i, ["sh", "-c", f"exec {daemon}"]))
        else:  # a root iceccd's socket is /run/icecc/iceccd.socket: one tmpfs each
            processes.append(lan.spawn(i, ["sh", "-c", f"mount -t tmpfs tmpfs /run/icecc && exec {daemon}"]))

    def logged_in() -> bool:
        daemons = [logs / f"iceccd{i}.log" for i in range(lan.n)]
        found = re.compile(r"Connected to scheduler")
        return all(d.exists() and found.search(d.read_text(errors="replace")) for d in daemons)

    wait_for(logged_in, timeout=60, what="the iceccds to log in at the scheduler")
    try:
        yield plain_env()
    finally:
        for process in reversed(processes):
            process.stop()


@contextmanager
def mesh(lan: Lan, work: Path) -> Iterator[tuple[list[Path], list[str], str]]:
    homes_at = work / "m"
    if homes_at.exists():
        shutil.rmtree(homes_at)
    homes_at.mkdir()
    homes, nodes, ids = start_cc_mesh(lan, homes_at)
    links = work / "links"
    subprocess.run([*MESH, "cc", "--links", str(links)], check=True, stdout=subprocess.DEVNULL)
    try:
        yield homes, ids, str(links / "gcc")
    finally:
        for node in nodes:
            node.stop()


def where(stderr: str) -> str:
    """How ``mesh cc -v`` says the compiles went: counts of ran on a node, cache hits, here."""
    said = [line for line in stderr.splitlines() if line.startswith("mesh cc: ")]
    counts: Counter[str] = Counter()
    for line in said:
        if "from the action cache" in line:
            counts["cache hits"] += 1
        elif "kept in the mesh's cache" in line:
            counts["here, kept"] += 1
        elif m := re.search(r"ran on node (\w+)", line):
            counts[f"ran on {m.group(1)[:6]}"] += 1
        else:
            counts["here"] += 1
    return ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--work", default="/var/tmp/mesh-bench-cc", help="scratch directory (kept short)")
    parser.add_argument("--tools", default="distcc,icecream,ccache,mesh", help="which contestants (all by default)")
    parser.add_argument("--rounds", type=int, default=0, help="repeat the targets' builds N times (see above)")
    parser.add_argument("--warm-rounds", type=int, default=0, help="repeat the warm pair N times (see above)")
    parser.add_argument(
        "--debug-optimised", action="store_true", help="then -O2 -g builds: local, ccache, mesh cc kept (see above)"
    )
    args = parser.parse_args()
    tools = set(args.tools.split(","))
    for tool in ("gcc", "make", "distcc", "distccd", "icecc", "iceccd", "icecc-scheduler", "ccache"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: apt-get install gcc make distcc icecc ccache")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    work.chmod(0o755)
    root = unpack(work)
    with Lan(3) as lan:
        bench = Bench(lan, root, work)
        local = plain_env()
        bench.build("local make -j2 (reference)", 2, "gcc", local)
        bench.build("local make -j1", 1, "gcc", local)
        if "distcc" in tools:
            with distcc(lan, work) as env:
                for jobs in (1, 2, 6):
                    bench.build(f"distcc -j{jobs} (3 hosts)", jobs, "distcc gcc", env)
        if "icecream" in tools:
            with icecream(lan, work) as env:
                bench.lan.run(
                    0,
                    ["sh", "-c", "icecc gcc -O2 -Ic/include -c c/common/constants.c -o /dev/null"],
                    cwd=root,
                    env=env,
                    timeout=300,
                )  # packs the compiler (untimed)
                for jobs in (1, 2, 6):
                    bench.build(f"icecream -j{jobs} (all remote)", jobs, "icecc gcc", env)
        if "ccache" in tools:
            cache = work / "ccache"
            shutil.rmtree(cache, ignore_errors=True)
            env = dict(local, CCACHE_DIR=str(cache))
            bench.build("ccache -j2 cold", 2, "ccache gcc", env)
            bench.build("ccache -j2 warm", 2, "ccache gcc", env)
        if "mesh" not in tools:
            return report(bench)
        if args.rounds or args.warm_rounds:
            with ExitStack() as stack:
                denv = stack.enter_context(distcc(lan, work)) if "distcc" in tools and args.rounds else None
                homes, _ids, gcc = stack.enter_context(mesh(lan, work))
                repeated = repeat(bench, args.rounds, homes, gcc, denv) if args.rounds else {}
                pairs = warm_pairs(bench, args.warm_rounds, homes, gcc)
        with mesh(lan, work) as (homes, ids, gcc):
            env0 = node_env(str(homes[0]), PATH=os.environ["PATH"], MESH_CC_VERBOSE="1")
            env1 = node_env(str(homes[1]), PATH=os.environ["PATH"], MESH_CC_VERBOSE="1")
            tag = str(os.getpid())
            for jobs in (1, 2, 6):
                flags = f"{CFLAGS} -DMESH_BENCH_RUN={tag}{jobs}"
                said = bench.build(f"mesh cc -j{jobs} cold", jobs, gcc, env0, cflags=flags)
                bench.note(where(said))
            flags = f"{CFLAGS} -DMESH_BENCH_RUN={tag}1"
            said = bench.build("mesh cc -j2 warm, same node", 2, gcc, env0, cflags=flags)
            bench.note(where(said))
            said = bench.build("mesh cc -j2 warm, from another node", 2, gcc, env1, cflags=flags)
            bench.note(where(said))
        if args.debug_optimised:
            debug = debug_optimised(lan, root, work, "ccache" in tools)
    report(bench)
    if args.debug_optimised:
        print()
        print(f"`{DEBUG_CFLAGS}`: compiled here, kept in the mesh's cache")
        print()
        report(debug)
    if args.rounds:
        report_rounds(repeated, args.rounds)
    if args.warm_rounds:
        print()
        print(f"{args.warm_rounds} warm pairs (s): same node, from another node, ratio")
        print()
        for same, other in pairs:
            print(f"- {same:.2f} {other:.2f} {other / same:.2f}x")
        ratios = [other / same for same, other in pairs]
        print(f"- median ratio {statistics.median(ratios):.2f}x, best {min(ratios):.2f}x, worst {max(ratios):.2f}x")
    return 0


#: The flags of the builds that mesh cc compiles here and keeps in the cache (--debug-optimised).
DEBUG_CFLAGS = "-O2 -g"


def debug_optimised(lan: Lan, root: Path, work: Path, ccache: bool) -> Bench:
    """``-O2 -g`` builds, which mesh cc compiles here and keeps in the mesh's cache: local
    ``-j2`` (the reference), ccache cold and warm, ``mesh cc`` cold, warm on the same node
    and warm from another node (a fresh mesh)."""
    debug = Bench(lan, root, work)
    debug.build(f"local make -j2 {DEBUG_CFLAGS} (reference)", 2, "gcc", plain_env(), cflags=DEBUG_CFLAGS)
    if ccache:
        cache = work / "ccache-debug"
        shutil.rmtree(cache, ignore_errors=True)
        env = dict(plain_env(), CCACHE_DIR=str(cache))
        debug.build("ccache -j2 cold", 2, "ccache gcc", env, cflags=DEBUG_CFLAGS)
        debug.build("ccache -j2 warm", 2, "ccache gcc", env, cflags=DEBUG_CFLAGS)
    with mesh(lan, work) as (homes, _ids, gcc):
        env0 = node_env(str(homes[0]), PATH=os.environ["PATH"], MESH_CC_VERBOSE="1")
        env1 = node_env(str(homes[1]), PATH=os.environ["PATH"], MESH_CC_VERBOSE="1")
        for what, env in (("cold", env0), ("warm, same node", env0), ("warm, from another node", env1)):
            said = debug.build(f"mesh cc -j2 {what}", 2, gcc, env, cflags=DEBUG_CFLAGS)
            debug.note(where(said))
    return debug


def warm_pairs(bench: Bench, rounds: int, homes: list[Path], gcc: str) -> list[tuple[float, float]]:
    """The warm pair ``rounds`` times, each after an untimed cold -j2 build on node 0."""
    rep = Bench(bench.lan, bench.root, bench.work)
    rep.reference = bench.reference
    env0 = node_env(str(homes[0]), PATH=os.environ["PATH"], MESH_CC_VERBOSE="1")
    env1 = node_env(str(homes[1]), PATH=os.environ["PATH"], MESH_CC_VERBOSE="1")
    pairs = []
    for r in range(rounds):
        flags = f"{CFLAGS} -DMESH_BENCH_PAIR={os.getpid()}{r}"
        rep.build("cold", 2, gcc, env0, cflags=flags)
        rep.build("same", 2, gcc, env0, cflags=flags)
        said = rep.build("other", 2, gcc, env1, cflags=flags)
        pairs.append((rep.times["same"], rep.times["other"]))
        peers = sum(" (http" in line for line in said.splitlines() if "from the action cache of node" in line)
        log(f"  {peers}/{SOURCES} of the build on node 1 were hits from a peer's cache")
    for what, _took, identical, _note in rep.rows:
        if identical != "35/35 .o, 35/35 .d":
            print(f"NOT IDENTICAL: {what}: {identical}")
    return pairs


def repeat(
    bench: Bench, rounds: int, homes: list[Path], gcc: str, denv: dict[str, str] | None
) -> dict[str, list[float]]:
    """The targets' builds ``rounds`` times round-robin (see the module docstring): times by build."""
    rep = Bench(bench.lan, bench.root, bench.work)
    rep.reference = bench.reference
    env0 = node_env(str(homes[0]), PATH=os.environ["PATH"], MESH_CC_VERBOSE="1")
    env1 = node_env(str(homes[1]), PATH=os.environ["PATH"], MESH_CC_VERBOSE="1")
    times: dict[str, list[float]] = {}
    for r in range(rounds):
        flags = f"{CFLAGS} -DMESH_BENCH_ROUND={os.getpid()}{r}"
        builds = [("local make -j1", 1, "gcc", plain_env(), CFLAGS)]
        if denv is not None:
            builds.append(("distcc -j1 (3 hosts)", 1, "distcc gcc", denv, CFLAGS))
        builds += [
            ("mesh cc -j1 cold", 1, gcc, env0, flags),
            ("mesh cc -j2 warm, same node", 2, gcc, env0, flags),
            ("mesh cc -j2 warm, from another node", 2, gcc, env1, flags),
        ]
        for what, jobs, cc, env, cflags in builds:
            said = rep.build(what, jobs, cc, env, cflags=cflags)
            times.setdefault(what, []).append(rep.times[what])
            if cc == gcc:
                rep.note(where(said))
        for what, took in floors(bench.root, flags).items():
            times.setdefault(what, []).append(took)
    for what, _took, identical, note in rep.rows:
        if identical != "35/35 .o, 35/35 .d" and not what.startswith("distcc"):
            print(f"NOT IDENTICAL: {what}: {identical} ({note})")
    return times


#: The floor's parts: what a compiler wrapper written in Python pays before it can ask
#: anyone (its interpreter's start) and what it pays to know the compile's input (the
#: preprocessing distcc's plain mode and mesh cc both run), one compile after the other.
FLOOR_START = "floor: python -I -S starts, 35 one after the other"
FLOOR_CPP = "floor: gcc -E -fdirectives-only, 35 one after the other"


def floors(root: Path, cflags: str) -> dict[str, float]:
    """Seconds for the floor's parts over the 35 sources (see FLOOR_START, FLOOR_CPP)."""
    sources = sorted(str(p.relative_to(root)) for p in root.glob("c/*/*.c") if p.parent.name != "include")
    commands = {
        FLOOR_START: lambda _source: [sys.executable, "-I", "-S", "-c", "pass"],
        FLOOR_CPP: lambda source: ["gcc", *cflags.split(), "-Ic/include", "-E", "-fdirectives-only", source],
    }
    took = {}
    for what, command in commands.items():
        began = time.perf_counter()
        for source in sources:
            subprocess.run(command(source), cwd=root, check=True, stdout=subprocess.DEVNULL)
        took[what] = time.perf_counter() - began
    return took


def report_rounds(times: dict[str, list[float]], rounds: int) -> None:
    print()
    print(f"{rounds} rounds, round-robin:")
    print()
    print("| build | best s | median s | all |")
    print("| --- | --- | --- | --- |")
    for what, took in times.items():
        every = " ".join(f"{t:.2f}" for t in took)
        print(f"| {what} | {min(took):.2f} | {statistics.median(took):.2f} | {every} |")
    med = {what: statistics.median(took) for what, took in times.items()}
    print()
    local = med["local make -j1"]
    for name in ("distcc -j1 (3 hosts)", "mesh cc -j1 cold"):
        if name in med:
            print(f"- {name}: per-compile overhead at -j1 (medians) {(med[name] - local) / SOURCES * 1000:+.1f} ms")
    if FLOOR_START in med and FLOOR_CPP in med:
        start, cpp = (med[f] / SOURCES * 1000 for f in (FLOOR_START, FLOOR_CPP))
        print(
            f"- the floor of a Python wrapper that preprocesses (medians): start {start:.1f} ms + "
            f"gcc -E {cpp:.1f} ms = {start + cpp:.1f} ms a compile, before any node is asked"
        )
    other = med["mesh cc -j2 warm, from another node"] / med["mesh cc -j2 warm, same node"]
    print(f"- warm from another node / warm on the same node (medians): {other:.2f}x (target <= 1.5)")


def report(bench: Bench) -> int:
    """Print the tables (what was run of them)."""
    t = bench.times
    print("| build | seconds | identical to local | where |")
    print("| --- | --- | --- | --- |")
    for what, took, identical, note in bench.rows:
        print(f"| {what} | {took:.2f} | {identical} | {note} |")
    print()
    print("| per-compile overhead, (build - local) / 35 | -j1 | -j2 |")
    print("| --- | --- | --- |")
    for name, key in (
        ("distcc", "distcc -j{} (3 hosts)"),
        ("icecream", "icecream -j{} (all remote)"),
        ("mesh cc cold", "mesh cc -j{} cold"),
    ):
        if key.format(1) not in t or key.format(2) not in t:
            continue
        one = (t[key.format(1)] - t["local make -j1"]) / SOURCES * 1000
        two = (t[key.format(2)] - t["local make -j2 (reference)"]) / SOURCES * 1000
        print(f"| {name} | {one:+.1f} ms | {two:+.1f} ms |")
    print()
    if "ccache -j2 warm" not in t or "mesh cc -j2 warm, same node" not in t:
        return 0
    ratio = t["mesh cc -j2 warm, same node"] / t["ccache -j2 warm"]
    other = t["mesh cc -j2 warm, from another node"] / t["mesh cc -j2 warm, same node"]
    print(
        f"warm rebuild: mesh cc same node / ccache warm = {ratio:.2f}x (target < 1); "
        f"from another node / same node = {other:.2f}x (target <= 1.5)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
