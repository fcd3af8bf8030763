"""Node: one trio nursery that owns the store, the state, the scheduler and the HTTP server.

``await nursery.start(node.run)`` returns the URL the node serves once it really
serves (the scheduler has resumed unfinished jobs and hypercorn is listening).
One node per ``$MESH_HOME``: a lock file, held for the node's life, refuses a
second one with the pid and address of the first. The HTTP port is bound next,
before anything starts, so a node that cannot serve resumes no job (mesh.api.server
serves it: HTTP/1.1 only, a failing connection ends alone). On SIGINT/SIGTERM the node
stops accepting requests, stops starting tasks, gives running tasks
``grace`` seconds to finish, then interrupts the rest (they stay ``running``
in the state database and run again when the node restarts) and returns.
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import signal
import socket
import time
from functools import partial
from typing import TYPE_CHECKING, Any

import trio

from mesh import __version__
from mesh.api.app import create_app
from mesh.api.authorities import NodeAuthorities
from mesh.api.idle import Activity, stop_when_idle
from mesh.api.metrics import NodeCollector, NodeFigures, node_registry
from mesh.api.server import listen, serve
from mesh.api.sessions import Sessions
from mesh.cas.space import Roots, StoreSpace
from mesh.cas.store import LocalStore
from mesh.cc.service import CompileService
from mesh.cluster.actioncache import MeshActionCache
from mesh.cluster.inflight import ClaimTable, MeshClaims
from mesh.cluster.inline import ResultBlobs
from mesh.cluster.intake import JobIntake
from mesh.cluster.peering import Peering, advertised_url, capabilities
from mesh.cluster.services import MeshCacheService, PeerBackedBlobs
from mesh.config import NodeConfig
from mesh.errors import MeshError, NodeBusy, describe
from mesh.exec.process import Executor, ProcessExecutor
from mesh.exec.runner import Runner
from mesh.exec.toolchain import Toolchain
from mesh.exec.workpool import KEEP_DIRS, WorkdirPool
from mesh.pipelines.buildmetrics import BuildMetrics
from mesh.pipelines.builds import Builds
from mesh.pipelines.deliveries import StoredDeliveries
from mesh.pipelines.hookintake import HookIntake
from mesh.pipelines.notify import Notifier
from mesh.pipelines.projects import ProjectStore
from mesh.sched.actioncache import LocalActionCache
from mesh.sched.scheduler import Scheduler
from mesh.sched.statedb import StateDB, state_path
from mesh.watch.registry import WatchRegistry
from mesh.watch.service import Watches
from mesh.wire.auth import MeshKey, Verifier, load_key

if TYPE_CHECKING:
    from mesh.exec.docker import DockerExecutor
    from mesh.exec.engine import DockerStatus
    from mesh.exec.taskusers import TaskUsers

log = logging.getLogger("mesh.node")

#: Seconds running tasks get to finish after SIGINT/SIGTERM before they are interrupted.
DEFAULT_GRACE = 10.0
#: Recent jobs listed by /status.
STATUS_RECENT_JOBS = 20
#: Seconds between looks at the Docker engine (is it there, which images does it hold).
DOCKER_REFRESH = 30.0


class Node:
    """A complete mesh node on one machine. Create, then ``await nursery.start(node.run)``."""

    def __init__(self, config: NodeConfig, *, grace: float = DEFAULT_GRACE, idle_stop: float | None = None) -> None:
        self.config = config
        self.grace = grace
        self.idle_stop = idle_stop  # seconds idle after which the node stops (mesh.api.idle); None: never
        self.started_at = time.time()
        self.url = ""
        self._lock_fd: int | None = None
        self._sockets: list[socket.socket] = []
        self.node_id = ""
        self.store: LocalStore
        self.space: StoreSpace  # the store's size, kept under its cap
        self.key: MeshKey
        self.scheduler: Scheduler
        self.action_cache: MeshActionCache  # this node's action cache, with its peers' behind it
        self.claims: MeshClaims  # claims of cache keys: one run for identical work in flight
        self.peering: Peering
        self.watch_registry: WatchRegistry  # the watchers of this node (mesh watch)
        self.watches: Watches  # ... and the mesh-wide /files
        self.runner: Runner
        self.docker: DockerStatus | None = None
        self.task_users: TaskUsers | None = None  # a root node's process tasks' uids
        self.build_metrics = BuildMetrics()  # the pipelines count their builds here
        self.metrics = node_registry(NodeCollector(self.figures), self.build_metrics)  # what /metrics reads
        self._stop = trio.Event()

    def __repr__(self) -> str:
        return f"Node(id={self.node_id!r}, home={self.config.home!r}, url={self.url!r})"

    # -- life -------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled or :meth:`stop`; ``task_status.started(url)`` once serving."""
        os.makedirs(self.config.home, mode=0o700, exist_ok=True)
        # Private whoever made it: it holds the key, and the store and the state database
        # (every job's command line and environment) are readable files inside.
        os.chmod(self.config.home, 0o700)
        self._lock()
        try:
            self._listen()
            self._open()
            async with trio.open_nursery() as nursery:
                await nursery.start(self.space.run)
                await nursery.start(self._watch_docker)
                await nursery.start(self.action_cache.run)
                await nursery.start(self.scheduler.run)
                await nursery.start(self.projects.run)
                await nursery.start(self.hooks.run)
                await nursery.start(self.cc.run)
                http_stop = trio.Event()
                app = activity = Activity(create_app(self))
                binds = await nursery.start(partial(serve, app, self._sockets, shutdown_trigger=http_stop.wait))
                self.url = _local_url(binds[0])
                port = int(binds[0].rsplit(":", 1)[1])
                advertised = advertised_url(self.config, port)
                self.authorities.listen_on(port, advertised)  # signed requests name this port from now on
                await nursery.start(self.peering.run, advertised)
                if self.idle_stop:
                    await nursery.start(stop_when_idle, activity, self.idle_stop, self._busy, self.stop)
                task_status.started(self.url)
                await self._stop.wait()
                http_stop.set()
                with trio.move_on_after(self.grace):
                    await self.scheduler.drain()
                nursery.cancel_scope.cancel()
        finally:
            self._close()

    def stop(self) -> None:
        """Begin a graceful shutdown (what SIGINT/SIGTERM do)."""
        self._stop.set()

    async def run_until_signalled(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        """:meth:`run`, stopping gracefully on SIGINT or SIGTERM."""
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:

                async def watch() -> None:
                    async for signum in signals:
                        log.warning("received %s: shutting down", signal.Signals(signum).name)
                        self.stop()

                async def serve(*, task_status: trio.TaskStatus[str]) -> None:
                    await self.run(task_status=task_status)
                    nursery.cancel_scope.cancel()  # the watcher too

                nursery.start_soon(watch)
                task_status.started(await nursery.start(serve))

    def _listen(self) -> None:
        """Bind the HTTP port first, before anything starts: a node that cannot serve resumes no job."""
        host, port = self.config.listen
        try:
            self._sockets = listen(host, port)
        except OSError as exc:
            raise MeshError(
                f"cannot listen on {host}:{port}: {exc.strerror or exc}; stop what uses that address,"
                " or give this node another one with --listen HOST:PORT (or MESH_LISTEN)"
            ) from None

    # -- state --------------------------------------------------------------------

    def _lock(self) -> None:
        path = os.path.join(self.config.home, "node.lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise NodeBusy(
                f"another mesh node already uses {self.config.home} ({holder}); stop it first,"
                " or give this one its own home with MESH_HOME or --home"
            ) from None
        host, port = self.config.listen
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}, listening on {host}:{port}\n".encode(), 0)
        self._lock_fd = fd

    def _open(self) -> None:
        home = self.config.home
        self.node_id = _node_id(home)
        key = load_key(home, key_file=self.config.key_file, create=True)
        assert key is not None  # create=True makes one
        self.key = key
        host = self.config.listen[0]
        port = self._sockets[0].getsockname()[1]  # bound already (port 0: the one the kernel chose)
        self.authorities = NodeAuthorities(host, port, advertised=self.config.advertise)
        self.verifier = Verifier(key, authorities=self.authorities, nonces_path=os.path.join(home, "nonces"))
        self.sessions = Sessions(key, os.path.join(home, "ui-logouts"))  # people's logins to the UI
        self.store = LocalStore(self.config.store_dir)
        self.watch_registry = WatchRegistry(self.config.watch_timeout)
        self.space = space = StoreSpace(self.store, self.config.store_max_bytes, roots=self._pinned)
        self.db = StateDB(state_path(home), keep_jobs=self.config.keep_jobs)
        self.runner = runner = Runner(
            self.store,
            workroot=os.path.join(home, "work"),
            node_id=self.node_id,
            executors=self._local_executors(),
            workdirs=WorkdirPool(dirs=max(KEEP_DIRS, 2 * self.config.slots)),
            space=space,
        )
        runner.remove_leftovers()  # task directories of tasks a crash interrupted
        self.peering = Peering(
            self.config,
            node_id=self.node_id,
            key=key,
            executors=sorted(runner.executors),
            load=self._load,
            room=space.reserve,
            watches=self.watch_registry.watched,
        )
        self.watches = Watches(self.watch_registry, self.store, self.peering)
        local = LocalActionCache(self.db, node_id=self.node_id, has=self.store.has, holds_tree=space.holds_tree)
        inline = ResultBlobs(self.store, space.reserve)  # a hit's small blobs come with its lookup
        self.action_cache = MeshActionCache(local, self.peering, node_id=self.node_id, blobs=inline)
        self.claims = MeshClaims(ClaimTable(self._is_live), self.peering, lambda: self.peering.url)
        self.scheduler = Scheduler(
            self.db,
            runner,
            self.store,
            node_id=self.node_id,
            slots=self.config.slots,
            capabilities=self.peering.capabilities,
            remote=self.peering,
            holds_tree=space.holds_tree,
            cache=self.action_cache,
            toolchain=Toolchain(image_id=self._image_id),
            claims=self.claims,
        )
        self.jobs = JobIntake(self.scheduler, self.store, self.peering, lambda: self.default_executor)
        self.blobs = PeerBackedBlobs(self.store, space, self.peering)
        self.cache = MeshCacheService(self.action_cache, self.claims)
        self.cc = CompileService(
            home,
            self.jobs,
            self.blobs,
            self._workdirs,
            self._advertise_again,
            cache=self.action_cache,
            node_id=self.node_id,
        )
        notifier = Notifier(smtp=self.config.smtp)
        self.projects = Builds(
            ProjectStore(self.db), self.jobs, self.build_metrics, notifier, lambda: self.peering.url or self.url
        )
        self.hooks = HookIntake(
            self.projects,
            self.store,
            os.path.join(home, "git"),  # the git mirrors of the projects' repositories
            StoredDeliveries(self.db),
            lambda: self.default_executor,
            wait=self.config.hook_wait,
        )

    def _pinned(self) -> Roots:
        """What eviction must keep (on the event loop): the inputs and results of the live jobs,
        snapshots being fetched from peers, and the live snapshots of watched directories."""
        trees, blobs = self.scheduler.live_blobs()
        return Roots(frozenset(trees | self.peering.partial | self.watch_registry.roots()), frozenset(blobs))

    def _local_executors(self) -> dict[str, Executor]:
        """The executors of this node that need no service: process, and sandbox where it works.

        A root node runs process tasks as task uids (:mod:`mesh.exec.taskusers`), which it
        claims here: ExecError, in one line, when it cannot. A node that is not root offers
        process only when the operator named it, or runs for its own user (``mesh exec``).
        """
        executors: dict[str, Executor] = {}
        if "process" in self.config.executors:
            process = self._process_executor()
            if process is not None:
                executors["process"] = process
                if process.paths_unavailable is not None:
                    log.warning("process tasks run in their host task directories: %s", process.paths_unavailable)
        if "sandbox" in self.config.executors:
            from mesh.exec.sandbox import SandboxExecutor, sandbox_unavailable

            why_not = sandbox_unavailable()
            if why_not is None:
                hide = [self.config.key_file] if self.config.key_file else []
                executors["sandbox"] = SandboxExecutor(
                    home=self.config.home, hide=hide, inputs=self.config.sandbox_inputs
                )
            else:
                log.warning("no sandbox executor: %s", why_not)
        if not executors and not self.config.docker:
            raise MeshError("this node would have no executor: allow process, sandbox or docker")
        return executors

    def _process_executor(self) -> ProcessExecutor | None:
        config = self.config
        if os.geteuid() == 0:
            from mesh.exec.taskusers import TaskUsers

            first, last = config.task_uids
            record = os.path.join(config.home, "task-users")
            self.task_users = TaskUsers.claim(first, last, config.slots, record=record)
            return ProcessExecutor(users=self.task_users)
        if config.own_user:
            return ProcessExecutor()
        if config.executors_named:
            log.warning(
                "the process executor's tasks run as this node's user (uid %d) and can read the node's home %s "
                "(its key, store and state): offered because the operator named it",
                os.geteuid(),
                config.home,
            )
            return ProcessExecutor()
        log.info(
            "no process executor: this node is not root, so its tasks would run as its user and could read its "
            "key; name it (--executors, MESH_EXECUTORS or executors in mesh.toml) to offer it anyway"
        )
        return None

    def _is_live(self, url: str) -> bool:
        """Whether ``url`` is this node's or a live peer's (a claim's holder, mesh.cluster.inflight)."""
        return url == self.peering.url or url in self.peering.alive_urls()

    async def _image_id(self, image: str) -> str | None:
        """The ID of ``image`` in this node's Docker engine (None: no engine, or not there)."""
        from mesh.exec.docker import DockerExecutor

        docker = self.runner.executors.get("docker")
        return await docker.image_id(image) if isinstance(docker, DockerExecutor) else None

    @property
    def default_executor(self) -> str:
        """The executor of a task that names none: sandbox where this node has it, else process."""
        have = self.runner.executors
        return next((name for name in ("sandbox", "process") if name in have), "process")

    async def _watch_docker(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Offer the ``docker`` executor while a Docker engine answers at DOCKER_HOST, and
        advertise the images it holds; looked at on start and every DOCKER_REFRESH seconds.

        On start, the containers a previous run of this node left behind are removed. A later
        look that fails on an unexpected error is logged in one line; the node goes on without
        changing what it offers, and looks again DOCKER_REFRESH seconds later (the first one
        fails the start: a bug there is not hidden).
        """
        from mesh.exec.docker import DockerExecutor

        if not self.config.docker:
            task_status.started()
            return
        try:
            executor = DockerExecutor(owner=f"mesh-{self.node_id}")
        except MeshError as exc:  # a DOCKER_HOST that is not a local unix socket
            log.warning("no docker executor: %s", exc)
            task_status.started()
            return
        first, cleaned = True, False
        while True:
            try:
                state = await executor.status()
                if state.available and not cleaned:  # the first time the engine answers
                    cleaned = True
                    await self._remove_docker_leftovers(executor)
                had = "docker" in self.runner.executors
                if state.available:
                    self.runner.executors["docker"] = executor
                else:
                    self.runner.executors.pop("docker", None)
                    if had or first:
                        log.info("no docker executor: %s", state.reason)
                self.docker = state
                self._advertise(state.images)
            except Exception as exc:  # a later look that fails (a bug, an answer not understood): the next one comes
                if first:
                    raise  # at start-up, a bug fails the start loudly
                log.error("looking at the Docker engine failed: %s", describe(exc))
            if first:
                task_status.started()
                first = False
            await trio.sleep(DOCKER_REFRESH)

    @staticmethod
    async def _remove_docker_leftovers(executor: DockerExecutor) -> None:
        try:
            removed = await executor.remove_leftovers()
        except MeshError as exc:
            log.warning("could not remove the containers a previous run left: %s", exc)
        else:
            if removed:
                log.warning("removed %d container(s) a previous run of this node left", removed)

    def _advertise(self, images: tuple[str, ...] = ()) -> None:
        """Recompute this node's capabilities (executors, labels, images) for gossip and placement."""
        caps = capabilities(sorted(self.runner.executors), dict(self.config.labels), images, self._workdirs())
        caps.update(self.cc.capabilities())  # the compilers mesh cc may place compiles on
        self.peering.capabilities = caps
        self.scheduler.capabilities = caps

    def _workdirs(self) -> dict[str, str | None]:
        """Where each executor of this node shows its tasks their workdir (None: at its host path)."""
        return {name: getattr(ex, "work_path", None) for name, ex in sorted(self.runner.executors.items())}

    def _advertise_again(self) -> None:
        """:meth:`_advertise` with what is known now (mesh cc found a compiler, say)."""
        self._advertise(self.docker.images if self.docker is not None else ())

    def _busy(self) -> bool:
        """Whether a job runs or waits on this node (for the idle stop)."""
        stats = self.scheduler.statistics()
        return bool(stats.running_jobs or stats.busy or stats.queued)

    def _load(self) -> dict[str, int]:
        stats = self.scheduler.statistics()
        return {"slots": stats.slots, "busy": stats.busy, "queued": stats.queued}

    def _close(self) -> None:
        for closer in (
            getattr(self, "runner", None),
            self.task_users,
            getattr(self, "db", None),
            getattr(self, "store", None),
            getattr(self, "verifier", None),
        ):
            if closer is not None:
                closer.close()
        for sock in self._sockets:  # serve closes them; not if the node failed before serving
            sock.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- what /health, /status and /metrics say, and gossip ---------------------------------

    def uptime(self) -> float:
        return time.time() - self.started_at

    def health(self) -> dict[str, Any]:
        """What ``/health`` says. ``ok`` is False (and ``/health`` answers 503) when the node's
        store cannot be read, say because its home was removed under it: it cannot work then."""
        answer: dict[str, Any] = {"ok": True, "node": self.node_id, "version": __version__, "mesh": self.key.mesh_id}
        try:
            answer["store"] = self.store.store_id()
        except OSError as exc:
            answer["ok"] = False
            answer["error"] = (
                f"this node's store at {self.store.root} cannot be read ({exc.strerror or exc}); "
                f"was {self.config.home} moved or removed? Restart the node"
            )
        return answer

    def status(self, *, detailed: bool = False) -> dict[str, Any]:
        """What ``/status`` says: counts and facts of this node and its peers, open to anyone;
        ``detailed`` (a signed request) adds the recent jobs, whose labels hold command lines."""
        sched = self.scheduler.statistics()
        answer: dict[str, Any] = {
            "node": self.node_id,
            "version": __version__,
            "mesh": self.key.mesh_id,
            "url": self.url,
            "uptime": round(self.uptime(), 3),
            "slots": {"total": sched.slots, "busy": sched.busy},
            "queue": sched.queued,
            "running_jobs": sched.running_jobs,
            "tasks_run": sched.tasks_run,
            "stealing": {"stolen": sched.tasks_stolen, "given": sched.tasks_given},
            "cache": {"hits": sched.cache_hits, "entries": self.db.cache_size(), "mesh": self._mesh_cache_status()},
            "store": self._store_status(),
            "capabilities": self.peering.capabilities,
            "executors": {
                "default": self.default_executor,
                "offered": sorted(self.runner.executors),
                "workdirs": self._workdirs(),
                "docker": None
                if self.docker is None
                else {"available": self.docker.available, "reason": self.docker.reason, "images": self.docker.images},
            },
            "peers": self.peering.status(),
            "watches": len(self.watch_registry.watched()),  # directories watched through this node
            "gossip": {"rounds": self.peering.gossip.rounds, "mdns": self.config.mdns},
            "cc": self.cc.status(),
            "jobs": {"counts": self.db.count_jobs()},
        }
        if detailed:
            answer["jobs"]["recent"] = [row.to_wire() for row in self.db.jobs(limit=STATUS_RECENT_JOBS)]
        return answer

    def figures(self) -> NodeFigures:
        """What ``/metrics`` exposes, read now."""
        states: dict[str, int] = {}
        for peer in self.peering.table.peers():
            states[peer.state] = states.get(peer.state, 0) + 1
        return NodeFigures(
            scheduler=self.scheduler.statistics(),
            store=self.store.statistics(),
            space=self.space.statistics(),
            workdirs=self.runner.workdirs.statistics(),
            jobs=self.db.count_jobs(),
            peers=states,
            uptime=self.uptime(),
            cc_calls=self.cc.calls(),
        )

    def gossip(self, message: Any) -> Any:
        """Merge a peer's membership table (``POST /v1/gossip``); ours, to answer with."""
        return self.peering.gossip.receive(message)

    def _mesh_cache_status(self) -> dict[str, int]:
        mesh = self.action_cache.statistics()
        claims = self.claims
        return {
            "asked": mesh.asked,
            "found": mesh.found,
            "answered": mesh.answered,
            "served": mesh.served,
            "claims_granted": claims.granted,
            "claims_waited": claims.waited,
            "claims_unanswered": claims.unanswered,
            "claims_owned": len(claims.table),
        }

    def _store_status(self) -> dict[str, int | None]:
        space = self.space.statistics()
        return {
            "bytes": space.held_bytes,  # None until the store is counted
            "blobs": space.held_blobs,
            "cap": space.cap,
            "evicted_blobs": space.evicted_blobs,
            "evicted_bytes": space.evicted_bytes,
            "refused": space.refused,
        }


def _node_id(home: str) -> str:
    """The node's id, made once and kept in ``$MESH_HOME/node.id``."""
    path = os.path.join(home, "node.id")
    try:
        with open(path, encoding="ascii") as f:
            text = f.read().strip()
        if text:
            return text
    except FileNotFoundError:
        pass
    node_id = secrets.token_hex(8)
    tmp = f"{path}.{os.getpid()}"
    with open(tmp, "w", encoding="ascii") as f:
        f.write(node_id + "\n")
    os.replace(tmp, path)
    return node_id


def _local_url(bind: str) -> str:
    """A URL a client on this machine can use for a bind like ``http://0.0.0.0:7474``."""
    return bind.replace("://0.0.0.0:", "://127.0.0.1:").replace("://[::]:", "://[::1]:")
