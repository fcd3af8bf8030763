"""Shared helpers of the benchmarks: scratch space, timing, trees, machine facts, tables.

The benchmark scripts (``bench/hash.py``, ``bench/snapshot.py``) measure mesh against
reference tools *in the same run* and print markdown tables of ratios. Nothing here
asserts anything: a benchmark measures and reports.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
VENV_PYTHON = REPO_ROOT / ".venv" / "bin" / "python"
MESH_CLI = REPO_ROOT / ".venv" / "bin" / "mesh"
#: The default tree is padded with generated files up to this many files.
DEFAULT_MIN_FILES = 30_000
#: How old (seconds) the newest mtime/ctime of a tree must be before the stat cache trusts it
#: (mesh's RACY_WINDOW_NS is 2 s; half a second of margin).
SETTLE_SECONDS = 2.5


def use_repo() -> None:
    """Make ``import mesh`` work: the repo root on sys.path, and the project's venv python.

    The repo root goes first, also when the venv's editable install put it at the end:
    ``bench/`` (the script's own directory, first on sys.path) holds ``mesh.py``, which
    would otherwise be imported as ``mesh``.

    When run by a python that lacks mesh's dependencies (e.g. ``python bench/hash.py`` with a
    system python), re-execute the same command with ``.venv/bin/python``.
    """
    if sys.path[:1] != [str(REPO_ROOT)]:
        if str(REPO_ROOT) in sys.path:
            sys.path.remove(str(REPO_ROOT))
        sys.path.insert(0, str(REPO_ROOT))
    try:
        import blake3  # noqa: F401
        import cbor2  # noqa: F401
    except ImportError:
        # Compare prefixes, not executables: the venv's python is a symlink to the base one.
        if VENV_PYTHON.exists() and Path(sys.prefix).resolve() != VENV_PYTHON.parent.parent.resolve():
            os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), *sys.argv])
        raise


# -- command line -------------------------------------------------------------------


def parse_size(text: str) -> int:
    """``2G``, ``512M``, ``1.5GiB``, ``4096``: a byte count in binary units."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", text, re.IGNORECASE)
    if m is None:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 2G, 512M, 4096)")
    scale = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[m.group(2).lower()]
    return int(float(m.group(1)) * scale)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def base_parser(description: str) -> argparse.ArgumentParser:
    """The options every benchmark takes: --tree, --work, --repeat, --min-files."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "--tree",
        metavar="DIR",
        help="source tree to benchmark (copied into the scratch dir first); "
        "default: the Python stdlib of this interpreter's base installation",
    )
    p.add_argument(
        "--work",
        metavar="DIR",
        default="/var/tmp",
        help="parent of the scratch directory (a fresh subdirectory is made and removed); default /var/tmp",
    )
    p.add_argument("--repeat", type=positive_int, default=3, metavar="N", help="repetitions per row; best is reported")
    p.add_argument(
        "--min-files",
        type=int,
        default=None,
        metavar="N",
        help=f"pad the tree copy with generated files up to N files "
        f"(default {DEFAULT_MIN_FILES} for the default tree, 0 with --tree)",
    )
    return p


def tree_source(args: argparse.Namespace) -> tuple[str, int]:
    """(source tree, minimum file count) from the parsed options."""
    if args.tree:
        src = os.path.abspath(args.tree)
        if not os.path.isdir(src):
            sys.exit(f"--tree {args.tree}: not a directory")
        return src, args.min_files if args.min_files is not None else 0
    src = sysconfig.get_paths()["stdlib"]
    return src, args.min_files if args.min_files is not None else DEFAULT_MIN_FILES


# -- scratch space ------------------------------------------------------------------


class Scratch:
    """A fresh directory under ``parent``, removed at the end (also on Ctrl-C or SIGTERM).

    :meth:`discard` acts on paths inside it only, so a wrong path can never take anything
    else with it. ``reserve``: bytes to keep free; below that, discarding deletes the trash.
    """

    def __init__(self, parent: str, prefix: str) -> None:
        os.makedirs(parent, exist_ok=True)
        self.root = tempfile.mkdtemp(prefix=prefix, dir=parent)
        self.reserve = 2 << 30
        self._trashed = 0

    def path(self, *names: str) -> str:
        return os.path.join(self.root, *names)

    def _inside(self, path: str) -> None:
        real = os.path.realpath(path)
        top = os.path.realpath(self.root)
        if real == top or os.path.commonpath([real, top]) != top:
            raise ValueError(f"refusing to remove {path}: not inside the scratch dir {self.root}")

    def discard(self, path: str) -> None:
        """Move ``path`` (inside the scratch dir) out of the way, into ``trash/``; deleted at the end.

        Deleting a large tree between runs would leave the next timed run competing with
        the deletion's background work (ext4 mounted with ``discard`` trims freed blocks
        asynchronously, for many seconds); a rename costs nothing.
        """
        self._inside(path)
        if not os.path.lexists(path):
            return
        trash = self.path("trash")
        if shutil.disk_usage(self.root).free < self.reserve and os.path.isdir(trash):
            note("disk space is short: deleting the trash now (the next run may pay for its trims)")
            subprocess.run(["rm", "-rf", "--one-file-system", "--", trash], check=True)
        os.makedirs(trash, exist_ok=True)
        self._trashed += 1
        os.rename(path, os.path.join(trash, f"{self._trashed:04d}-{os.path.basename(path)}"))

    def cleanup(self) -> None:
        if os.path.lexists(self.root):
            note(f"removing scratch dir {self.root} (takes a while)")
            subprocess.run(["rm", "-rf", "--one-file-system", "--", self.root], check=False)


@contextlib.contextmanager
def scratch_dir(parent: str, prefix: str) -> Iterator[Scratch]:
    """A :class:`Scratch` that is removed however the block ends (SIGTERM is turned into Ctrl-C)."""

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    old_term = signal.signal(signal.SIGTERM, on_term)
    scratch = Scratch(parent, prefix)
    try:
        yield scratch
    finally:
        # A second Ctrl-C must not abandon the clean-up half done.
        old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            scratch.cleanup()
        finally:
            signal.signal(signal.SIGINT, old_int)
            signal.signal(signal.SIGTERM, old_term)


def run_main(main: Callable[[], int]) -> None:
    """Run a benchmark's ``main`` and exit with its status; Ctrl-C or SIGTERM exits 130
    without a traceback (the scratch directory has been removed by then)."""
    try:
        status = main()
    except KeyboardInterrupt:
        note("interrupted; scratch files removed")
        status = 130
    sys.exit(status)


def check_space(where: str, need: int) -> None:
    """Exit early when the filesystem of ``where`` has less than ``need`` bytes free."""
    free = shutil.disk_usage(where).free
    if free < need:
        sys.exit(f"not enough space in {where}: {free / 1e9:.1f} GB free, the benchmark needs ~{need / 1e9:.1f} GB")


def note(text: str) -> None:
    """Progress for the reader, on stderr (the tables go to stdout)."""
    print(f"[bench] {text}", file=sys.stderr, flush=True)


# -- timing --------------------------------------------------------------------------


#: A run is "contended" when other user-space processes (or other guests of the hypervisor,
#: as steal time) used more than this share of the machine's CPUs during it; such runs are
#: repeated. Kernel threads (writeback on our behalf) do not count.
CONTENDED_SHARE = 0.10
#: Seconds to wait at most for a quiet machine before each run.
QUIET_LIMIT = 60.0


@dataclass
class Timing:
    """Wall-clock seconds of every run, whether another process competed for the CPUs
    during it, and the untimed wait before it. :attr:`best` (what tables report) is the
    fastest uncontended run (the fastest of all if every run was contended)."""

    runs: list[float] = field(default_factory=list)
    contended: list[bool] = field(default_factory=list)
    #: Seconds spent before each run waiting for a quiet machine (untimed).
    waits: list[float] = field(default_factory=list)

    @property
    def clean_runs(self) -> list[float]:
        return [t for t, busy in zip(self.runs, self.contended, strict=True) if not busy]

    @property
    def best(self) -> float:
        return min(self.clean_runs or self.runs)

    @property
    def best_contended(self) -> bool:
        """True when every run was contended (the best is then not trustworthy)."""
        return not self.clean_runs

    def describe(self) -> str:
        text = " ".join(f"{t:.3f}{'*' if busy else ''}" for t, busy in zip(self.runs, self.contended, strict=True))
        if any(w >= 2.0 for w in self.waits):
            text += f"  (untimed waits for a quiet machine before each: {' '.join(f'{w:.0f}' for w in self.waits)} s)"
        return text


def _disk_counters() -> tuple[int, ...]:
    """(writes completed, I/Os in flight, discards completed) summed over the block devices."""
    writes = inflight = discards = 0
    try:
        with open("/proc/diskstats", encoding="ascii") as f:
            for line in f:
                fields = line.split()
                if len(fields) < 14 or fields[2].startswith(("loop", "ram")):
                    continue
                writes += int(fields[7])
                inflight += int(fields[11])
                if len(fields) >= 15:
                    discards += int(fields[14])
    except OSError:
        pass
    return writes, inflight, discards


_TICK = os.sysconf("SC_CLK_TCK")
_NCPU = os.cpu_count() or 1


def _cpu_busy() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat (idle and iowait are not busy;
    steal, time the hypervisor gave to other guests, is)."""
    with open("/proc/stat", encoding="ascii") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    total = sum(values[:8])  # user nice system idle iowait irq softirq steal
    return total - values[3] - values[4], total


_PF_KTHREAD = 0x00200000


def _process_cpu() -> dict[int, tuple[int, str]]:
    """pid -> (CPU jiffies incl. reaped children, name) of every user-space process but this one."""
    out = {}
    me = os.getpid()
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == me:
            continue
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
                text = f.read()
        except OSError:
            continue
        head, _, tail = text.rpartition(")")
        fields = tail.split()
        try:
            if int(fields[6]) & _PF_KTHREAD:
                continue
            out[int(pid)] = (sum(int(v) for v in fields[11:15]), head.partition("(")[2])
        except (IndexError, ValueError):
            continue
    return out


def _steal() -> int:
    """Jiffies the hypervisor gave to other guests (all CPUs), from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as f:
        return int(f.readline().split()[8])


@dataclass
class _Usage:
    """A sample of what other processes (and other guests, as steal time) used so far."""

    processes: dict[int, tuple[int, str]]
    steal: int

    @classmethod
    def now(cls) -> _Usage:
        return cls(_process_cpu(), _steal())

    def since(self, start: _Usage) -> tuple[float, str]:
        """(CPU seconds others used between ``start`` and this sample, who used most)."""
        used = {p: jiffies - start.processes.get(p, (0, ""))[0] for p, (jiffies, _) in self.processes.items()}
        top = max(used, key=lambda p: used[p], default=None)
        who = f"{self.processes[top][1]} (pid {top})" if top is not None and used[top] > 0 else "nobody"
        steal = self.steal - start.steal
        if steal > (used[top] if top is not None else 0):
            who = "the hypervisor (steal time)"
        return (sum(max(0, u) for u in used.values()) + steal) / _TICK, who


def _busiest_process(interval: float = 0.5) -> str:
    """Who used the most CPU over ``interval`` (for notes)."""
    start = _Usage.now()
    time.sleep(interval)
    return _Usage.now().since(start)[1]


def wait_for_quiet_machine(quiet: float = 1.0, limit: float = QUIET_LIMIT, max_busy: float = 0.10) -> float:
    """Wait until, for ``quiet`` seconds, no block device wrote, trimmed or had I/O in
    flight and the CPUs were at most ``max_busy`` busy; at most ``limit`` seconds.

    Background writeback and trims of earlier steps, and other processes on this small
    machine (a test suite someone runs), would otherwise bill the timed run. Returns
    the time waited.
    """
    start = time.monotonic()
    disk, cpu = _disk_counters(), _cpu_busy()
    calm_since, cpu_since = start, cpu
    while True:
        time.sleep(0.1)
        now = time.monotonic()
        current = _disk_counters()
        if current != disk or current[1] != 0:
            disk, calm_since, cpu_since = current, now, _cpu_busy()
        elif now - calm_since >= quiet:
            busy, total = _cpu_busy()
            if total > cpu_since[1] and (busy - cpu_since[0]) / (total - cpu_since[1]) <= max_busy:
                return now - start
            calm_since, cpu_since = now, (busy, total)
        if now - start >= limit:
            note(f"the machine did not go quiet within {limit:.0f} s (busiest: {_busiest_process()}); timing anyway")
            return time.monotonic() - start


@dataclass
class Contestant:
    """One thing to time: ``work`` (timed) after ``before`` (untimed: fresh state, warm cache)."""

    name: str
    work: Callable[[], object]
    before: Callable[[], object] | None = None


def _timed_run(c: Contestant, sync: bool) -> tuple[float, bool, float]:
    """One run of ``c``: (seconds, contended, untimed wait before it)."""
    if c.before is not None:
        c.before()
    waited = 0.0
    if sync:
        os.sync()
        waited = wait_for_quiet_machine()
    usage = _Usage.now()
    start = time.perf_counter()
    c.work()
    elapsed = time.perf_counter() - start
    others, who = _Usage.now().since(usage)
    contended = others > CONTENDED_SHARE * elapsed * _NCPU and others > 0.05
    if contended:
        note(f"{c.name}: others used {others:.2f} CPU-s during this {elapsed:.2f} s run (most: {who}); repeating it")
    return elapsed, contended, waited


def compare(
    repeat: int, contestants: Sequence[Contestant], *, sync: bool = True, max_tries: int = 3
) -> dict[str, Timing]:
    """Time every contestant ``repeat`` times, round-robin (A B C A B C ...), so that slow
    drifts of the machine hit all of them alike.

    Before each run (untimed): its ``before``, then ``sync`` (dirty pages of earlier steps
    written out) and a wait for a quiet machine (:func:`wait_for_quiet_machine`). A run
    during which other processes used the CPUs noticeably is marked contended and
    repeated, up to ``max_tries`` runs per round.
    """
    timings = {c.name: Timing() for c in contestants}
    for _ in range(repeat):
        for c in contestants:
            t = timings[c.name]
            for _ in range(max_tries):
                elapsed, contended, waited = _timed_run(c, sync)
                t.runs.append(elapsed)
                t.contended.append(contended)
                t.waits.append(waited)
                if not contended:
                    break
    return timings


def best_of(repeat: int, work: Callable[[], object], *, before: Callable[[], object] | None = None) -> Timing:
    """Time one thing ``repeat`` times (see :func:`compare`)."""
    return compare(repeat, [Contestant("run", work, before)])["run"]


def run(
    cmd: Sequence[str] | str,
    *,
    cwd: str | None = None,
    env: dict[str, str] | None = None,
    capture: bool = False,
) -> subprocess.CompletedProcess[bytes]:
    """Run a command (a string runs through ``sh -c``); stdout goes to /dev/null unless
    captured. Raises CalledProcessError, showing its stderr, when it fails."""
    shell = isinstance(cmd, str)
    try:
        return subprocess.run(
            cmd,
            shell=shell,
            cwd=cwd,
            env=env,
            check=True,
            stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
    except subprocess.CalledProcessError as exc:
        sys.stderr.write(exc.stderr.decode(errors="replace"))
        raise


# -- trees ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TreeStats:
    files: int
    bytes: int
    dirs: int
    symlinks: int

    def describe(self) -> str:
        return (
            f"{self.files:,} files, {self.bytes:,} bytes ({self.bytes / 1e6:,.0f} MB), "
            f"{self.dirs:,} directories, {self.symlinks:,} symlinks"
        )


def tree_stats(root: str) -> TreeStats:
    """Count the regular files, their bytes, directories (below root) and symlinks."""
    files = size = dirs = links = 0
    stack = [root]
    while stack:
        with os.scandir(stack.pop()) as it:
            for entry in it:
                if entry.is_dir(follow_symlinks=False):
                    dirs += 1
                    stack.append(entry.path)
                elif entry.is_symlink():
                    links += 1
                elif entry.is_file(follow_symlinks=False):
                    files += 1
                    size += entry.stat(follow_symlinks=False).st_size
    return TreeStats(files, size, dirs, links)


def _pad_size(rng: random.Random) -> int:
    """A file size from a source-tree-like mix: mostly small, a few large."""
    r = rng.random()
    if r < 0.60:
        return rng.randint(0, 4 << 10)
    if r < 0.90:
        return rng.randint(4 << 10, 64 << 10)
    if r < 0.99:
        return rng.randint(64 << 10, 1 << 20)
    return rng.randint(1 << 20, 4 << 20)


def pad_tree(root: str, min_files: int, *, seed: int = 1) -> int:
    """Add generated files of mixed sizes under ``root/_bench_pad`` until ``root`` holds
    ``min_files`` files; returns how many were added."""
    have = tree_stats(root).files
    missing = max(0, min_files - have)
    if not missing:
        return 0
    rng = random.Random(seed)
    pool = rng.randbytes(8 << 20)  # file contents are slices of this at random offsets + a unique header
    for i in range(missing):
        d = os.path.join(root, "_bench_pad", f"d{i // 100:04d}")
        if i % 100 == 0:
            os.makedirs(d, exist_ok=True)
        size = _pad_size(rng)
        header = f"generated file {i}\n".encode()
        body_size = max(0, size - len(header))
        start = rng.randrange(0, len(pool) - body_size + 1)
        with open(os.path.join(d, f"f{i:06d}.dat"), "wb") as f:
            f.write((header + pool[start : start + body_size])[:size])
    return missing


def copy_tree(src: str, dest: str) -> None:
    """``cp -r src dest`` (dest must not exist)."""
    run(["cp", "-r", "--", src, dest])


def warm_tree(root: str) -> None:
    """Read every regular file below ``root`` once, so the timed runs hit the page cache.

    Done before every timed run, not once: on the project's VMs a DAMON ``pageout`` scheme
    evicts page-cache pages left idle for about a minute.
    """
    for top, _, filenames in os.walk(root):
        for name in filenames:
            path = os.path.join(top, name)
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                while os.read(fd, 1 << 20):
                    pass
            finally:
                os.close(fd)


def warm_file(path: str) -> None:
    """Read one file once into the page cache."""
    with open(path, "rb", buffering=0) as f:
        while f.read(8 << 20):
            pass


def newest_change_ns(root: str) -> int:
    """The newest mtime or ctime (ns) of anything below ``root``, ``root`` included."""
    st = os.lstat(root)
    newest = max(st.st_mtime_ns, st.st_ctime_ns)
    stack = [root]
    while stack:
        with os.scandir(stack.pop()) as it:
            for entry in it:
                st = entry.stat(follow_symlinks=False)
                newest = max(newest, st.st_mtime_ns, st.st_ctime_ns)
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
    return newest


def wait_until_settled(root: str, seconds: float = SETTLE_SECONDS) -> float:
    """Wait until nothing below ``root`` changed (mtime or ctime) for ``seconds``; returns the
    time waited. The stat cache re-hashes files changed < 2 s before their hash began
    ("racily clean"), so a tree copied just now would not show the warm path."""
    waited = 0.0
    while True:
        age = (time.time_ns() - newest_change_ns(root)) / 1e9
        if age >= seconds:
            return waited
        pause = seconds - age + 0.05
        time.sleep(pause)
        waited += pause


# -- machine -------------------------------------------------------------------------


def _first_line(cmd: Sequence[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=False).stdout
        return out.splitlines()[0] if out else "?"
    except OSError:
        return "not installed"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _mem_total() -> str:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return f"{int(line.split()[1]) / (1 << 20):.1f} GiB"
    except OSError:
        pass
    return "?"


def _fs_type(path: str) -> str:
    """The filesystem type of ``path`` from /proc/mounts (longest matching mount point)."""
    real = os.path.realpath(path)
    best, kind = "", "?"
    try:
        with open("/proc/mounts", encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mnt = parts[1].replace("\\040", " ")
                if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                    options = parts[3] if len(parts) > 3 else "?"
                    best, kind = mnt, f"{parts[2]} on {parts[0]}, mounted at {mnt} ({options})"
    except OSError:
        pass
    return kind


def _damon() -> str:
    """Whether a DAMON kdamond runs a pageout scheme (it evicts idle page cache), read-only."""
    base = "/sys/kernel/mm/damon/admin/kdamonds"
    try:
        for k in os.listdir(base):
            if not k.isdigit():
                continue
            with open(os.path.join(base, k, "state"), encoding="ascii") as f:
                if f.read().strip() != "on":
                    continue
            for top, _, files in os.walk(os.path.join(base, k, "contexts")):
                if "action" in files:
                    with open(os.path.join(top, "action"), encoding="ascii") as f:
                        if f.read().strip() == "pageout":
                            return (
                                "a DAMON pageout scheme is active (idle page cache is evicted; "
                                "inputs are re-read before each run)"
                            )
    except OSError:
        pass
    return "no DAMON pageout scheme seen"


def machine_lines(scratch: str) -> list[str]:
    """Facts about this machine and the tools measured, one per line (markdown list)."""
    try:
        blake3_version = importlib.metadata.version("blake3")
    except importlib.metadata.PackageNotFoundError:
        blake3_version = "?"
    return [
        f"- nproc: {_first_line(['nproc'])} (os.cpu_count {os.cpu_count()})",
        f"- CPU: {_cpu_model()}",
        f"- memory: {_mem_total()}; kernel {platform.release()}",
        f"- scratch: {scratch}: {_fs_type(scratch)}",
        f"- page cache: {_damon()}",
        f"- python {platform.python_version()} ({sys.executable}), blake3 {blake3_version}",
        f"- {_first_line(['b3sum', '--version'])}; {_first_line(['git', '--version'])}; "
        f"{_first_line(['cp', '--version'])}",
    ]


def print_header(title: str, scratch: str) -> None:
    print(f"# {title}\n")
    print("\n".join(machine_lines(scratch)))
    print(flush=True)


# -- tables --------------------------------------------------------------------------


GB = 1e9


@dataclass
class Row:
    """One table row. ``met`` is "yes", "NO" or "info" (no target)."""

    measurement: str
    mesh: str
    reference: str
    ref_value: str
    ratio: str
    target: str
    met: str


def fmt_time(t: Timing) -> str:
    """The best time; a ``*`` when every run was contended (not trustworthy)."""
    return f"{t.best:.3f} s{'*' if t.best_contended else ''}"


def fmt_rate(nbytes: int, t: Timing) -> str:
    """The throughput of the best run, in GB/s (1e9 bytes); ``*`` as for :func:`fmt_time`."""
    return f"{nbytes / t.best / GB:.2f} GB/s{'*' if t.best_contended else ''}"


def _verdict(ok: bool, *timings: Timing) -> str:
    met = "yes" if ok else "NO"
    return met + (" (contended)" if any(t.best_contended for t in timings) else "")


def time_row(
    measurement: str,
    mesh: Timing,
    reference: str,
    ref: Timing,
    *,
    max_ratio: float | None = None,
    target_note: str = "",
) -> Row:
    """A row comparing best times: ratio mesh/ref, lower is better; the target is a maximum ratio."""
    ratio = mesh.best / ref.best
    if max_ratio is None:
        target, met = "info", "info"
    else:
        target = f"<= {max_ratio:.2f}x{target_note}"
        met = _verdict(ratio <= max_ratio, mesh, ref)
    return Row(
        measurement,
        fmt_time(mesh),
        reference,
        fmt_time(ref),
        f"{ratio:.2f}x (time mesh/ref, lower is better)",
        target,
        met,
    )


def rate_row(
    measurement: str,
    nbytes: int,
    mesh: Timing,
    reference: str,
    ref: Timing,
    *,
    min_ratio: float | None = None,
) -> Row:
    """A row comparing throughputs over ``nbytes``: ratio mesh/ref, higher is better."""
    ratio = ref.best / mesh.best  # throughput ratio = (n / mesh time) / (n / ref time)
    if min_ratio is None:
        target, met = "info", "info"
    else:
        target = f">= {min_ratio:.2f}x"
        met = _verdict(ratio >= min_ratio, mesh, ref)
    return Row(
        measurement,
        fmt_rate(nbytes, mesh),
        reference,
        fmt_rate(nbytes, ref),
        f"{ratio:.2f}x (throughput mesh/ref, higher is better)",
        target,
        met,
    )


HEADERS = ("measurement", "mesh", "reference", "ref time/throughput", "ratio", "target", "met?")


def print_table(rows: Sequence[Row]) -> None:
    """A markdown table, columns padded so it also reads well as plain text."""
    cells = [list(HEADERS)] + [
        [
            cell.replace("|", "\\|")
            for cell in (r.measurement, r.mesh, r.reference, r.ref_value, r.ratio, r.target, r.met)
        ]
        for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(HEADERS))]

    def line(row: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"

    print(line(cells[0]))
    print("| " + " | ".join("-" * w for w in widths) + " |")
    for row in cells[1:]:
        print(line(row))
    print(flush=True)


def print_runs(named: Sequence[tuple[str, Timing]]) -> None:
    """Every repetition of every timed thing, for a reader judging the noise."""
    print(
        "All runs (seconds, in order; * = other processes used the CPUs during the run, so it was "
        "repeated; tables use the best run without *):\n"
    )
    for name, timing in named:
        print(f"- {name}: {timing.describe()}")
    print(flush=True)
