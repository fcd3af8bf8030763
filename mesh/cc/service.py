"""The node's compile service: ``mesh cc``'s wrapper sends a compile, the mesh runs it.

The service listens on the unix socket ``$MESH_HOME/cc.sock``: inside the node's home,
which the node keeps 0700, and itself 0600, so only the node's user (and root) can
connect, as only they can read the mesh key there; each connection's peer is checked
(SO_PEERCRED) to be one of them as well. This is the trust of a client on the node's
home (README: a client on the same ``$MESH_HOME`` finds the key there).

One connection carries one compile (mesh.cc.frames): the source with its headers and
macros resolved but not expanded (mesh.cc.args says why), and the compile's flags. The
service stores it as a snapshot of one file and submits a one-task job through the
node's intake, so the compile takes the way of every task: the action cache first (this
node's, then every live peer's), placement on a node that meets the task's requirements,
the run, the result recorded in the cache of the node that ran it and of this one. The
task:

- runs ``COMPILER FLAGS -c SOURCE -o out.o`` and captures ``out.o``, in the workdir every
  run on every node sees at the same path. A relative source (``c/enc/encode.c``, no
  ``..``) is at that path in the snapshot: its action (and cache key) is the same
  wherever the wrapper ran; another one is at ``root/`` and its absolute path. With
  ``-g``, ``-fdebug-prefix-map`` maps the workdir to the wrapper's (and ``root/DIR`` to
  the source's directory as named), so the debug information names the files a local
  compile names; such a compile's key then holds the wrapper's directory. A source at
  ``root/`` also gets ``-fmacro-prefix-map`` of its directory to the one named, so that
  ``__BASE_FILE__`` expands to the name the command gives. The command's own maps
  (``-ffile-prefix-map=$PWD=.``) are honoured: mesh.cc.prefixmaps;
- requires ``cc:COMPILER=FINGERPRINT`` (mesh.cc.compilers), so only a node with the same
  compiler at the same path is chosen, and declares the compiler proper (cc1) as a tool,
  which joins the toolchain identity of its cache key;
- runs with the ``process`` executor where this node's shows its tasks a stable workdir
  (a root node runs it as a task uid of its own: ~0.3 ms a task, against ~3.7 ms for
  bubblewrap), else ``sandbox`` where this node has it, else ``process`` at host paths;
- when its command names that workdir (``-g``, whose debug information holds it, and a
  source outside the working directory, named at ``root/``), requires
  ``workdir.EXECUTOR=PATH`` (mesh.cluster.peering.capabilities): a node that runs such
  tasks at their host directories would write another path into the object, so it is
  not chosen (and when no node qualifies, the wrapper compiles here).

The answer: the compile's stdout, stderr, exit status and object. A task that could not
run for reasons of the mesh (no node with the compiler, a runner's error, a timeout, a
signal, a compiler not found where it ran) is answered ``["error", WHY]``, and the
wrapper compiles locally.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
from collections.abc import Callable, Mapping
from typing import Any

import trio

from mesh.cas.digest import Digest
from mesh.cas.tree import Entry, Kind, decode_node, encode_node
from mesh.cc import frames, stats
from mesh.cc.args import debug_info
from mesh.cc.compilers import Compilers
from mesh.cc.keptcompiles import Cache, KeptCompiles
from mesh.cc.prefixmaps import DEBUG_MAPS, MACRO_MAPS, prefix_maps
from mesh.cluster.intake import JobIntake
from mesh.cluster.services import PeerBackedBlobs
from mesh.errors import InvalidCompile, MeshError, describe
from mesh.exec.action import ActionResult
from mesh.exec.toolchain import WORKDIRS, FileDigests
from mesh.sched.jobevents import JobFinished, TaskFinished
from mesh.sched.jobs import parse_job

log = logging.getLogger("mesh.cc")

#: The socket's name in the node's home.
SOCKET_NAME = "cc.sock"
#: Longest path a unix socket may have (sun_path holds 108 bytes with its NUL).
MAX_SOCKET_PATH = 107
#: Seconds a compile task may run.
COMPILE_TIMEOUT = 3600.0
#: Exit statuses that say the compiler could not be run where the task ran.
NOT_RUN = (126, 127)
LANGUAGES = ("c", "c++")
#: The first text of the two requests of a compile the wrapper runs itself (frames).
LOOKUP, RECORD = frames.LOOKUP, frames.RECORD


class CompileService:
    """``await nursery.start(service.run)`` serves compiles on ``home/cc.sock``.

    ``advertise`` is called when the compilers known here change (the node's capabilities
    are made again with :meth:`capabilities`).
    """

    def __init__(
        self,
        home: str,
        jobs: JobIntake,
        blobs: PeerBackedBlobs,
        workdirs: Callable[[], Mapping[str, str | None]],
        advertise: Callable[[], None],
        compilers: Compilers | None = None,
        *,
        cache: Cache | None = None,
        node_id: str = "",
    ) -> None:
        self.path = os.path.join(home, SOCKET_NAME)
        self.jobs = jobs
        self.blobs = blobs
        self.compilers = compilers or Compilers()
        self._workdirs = workdirs
        self._advertise = advertise
        self._one = trio.CapacityLimiter(1)  # the compilers are looked at on one thread at a time
        #: Compiles the wrapper runs itself, kept in the mesh's cache (None: not offered).
        self.kept: KeptCompiles | None = None
        if cache is not None:
            self.kept = KeptCompiles(
                blobs.store,
                cache,
                node_id,
                files=FileDigests(),
                on_thread=self._on_thread,
                fingerprint=self._fingerprint,
            )
        self.serving = False  # listening on the socket
        self.compiles = 0  # compiles the mesh answered (run, or from the cache)
        self.refused = 0  # requests answered with an error: the wrapper compiled them itself

    def capabilities(self) -> dict[str, str]:
        return self.compilers.capabilities()

    def calls(self) -> dict[str, int]:
        """The wrappers' calls through this socket by outcome (mesh.cc.stats' categories), as
        counted since the last ``mesh cc --zero-stats``; none when they cannot be read."""
        try:
            _, counts = stats.read(stats.path_beside(self.path), wait=False)  # in the event loop
        except OSError as exc:
            log.warning("mesh cc's statistics could not be read: %s", exc)
            return {}
        totals: dict[str, int] = {}
        for (category, _detail), n in counts.items():
            totals[category] = totals.get(category, 0) + n
        return totals

    def status(self) -> dict[str, Any]:
        """What ``/status`` says of it (under ``cc``): whether it listens, and counts (no paths:
        an unsigned ``/status`` names no file)."""
        answer: dict[str, Any] = {
            "serving": self.serving,
            "compilers": len(self.compilers.known),
            "compiles": self.compiles,
            "refused": self.refused,
            "calls": self.calls(),  # the wrappers' own counts, by outcome (mesh cc --stats)
        }
        if self.kept is not None:  # compiles the wrappers ran themselves (-O2 -g)
            answer["kept"] = {"hits": self.kept.hits, "misses": self.kept.misses, "kept": self.kept.kept}
        return answer

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen, then serve until cancelled; compilers are looked for after ``started``."""
        if len(os.fsencode(self.path)) > MAX_SOCKET_PATH:
            log.warning("no mesh cc service: the socket path %s is too long for a unix socket", self.path)
            task_status.started()
            return
        listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            os.unlink(self.path)  # a node that died left it; the node's lock says this node owns the home
        except FileNotFoundError:
            pass
        # Not under a narrowed umask: the umask is the process's, and the scheduler's threads
        # make task directories meanwhile (a umask of 0o177 made them 0600: bwrap could not
        # enter them). Until the chmod, the home's 0700 keeps other users from the socket.
        await listener.bind(self.path)
        os.chmod(self.path, 0o600)
        listener.listen(128)
        self.serving = True
        try:
            async with trio.open_nursery() as nursery:
                task_status.started()
                nursery.start_soon(self._scan)
                await trio.serve_listeners(self._serve, [trio.SocketListener(listener)], handler_nursery=nursery)
        finally:
            self.serving = False
            listener.close()
            try:
                os.unlink(self.path)
            except OSError:
                pass

    async def _scan(self) -> None:
        await trio.to_thread.run_sync(self.compilers.scan, limiter=self._one)
        self._advertise()

    async def _serve(self, stream: trio.SocketStream) -> None:
        async with stream:
            try:
                _check_peer(stream.socket)
                texts, blobs = await _read_frame(stream)
                if texts[:1] == [LOOKUP]:
                    answer, out = await self.lookup_kept(texts[1:], blobs)
                elif texts[:1] == [RECORD]:
                    answer, out = await self.record_kept(texts[1:], blobs)
                else:
                    answer, out = await self.compile(texts, blobs)
            except (frames.FrameError, InvalidCompile) as exc:
                answer, out = ["error", str(exc)], []
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            except MeshError as exc:
                answer, out = ["error", describe(exc)], []
            if answer[0] == "error":
                self.refused += 1
            try:
                for piece in frames.pack(answer, out):
                    await stream.send_all(piece)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the wrapper went away (make was interrupted)

    async def lookup_kept(self, texts: list[str], blobs: list[bytes]) -> tuple[list[str], list[bytes]]:
        """A compile the wrapper runs itself, looked up (mesh.cc.keptcompiles): ``["hit", NODE,
        NOTE]`` and its object, or ``["miss", TOKEN]`` for its record."""
        compiler, cwd, began_ns, env, args = _kept_request(texts, blobs)
        hit, note = await self._keeping().lookup(compiler, cwd, began_ns, args, env, blobs[0])
        if hit is None:
            return ["miss", note], []
        return ["hit", hit.node, note], [await self._object(hit)]

    async def record_kept(self, texts: list[str], blobs: list[bytes]) -> tuple[list[str], list[bytes]]:
        """The object of a compile the wrapper ran after a miss: ``["ok", NOTE]``."""
        if len(texts) != 1 or len(blobs) != 1:
            raise InvalidCompile("a record names its lookup's token and carries one object")
        return ["ok", await self._keeping().record(texts[0], blobs[0])], []

    def _keeping(self) -> KeptCompiles:
        if self.kept is None:
            raise InvalidCompile("this node keeps no compiles run by the wrapper")
        return self.kept

    async def _on_thread(self, work: Callable[[], object]) -> object:
        return await trio.to_thread.run_sync(work, limiter=self._one)

    async def _fingerprint(self, compiler: str) -> str | None:
        return await trio.to_thread.run_sync(self.compilers.fingerprint, compiler, limiter=self._one)

    async def compile(self, texts: list[str], blobs: list[bytes]) -> tuple[list[str], list[bytes]]:
        """Run one compile on the mesh: the answer's texts and byte strings (mesh.cc.frames)."""
        compiler, args, language, source, cwd = _request(texts, blobs)
        known = compiler in self.compilers.known
        found = await trio.to_thread.run_sync(self.compilers.requirement, compiler, language, limiter=self._one)
        if found is None:
            raise InvalidCompile(f"{compiler} is not an executable file on the node")
        requirement, proper = found
        if not known:
            self._advertise()  # a compiler known here from now on
        executor = choose_executor(self._workdirs())
        debug = debug_info(args)
        name, root, maps = self._input(source, cwd, blobs[0], WORKDIRS[executor], debug=debug, args=args)
        if debug or name.startswith(f"{WORKDIRS[executor]}/"):  # the command names the workdir
            requirement = {**requirement, f"workdir.{executor}": WORKDIRS[executor]}
        task: dict[str, Any] = {
            "name": "cc",
            "argv": [compiler, *args, *maps, "-c", name, "-o", "out.o"],
            "input": str(root),
            "outputs": ["out.o"],
            "timeout": COMPILE_TIMEOUT,
            "executor": executor,
            "requirements": requirement,
            "tools": [proper] if proper is not None else [],
        }
        spec = parse_job({"tasks": [task], "label": f"cc {source}"[:200]}, default_executor=self.jobs.default_executor)
        job = await self.jobs.submit(spec)
        result, why = await self._wait(job)
        if result is None or why is not None:
            return ["error", why or "the compile task ended without a result"], []
        stdout = await self._read(result.stdout)
        stderr = await self._read(result.stderr)
        obj = b""
        if result.exit_code == 0:
            obj = await self._object(result)
        self.compiles += 1
        ran = f"ran on node {result.node}"
        note = (
            result.cache_note
            if result.cached and result.cache_note
            else "; ".join(filter(None, [result.cache_note, ran]))
        )
        how = frames.CACHED if result.cached else frames.RAN
        return ["ok", str(result.exit_code), result.node, f"job {job}: {note}", how], [stdout, stderr, obj]

    def _input(
        self, source: str, cwd: str, text: bytes, workdir: str, *, debug: bool, args: list[str]
    ) -> tuple[str, Digest, list[str]]:
        """The snapshot of the one file the task compiles: the source's name in the task,
        the snapshot, and the flags that map the task's paths to the wrapper's (``-g``)."""
        parts = source.split("/")
        relative = not os.path.isabs(source) and ".." not in parts
        if relative:  # at the same relative path, named as the command names it
            where, name = [p for p in parts if p not in ("", ".")], source
        else:
            absolute = os.path.normpath(os.path.join(cwd, source))
            where = ["root", *absolute.strip("/").split("/")]
            name = f"{workdir}/{'/'.join(where)}"
        store = self.blobs.store
        digest = store.put(text)
        entry = Entry(where[-1].encode(errors="surrogateescape"), Kind.FILE, digest)
        for directory in reversed(where[:-1]):
            node = store.put(encode_node([entry]))
            entry = Entry(directory.encode(errors="surrogateescape"), Kind.DIRECTORY, node)
        root = store.put(encode_node([entry]))
        named = [] if relative else [(os.path.dirname(name), os.path.dirname(source) or ".")]
        maps = prefix_maps(named, args, MACRO_MAPS)  # __BASE_FILE__ is the name the command gives
        if debug:  # the source's directory as named after the workdir: the later map wins
            maps += prefix_maps([(workdir, cwd), *named], args, DEBUG_MAPS)
        return name, root, maps

    async def _wait(self, job: str) -> tuple[ActionResult | None, str | None]:
        """The task's result, and why the mesh could not compile it (None: it did)."""
        events = self.jobs.events(job)
        finished = list(self.jobs.summary(job)) if events is None else []
        if events is not None:
            async for batch in events.follow():
                finished += [e for e in batch if isinstance(e, TaskFinished | JobFinished)]
        result: ActionResult | None = None
        reason: str | None = None
        for event in finished:
            if isinstance(event, TaskFinished):
                result, reason = event.result, event.reason
        if result is None:
            return None, reason or "the compile task did not run"
        if result.error or result.timed_out or result.signal is not None or result.exit_code in NOT_RUN:
            return result, result.error or f"the compile task ended with status {result.exit_code} on {result.node}"
        return result, None

    async def _read(self, digest: Digest) -> bytes:
        """A blob of the result, fetched from the peer that holds it when this node does not;
        an empty one (a silent compile's stdout and stderr) without asking anyone: a hit
        from a peer's cache then costs one fetch, the object's, not three."""
        if digest.size == 0:
            return b""
        with await self.blobs.open(digest, ask_peers=True) as reader:
            return reader.read()

    async def _object(self, result: ActionResult) -> bytes:
        if result.output is None:
            raise MeshError("the compile succeeded but its output was not captured")
        entries = decode_node(await self._read(result.output))
        for entry in entries:
            if entry.name == b"out.o" and entry.kind == Kind.FILE:
                return await self._read(entry.blob)
        raise MeshError("the compile succeeded but made no object")


def choose_executor(workdirs: Mapping[str, str | None]) -> str:
    """The executor of a compile task, from this node's (name -> where it shows tasks their
    workdir, None: at their host path): ``process`` at a stable path, else ``sandbox``, else
    ``process`` anyway (its debug builds then go to nodes whose path is stable)."""
    if workdirs.get("process"):
        return "process"
    return "sandbox" if "sandbox" in workdirs else "process"


def _check_peer(sock: trio.socket.SocketType) -> None:
    """Only the node's user and root may compile through the node (SO_PEERCRED)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    if uid not in (0, os.geteuid()):
        raise InvalidCompile(f"uid {uid} may not use this node's compile service")


async def _read_frame(stream: trio.SocketStream) -> tuple[list[str], list[bytes]]:
    """One frame from the wrapper, read whole first (the wrapper closes its side after it)."""
    data = bytearray()
    while chunk := await stream.receive_some(1 << 20):
        data.extend(chunk)
        if len(data) > frames.MAX_FRAME:
            raise frames.FrameError(f"a frame of more than {frames.MAX_FRAME} bytes")
    view = memoryview(data)
    at = 0

    def take(n: int) -> bytes:
        nonlocal at
        piece = bytes(view[at : at + n])
        at += len(piece)
        return piece

    return frames.unpack(take)


def _kept_request(texts: list[str], blobs: list[bytes]) -> tuple[str, str, int, list[str], list[str]]:
    """A lookup's ``[COMPILER, CWD, BEGAN_NS, N, ENV * N, ARG...]`` and its one text."""
    if len(texts) < 4 or len(blobs) != 1:
        raise InvalidCompile("a lookup names the compiler, the directory, a time and its environment, with one text")
    compiler, cwd, began, count, *rest = texts
    if not os.path.isabs(compiler) or not os.path.isabs(cwd):
        raise InvalidCompile("the compiler and the working directory are absolute paths")
    if not began.isdigit() or not count.isdigit() or int(count) > len(rest):
        raise InvalidCompile("a lookup's time and count of variables are numbers")
    return compiler, cwd, int(began), rest[: int(count)], rest[int(count) :]


def _request(texts: list[str], blobs: list[bytes]) -> tuple[str, list[str], str, str, str]:
    if len(texts) < 4:
        raise InvalidCompile("a compile request names the compiler, the language, the source and the directory")
    compiler, language, source, cwd, *args = texts
    if not os.path.isabs(compiler):
        raise InvalidCompile("the compiler is not an absolute path")
    if language not in LANGUAGES:
        raise InvalidCompile("the language is neither c nor c++")
    if not os.path.isabs(cwd):
        raise InvalidCompile("the working directory is not an absolute path")
    if not source or source.endswith("/") or "\0" in source:
        raise InvalidCompile("the source is not a file name")
    if len(blobs) != 1:
        raise InvalidCompile("a compile request carries one byte string, the source")
    return compiler, args, language, source, cwd
