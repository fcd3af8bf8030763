"""Benchmark the mesh: blob exchange, scheduling over peers, joining; references in the same run.

Every node is a real ``mesh up`` process with its own MESH_HOME, listening on 127.0.0.1 only,
with mDNS off (MESH_MDNS=0); nodes find each other through ``--peer`` seeds and share one mesh
key (the first node's ``mesh.key``, copied into the other homes before they start).

a. Blob transfer between two node processes on loopback, verified. Each round puts a fresh
   random blob (256 MiB; --quick 64 MiB) into node A's store (signed ``PUT /v1/blobs/{digest}``,
   untimed), then asks node B, which lacks it, for it (signed ``GET /v1/blobs/{digest}``): B
   fetches it from its peer A, verifying and storing it as it streams in, and only then starts
   its answer. The headline is that node-to-node fetch, timed from the request to B's response
   headers. Info rows: the whole GET on B (fetch, then B streams the blob back with its own
   verification, the client hashing it too), and a direct streamed GET from A with the client
   hashing (one hop). Reference: the same bytes over a raw trio TCP stream on loopback, a
   sender process (trio, 1 MiB sends from memory) to a receiver (trio, 1 MiB receives) that
   hashes with blake3 (mesh's StreamHasher) and checks the digest. An info row sets the fetch
   against the same raw stream whose receiver also writes every piece to a new file, as B
   must, and another against one that writes as mesh's store does, whole 1 MiB pieces at 1 MiB
   offsets: on this project's VMs, taking new data into the page cache is slower than the
   stream, cheap only while recently freed memory lasts, and costlier in 1 MiB folios than in
   the small ones that pieces of any size get; so these three take turns going first.
b. Scheduling efficiency: 3 nodes x 4 slots, one job of 120 distinct ``sleep 0.2`` tasks
   (``no_cache``) submitted to node A with ``follow=1``; makespan from the POST to
   ``job_finished``. Ideal = 120 x 0.2 s / 12 slots = 2.0 s; reported as ideal / measured, with
   how many tasks each node ran (task results name the node). An untimed warm-up job first
   (peers fetch the input snapshot once).
c. Joining: fresh nodes A and B (2 slots each) run a job of more tasks than they have slots
   (``sleep 0.5``), then node C is spawned with ``--peer A``. Timed from C's spawn: C answers
   /health, A's /status lists C alive, A starts a task on C (``task_started`` event naming C's
   URL), the first task result with node == C.

Rounds before which the machine is given a moment to go idle; a round in which processes other
than this one and the nodes (their tasks included) used the CPUs is marked * and repeated (up to
3 tries). Tables give the median of the unmarked rounds and the spread (min-max).

Usage: python bench/mesh.py [--quick] [--rounds N] [--blob SIZE] [--work DIR]
Prints markdown tables on stdout, progress on stderr. Exit 1 if a check failed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import _common as c

c.use_repo()
# This file is named mesh.py: the package must win over it (the bench dir goes last on sys.path).
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here] + [_here]
sys.path.insert(0, str(c.REPO_ROOT))

import httpx  # noqa: E402
import throughput as tp  # noqa: E402  (Series, rounds, rows: the house style of bench/throughput.py)

from mesh.cas.digest import Digest  # noqa: E402
from mesh.cas.hasher import StreamHasher  # noqa: E402
from mesh.wire.auth import key_path, load_key  # noqa: E402
from mesh.wire.client import NodeClient  # noqa: E402
from tests import nodeutil  # noqa: E402
from tests.nodeutil import NodeProcess, free_port, node_env  # noqa: E402


class Series(tp.Series):
    """tp.Series with two decimals for GB/s and ratios."""

    def fmt(self, value: float) -> str:
        if self.unit in ("GB/s", "x"):
            return f"{value:.2f}"
        return super().fmt(value)


BenchFailure = tp.BenchFailure
CHUNK = 1 << 20
MIB = 1 << 20

# -- nodes -------------------------------------------------------------------------------


@dataclass
class Node(NodeProcess):
    """One ``mesh up`` of a benchmark mesh (tests.nodeutil's NodeProcess: 127.0.0.1, mDNS off),
    by name, seeded with ``peers`` (host:port)."""

    name: str = ""
    peers: list[str] = field(default_factory=list)
    node_id: str = ""
    log_name: str = "node-bench.log"

    def __post_init__(self) -> None:
        self.extra_args = [arg for peer in self.peers for arg in ("--peer", peer)]

    def wait_healthy(self, timeout: float = 30.0) -> float:
        """Seconds from spawn to the first /health answer."""
        try:
            wait_for(self.answers, timeout, f"node {self.name} at {self.url}")
        except AssertionError as exc:  # the node exited
            raise BenchFailure(f"node {self.name}: {exc}") from None
        return time.perf_counter() - self.spawned_at

    def client(self) -> NodeClient:
        return NodeClient(self.url, key=load_key(self.home))

    def stop(self) -> None:  # type: ignore[override]
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            c.note(f"node {self.name} did not stop within 15 s of SIGTERM; killing it")
            self.kill()


def wait_for(cond: Callable[[], object], timeout: float, what: str, delay: float = 0.01) -> object:
    """tests.nodeutil's wait_for, polling at least every 0.05 s (part c times these waits),
    failing the part (BenchFailure) at the timeout."""
    return nodeutil.wait_for(cond, timeout=timeout, what=what, delay=delay, longest=0.05, error=BenchFailure)


def node_id_of(node: Node) -> str:
    with node.client() as cl:
        return str(cl.health()["node"])


def alive_peers(node: Node) -> set[str]:
    """Node ids ``node``'s /status lists as alive."""
    try:
        status = httpx.get(node.url + "/status", timeout=2.0, trust_env=False).json()
    except (httpx.HTTPError, ValueError):
        return set()
    return {str(p.get("node")) for p in status.get("peers", []) if p.get("state") == "alive"}


@contextlib.contextmanager
def mesh_of(root: str, specs: list[tuple[str, int]], *, meshed: bool = True) -> Iterator[list[Node]]:
    """Start nodes (name, slots) under ``root``: the first makes the mesh key, the others get a
    copy and seed every node started before them; yields once all list each other alive."""
    nodes: list[Node] = []
    try:
        for name, slots in specs:
            node = Node(home=os.path.join(root, name), slots=slots, name=name, peers=[n.addr for n in nodes])
            if nodes:
                os.makedirs(node.home, exist_ok=True)
                shutil.copyfile(key_path(nodes[0].home), key_path(node.home))
            node.spawn()
            nodes.append(node)
            node.wait_healthy()
            node.node_id = node_id_of(node)
        if meshed:
            for node in nodes:
                others = {n.node_id for n in nodes if n is not node}
                wait_for(
                    lambda node=node, others=others: others <= alive_peers(node), 30, f"{node.name} to see its peers"
                )
        yield nodes
    finally:
        for node in reversed(nodes):
            node.stop()


# -- part a: blob transfer ---------------------------------------------------------------------

SENDER = r"""
import sys, trio
CHUNK = 1 << 20
async def main():
    data = open(sys.argv[1], "rb").read()
    view = memoryview(data)
    async def serve(stream):
        async with stream:
            for i in range(0, len(view), CHUNK):
                await stream.send_all(view[i:i + CHUNK])
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    print(listeners[0].socket.getsockname()[1], flush=True)
    await trio.serve_listeners(serve, listeners)
trio.run(main)
"""


def trio_receive(port: int, expected: Digest, write_to: str | None = None, *, whole: bool = False) -> float:
    """Receive a stream from the trio sender, hashing (and writing each piece to a new file
    ``write_to``, when given); seconds from connect to verified end.

    ``whole``: write as mesh's store does, whole CHUNK pieces at CHUNK offsets: received
    into one reused CHUNK buffer (``recv_into``, as node B does), hashed as it fills,
    written once full.
    """
    import trio

    async def main() -> float:
        start = time.perf_counter()
        hasher = StreamHasher()
        fd = None if write_to is None else os.open(write_to, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                if fd is not None and whole:
                    await receive_whole(stream, fd, hasher)
                while data := await stream.receive_some(CHUNK):  # as it arrives (empty after the above)
                    hasher.update(data)
                    if fd is not None:
                        os.write(fd, data)
        finally:
            if fd is not None:
                os.close(fd)
        hasher.verify(expected, "raw trio stream")
        return time.perf_counter() - start

    async def receive_whole(stream: trio.SocketStream, fd: int, hasher: StreamHasher) -> None:
        buffer = memoryview(bytearray(CHUNK))
        filled = 0
        while count := await stream.socket.recv_into(buffer[filled:]):
            hasher.update(buffer[filled : filled + count])
            filled += count
            if filled == CHUNK:
                os.write(fd, buffer)
                filled = 0
        os.write(fd, buffer[:filled])

    return trio.run(main)


def hashed_get(client: NodeClient, digest: Digest) -> tuple[float, float]:
    """Streamed GET of a blob, hashed by the client: (seconds to response headers, total)."""
    start = time.perf_counter()
    hasher = StreamHasher()
    with client.http.stream("GET", f"/v1/blobs/{digest}", timeout=httpx.Timeout(300, connect=5)) as response:
        headers = time.perf_counter() - start
        if response.status_code != 200:
            response.read()
            raise BenchFailure(
                f"GET /v1/blobs on {client.url} answered HTTP {response.status_code}: {response.text[:300]}"
            )
        for chunk in response.iter_raw(CHUNK):
            hasher.update(chunk)
    hasher.verify(digest, f"GET from {client.url}")
    return headers, time.perf_counter() - start


def put_blob(client: NodeClient, path: str, digest: Digest) -> None:
    def body() -> Iterator[bytes]:
        with open(path, "rb") as f:
            while chunk := f.read(4 * CHUNK):
                yield chunk

    r = client.http.put(
        f"/v1/blobs/{digest}", content=body(), headers={"content-type": "application/octet-stream"}, timeout=300
    )
    if r.status_code not in (200, 201):
        raise BenchFailure(f"PUT /v1/blobs on {client.url} answered HTTP {r.status_code}: {r.text[:300]}")


def bench_blobs(root: str, size: int, rounds: int, quiet: float) -> tuple[dict[str, Series], list[str]]:
    gb = c.GB
    label = f"{size // MIB} MiB"
    series = {
        "fetch": Series(f"a: B fetches a {label} blob from A (to B's response headers)", "GB/s"),
        "via_b": Series(f"a: GET {label} on B, whole (fetch from A + B serves, client hashes)", "GB/s"),
        "direct": Series(f"a: GET {label} from A, client hashes", "GB/s"),
        "ref": Series(f"a: raw trio TCP stream of {label}, receiver hashes", "GB/s"),
        "ref_store": Series(f"a: raw trio TCP stream of {label}, receiver hashes and writes a new file", "GB/s"),
        "ref_whole": Series(
            f"a: raw trio TCP stream of {label}, receiver hashes and writes a new file in whole 1 MiB pieces", "GB/s"
        ),
    }
    notes: list[str] = []
    blob_path = os.path.join(root, "blob.bin")
    kept: list[str] = []  # the files the raw stream stored, removed when the part ends
    sender: subprocess.Popen[bytes] | None = None
    with mesh_of(os.path.join(root, "a"), [("A", 2), ("B", 2)]) as (a, b):
        exclude = {a.process.pid, b.process.pid}  # type: ignore[union-attr]
        ca, cb = a.client(), b.client()
        try:

            def fresh_blob() -> Digest:
                data = os.urandom(size)
                with open(blob_path, "wb") as f:
                    f.write(data)
                digest = Digest.of(data)
                del data
                put_blob(ca, blob_path, digest)
                return digest

            state: dict[str, Any] = {}

            def restart_sender() -> int:
                nonlocal sender
                if sender is not None:
                    sender.kill()
                    sender.wait()
                sender = subprocess.Popen([sys.executable, "-c", SENDER, blob_path], stdout=subprocess.PIPE)
                exclude.add(sender.pid)
                assert sender.stdout is not None
                return int(sender.stdout.readline())

            def stored_copy() -> str:
                # Kept until the part ends, as B keeps its blobs: freed page-cache pages would
                # make the next round's writes cheaper than writes into fresh memory.
                kept.append(os.path.join(root, f"raw-stored-{len(kept)}.bin"))
                return kept[-1]

            def one_round() -> dict[str, float]:
                digest = state["digest"]
                port = state["port"]
                t_ref = trio_receive(port, digest)
                # These three take new page-cache memory, which this VM gives cheaply only while
                # recently freed pages last, and what one leaves behind (the whole GET's client
                # frees what it read) changes the next one's: they take turns going first.
                whole_get: list[float] = []

                def fetch() -> float:
                    headers, whole = hashed_get(cb, digest)
                    whole_get.append(whole)
                    return headers

                timed: dict[str, Callable[[], float]] = {
                    "ref_store": lambda: trio_receive(port, digest, write_to=stored_copy()),
                    "ref_whole": lambda: trio_receive(port, digest, write_to=stored_copy(), whole=True),
                    "fetch": fetch,
                }
                order = list(timed)
                first = state["round"] % len(order)  # round 1 starts with ref_store, 2 with ref_whole ...
                seconds = {k: timed[k]() for k in order[first:] + order[:first]}
                _, t_direct = hashed_get(ca, digest)
                return {
                    "ref": size / t_ref / gb,
                    "ref_store": size / seconds["ref_store"] / gb,
                    "ref_whole": size / seconds["ref_whole"] / gb,
                    "direct": size / t_direct / gb,
                    "fetch": size / seconds["fetch"] / gb,
                    "via_b": size / whole_get[0] / gb,
                }

            # Warm-up, untimed: connections, code paths, the sender's page cache.
            digest = fresh_blob()
            state["port"] = restart_sender()
            trio_receive(state["port"], digest)
            hashed_get(cb, digest)

            for r in range(rounds):
                state["round"] = r
                for _attempt in range(1, tp.MAX_TRIES + 1):
                    state["digest"] = fresh_blob()  # B lacks it; untimed
                    state["port"] = restart_sender()
                    os.sync()
                    c.wait_for_quiet_machine(quiet=0.5, limit=quiet)
                    before = tp._usage(exclude)
                    start = time.perf_counter()
                    values = one_round()
                    elapsed = time.perf_counter() - start
                    others, who = tp._usage(exclude).since(before)
                    busy = others > c.CONTENDED_SHARE * elapsed * (os.cpu_count() or 1) and others > 0.05
                    for k, v in values.items():
                        series[k].values.append(v)
                        series[k].contended.append(busy)
                    shown = ", ".join(f"{k} {v:.2f}" for k, v in values.items())
                    c.note(
                        f"a round {r + 1}: {shown} GB/s"
                        + (f"; others used {others:.2f} CPU-s ({who}), marked *" if busy else "")
                    )
                    if not busy:
                        break
            with cb as cl:
                missing = cl.find_missing([state["digest"]])
            notes.append(
                f"a: every transfer verified (client-side blake3 of each GET and of the raw stream matched); "
                f"B holds the last blob afterwards: {'no' if missing else 'yes'}"
            )
        finally:
            ca.close()
            cb.close()
            for path in kept:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            if sender is not None:
                sender.kill()
                sender.wait()
    return series, notes


# -- part b: scheduling efficiency ------------------------------------------------------------------


def snapshot_in(home: str, tree: str) -> str:
    return c.run([str(c.MESH_CLI), "snapshot", tree], env=node_env(home), capture=True).stdout.decode().strip()


def sleep_job(snapshot: str, n: int, seconds: float, nonce: str) -> dict[str, Any]:
    """n distinct ``sleep`` tasks, in the process executor: what is measured is placement,
    not the isolation (a sandbox costs each task ~10 ms of namespaces; bench/exec.py)."""
    task = {"argv": ["sleep", str(seconds)], "input": snapshot, "executor": "process"}
    tasks = [{"name": f"s{i}", **task, "env": {"TASK": f"{nonce}-{i}"}} for i in range(n)]
    return {"tasks": tasks, "label": "bench mesh", "no_cache": True}


def follow_job(
    client: NodeClient, job: dict[str, Any], on_event: Callable[[dict[str, Any], float], None] | None = None
) -> tuple[float, list[dict[str, Any]]]:
    """Submit with follow=1; (seconds to job_finished, task_finished events)."""
    start = time.perf_counter()
    finished: list[dict[str, Any]] = []
    done = None
    for event in client.submit_and_follow(job):
        now = time.perf_counter()
        if on_event is not None:
            on_event(event, now)
        if event.get("type") == "task_finished":
            finished.append(event)
        elif event.get("type") == "job_finished":
            done = event
    elapsed = time.perf_counter() - start
    if done is None:
        raise BenchFailure("the job's event stream ended without job_finished")
    if done.get("state") != "succeeded":
        bad = [e for e in finished if e.get("state") != "succeeded"][:3]
        raise BenchFailure(f"the job ended {done.get('state')}: {[(e.get('task'), e.get('reason')) for e in bad]}")
    return elapsed, finished


def bench_sched(
    root: str, tree: str, rounds: int, quiet: float, n: int = 120, secs: float = 0.2, slots: int = 4
) -> tuple[Series, Series, list[str]]:
    ideal = n * secs / (3 * slots)
    eff = Series(f"b: ideal {ideal:.2f} s / measured makespan", "x")
    span = Series(f"b: makespan of {n} x sleep {secs} on 3 x {slots} slots", "s")
    notes: list[str] = []
    with mesh_of(os.path.join(root, "b"), [("A", slots), ("B", slots), ("C", slots)]) as nodes:
        a = nodes[0]
        names = {n_.node_id: n_.name for n_ in nodes}
        snap = snapshot_in(a.home, tree)
        exclude = {n_.process.pid for n_ in nodes}  # type: ignore[union-attr]
        counter = iter(range(1 << 30))
        runs = iter(range(1, 1 << 30))
        with a.client() as ca:
            # Warm-up, untimed: the peers fetch the input snapshot from A when they accept their first offers.
            try:
                follow_job(ca, sleep_job(snap, 3 * slots, 0.05, f"warm-{time.time_ns()}"))
            except BenchFailure as exc:
                held = []
                for other in nodes[1:]:
                    with other.client() as cl:
                        held.append(
                            f"{other.name} lacks the snapshot root: {bool(cl.find_missing([Digest.parse(snap)]))}"
                        )
                notes.append(
                    f"b: NODE PROBLEM: the warm-up job ({3 * slots} tasks, input only on A) failed: {str(exc)[:400]} "
                    f"({'; '.join(held)}); the input was then snapshotted on B and C too"
                )
                for other in nodes[1:]:
                    if snapshot_in(other.home, tree) != snap:
                        raise BenchFailure("b: the same tree snapshotted on B or C gave another id") from None
                follow_job(ca, sleep_job(snap, 3 * slots, 0.05, f"warm-{time.time_ns()}"))

            def one_round() -> dict[str, float]:
                t, finished = follow_job(
                    ca, sleep_job(snap, n, secs, f"{os.getpid()}-{time.time_ns()}-{next(counter)}")
                )
                per: dict[str, int] = {}
                for e in finished:
                    who = names.get(str((e.get("result") or {}).get("node")), "?")
                    per[who] = per.get(who, 0) + 1
                notes.append(
                    f"b run {next(runs)}: makespan {t:.3f} s; tasks per node: "
                    + ", ".join(f"{k} {per.get(k, 0)}" for k in ("A", "B", "C", "?") if per.get(k) or k != "?")
                )
                return {"eff": ideal / t, "span": t}

            tp.run_rounds("b", rounds, one_round, {"eff": eff, "span": span}, exclude=exclude, quiet_limit=quiet)
    return eff, span, notes


# -- part c: joining -----------------------------------------------------------------------------------


def join_round(root: str, tree: str, n: int = 40, secs: float = 0.5) -> dict[str, float]:
    with mesh_of(root, [("A", 2), ("B", 2)]) as (a, b):
        snap = snapshot_in(a.home, tree)
        cnode = Node(home=os.path.join(root, "C"), slots=2, name="C", peers=[a.addr])
        os.makedirs(cnode.home)
        shutil.copyfile(key_path(a.home), key_path(cnode.home))
        # The input sits on every node beforehand: concurrent offers to a peer that lacks it can
        # fail the task (see part b's warm-up note), and this part measures joining, not that.
        for other in (b, cnode):
            if snapshot_in(other.home, tree) != snap:
                raise BenchFailure("c: the same tree snapshotted on B or C gave another id")
        cnode.port = free_port()
        marks: dict[str, float] = {}
        errors: list[BaseException] = []
        with a.client() as ca:
            # Warm A and B (input fetched, code paths), then the measured job.
            follow_job(ca, sleep_job(snap, 4, 0.05, f"warm-{time.time_ns()}"))
            started = threading.Event()

            def on_event(event: dict[str, Any], now: float) -> None:
                if event.get("type") == "task_started":
                    started.set()
                    if event.get("node") in (cnode.url, cnode.node_id) and "task" not in marks:
                        marks["task"] = now
                elif event.get("type") == "task_finished" and "result" not in marks:
                    if cnode.node_id and (event.get("result") or {}).get("node") == cnode.node_id:
                        marks["result"] = now

            def run_job() -> None:
                try:
                    with a.client() as cl:
                        follow_job(cl, sleep_job(snap, n, secs, f"join-{time.time_ns()}"), on_event)
                except BaseException as exc:  # noqa: BLE001 (reported below)
                    errors.append(exc)
                    started.set()

            job = threading.Thread(target=run_job, daemon=True)
            job.start()
            started.wait(30)
            time.sleep(0.3)  # A and B are busy, the queue is long
            try:
                cnode.spawn()
                t0 = cnode.spawned_at
                marks["health"] = t0 + cnode.wait_healthy()
                cnode.node_id = node_id_of(cnode)
                wait_for(lambda: cnode.node_id in alive_peers(a), 30, "A to list C alive", delay=0.005)
                marks["alive"] = time.perf_counter()
                job.join(60)
                if errors:
                    raise BenchFailure(f"c: the job failed: {errors[0]}")
                if "task" not in marks or "result" not in marks:
                    raise BenchFailure("c: no task of the job ran on C before the job ended")
                return {k: marks[k] - t0 for k in ("health", "alive", "task", "result")}
            finally:
                cnode.stop()


def bench_join(root: str, tree: str, rounds: int) -> dict[str, Series]:
    series = {
        "health": Series("c: C spawned -> C answers /health", "s"),
        "alive": Series("c: C spawned -> A's /status lists C alive", "s"),
        "task": Series("c: C spawned -> A starts a task on C", "s"),
        "result": Series("c: C spawned -> first task result from C (task is sleep 0.5)", "s"),
    }
    for r in range(rounds):
        c.wait_for_quiet_machine(quiet=0.5, limit=5)
        values = join_round(os.path.join(root, f"c{r}"), tree)
        for k, v in values.items():
            series[k].values.append(v)
            series[k].contended.append(False)
        c.note(f"c round {r + 1}: " + ", ".join(f"{k} {v:.3f} s" for k, v in values.items()))
    return series


# -- main ----------------------------------------------------------------------------------------


def row(measurement: str, s: Series, reference: str, ref_text: str, ratio: str, target: str, met: str) -> c.Row:
    return c.Row(measurement, s.cell(), reference, ref_text, ratio, target, met)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a fast smoke run (64 MiB blob, fewer rounds)")
    parser.add_argument("--rounds", type=c.positive_int, metavar="N", help="rounds per part (default 3; --quick 1)")
    parser.add_argument(
        "--blob", type=c.parse_size, metavar="SIZE", help="blob size of part a (default 256M; --quick 64M)"
    )
    parser.add_argument(
        "--work", metavar="DIR", default="/var/tmp", help="parent of the scratch directory (removed at the end)"
    )
    parser.add_argument("--parts", default="abc", help="which parts to run (default abc)")
    args = parser.parse_args()
    rounds = args.rounds or (1 if args.quick else 3)
    size = args.blob or ((64 if args.quick else 256) * MIB)
    quiet = 2.0 if args.quick else 5.0
    ok = True
    rows: list[c.Row] = []
    named: list[Series] = []
    notes: list[str] = []
    logs_with_tracebacks: list[str] = []

    with c.scratch_dir(args.work, "mesh-bench-mesh-") as scratch:
        # Part a keeps, per round, a blob in A's store, its copy in B's and the raw stream's two
        # stored copies; plus the blob's file and the warm-up round.
        c.check_space(scratch.root, (4 * rounds + 4) * size + (1 << 30))
        c.print_header("mesh: blob exchange, scheduling over peers, joining", scratch.root)
        print(tp.versions() + "\n")
        tree = scratch.path("tree")
        os.makedirs(tree)
        with open(os.path.join(tree, "input.txt"), "w") as f:
            f.write("the input of every task of parts b and c\n")
        print(
            f"nodes: `mesh up --listen 127.0.0.1:PORT --peer ...` with MESH_MDNS=0, one mesh key; rounds: {rounds} "
            f"per part; median of the rounds not marked *, spread (min-max) in brackets\n",
            flush=True,
        )

        if "a" in args.parts:
            c.note(f"part a: {size // MIB} MiB blob, A -> B, {rounds} rounds")
            m = (
                f"a. node B fetches a {size // MIB} MiB blob it lacks from node A (signed GET on B; B streams it "
                "from A, verifies, stores; timed to B's response headers)"
            )
            ref = "raw trio TCP stream of the same bytes on loopback, receiver hashes (blake3) and checks"
            try:
                s, more = bench_blobs(scratch.root, size, rounds, quiet)
                r = s["fetch"].median / s["ref"].median
                rows.append(
                    row(
                        m,
                        s["fetch"],
                        ref,
                        s["ref"].cell(),
                        f"{r:.2f}x (throughput)",
                        ">= 0.80x",
                        "yes" if r >= 0.8 else "NO",
                    )
                )
                for k, text in (
                    ("via_b", "a. whole GET on B: fetch from A, then B serves it (verifying again), client hashes"),
                    ("direct", "a. streamed GET from A, client hashes (one hop)"),
                ):
                    rr = s[k].median / s["ref"].median
                    rows.append(row(text, s[k], "same", s["ref"].cell(), f"{rr:.2f}x", "info", "info"))
                # The reference never stores what it receives; B must. How fast this machine can
                # take new bytes into a file bounds the fetch as much as the stream does.
                rs = s["fetch"].median / s["ref_store"].median
                rows.append(
                    row(
                        "a. node B's fetch (as above), against a raw stream that also stores",
                        s["fetch"],
                        "raw trio TCP stream as above; the receiver hashes and writes each piece to a new file",
                        s["ref_store"].cell(),
                        f"{rs:.2f}x",
                        "info",
                        "info",
                    )
                )
                # The same, writing as the store does: whole 1 MiB pieces at 1 MiB offsets. On this
                # project's VMs the kernel then takes 1 MiB page-cache folios, and new ones cost more
                # than the small folios that pieces of any size and offset get (bench/RESULTS.md).
                rw = s["fetch"].median / s["ref_whole"].median
                rows.append(
                    row(
                        "a. node B's fetch (as above), against a raw stream that stores as the store does",
                        s["fetch"],
                        "raw trio TCP stream as above; the receiver hashes and writes a new file in whole 1 MiB "
                        "pieces at 1 MiB offsets",
                        s["ref_whole"].cell(),
                        f"{rw:.2f}x",
                        "info",
                        "info",
                    )
                )
                named += list(s.values())
                notes += more
            except BenchFailure as exc:
                rows.append(tp.failed_row(m, ref, ">= 0.80x", str(exc)))
                ok = False

        if "b" in args.parts:
            c.note(f"part b: 3 nodes x 4 slots, 120 x sleep 0.2, {rounds} rounds")
            m = "b. scheduling: 3 nodes x 4 slots, one job of 120 distinct `sleep 0.2` (no_cache) submitted to A"
            try:
                eff, span, more = bench_sched(scratch.root, tree, rounds, quiet)
                rows.append(
                    row(
                        m + ", makespan",
                        span,
                        "ideal 120 x 0.2 s / 12 slots",
                        "2.000 s",
                        f"{eff.median:.2f}x (ideal/measured)",
                        ">= 0.90x",
                        "yes" if eff.median >= 0.9 else "NO",
                    )
                )
                named += [span, eff]
                notes += more
            except BenchFailure as exc:
                rows.append(tp.failed_row(m, "ideal 2.0 s", ">= 0.90x", str(exc)))
                ok = False

        if "c" in args.parts:
            c.note(f"part c: joining, {rounds} rounds")
            m = (
                "c. joining: A, B (2 slots each) busy with 40 x sleep 0.5; "
                "C (2 slots, input pre-placed) spawned with --peer A"
            )
            try:
                s = bench_join(scratch.root, tree, rounds)
                for k, text in (
                    ("health", "C answers /health"),
                    ("alive", "A's /status lists C alive"),
                    ("task", "A starts a task on C"),
                    ("result", "first result from C (sleep 0.5)"),
                ):
                    rows.append(row(f"{m}: spawn -> {text}", s[k], "-", "-", "-", "info", "info"))
                named += list(s.values())
            except BenchFailure as exc:
                rows.append(tp.failed_row(m, "-", "info", str(exc)))
                ok = False

        for top, _, files in os.walk(scratch.root):
            for name in files:
                if name == "node-bench.log":
                    path = os.path.join(top, name)
                    with open(path, errors="replace") as f:
                        text = f.read()
                    if "Traceback" in text:
                        logs_with_tracebacks.append(
                            f"{os.path.relpath(path, scratch.root)} ({text.count('Traceback')})"
                        )

        for line in notes:
            print(line)
        if logs_with_tracebacks:
            print("node logs with tracebacks: " + ", ".join(logs_with_tracebacks))
        print()
        c.print_table(rows)
        print("All rounds (in order; * = other processes used the CPUs during the round):\n")
        for s_ in named:
            print(f"- {s_.name} ({s_.unit}): {s_.describe()}")
        print(flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    c.run_main(main)
