"""The node commands of the ``mesh`` CLI: up, exec, run, jobs, job, logs, cancel, status, and
project, builds, build (their logic in mesh.project_cli), rerun (mesh.rerun_cli).

Split from mesh.cli (the store commands) to keep each module small; mesh.cli
registers these parsers. Client commands use the sync NodeClient and never
import trio or hypercorn; only ``mesh up`` and the in-process fallback of
``mesh exec`` (MESH_BACKGROUND=0) start a node in this process (mesh.background starts
one as a process of its own).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

from mesh.clifmt import print_json as _print_json
from mesh.clifmt import when as _when
from mesh.errors import NodeUnreachable, UsageError

Add = Callable[[str, Callable[[argparse.Namespace], int], str, str], argparse.ArgumentParser]


def cmd_up(args: argparse.Namespace) -> int:
    """Start a node in the foreground."""
    import logging

    import trio

    from mesh.config import NodeConfig
    from mesh.node import Node
    from mesh.nodelog import configure

    configure(verbose=args.verbose)
    log = logging.getLogger("mesh.node")
    config = NodeConfig.load(
        home=args.home,
        listen=args.listen,
        slots=args.slots,
        key_file=args.key_file,
        peers=args.peer,
        labels=args.label,
        mdns=False if args.no_mdns else None,
        advertise=args.advertise,
        executors=None if args.executors is None else args.executors.split(","),
        task_uids=args.task_uids,
        sandbox_inputs=args.sandbox_inputs,
    )
    node = Node(config, grace=args.grace, idle_stop=args.idle_stop or None)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            url = await nursery.start(node.run_until_signalled)
            log.info(
                "mesh node %s serving %s (%d slots, home %s); status: %s/status",
                node.node_id,
                url,
                config.slots,
                config.home,
                url,
            )

    trio.run(main)
    log.info("node stopped")
    return 0


@contextlib.contextmanager
def _client(args: argparse.Namespace, *, allow_embedded: bool = False) -> Iterator[Any]:
    """A NodeClient for ``--node``/MESH_NODE/the default; with ``allow_embedded``, an in-process node
    when nothing answers at the default address."""
    from mesh.config import NodeConfig, node_url
    from mesh.wire.client import NodeClient

    url, explicit = node_url(getattr(args, "node", None), home=args.settings.home)
    client = NodeClient(url)
    try:
        if not allow_embedded:
            yield client
            return
        try:
            client.health()
        except NodeUnreachable:
            if explicit:
                raise
            client.close()
            from mesh import background

            if background.enabled():
                started = background.ensure(args.settings.home, url)
                if started.started:
                    print(f"mesh: {started.announcement(background.idle_seconds())}", file=sys.stderr, flush=True)
                client = NodeClient(url)
                yield client
                return
            from mesh.embedded import embedded_node

            print("mesh: no node at the default address; running in an in-process node", file=sys.stderr)
            with embedded_node(NodeConfig.load(home=args.home)) as embedded_url:
                client = NodeClient(embedded_url)
                yield client
            return
        yield client
    finally:
        client.close()


def cmd_down(args: argparse.Namespace) -> int:
    """Stop the background node of this home (the one ``mesh exec`` started)."""
    from mesh import background

    print(f"mesh: {background.stop(args.settings.home)}", file=sys.stderr)
    return 0


def _parse_pairs(items: list[str], flag: str) -> dict[str, str]:
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{flag} wants KEY=VALUE, not {item!r}")
        pairs[key] = value
    return pairs


def _limit(name: str, text: str) -> int:
    """``--limit NAME=VALUE``: a known limit, a whole number (sizes may say 512M, 2G)."""
    from mesh.config import parse_size
    from mesh.exec.action import LIMIT_NAMES

    if name not in LIMIT_NAMES:
        raise UsageError(f"--limit {name}: choose from {', '.join(LIMIT_NAMES)}")
    try:
        value = parse_size(text)
    except UsageError:
        raise UsageError(f"--limit {name}={text}: give a whole number (sizes may say 512M, 2G)") from None
    if value < 1:
        raise UsageError(f"--limit {name} must be at least 1")
    return value


def _tool(path: str) -> str:
    """``--tool PATH``: an absolute path (of a file on the node that runs the task)."""
    if not path.startswith("/"):
        raise UsageError(f"--tool {path}: give the absolute path of the file on the node, e.g. --tool /usr/bin/gcc")
    return path


def _output(path: str) -> str:
    """``--output PATH``: a path inside the directory, checked as the API checks ``outputs``."""
    from mesh.errors import CodecError
    from mesh.exec.action import check_relative

    try:
        return check_relative(path, "--output")
    except CodecError as exc:
        raise UsageError(
            f"{exc}: name a path inside the directory the command runs in, e.g. --output build/app"
        ) from None


def cmd_exec(args: argparse.Namespace) -> int:
    """Run a command on the mesh against a snapshot of a directory."""
    from mesh import execute
    from mesh.follow import reconnect_window
    from mesh.stdin import stdin_blob

    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise UsageError("give the command to run after --, e.g. mesh exec -- make -j8")
    directory = os.path.abspath(args.directory)
    if not os.path.isdir(directory):
        raise UsageError(f"-C {args.directory}: not a directory")
    if args.out is not None and os.path.lexists(args.out) and not os.path.isdir(args.out):
        raise UsageError(f"--out {args.out} is not a directory: name a directory (made if absent)")
    if args.image is not None and args.executor not in (None, "docker"):
        raise UsageError(f"--image runs the command in a container: it needs --executor docker, not {args.executor}")
    if args.executor == "docker" and not args.image:
        raise UsageError("--executor docker needs --image NAME (an image the node holds or can pull)")
    limits = {name: _limit(name, text) for name, text in _parse_pairs(args.limit, "--limit").items()}
    if args.tool and (args.image is not None or args.executor == "docker"):
        raise UsageError("--tool names files of the node, which a docker task does not see (its image is in the key)")
    if limits and args.executor not in (None, "sandbox"):
        raise UsageError(f"--limit applies to the sandbox executor, not {args.executor}")
    request = execute.ExecRequest(
        limits=limits,
        executor="sandbox" if limits and args.executor is None else args.executor,
        image=args.image,
        network=args.network,
        argv=argv,
        directory=directory,
        env=_parse_pairs(args.env, "--env"),
        timeout=args.timeout,
        no_cache=args.no_cache,
        out=args.out,
        requirements=_parse_pairs(args.require, "--require"),
        tools=[_tool(path) for path in args.tool],
        outputs=[_output(path) for path in args.output] if args.output else None,
    )
    window = reconnect_window(args.reconnect)
    with _client(args, allow_embedded=True) as client, execute.Interrupts():
        try:
            snapshot, times = execute.snapshot_for(client, args.settings, directory, progress=sys.stderr.isatty())
            stdin = None if args.no_stdin else stdin_blob(client, args.settings)
            outcome = execute.follow_job(client, request.job(snapshot, times, stdin), window=window)
            note = execute.explain(outcome)
            if note:
                execute.say(note)
            if args.verbose:
                execute.say(execute.verbose_line(outcome))
            if args.out is not None and outcome.result and outcome.result.output:
                execute.checkout_output(
                    client, args.settings, snapshot, outcome.result.output, args.out, request.outputs
                )
            return execute.exit_status(outcome)
        except execute.Stopped as stopped:
            return stopped.status
        except execute.Interrupted as stop:  # before the job was submitted, or after it ended
            return stop.status


def cmd_run(args: argparse.Namespace) -> int:
    """Run the pipeline (.mesh.yml) of a directory on the mesh."""
    from mesh import execute, pipeline_run
    from mesh.follow import reconnect_window

    directory = os.path.abspath(args.directory)
    if not os.path.isdir(directory):
        raise UsageError(f"-C {args.directory}: not a directory")
    request = pipeline_run.RunRequest(
        directory=directory, steps=args.steps, env=_parse_pairs(args.set, "--set"), project=args.project
    )
    pipeline_run.read_pipeline(directory)  # a malformed file fails here, before a node is asked anything
    window = reconnect_window(args.reconnect)
    with _client(args, allow_embedded=True) as client, execute.Interrupts():
        try:
            return pipeline_run.run(client, args.settings, request, window=window)
        except execute.Stopped as stopped:
            return stopped.status
        except execute.Interrupted as stop:
            return stop.status


def cmd_rerun(args: argparse.Namespace) -> int:
    """``mesh rerun NAME N`` or ``mesh rerun JOB``, optionally ``--task T``: run it again."""
    from mesh import execute, rerun_cli
    from mesh.follow import reconnect_window

    request = rerun_cli.RerunRequest(
        target=args.target, number=args.number, task=args.task, no_cache=args.no_cache, detach=args.detach
    )
    window = reconnect_window(args.reconnect)
    with _client(args) as client, execute.Interrupts():
        try:
            return rerun_cli.rerun(client, request, window=window)
        except execute.Stopped as stopped:
            return stopped.status
        except execute.Interrupted as stop:
            return stop.status


def cmd_project(args: argparse.Namespace) -> int:
    """``mesh project add|ls|rm``: a node's projects."""
    from mesh import project_cli

    if args.action != "ls" and not args.name:
        raise UsageError(f"mesh project {args.action} needs the project's NAME")
    if args.action == "add" and not args.url:
        raise UsageError("mesh project add needs NAME and GIT_URL")
    with _client(args) as client:
        if args.action == "add":
            added = project_cli.add(client, args.name, args.url, args.branch, args.webhook_secret_file)
            print(f"project {added['name']} added: {added['url']} (branch {added['branch']})", file=sys.stderr)
        elif args.action == "rm":
            project_cli.remove(client, args.name)
            print(f"project {args.name} removed", file=sys.stderr)
        elif args.json:
            _print_json(project_cli.projects(client))
        else:
            project_cli.print_projects(project_cli.projects(client))
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    """``mesh ui``: print (and open, where a browser is) a one-time login link to the web UI."""
    from mesh import ui_cli

    with _client(args) as client:
        url = ui_cli.login_url(client, args.page)
    print(url, flush=True)
    opened = not args.no_open and ui_cli.open_in_browser(url)
    where = "opened in your browser" if opened else "open it in a browser"
    print(f"mesh: a login link to the node's web UI ({where}): it works once, within 5 minutes", file=sys.stderr)
    return 0


def cmd_builds(args: argparse.Namespace) -> int:
    """``mesh builds NAME``: a project's builds, newest first."""
    from mesh import project_cli

    with _client(args) as client:
        page = project_cli.builds(client, args.name, limit=args.limit, before=args.before)
    if args.json:
        _print_json(page)
    else:
        project_cli.print_builds(args.name, page)
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    """``mesh build NAME N``: one build's state, commit and steps."""
    from mesh import project_cli

    with _client(args) as client:
        build = project_cli.build(client, args.name, args.number)
    if args.json:
        _print_json(build)
    else:
        project_cli.print_build(build)
    return 0


def cmd_key(args: argparse.Namespace) -> int:
    """Print the mesh key (made now if this home has none yet) or its public id."""
    from mesh.wire.auth import load_key

    key = load_key(args.settings.home, create=True)
    assert key is not None
    print(key.text() if args.action == "show" else key.mesh_id)
    return 0


def cmd_peers(args: argparse.Namespace) -> int:
    """List the node's peers: state, load, last heard, labels."""
    with _client(args) as client:
        status = client.status()
    peers = status.get("peers", [])
    if args.json:
        _print_json(peers)
        return 0
    if not peers:
        print("no peers known", file=sys.stderr)
    for peer in peers:
        load = peer.get("load", {})
        labels = ",".join(
            f"{k[6:]}={v}" for k, v in sorted(peer.get("capabilities", {}).items()) if k.startswith("label.")
        )
        print(
            f"{peer['node']}  {peer['state']:<7}  {peer['url']:<28}  slots {load.get('busy', 0)}/{load.get('slots', 0)}"
            f"  queued {load.get('queued', 0):<4}  heard {peer['last_heard']:.1f}s ago  {labels}"
        )
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    with _client(args) as client:
        page = client.jobs(limit=args.limit, before=args.before, state=args.state)
    if args.json:
        _print_json(page)
        return 0
    for job in page["jobs"]:
        print(f"{job['id']}  {job['state']:<9}  {_when(job['created_at'])}  {job['label']}")
    if page.get("next"):
        print(f"(more: mesh jobs --before {page['next']})", file=sys.stderr)
    return 0


def cmd_job(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.job(args.id)
    if args.json:
        _print_json(job)
        return 0
    print(f"job {job['id']}  {job['state']}  {job['label']}")
    print(f"created {_when(job['created_at'])}  finished {_when(job['finished_at'])}")
    if job.get("reason"):
        print(f"  {job['reason']}")
    if job.get("recorded") is False:
        print("  not recorded yet: the node's state database takes no writes (its log says why)")
    for task in job["tasks"]:
        result = task.get("result") or {}
        took = f"{result['finished_at'] - result['started_at']:.3f}s" if result else "-"
        exit_code = result.get("exit_code", "-") if result else "-"
        flags = " cached" if result.get("cached") else ""
        print(
            f"  {task['name']:<20} {task['state']:<9} exit {exit_code!s:<4} {took:>9}  {result.get('node', '')}{flags}"
        )
        for why in (task.get("reason"), result.get("hint")):
            if why:
                print(f"      {why}")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    """Print the stdout (to stdout) and stderr (to stderr) of a job's tasks; with -f, to the job's end."""
    from mesh import execute, follow
    from mesh.exec.action import ActionResult

    window = follow.reconnect_window(args.reconnect)
    with _client(args) as client:
        job = client.job(args.id)
        names = [t["name"] for t in job["tasks"]]
        if args.task is not None and args.task not in names:
            raise UsageError(f"job {args.id} has no task {args.task!r}")
        tasks = names if args.task is None else [args.task]
        ended = [t for t in job["tasks"] if t["state"] not in ("waiting", "queued", "running")]
        follower = follow.JobFollower(
            client, sys.stdout.buffer, sys.stderr.buffer, job_id=args.id, tasks=tasks, prefix=len(tasks) > 1,
            done=frozenset(t["name"] for t in ended),
        )  # fmt: skip
        for task in ended:  # from their stored, verified results, whatever the node's events still hold
            if task["name"] in tasks and task.get("result"):
                follower.write_result(task["name"], ActionResult.from_wire(task["result"]))
        try:
            followed = follower.follow(window=window, wait=args.follow)
        except follow.NodeGone as gone:
            follow.say(f"{gone}; follow it again with `mesh logs -f {args.id} --node {client.url}`")
            return follow.EXIT_NODE_LOST
    return execute.followed_status(followed, tasks) if args.follow else 0


def cmd_cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.cancel(args.id)
    print(f"job {job['id']}: {job['state']}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        status = client.status()
    if args.json:
        _print_json(status)
        return 0
    slots = status["slots"]
    print(f"node {status['node']}  mesh {status['version']}  up {status['uptime']:.0f}s  {status['url']}")
    print(
        f"slots {slots['busy']}/{slots['total']} busy, {status['queue']} queued, {status['running_jobs']} jobs running"
    )
    workdirs = status.get("executors", {}).get("workdirs", {})
    if workdirs:  # where tasks see their workdir (mesh.exec.paths); None: their host directory
        shown = (f"{name} {path or 'host directories (no stable path)'}" for name, path in workdirs.items())
        print("workdirs: " + ", ".join(shown))
    cache = status["cache"]
    print(f"action cache: {cache['entries']} entries, {cache['hits']} hits since start")
    mesh = cache.get("mesh")
    if mesh:  # a node of this version: what it asked its peers and they asked it
        print(
            f"  mesh: asked peers {mesh['asked']} times, {mesh['found']} found; answered {mesh['answered']} "
            f"lookups, {mesh['served']} served; claims {mesh['claims_granted']} granted, "
            f"{mesh['claims_waited']} waited"
        )
    counts = status["jobs"]["counts"]
    print("jobs: " + (", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "none"))
    recent = status["jobs"].get("recent")
    if recent is None:  # the node answers unsigned requests with counts only
        print("(recent jobs need the mesh key: set MESH_KEY, or copy it to $MESH_HOME/mesh.key)", file=sys.stderr)
    for job in recent or []:
        print(f"  {job['id']}  {job['state']:<9}  {_when(job['created_at'])}  {job['label']}")
    return 0


def add_parsers(add: Add) -> None:
    """Register the node commands on the ``mesh`` parser."""
    node_help = "the node to talk to (default: $MESH_NODE or http://127.0.0.1:7474)"
    reconnect_help = "seconds to wait for a lost node to come back (default 60, MESH_RECONNECT); then exit 255"

    p = add(
        "up",
        cmd_up,
        "start a node in the foreground",
        "Start a mesh node: it accepts jobs over HTTP, runs their tasks, keeps results, history and\n"
        "the action cache in $MESH_HOME/state.db and blobs in $MESH_HOME/cas. It listens on every\n"
        "interface, port 7474, unless told otherwise (--listen, MESH_LISTEN, listen in mesh.toml):\n"
        "requests that cause work are signed with the mesh key ($MESH_HOME/mesh.key, made on the\n"
        "first start; `mesh key show`). Nodes of one mesh find each other on the LAN by mDNS\n"
        "(--no-mdns or MESH_MDNS=0 turns it off) and through --peer seeds, and gossip their\n"
        "capabilities and load every second.\n"
        "One node per $MESH_HOME. SIGINT/SIGTERM stop it: running tasks get --grace seconds to\n"
        "finish; those still running then are interrupted and run again at the next start.",
    )
    p.add_argument("--listen", metavar="HOST:PORT", help="address to serve on (0.0.0.0:PORT for every interface)")
    p.add_argument("--slots", type=int, metavar="N", help="tasks run at once (default: the number of cores)")
    p.add_argument("--grace", type=float, default=10.0, metavar="S", help="seconds running tasks get at shutdown")
    p.add_argument(
        "--key-file", metavar="FILE", help="the mesh key (default: MESH_KEY, else $MESH_HOME/mesh.key, made if absent)"
    )
    p.add_argument("--peer", action="append", metavar="HOST:PORT", help="a peer to gossip with (repeat; MESH_PEERS)")
    p.add_argument("--label", action="append", metavar="K=V", help="a label placement can require as label.K=V")
    p.add_argument("--no-mdns", action="store_true", help="do not announce or look for peers by mDNS")
    p.add_argument("--advertise", metavar="URL", help="the URL peers reach this node at (default: from --listen)")
    p.add_argument(
        "--executors",
        metavar="LIST",
        help=(
            "the executors to offer, of process,sandbox,docker (default: each that works here, but process "
            "on a node that is not root only when named; MESH_EXECUTORS)"
        ),
    )
    p.add_argument(
        "--task-uids",
        metavar="FIRST-LAST",
        help="the uids a root node runs process tasks as, one per slot (default 2100000000-2100009999; MESH_TASK_UIDS)",
    )
    p.add_argument(
        "--sandbox-inputs",
        metavar="copy|link",
        help=(
            "how a root node's sandbox checks inputs out: copy (the task's own, default) or link (the store's "
            "read-only files: faster for large inputs, but tasks cannot change input files; MESH_SANDBOX_INPUTS)"
        ),
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log debug lines too: every request the node sends")
    p.add_argument(
        "--idle-stop",
        type=float,
        metavar="S",
        help="stop after S seconds with no job and no request (peers' gossip aside); default: never",
    )

    add(
        "down",
        cmd_down,
        "stop the background node",
        "Stop the node that `mesh exec` started in the background for this $MESH_HOME (its running\n"
        "tasks get its grace time, as on SIGTERM) and wait until it is gone. A node started with\n"
        "`mesh up` in the foreground is stopped where it runs (Ctrl-C).",
    )

    p = add(
        "key",
        cmd_key,
        "show the mesh key",
        "Every node and client of one mesh shares a key; requests that cause work or write data are\n"
        "signed with it, and nodes refuse the rest (401). `mesh up` makes $MESH_HOME/mesh.key on its\n"
        "first start. Copy the key to other machines with MESH_KEY=<key> or into their mesh.key.",
    )
    p.add_argument("action", choices=("show", "id"), help="show: the key (secret); id: its public fingerprint")

    p = add(
        "exec",
        cmd_exec,
        "run a command on the mesh against this directory",
        "Snapshot DIR (default: the current directory; .meshignore patterns and .git are left out),\n"
        "run CMD on a node against it, and stream its stdout and stderr here as it runs. The exit\n"
        "status is the command's (124 if it timed out, 130 if cancelled). A stdin that is not a\n"
        "terminal is read to its end and given to CMD (at most 1 GiB; --no-stdin: none). SIGINT,\n"
        "SIGTERM, SIGHUP and SIGQUIT cancel the job and exit 128+N. A lost node is reconnected\n"
        "to for --reconnect seconds; then the job id and `mesh logs -f ID` are printed (exit 255).\n"
        "The same command on the same tree, env and stdin again is answered from the action cache\n"
        "without running, by any node of the mesh whose toolchain is the same: the image's ID for\n"
        "docker; else the argv[0] binary (and a script's interpreter), the system's package\n"
        "database and each --tool file.\n\n"
        "With no node at the default address, the first mesh exec starts one in the background (as\n"
        "mesh up would; log in $MESH_HOME/node.log) and says so; later ones use it. It stops after\n"
        "30 min without work (MESH_BACKGROUND_IDLE=S; 0: never), or with mesh down. MESH_BACKGROUND=0\n"
        "runs each job in an in-process node instead. A --node that does not answer is an error.\n\n"
        "The task starts from a clean environment (PATH, LANG=C.UTF-8, TZ=UTC, HOME and TMPDIR of\n"
        "its own) plus each --env, in a workdir at the same path on every run and node (/work;\n"
        "/run/mesh/work for process) whose entries have the modification times they have here, so\n"
        "make decides as it would here (the times are part of the cache key: a touch is a miss).\n"
        "Its whole workdir becomes the output snapshot (only the --output paths, with --output);\n"
        "--out DIR writes what of it the task produced or changed.\n\n"
        "Executors: sandbox (bubblewrap: the host read-only, only the workdir writable, no network,\n"
        "an unprivileged uid; the default on nodes where bubblewrap works), process (a plain\n"
        "subprocess of the node's user; the default elsewhere), docker (a container of --image\n"
        "through the Docker Engine API at DOCKER_HOST, which Podman serves too).",
    )
    p.add_argument("-C", dest="directory", default=".", metavar="DIR", help="the directory to snapshot and run in")
    p.add_argument("--env", action="append", default=[], metavar="K=V", help="set an environment variable (repeat)")
    p.add_argument("--timeout", type=float, metavar="S", help="kill the command after S seconds (default 3600)")
    p.add_argument(
        "--require",
        action="append",
        default=[],
        metavar="K=V",
        help="run only on a node that has this capability (arch=x86_64, label.gpu=1; repeat)",
    )
    p.add_argument(
        "--executor",
        choices=("process", "sandbox", "docker"),
        help="how to isolate the command (default: docker with --image, else the node's default)",
    )
    p.add_argument("--image", metavar="NAME", help="run in a container of this image (implies --executor docker)")
    p.add_argument("--network", action="store_true", help="let the command use the network (off by default)")
    p.add_argument(
        "--limit",
        action="append",
        default=[],
        metavar="NAME=N",
        help="a sandbox rlimit below the node's: address_space=2G, processes=256, file_size=1G, open_files=1024",
    )
    p.add_argument(
        "--output",
        action="append",
        default=[],
        metavar="PATH",
        help="capture only this path of the workdir (relative to -C DIR; repeat); default: the whole workdir",
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        help="write into DIR what the task produced or changed (the --output paths, else what differs from "
        "the input); it may be the directory itself, and nothing in it is deleted",
    )
    p.add_argument("--no-cache", action="store_true", help="run even if the action cache has a result")
    p.add_argument(
        "--no-stdin",
        action="store_true",
        help="give the command an empty stdin (default: stdin, read to its end unless it is a terminal)",
    )
    p.add_argument(
        "--tool",
        action="append",
        default=[],
        metavar="PATH",
        help="a file on the node whose content joins the cache key (a compiler's helper, say; repeat)",
    )
    p.add_argument("--reconnect", type=float, metavar="S", help=reconnect_help)
    p.add_argument("--node", metavar="URL", help=node_help)
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="say the job id, and where a cache hit came from or why the run was not one",
    )
    p.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD...", help="the command and its arguments")

    p = add(
        "run",
        cmd_run,
        "run the pipeline (.mesh.yml) of this directory",
        "Read DIR/.mesh.yml (see README, Pipelines), snapshot DIR as mesh exec does and run the\n"
        "pipeline as one job: each step a task, a matrix step one task per combination. Each line\n"
        "of output is prefixed with its step; a table at the end gives each step's node, whether it\n"
        "was cached, its time and its status. Exit status: 0 if the pipeline succeeded, 1 if a step\n"
        "failed, 2 if .mesh.yml is malformed (the message names its line; nothing is submitted),\n"
        "130 if it was cancelled, 128+N after signal N (the job is cancelled), 255 if the node\n"
        "stayed away.",
    )
    p.add_argument("-C", dest="directory", default=".", metavar="DIR", help="the directory to snapshot and run in")
    p.add_argument(
        "--set", action="append", default=[], metavar="K=V", help="set an environment variable in every step (repeat)"
    )
    p.add_argument("--reconnect", type=float, metavar="S", help=reconnect_help)
    p.add_argument("--node", metavar="URL", help=node_help)
    p.add_argument("--project", metavar="NAME", help="record the run as project NAME's next build (its number)")
    p.add_argument("steps", nargs="*", metavar="STEP", help="run only these steps and the steps they depend on")

    p = add(
        "rerun",
        cmd_rerun,
        "run a project's build, or a job, again",
        "mesh rerun NAME N builds build N of project NAME again, as its next number: the same\n"
        "commit and pipeline. mesh rerun JOB runs job JOB again as a new job. Steps that\n"
        "succeeded before are answered from the action cache (the same inputs give the same\n"
        "result); --no-cache runs every one. With --task T only T runs again, with the inputs it\n"
        "had (the outputs of the steps before it, as they were), and every step that depends on\n"
        "it. The new job is followed as mesh run follows one, with the same exit statuses.",
    )
    p.add_argument("target", metavar="NAME|JOB", help="a project's name (with N), or a job id")
    p.add_argument("number", nargs="?", type=int, metavar="N", help="the build of project NAME to run again")
    p.add_argument("--task", metavar="T", help="run only task (step) T again, and what depends on it")
    p.add_argument("--no-cache", action="store_true", help="run every task again, none answered from the cache")
    p.add_argument("--detach", action="store_true", help="print the new job's id and return at once")
    p.add_argument("--reconnect", type=float, metavar="S", help=reconnect_help)
    p.add_argument("--node", metavar="URL", help=node_help)

    p = add(
        "project",
        cmd_project,
        "add, list or remove a node's projects",
        "Projects are kept by the node (per node, for now): each run of one (mesh run --project)\n"
        "gets its next build number. add NAME GIT_URL [--branch GLOB] [--webhook-secret-file F]\n"
        "(the secret is sent once and never shown again), ls [--json], rm NAME (its numbers are\n"
        "never given again: a project added again goes on from its last number).",
    )
    p.add_argument("action", choices=("add", "ls", "rm"))
    p.add_argument("name", nargs="?", metavar="NAME")
    p.add_argument("url", nargs="?", metavar="GIT_URL")
    p.add_argument("--branch", default="*", metavar="GLOB", help="the branches pushes build (default: all)")
    p.add_argument("--webhook-secret-file", metavar="F", help="a file holding the project's webhook secret")
    p.add_argument("--json", action="store_true", help="print JSON (ls)")
    p.add_argument("--node", metavar="URL", help=node_help)

    p = add(
        "ui",
        cmd_ui,
        "log in to the node's web UI",
        "Print a one-time login link to the node's web UI (builds, jobs, live logs, cancel, re-run,\n"
        "peers) and open it where a desktop browser is (DISPLAY, WAYLAND_DISPLAY or BROWSER set).\n"
        "The link works once, within 5 minutes, and gives the browser a session of 12 hours;\n"
        "asking for it takes the mesh key. The overview at / is open and shows counts only.",
    )
    p.add_argument(
        "page", nargs="?", metavar="PAGE", help="go on to this page after logging in (its URL or path, e.g. a build's)"
    )
    p.add_argument("--no-open", action="store_true", help="print the link only, never start a browser")
    p.add_argument("--node", metavar="URL", help=node_help)

    p = add("builds", cmd_builds, "list a project's builds", "List project NAME's builds, newest first.")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--limit", type=int, default=50, metavar="N", help="at most N builds (default 50)")
    p.add_argument("--before", type=int, metavar="N", help="page on from an earlier listing's 'more' hint")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--node", metavar="URL", help=node_help)

    p = add("build", cmd_build, "show a build", "Show build N of project NAME: state, commit, trigger, steps.")
    p.add_argument("name", metavar="NAME")
    p.add_argument("number", type=int, metavar="N")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--node", metavar="URL", help=node_help)

    p = add("peers", cmd_peers, "list a node's peers", "List the peers a node knows: state, load, last heard.")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--node", metavar="URL", help=node_help)

    p = add("jobs", cmd_jobs, "list jobs, newest first", "List the node's jobs: id, state, created, label.")
    p.add_argument("--limit", type=int, default=50, metavar="N", help="at most N jobs (default 50)")
    p.add_argument("--before", type=int, metavar="SEQ", help="page on from an earlier listing's 'more' hint")
    p.add_argument("--state", choices=("running", "succeeded", "failed", "cancelled"), help="only jobs in STATE")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--node", metavar="URL", help=node_help)

    p = add("job", cmd_job, "show a job's tasks", "Show job ID: each task's state, exit code, time, node, reason.")
    p.add_argument("id", metavar="ID")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--node", metavar="URL", help=node_help)

    p = add(
        "logs",
        cmd_logs,
        "print a job's output",
        "Print the stdout and stderr of job ID's tasks, as far as they ran; with -f, follow the job\n"
        "live to its end and exit as `mesh exec` would (the status of a one-task job's command;\n"
        "else 0 if the job succeeded, 1 if not, 130 if it was cancelled). A job of more than one\n"
        "task has each line prefixed with its task's name.",
    )
    p.add_argument("id", metavar="ID")
    p.add_argument("--task", metavar="NAME", help="only this task")
    p.add_argument("-f", "--follow", action="store_true", help="follow the job live until it ends")
    p.add_argument("--reconnect", type=float, metavar="S", help=reconnect_help)
    p.add_argument("--node", metavar="URL", help=node_help)

    p = add("cancel", cmd_cancel, "cancel a job", "Cancel job ID: queued tasks are dropped, running ones killed.")
    p.add_argument("id", metavar="ID")
    p.add_argument("--node", metavar="URL", help=node_help)

    p = add("status", cmd_status, "show a node's status", "Show the node's id, slots, queue, cache and recent jobs.")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--node", metavar="URL", help=node_help)
