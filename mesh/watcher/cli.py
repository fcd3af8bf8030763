"""The ``mesh watch`` and ``mesh files`` commands (registered by mesh.cli).

Heavy modules (trio, httpx, watchfiles) are imported inside the commands, so that
``mesh --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from mesh.config import parse_seconds
from mesh.errors import UsageError

Add = Callable[[str, Callable[[argparse.Namespace], int], str, str], argparse.ArgumentParser]


def _seconds(text: str) -> float:
    """``--debounce`` and ``--poll``: seconds above 0, at most a day (mesh.config.parse_seconds)."""
    try:
        return parse_seconds("the value", text, default=0.0, maximum=86400, positive=True)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_watch(args: argparse.Namespace) -> int:
    """Watch a directory: keep its live snapshot on a node (see mesh.watcher.loop)."""
    import trio

    from mesh import pipeline_run
    from mesh.config import node_url
    from mesh.watcher.loop import WatchOptions, check_directory, watch
    from mesh.watcher.runs import PipelineRuns
    from mesh.wire.client import NodeClient, restore_async_backends

    directory = check_directory(args.dir)
    options = WatchOptions(directory=directory, debounce=args.debounce, poll=args.poll, notify=not args.no_notify)
    runs = None
    url, _ = node_url(args.node, home=args.settings.home)
    if args.run is not None:
        request = pipeline_run.RunRequest(directory=directory, steps=args.run)
        pipeline_run.read_pipeline(directory)  # no .mesh.yml, or a malformed one: refused before anything
        runs = PipelineRuns(url, request)
    restore_async_backends()
    with NodeClient(url) as client:
        return trio.run(watch, client, args.settings, options, runs)


def cmd_files(args: argparse.Namespace) -> int:
    """Print the files of every healthy watcher of the mesh, as a node's ``/files`` lists them."""
    from mesh.clifmt import print_json
    from mesh.config import node_url
    from mesh.wire.client import NodeClient

    url, _ = node_url(args.node, home=args.settings.home)
    rows: list[dict[str, Any]] = []
    start: int | None = 0
    with NodeClient(url) as client:
        while start is not None:
            answer = client.request("GET", "/files", params={"from": start})
            rows.extend(answer["files"])
            start = answer["next"]
    if args.json:
        print_json(rows)
        return 0
    out = sys.stdout
    for row in rows:
        out.write(f"{row['path']}\t{row['node']}\t{row['host']}:{row['directory']}\n")
    return 0


def add_parsers(add: Add) -> None:
    """Register ``mesh watch`` and ``mesh files``."""
    node_help = "the node to talk to (default: $MESH_NODE or http://127.0.0.1:7474)"
    p = add(
        "watch",
        cmd_watch,
        "keep a directory's live snapshot on a node; run its pipeline on changes",
        "Watch DIR: register it with the node (refused while another live watcher claims DIR there;\n"
        "exit 1 when no node answers), send it DIR's snapshot, and a new one each time a change\n"
        "settles (--debounce). Changes come from OS notifications and from a full rescan every\n"
        "--poll seconds (a notifier can drop events); --no-notify rescans only. The node pins the\n"
        "snapshot while the watcher is healthy and lists its files at /files (`mesh files`).\n"
        "The watcher beats as the node asks; while the node does not serve it holds its updates,\n"
        "and resyncs in full when the node is back. With --run, each new snapshot runs DIR's\n"
        "pipeline (.mesh.yml; only the named STEPs if any), a run made stale by a newer change\n"
        "being cancelled. SIGINT or SIGTERM deregisters the watcher and ends it (status 0).",
    )
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--node", metavar="URL", help=node_help)
    p.add_argument("--run", nargs="*", metavar="STEP", help="run DIR's pipeline (or these steps) on each change")
    p.add_argument(
        "--debounce", type=_seconds, default=0.3, metavar="S", help="seconds a change must be quiet (default 0.3)"
    )
    p.add_argument("--poll", type=_seconds, default=10.0, metavar="S", help="seconds between full rescans (default 10)")
    p.add_argument("--no-notify", action="store_true", help="no OS notifications: rescan every --poll seconds only")

    p = add(
        "files",
        cmd_files,
        "list the files of every healthy watcher of the mesh",
        "Print the files of every healthy watcher of the mesh (`mesh watch`), as the node's /files\n"
        "lists them: 'PATH<TAB>NODE<TAB>HOST:DIRECTORY' per line, sorted by path. Needs the mesh key.",
    )
    p.add_argument("--json", action="store_true", help="print a JSON array of the files, with sizes and digests")
    p.add_argument("--node", metavar="URL", help=node_help)
