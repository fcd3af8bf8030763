"""The ``mesh`` command line.

Each subcommand is a small function taking the parsed arguments and returning an
exit status: 0 ok, 1 failure, 2 usage. Errors are translated here, once: a
MeshError or an OSError prints one line, ``mesh: error: <message>``, and exits 1;
a UsageError (arguments or settings that cannot work, wherever they were given)
exits 2. A file that cannot be read is a failure, not a usage error: an unreadable
or malformed ``mesh.toml`` or mesh key (ConfigError), like a port or a home already
in use, exits 1. Errors that trio wrapped in exception groups (``mesh up``, the
in-process node) are unwrapped first when every one of them is of those kinds;
anything else is a bug and keeps its traceback. Heavy modules are imported inside
the commands that need them, so ``mesh --help`` starts fast.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from mesh import __version__
from mesh.errors import MeshError, UsageError, unwrap

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def _store(args: argparse.Namespace) -> Any:
    from mesh.cas.store import LocalStore

    return LocalStore(args.settings.store_dir)


@contextlib.contextmanager
def _reader(args: argparse.Namespace) -> Iterator[tuple[Any, Any]]:
    """(the local store, what reads snapshots): with a node named (``--node``, MESH_NODE,
    ``node`` in mesh.toml), the local store with that node's behind it (mesh.wire.remote),
    which fetches only the blobs the local store lacks; else the local store alone."""
    from mesh.config import node_url

    url, explicit = node_url(args.node, home=args.settings.home)
    with _store(args) as store:
        if not explicit:
            yield store, store
            return
        from mesh.wire.client import NodeClient
        from mesh.wire.remote import NodeBackedStore

        with NodeClient(url) as client:
            yield store, NodeBackedStore(store, client)


def _digest(text: str) -> Any:
    from mesh.cas.digest import Digest

    try:
        return Digest.parse(text)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _b3sum_name(name: str) -> tuple[str, str]:
    """b3sum's escaping of a file name: (line prefix, escaped name)."""
    if "\\" in name or "\n" in name:
        return "\\", name.replace("\\", "\\\\").replace("\n", "\\n")
    return "", name


def cmd_hash(args: argparse.Namespace) -> int:
    """Print ``<hex>  <name>`` per file, byte for byte what b3sum prints."""
    from mesh.cas.hasher import hash_file, hash_stream

    status = EXIT_OK
    out = sys.stdout
    for name in args.files or ["-"]:
        try:
            digest = hash_stream(sys.stdin.buffer) if name == "-" else hash_file(name)
        except OSError as exc:
            print(f"mesh hash: {name}: {exc.strerror} (os error {exc.errno})", file=sys.stderr)
            status = EXIT_FAILURE
            continue
        prefix, shown = _b3sum_name(name)
        out.write(f"{prefix}{digest.hex}  {shown}\n")
    out.flush()
    return status


class _ProgressLine:
    """A self-erasing progress line on stderr, redrawn at most ten times a second."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.last = 0.0
        self.shown = False

    def __call__(self, done: int, total: int, done_bytes: int, total_bytes: int) -> None:
        now = time.monotonic()
        if now - self.last < 0.1 and done != total:
            return
        self.last = now
        self.shown = True
        sys.stderr.write(
            f"\r{self.label}: {done}/{total} files, {done_bytes / 1e6:.0f}/{total_bytes / 1e6:.0f} MB\x1b[K"
        )
        sys.stderr.flush()

    def clear(self) -> None:
        if self.shown:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


def cmd_snapshot(args: argparse.Namespace) -> int:
    """Ingest a directory into the store and print its snapshot id."""
    from mesh.cas import gc
    from mesh.cas.snapshot import ingest
    from mesh.cas.statcache import StatCache
    from mesh.ignore import tree_rules

    settings = args.settings
    rules = tree_rules(args.dir, home=settings.home, keep_all=args.all)
    ignore = rules.ignore
    with _store(args) as store:
        cache = (
            None
            if args.no_cache
            else StatCache.for_tree(settings.home, args.dir, store.root, store.epoch(), variant=rules.variant)
        )
        progress = _ProgressLine("snapshot") if sys.stderr.isatty() and not args.quiet else None
        try:
            digest = ingest(store, args.dir, cache=cache, progress=progress, ignore=ignore)
        finally:
            if progress is not None:
                progress.clear()
        if settings.store_max_bytes is not None:
            gc.evict(store, settings.store_max_bytes, extra_roots=(digest,))
    print(digest)
    return EXIT_OK


def cmd_checkout(args: argparse.Namespace) -> int:
    """Write a snapshot out as a directory."""
    from mesh.cas.checkout import checkout

    root = _digest(args.id)
    with _reader(args) as (store, reader):
        if reader is not store:
            reader.fetch_snapshot(root)
        stats = checkout(store, root, args.dir, mode="link" if args.link else "copy", verify=not args.no_verify)
    if not args.quiet:
        print(
            f"checked out {stats.files} files, {stats.directories} directories, {stats.symlinks} symlinks "
            f"({stats.bytes} bytes) into {args.dir}",
            file=sys.stderr,
        )
    return EXIT_OK


def _entry_json(path: bytes, entry: Any) -> dict[str, Any]:
    item: dict[str, Any] = {"path": os.fsdecode(path), "kind": entry.kind.label, "size": entry.size}
    if entry.digest is not None:
        item["digest"] = str(entry.digest)
    else:
        item["target"] = os.fsdecode(entry.link)
    return item


def _entry_line(path: bytes, entry: Any) -> str:
    from mesh.cas.tree import Kind

    ref = f"-> {os.fsdecode(entry.link)}" if entry.kind == Kind.SYMLINK else str(entry.digest)
    suffix = "/" if entry.kind == Kind.DIRECTORY else ""
    return f"{entry.kind.label:4}  {entry.size:>12}  {os.fsdecode(path)}{suffix}  {ref}"


def cmd_ls(args: argparse.Namespace) -> int:
    """List a directory of a snapshot (or describe one non-directory entry)."""
    from mesh.cas.snapshot import read_node, resolve, walk
    from mesh.cas.tree import Kind

    root = _digest(args.id)
    with _reader(args) as (_, store):
        entry = resolve(store, root, args.path)
        rows: list[tuple[bytes, Any]]
        if entry.kind != Kind.DIRECTORY:
            rows = [(os.fsencode(args.path.strip("/")), entry)]
        elif args.recursive:
            rows = list(walk(store, entry.blob))
        else:
            rows = [(e.name, e) for e in read_node(store, entry.blob)]
    if args.json:
        json.dump([_entry_json(p, e) for p, e in rows], sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        sys.stdout.write("".join(_entry_line(p, e) + "\n" for p, e in rows))
    return EXIT_OK


def cmd_cat(args: argparse.Namespace) -> int:
    """Write one file of a snapshot to stdout, verified."""
    from mesh.cas.snapshot import resolve
    from mesh.cas.tree import Kind

    root = _digest(args.id)
    with _reader(args) as (_, store):
        entry = resolve(store, root, args.path)
        if entry.kind == Kind.DIRECTORY:
            raise MeshError(f"{args.path} is a directory in snapshot {root}; use `mesh ls`")
        if entry.kind == Kind.SYMLINK:
            raise MeshError(f"{args.path} is a symlink to {os.fsdecode(entry.link)} in snapshot {root}")
        out = sys.stdout.buffer
        # Hashed whole before the first byte goes out (a damaged blob writes nothing), and
        # again as it is written, against a change in between; BlobDamaged exits 1. Writing a
        # 1 GiB blob to a file here: 1.3-1.6 GB/s hashed as written, 1.4 GB/s hashed first too.
        with store.open(entry.blob, check_first=True) as reader:
            while chunk := reader.read(1 << 20):
                out.write(chunk)
        out.flush()
    return EXIT_OK


def cmd_diff(args: argparse.Namespace) -> int:
    """Print what changed between two snapshots, one ``STATUS<TAB>path`` line each."""
    from mesh.cas.snapshot import diff

    a, b = _digest(args.a), _digest(args.b)
    with _store(args) as store:
        changes = list(diff(store, a, b))
    if args.json:
        rows = [{"status": c.status, "path": os.fsdecode(c.path)} for c in changes]
        json.dump(rows, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        sys.stdout.write("".join(f"{c.status}\t{os.fsdecode(c.path)}\n" for c in changes))
    return EXIT_OK


def cmd_fsck(args: argparse.Namespace) -> int:
    """Re-hash every blob; quarantine damaged ones. Exit 1 if any was damaged."""
    from mesh.cas.fsck import fsck

    with _store(args) as store:
        report = fsck(store)
    if args.json:
        json.dump(
            {
                "checked": report.checked,
                "bytes": report.bytes,
                "quarantined": report.quarantined,
                "repaired": report.repaired,
                "temp_removed": report.temp_removed,
                "problems": report.problems,
                "clean": report.clean,
            },
            sys.stdout,
            indent=1,
        )
        sys.stdout.write("\n")
    else:
        for line in report.problems:
            print(line)
        verdict = "clean" if report.clean else f"{report.quarantined} damaged blobs quarantined"
        print(f"checked {report.checked} blobs ({report.bytes} bytes): {verdict}")
    return EXIT_OK if report.clean else EXIT_FAILURE


def cmd_gc(args: argparse.Namespace) -> int:
    """Evict least recently used, unpinned blobs down to a size cap."""
    from mesh.background import node_pid
    from mesh.cas import gc
    from mesh.config import parse_size

    cap = parse_size(args.max_size) if args.max_size else args.settings.store_max_bytes
    if cap is None:
        raise UsageError("no size cap: pass --max-size SIZE, or set MESH_STORE_MAX or store_max in mesh.toml")
    pid = node_pid(args.settings.home)
    if pid is not None:  # its live jobs and watches keep blobs no pin names: gc would take them
        raise MeshError(
            f"a node (pid {pid}) runs on {args.settings.home}: it keeps the blobs of its live jobs and watched "
            "directories, which mesh gc cannot see, and keeps its store under its own cap (MESH_STORE_MAX, "
            "store_max); stop it first (mesh down) to evict by hand"
        )
    with _store(args) as store:
        report = gc.evict(store, cap)
    print(
        f"store: {report.before_bytes} -> {report.after_bytes} bytes, {report.removed} blobs evicted, "
        f"{report.pinned_bytes} bytes pinned"
    )
    return EXIT_OK


def cmd_pin(args: argparse.Namespace) -> int:
    """Pin a snapshot or blob so that eviction keeps it (and all it reaches)."""
    digest = _digest(args.id)
    with _store(args) as store:
        if not store.has(digest):
            raise MeshError(f"{digest} is not in the store; snapshot it first")
        store.pin(args.name, digest)
    return EXIT_OK


def cmd_unpin(args: argparse.Namespace) -> int:
    """Remove a pin."""
    with _store(args) as store:
        store.unpin(args.name)
    return EXIT_OK


def cmd_pins(args: argparse.Namespace) -> int:
    """List the pins."""
    with _store(args) as store:
        for name, digest in store.pins().items():
            print(f"{name}\t{digest}")
    return EXIT_OK


_NODE_READ_HELP = (
    "read from this node's store what the local store lacks, verified (default: $MESH_NODE or node in "
    "mesh.toml if set, else the local store alone)"
)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    pass


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``mesh`` and all its subcommands."""
    parser = argparse.ArgumentParser(
        prog="mesh",
        formatter_class=_Formatter,
        description="mesh: a peer-to-peer, content-addressed build mesh.\n\n"
        "Files live in a BLAKE3 content-addressed store under $MESH_HOME/cas; a snapshot is an\n"
        "immutable directory tree in that store, named by its id (b3:<hash>:<size>).",
        epilog="Exit status: 0 ok, 1 failure, 2 usage error.\n"
        "Environment: MESH_HOME (default ~/.local/share/mesh), MESH_STORE_MAX (e.g. 50G).",
    )
    parser.add_argument("--version", action="version", version=f"mesh {__version__}")
    parser.add_argument(
        "--home", metavar="DIR", help="mesh's data directory (default: $MESH_HOME or ~/.local/share/mesh)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(
        name: str, fn: Callable[[argparse.Namespace], int], help_: str, description: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=description, formatter_class=_Formatter)
        p.set_defaults(func=fn)
        return p

    p = add(
        "hash",
        cmd_hash,
        "print BLAKE3 hashes of files, exactly like b3sum",
        "Print '<hex>  <name>' for each FILE, byte for byte what b3sum prints, so the two can be\n"
        "cross-checked. With no FILE, or with '-', hash standard input. Exit 1 if a file could\n"
        "not be read (the others are still hashed).",
    )
    p.add_argument("files", nargs="*", metavar="FILE")

    p = add(
        "snapshot",
        cmd_snapshot,
        "store a directory tree and print its snapshot id",
        "Store DIR in the content-addressed store and print its snapshot id. The id depends only\n"
        "on names, contents, executable bits and symlink targets: the same tree gives the same id\n"
        "on any machine. Unchanged files are found by the stat cache and not read again.\n"
        "What `mesh exec` leaves out of its snapshot is left out here too: paths that a\n"
        ".meshignore (gitignore syntax, in any directory) names, and .git; --all keeps them.\n"
        "mesh's own data directory ($MESH_HOME) is always left out when it lies inside DIR.\n"
        "FIFOs, sockets and devices are refused with an error naming them all.",
    )
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--all", action="store_true", help="keep .git and what .meshignore files leave out")
    p.add_argument("--no-cache", action="store_true", help="ignore the stat cache and read every file")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress line on stderr")

    p = add(
        "checkout",
        cmd_checkout,
        "write a snapshot out as a directory",
        "Write snapshot ID into DIR, which must be absent or empty. Checkout never writes through\n"
        "or replaces anything it finds in its way, and never writes outside DIR.\n\n"
        "By default files are copies you own and may edit (each blob verified as it is copied).\n"
        "--link makes read-only hardlinks into the store instead: instant and free of space,\n"
        "for trees that are only read, each file checked as it is linked. Never chmod or edit\n"
        "such files in place: they are the store's own blobs (the next checkout or task that\n"
        "uses one that was changed, and `mesh fsck`, find it and quarantine it).",
    )
    p.add_argument("id", metavar="ID")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--link", action="store_true", help="hardlink read-only files from the store instead of copying")
    p.add_argument(
        "--no-verify",
        action="store_true",
        help="do not check the blobs (copy: no re-hash; --link: no check of the files linked)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    p.add_argument("--node", metavar="URL", help=_NODE_READ_HELP)

    p = add(
        "ls",
        cmd_ls,
        "list a directory inside a snapshot",
        "List PATH (default: the root) inside snapshot ID: kind, size, name and digest (or link target).",
    )
    p.add_argument("id", metavar="ID")
    p.add_argument("path", metavar="PATH", nargs="?", default="")
    p.add_argument("-r", "--recursive", action="store_true", help="list everything below PATH")
    p.add_argument("--json", action="store_true", help="print a JSON array")
    p.add_argument("--node", metavar="URL", help=_NODE_READ_HELP)

    p = add("cat", cmd_cat, "print a file of a snapshot", "Write file PATH of snapshot ID to stdout (verified).")
    p.add_argument("id", metavar="ID")
    p.add_argument("path", metavar="PATH")
    p.add_argument("--node", metavar="URL", help=_NODE_READ_HELP)

    p = add(
        "diff",
        cmd_diff,
        "show what changed between two snapshots",
        "Print one line per changed path, 'STATUS<TAB>PATH', sorted by path. STATUS is A (added),\n"
        "D (deleted), M (modified) or T (type changed, e.g. file to symlink).",
    )
    p.add_argument("a", metavar="ID")
    p.add_argument("b", metavar="ID")
    p.add_argument("--json", action="store_true", help="print a JSON array")

    p = add(
        "fsck",
        cmd_fsck,
        "verify every blob in the store",
        "Re-hash every blob in the store. Damaged blobs are moved to $MESH_HOME/cas/quarantine and\n"
        "reported; blobs made writable are made read-only again. Exit 1 if any blob was damaged.",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")

    p = add(
        "gc",
        cmd_gc,
        "evict least recently used blobs down to a size cap",
        "Remove least recently used blobs until the store fits the cap. Blobs reachable from a pin\n"
        "(see `mesh pin`) are never removed. Refused while a node runs on this home: it keeps blobs\n"
        "of its live jobs and watched directories that no pin names, and evicts to its own cap.",
    )
    p.add_argument("--max-size", metavar="SIZE", help="the cap, e.g. 20G (default: MESH_STORE_MAX / store_max)")

    p = add("pin", cmd_pin, "keep a snapshot through eviction", "Pin ID under NAME: gc never evicts what it reaches.")
    p.add_argument("name", metavar="NAME")
    p.add_argument("id", metavar="ID")
    p = add("unpin", cmd_unpin, "remove a pin", "Remove the pin NAME.")
    p.add_argument("name", metavar="NAME")
    add("pins", cmd_pins, "list pins", "List the pins, 'NAME<TAB>ID' per line.")

    p = add(
        "cc",
        cmd_cc,
        "compile on the mesh: make CC='mesh cc gcc'",
        "Run one compiler command: a single-source compile to an object (-c) is preprocessed here\n"
        "and compiled on a node of the mesh with the same compiler (or answered from the action\n"
        "cache); anything else runs here. -v says where each compile ran and why.\n"
        "'mesh cc --links DIR' makes DIR/gcc, DIR/cc, ... that do the same (put DIR first on PATH).\n"
        "MESH_CC_FALLBACK=0: fail rather than compile here when the mesh cannot.",
    )
    p.add_argument("words", nargs=argparse.REMAINDER, metavar="COMPILER ARGS")

    from mesh.cli_node import add_parsers
    from mesh.watcher.cli import add_parsers as add_watch_parsers

    add_parsers(add)
    add_watch_parsers(add)
    return parser


def cmd_cc(args: argparse.Namespace) -> int:
    """``mesh cc`` reached through the parser (``mesh --home DIR cc ...``): the wrapper."""
    from mesh.cc.wrapper import main as wrapper

    if args.home:
        os.environ["MESH_HOME"] = args.home
    return wrapper(list(args.words))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``mesh`` command; returns the exit status."""
    from mesh.config import Settings

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        try:
            args.settings = Settings.load(home=args.home)
            return int(args.func(args))
        except BaseExceptionGroup as group:
            error = unwrap(group, expected=(MeshError, OSError))
            if error is group:
                raise
            raise error from None
    except UsageError as exc:
        print(f"mesh: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except MeshError as exc:
        print(f"mesh: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except BrokenPipeError:
        sys.stderr.close()
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("mesh: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        where = f" {exc.filename}:" if exc.filename else ""
        print(f"mesh: error:{where} {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILURE


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
