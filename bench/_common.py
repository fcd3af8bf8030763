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

    When run by a python that lacks mesh's dependencies (e.g. ``python bench/hash.py`` with a
    system python), re-execute the same command with ``.venv/bin/python``.
    """
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    try:
        import blake3  # noqa: F401
        import cbor2  # noqa: F401
    except ImportError:
        if VENV_PYTHON.exists() and Path(sys.executable).resolve() != VENV_PYTHON.resolve():
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

    :meth:`remove` deletes paths inside it only, so a wrong path can never take
    anything else with it.
    """

    def __init__(self, parent: str, prefix: str) -> None:
        os.makedirs(parent, exist_ok=True)
        self.root = tempfile.mkdtemp(prefix=prefix, dir=parent)

    def path(self, *names: str) -> str:
        return os.path.join(self.root, *names)

    def remove(self, path: str) -> None:
        """``rm -rf path``, for paths inside the scratch directory only."""
        real = os.path.realpath(path)
        if os.path.commonpath([real, os.path.realpath(self.root)]) != os.path.realpath(self.root):
            raise ValueError(f"refusing to remove {path}: outside the scratch dir {self.root}")
        if os.path.lexists(path):
            subprocess.run(["rm", "-rf", "--one-file-system", "--", path], check=True)

    def cleanup(self) -> None:
        if os.path.lexists(self.root):
            note(f"removing scratch dir {self.root}")
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
    except KeyboardInterrupt:
        note("interrupted")
        raise
    finally:
        # A second Ctrl-C must not abandon the clean-up half done.
        old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            scratch.cleanup()
        finally:
            signal.signal(signal.SIGINT, old_int)
            signal.signal(signal.SIGTERM, old_term)


def check_space(where: str, need: int) -> None:
    """Exit early when the filesystem of ``where`` has less than ``need`` bytes free."""
    free = shutil.disk_usage(where).free
    if free < need:
        sys.exit(f"not enough space in {where}: {free / 1e9:.1f} GB free, the benchmark needs ~{need / 1e9:.1f} GB")


def note(text: str) -> None:
    """Progress for the reader, on stderr (the tables go to stdout)."""
    print(f"[bench] {text}", file=sys.stderr, flush=True)


# -- timing --------------------------------------------------------------------------


@dataclass
class Timing:
    """Wall-clock seconds of every repetition; :attr:`best` is what tables report."""

    runs: list[float] = field(default_factory=list)

    @property
    def best(self) -> float:
        return min(self.runs)

    def describe(self) -> str:
        return " ".join(f"{t:.3f}" for t in self.runs)


def best_of(
    repeat: int,
    work: Callable[[], object],
    *,
    before: Callable[[], object] | None = None,
    after: Callable[[], object] | None = None,
    sync: bool = True,
) -> Timing:
    """Time ``work()`` ``repeat`` times. ``before``/``after`` run untimed around each run;
    with ``sync`` the dirty pages of earlier steps are written out (``sync``) just before
    the clock starts, so they do not bill the timed run."""
    timing = Timing()
    for _ in range(repeat):
        if before is not None:
            before()
        if sync:
            os.sync()
        start = time.perf_counter()
        work()
        timing.runs.append(time.perf_counter() - start)
        if after is not None:
            after()
    return timing


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


def list_files(root: str) -> list[str]:
    """Every regular file below ``root``, as paths relative to it, sorted."""
    out = []
    for top, dirnames, filenames in os.walk(root):
        for name in filenames:
            path = os.path.join(top, name)
            if os.path.isfile(path) and not os.path.islink(path):
                out.append(os.path.relpath(path, root))
    out.sort()
    return out


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
    """Read every regular file below ``root`` once, so the timed runs hit the page cache."""
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
                    best, kind = mnt, f"{parts[2]} on {parts[0]}, mounted at {mnt}"
    except OSError:
        pass
    return kind


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
        f"- scratch: {scratch} ({_fs_type(scratch)})",
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


def fmt_time(seconds: float) -> str:
    return f"{seconds:.3f} s"


def fmt_rate(nbytes: int, seconds: float) -> str:
    return f"{nbytes / seconds / GB:.2f} GB/s"


def time_row(
    measurement: str,
    mesh: float,
    reference: str,
    ref: float,
    *,
    max_ratio: float | None = None,
    target_note: str = "",
) -> Row:
    """A row comparing times: ratio mesh/ref, lower is better; target is a maximum ratio."""
    ratio = mesh / ref
    if max_ratio is None:
        target, met = "info", "info"
    else:
        target = f"<= {max_ratio:.2f}x{target_note}"
        met = "yes" if ratio <= max_ratio else "NO"
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
    mesh: float,
    reference: str,
    ref: float,
    *,
    min_ratio: float | None = None,
) -> Row:
    """A row comparing throughputs over ``nbytes``: ratio mesh/ref, higher is better."""
    ratio = ref / mesh  # throughput ratio = (n/mesh) / (n/ref)
    if min_ratio is None:
        target, met = "info", "info"
    else:
        target = f">= {min_ratio:.2f}x"
        met = "yes" if ratio >= min_ratio else "NO"
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
        [cell.replace("|", "\\|") for cell in (r.measurement, r.mesh, r.reference, r.ref_value, r.ratio, r.target, r.met)]
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
    print("All runs (seconds, in order; tables use the best):\n")
    for name, timing in named:
        print(f"- {name}: {timing.describe()}")
    print(flush=True)
