"""Benchmark a node's request path against bare references, measured in the same run.

A real ``mesh up`` process (a temporary MESH_HOME, a free loopback port, one slot per core)
serves every part. The input of every task is a tiny tree (one small file) snapshotted once
into the node's store with ``mesh snapshot`` on the same MESH_HOME.

a. Trivial tasks per second through the whole path (HTTP submit, schedule, run, record).
   N tasks ``argv ["true"]`` in the ``process`` executor (the isolation a bare subprocess.run has;
   bench/exec.py measures the others), each with its own ``TASK`` env var (a fresh nonce per round), so
   none is an action-cache hit: one-task jobs sent by 4 client threads, each on its own
   kept-alive connection, each job with ``POST /v1/jobs?follow=1`` and its events read until
   ``job_finished`` (4 jobs in flight against the node's slots). Reference: a bare
   ``subprocess.run(["/bin/true"])`` loop of N runs. Info row: the same N tasks as jobs of
   25 tasks, 2 client threads.
b. Node-side latency of an action-cache hit: ``POST /v1/jobs`` of a one-task job whose action
   is cached (the 201 answer must say the job succeeded with ``result.cached`` true),
   alternating with the reference, a ``GET /health`` round trip, over one kept-alive httpx
   client; the body is encoded and the answer decoded outside the timed part.
c. Wall time of ``mesh exec -C DIR -- true`` on a cache hit (the real CLI as a subprocess,
   MESH_NODE = the node, same MESH_HOME; run once first to fill the cache; the node's cache-hit
   counter is checked afterwards). Reference: ``.venv/bin/python -c "import httpx"``.
   The no-node path, in rounds of three (each ``-v``, each a cache hit, on a MESH_HOME of its
   own whose default address is a free port): ``MESH_BACKGROUND=0`` (an in-process node), the
   first use (it starts a background node), a later use (through that node); ``mesh down``
   after each round. Reference: part c's ``mesh exec`` through the running node; target for
   later uses <= 2x.

Each part runs in rounds, mesh and reference alternating. Before each round (untimed): ``sync``
and a short wait for an idle machine. A round during which other processes used the CPUs
(the node and its tasks do not count: they are what is measured) is marked * and repeated,
up to 3 tries. Tables give the median of the unmarked rounds and their spread (min-max).

Usage: python bench/throughput.py [--quick] [--rounds N] [--tasks N] [--work DIR]
Prints markdown tables on stdout, progress on stderr. Exit 1 if a check failed.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import os
import signal
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import _common as c

c.use_repo()


from mesh import codec  # noqa: E402
from mesh.background import node_pid  # noqa: E402
from mesh.wire.client import NodeClient  # noqa: E402
from tests.nodeutil import NodeProcess, free_port, node_env  # noqa: E402

#: Client threads of part a (one-task jobs), and threads / tasks per job of its info row.
CLIENT_THREADS = 4
BATCH_THREADS = 2
BATCH_TASKS = 25
#: Seconds to wait at most for an idle machine before a round (the machine is shared).
QUIET_LIMIT = 10.0
MAX_TRIES = 3
CBOR_HEADERS = {"content-type": "application/cbor"}
#: (state, result.cached, result.exit_code) of one finished task of part a.
Outcome = tuple[object, object, object]


class BenchFailure(Exception):
    """A part could not be measured (the node refused or failed); the table says why."""


# -- the node ----------------------------------------------------------------------


#: The environment of mesh processes: no MESH_* of ours, this MESH_HOME, mDNS off.
mesh_env = node_env


@contextlib.contextmanager
def running_node(home: str, slots: int) -> Iterator[NodeProcess]:
    """A real ``mesh up`` on a free loopback port (tests.nodeutil), stopped afterwards."""
    node = NodeProcess(home, slots=slots, log_name="node-bench.log")
    try:
        try:
            node.start()
        except AssertionError as exc:
            raise BenchFailure(str(exc)) from None
        yield node
    finally:
        if node.process is not None and node.process.poll() is None:
            node.process.send_signal(signal.SIGTERM)
            try:
                node.process.wait(30)
            except subprocess.TimeoutExpired:
                node.kill()


# -- rounds, contention, medians ----------------------------------------------------------


@dataclass
class Series:
    """One measured quantity, one value per round, with whether the round was contended."""

    name: str
    unit: str  # "tasks/s", "runs/s", "ms", "s"
    values: list[float] = field(default_factory=list)
    contended: list[bool] = field(default_factory=list)

    @property
    def clean(self) -> list[float]:
        return [v for v, busy in zip(self.values, self.contended, strict=True) if not busy]

    @property
    def all_contended(self) -> bool:
        return not self.clean

    @property
    def median(self) -> float:
        return statistics.median(self.clean or self.values)

    @property
    def spread(self) -> tuple[float, float]:
        use = self.clean or self.values
        return min(use), max(use)

    def fmt(self, value: float) -> str:
        if self.unit == "ms":
            return f"{value:.2f}"
        if self.unit == "s":
            return f"{value:.3f}"
        return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"

    def cell(self) -> str:
        """``median unit (min-max)``; ``*`` when every round was contended."""
        lo, hi = self.spread
        star = "*" if self.all_contended else ""
        return f"{self.fmt(self.median)} {self.unit}{star} ({self.fmt(lo)}-{self.fmt(hi)})"

    def describe(self) -> str:
        return " ".join(
            f"{self.fmt(v)}{'*' if busy else ''}" for v, busy in zip(self.values, self.contended, strict=True)
        )


def _usage(exclude: set[int]) -> Any:
    """CPU use of every other process but ``exclude`` (the node), for the contention check."""
    usage = c._Usage.now()
    for pid in exclude:
        usage.processes.pop(pid, None)
    return usage


def run_rounds(
    label: str,
    rounds: int,
    round_fn: Callable[[], dict[str, float]],
    series: dict[str, Series],
    *,
    exclude: set[int],
    quiet_limit: float,
) -> None:
    """Run ``round_fn`` ``rounds`` times; each returns {series name: value} for this round.

    Before each (untimed): ``sync`` and a wait for an idle machine. A round in which other
    processes than this one and ``exclude`` used more than 10% of the CPUs is marked and
    repeated (at most MAX_TRIES tries per round).
    """
    for r in range(rounds):
        for attempt in range(1, MAX_TRIES + 1):
            os.sync()
            c.wait_for_quiet_machine(quiet=0.5, limit=quiet_limit)
            before = _usage(exclude)
            start = time.perf_counter()
            values = round_fn()
            elapsed = time.perf_counter() - start
            others, who = _usage(exclude).since(before)
            contended = others > c.CONTENDED_SHARE * elapsed * (os.cpu_count() or 1) and others > 0.05
            for name, value in values.items():
                series[name].values.append(value)
                series[name].contended.append(contended)
            shown = ", ".join(f"{series[n].fmt(v)} {series[n].unit}" for n, v in values.items())
            if contended:
                c.note(
                    f"{label} round {r + 1}: {shown}; others used {others:.2f} CPU-s in {elapsed:.2f} s "
                    f"(most: {who}); marked *{'; repeating it' if attempt < MAX_TRIES else ''}"
                )
                continue
            c.note(f"{label} round {r + 1}: {shown}")
            break


# -- part a: tasks per second ----------------------------------------------------------------


def task_job(snapshot: str, indices: range, nonce: str) -> dict[str, Any]:
    tasks = [
        {"name": f"t{i}", "argv": ["true"], "input": snapshot, "env": {"TASK": f"{nonce}-{i}"}, "executor": "process"}
        for i in indices
    ]
    return {"tasks": tasks, "label": "bench throughput a"}


def through_node(
    url: str, snapshot: str, n: int, threads: int, per_job: int, nonce: str
) -> tuple[float, list[Outcome]]:
    """Submit n distinct tasks as jobs of ``per_job`` tasks from ``threads`` client threads, each
    following its job's events to the end before sending its next job. Returns (seconds from the
    first submission to the last job_finished, [(state, cached, exit_code) per task])."""
    jobs = [range(s, min(s + per_job, n)) for s in range(0, n, per_job)]
    shares = [jobs[k::threads] for k in range(threads)]
    outcomes: list[Outcome] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    go = threading.Barrier(threads + 1)

    def client(share: list[range]) -> None:
        try:
            with NodeClient(url) as node:
                node.health()  # connect before the clock starts
                go.wait()
                mine = []
                for indices in share:
                    finished = False
                    for event in node.submit_and_follow(task_job(snapshot, indices, nonce)):
                        if event.get("type") == "task_finished":
                            result = event.get("result") or {}
                            mine.append((event.get("state"), result.get("cached"), result.get("exit_code")))
                        elif event.get("type") == "job_finished":
                            finished = True
                    if not finished:
                        raise BenchFailure("a job's event stream ended without job_finished")
                with lock:
                    outcomes.extend(mine)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
            with contextlib.suppress(threading.BrokenBarrierError):
                go.abort()

    workers = [threading.Thread(target=client, args=(share,), daemon=True) for share in shares]
    for w in workers:
        w.start()
    try:
        go.wait()
    except threading.BrokenBarrierError:
        pass
    start = time.perf_counter()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise BenchFailure(f"part a: {type(errors[0]).__name__}: {errors[0]}")
    return elapsed, outcomes


def true_loop(n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        subprocess.run(["/bin/true"], check=True)
    return time.perf_counter() - start


@dataclass
class TaskCheck:
    tasks: int = 0
    succeeded: int = 0
    cached: int = 0

    def add(self, outcomes: list[Outcome]) -> None:
        self.tasks += len(outcomes)
        self.succeeded += sum(1 for state, _, code in outcomes if state == "succeeded" and code == 0)
        self.cached += sum(1 for _, cached, _ in outcomes if cached)

    @property
    def ok(self) -> bool:
        return self.tasks > 0 and self.succeeded == self.tasks and self.cached == 0


def bench_tasks(
    url: str, snapshot: str, n: int, rounds: int, exclude: set[int], quiet: float
) -> tuple[dict[str, Series], TaskCheck]:
    series = {
        "mesh": Series(f"a: {n} tasks, one-task jobs, {CLIENT_THREADS} client threads", "tasks/s"),
        "batch": Series(f"a: {n} tasks, jobs of {BATCH_TASKS}, {BATCH_THREADS} client threads", "tasks/s"),
        "ref": Series(f"a: {n} x subprocess.run(['/bin/true'])", "runs/s"),
    }
    check = TaskCheck()
    counter = iter(range(1 << 30))

    def one_round() -> dict[str, float]:
        ref = true_loop(n)
        nonce = f"{os.getpid()}-{time.time_ns()}-{next(counter)}"
        t_one, out_one = through_node(url, snapshot, n, CLIENT_THREADS, 1, nonce + "a")
        t_batch, out_batch = through_node(url, snapshot, n, BATCH_THREADS, BATCH_TASKS, nonce + "b")
        check.add(out_one)
        check.add(out_batch)
        return {"ref": n / ref, "mesh": n / t_one, "batch": n / t_batch}

    # One untimed warm-up (first connections, first task directory, code paths warmed).
    through_node(url, snapshot, min(n, 20), CLIENT_THREADS, 1, f"warm-{time.time_ns()}")
    run_rounds("a", rounds, one_round, series, exclude=exclude, quiet_limit=quiet)
    return series, check


# -- part b: latency of an action-cache hit ----------------------------------------------------


def bench_cache_hit(
    url: str, snapshot: str, pairs: int, rounds: int, exclude: set[int], quiet: float
) -> dict[str, Series]:
    series = {
        "mesh": Series("b: POST /v1/jobs, one cached task", "ms"),
        "ref": Series("b: GET /health", "ms"),
    }
    job = {
        "tasks": [{"name": "cached", "argv": ["true"], "input": snapshot, "env": {"TASK": "bench-cache-hit"}}],
        "label": "bench throughput b",
    }
    body = codec.encode(job)
    with NodeClient(url) as node:
        # Fill the cache (the job runs once), following its events to the end.
        for _ in node.submit_and_follow(job):
            pass
        http = node.http  # NodeClient's kept-alive httpx client

        def post() -> float:
            start = time.perf_counter()
            response = http.post("/v1/jobs", content=body, headers=CBOR_HEADERS)
            elapsed = time.perf_counter() - start
            if response.status_code != 201:
                try:
                    message = codec.decode(response.content).get("error")
                except Exception:  # noqa: BLE001 (any undecodable body: show the status)
                    message = response.text[:200]
                raise BenchFailure(f"POST /v1/jobs of a cached job answered HTTP {response.status_code}: {message}")
            status = codec.decode(response.content)
            result = (status.get("tasks") or [{}])[0].get("result") or {}
            if status.get("state") != "succeeded" or result.get("cached") is not True:
                raise BenchFailure(
                    f"POST /v1/jobs of a cached job answered state {status.get('state')!r}, "
                    f"cached {result.get('cached')!r} (expected succeeded, True)"
                )
            return elapsed

        def health() -> float:
            start = time.perf_counter()
            response = http.get("/health")
            elapsed = time.perf_counter() - start
            if response.status_code != 200:
                raise BenchFailure(f"GET /health answered HTTP {response.status_code}")
            return elapsed

        for _ in range(20):  # warm-up, untimed
            health()
            post()

        def one_round() -> dict[str, float]:
            h, p = [], []
            for _ in range(pairs):
                h.append(health())
                p.append(post())
            return {"ref": statistics.median(h) * 1e3, "mesh": statistics.median(p) * 1e3}

        run_rounds("b", rounds, one_round, series, exclude=exclude, quiet_limit=quiet)
    return series


# -- part c: mesh exec on a cache hit ----------------------------------------------------------


def bench_exec(
    url: str, home: str, small: str, cwd: str, runs: int, exclude: set[int], quiet: float
) -> tuple[dict[str, Series], str]:
    """Returns the series and a line about the cache-hit cross-check."""
    series = {
        "mesh": Series("c: mesh exec -C DIR -- true (cache hit)", "s"),
        "ref": Series("c: python -c 'import httpx'", "s"),
    }
    env = mesh_env(home, MESH_NODE=url)
    exec_argv = [str(c.MESH_CLI), "exec", "-C", small, "--", "true"]

    def mesh_exec(*extra: str) -> subprocess.CompletedProcess[bytes]:
        argv = exec_argv[:2] + list(extra) + exec_argv[2:]
        done = subprocess.run(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
        if done.returncode != 0:
            tail = done.stderr.decode(errors="replace").strip()[-600:]
            raise BenchFailure(f"`mesh exec -- true` exited with {done.returncode}: {tail}")
        return done

    mesh_exec()  # fills the action cache
    verbose = mesh_exec("-v").stderr.decode(errors="replace")
    if "(cached)" not in verbose:
        raise BenchFailure(f"`mesh exec -v -- true` run again was not a cache hit: {verbose.strip()[-300:]}")
    ref_argv = [str(c.VENV_PYTHON), "-c", "import httpx"]
    subprocess.run(ref_argv, check=True)  # warm the page cache of httpx's files

    with NodeClient(url) as node:
        hits_before = node.status()["cache"]["hits"]

    def one_round() -> dict[str, float]:
        start = time.perf_counter()
        mesh_exec()
        t_mesh = time.perf_counter() - start
        start = time.perf_counter()
        subprocess.run(ref_argv, check=True)
        t_ref = time.perf_counter() - start
        return {"mesh": t_mesh, "ref": t_ref}

    run_rounds("c", runs, one_round, series, exclude=exclude, quiet_limit=quiet)
    with NodeClient(url) as node:
        hits = node.status()["cache"]["hits"] - hits_before
    runs_done = len(series["mesh"].values)
    line = f"c: node cache hits during the timed runs: {hits} for {runs_done} `mesh exec` runs"
    if hits != runs_done:
        raise BenchFailure(line + " (some runs were not cache hits)")
    return series, line


def bench_no_node(home: str, small: str, cwd: str, runs: int, exclude: set[int], quiet: float) -> dict[str, Series]:
    """The no-node path of part c: in-process node, first use, later use (see the docstring)."""
    series = {
        "inproc": Series("c: no node, MESH_BACKGROUND=0: in-process node (cache hit)", "s"),
        "first": Series("c: no node, first use: starts a background node (cache hit)", "s"),
        "later": Series("c: no node, later use: through the background node (cache hit)", "s"),
    }
    env = mesh_env(home, MESH_BACKGROUND="1", MESH_LISTEN=f"127.0.0.1:{free_port()}")
    argv = [str(c.MESH_CLI), "exec", "-v", "-C", small, "--", "true"]

    def timed(**extra: str) -> tuple[float, str]:
        start = time.perf_counter()
        done = subprocess.run(argv, env={**env, **extra}, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        elapsed = time.perf_counter() - start
        said = done.stderr.decode(errors="replace")
        if done.returncode != 0 or "(cached)" not in said:
            raise BenchFailure(f"`mesh exec -v -- true` with no node: exit {done.returncode}, {said.strip()[-400:]}")
        return elapsed, said

    def down() -> None:
        subprocess.run([str(c.MESH_CLI), "down"], env=env, capture_output=True, check=False)

    def one_round() -> dict[str, float]:
        t_inproc, _ = timed(MESH_BACKGROUND="0")
        t_first, said = timed()
        if "started a background node" not in said:
            raise BenchFailure(f"the first use with no node started no background node: {said.strip()[-400:]}")
        pid = node_pid(home)
        if pid is not None:
            exclude.add(pid)  # the node is what is measured, not contention
        t_later, said = timed()
        if "started a background node" in said:
            raise BenchFailure("a later use started another background node")
        down()
        return {"inproc": t_inproc, "first": t_first, "later": t_later}

    try:
        with contextlib.suppress(BenchFailure):
            timed()  # fills the action cache of this home (a miss)
        timed()
        down()
        run_rounds("c (no node)", runs, one_round, series, exclude=exclude, quiet_limit=quiet)
    finally:
        down()
    return series


# -- table --------------------------------------------------------------------------------


def ratio_row(
    measurement: str, mesh: Series, reference: str, ref: Series, *, higher_better: bool, target: float | None
) -> c.Row:
    """A row of medians; the ratio is mesh/ref of the medians (throughput or time, as said)."""
    ratio = mesh.median / ref.median
    kind = "throughput mesh/ref, higher is better" if higher_better else "time mesh/ref, lower is better"
    if target is None:
        target_text, met = "info", "info"
    else:
        ok = ratio >= target if higher_better else ratio <= target
        target_text = f"{'>=' if higher_better else '<='} {target:.2f}x"
        met = ("yes" if ok else "NO") + (" (contended)" if mesh.all_contended or ref.all_contended else "")
    return c.Row(measurement, mesh.cell(), reference, ref.cell(), f"{ratio:.2f}x ({kind})", target_text, met)


def failed_row(measurement: str, reference: str, target: str, error: str) -> c.Row:
    return c.Row(measurement, "failed", reference, "-", "-", target, f"NOT MEASURED: {error}")


def versions() -> str:
    parts = []
    for name in ("httpx", "hypercorn", "starlette", "trio", "h11"):
        try:
            parts.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            parts.append(f"{name} ?")
    return "- " + ", ".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a fast smoke run (few tasks, 2 rounds, short waits)")
    parser.add_argument("--rounds", type=c.positive_int, metavar="N", help="rounds per part (default 5; --quick 2)")
    parser.add_argument(
        "--tasks", type=c.positive_int, metavar="N", help="tasks per round of part a (default 400; --quick 50)"
    )
    parser.add_argument(
        "--work",
        metavar="DIR",
        default="/var/tmp",
        help="parent of the scratch directory (MESH_HOME and the tiny tree; removed at the end)",
    )
    args = parser.parse_args()
    rounds = args.rounds or (2 if args.quick else 5)
    n_tasks = args.tasks or (50 if args.quick else 400)
    pairs = 50 if args.quick else 200
    exec_runs = rounds * 2
    quiet = 2.0 if args.quick else QUIET_LIMIT
    slots = os.cpu_count() or 1
    ok = True
    rows: list[c.Row] = []
    named: list[Series] = []
    notes: list[str] = []

    with c.scratch_dir(args.work, "mesh-bench-throughput-") as scratch:
        c.print_header("mesh throughput benchmark", scratch.root)
        print(versions() + "\n")
        home = scratch.path("home")
        tree = scratch.path("tree")
        small = scratch.path("small")
        for d in (home, tree, small):
            os.makedirs(d)
        with open(os.path.join(tree, "input.txt"), "w") as f:
            f.write("the input of every task of parts a and b\n")
        with open(os.path.join(small, "input.txt"), "w") as f:
            f.write("the directory of part c\n")
        snapshot = c.run([str(c.MESH_CLI), "snapshot", tree], env=mesh_env(home), capture=True).stdout.decode().strip()
        print(
            f"node: `mesh up --slots {slots}` on 127.0.0.1, MESH_HOME {home}; input snapshot {snapshot} (one file)\n"
            f"rounds: a {rounds} x {n_tasks} tasks, b {rounds} x {pairs} request pairs, c {exec_runs} runs; "
            "median of the rounds not marked *, spread (min-max) in brackets\n",
            flush=True,
        )
        with running_node(home, slots) as node:
            assert node.process is not None
            exclude = {node.process.pid}
            # The node made its mesh key in this home; the NodeClients of this process sign with it.
            os.environ["MESH_HOME"] = home

            m_a = (
                f"trivial tasks through the node ({n_tasks} one-task jobs, {CLIENT_THREADS} client threads, "
                f"follow=1, {slots} slots)"
            )
            m_a2 = f"same, as jobs of {BATCH_TASKS} tasks from {BATCH_THREADS} client threads"
            ref_a = "`subprocess.run(['/bin/true'])` loop"
            c.note(f"part a: {n_tasks} trivial tasks per round through the node vs a /bin/true loop")
            try:
                s_a, check = bench_tasks(node.url, snapshot, n_tasks, rounds, exclude, quiet)
                rows.append(ratio_row(m_a, s_a["mesh"], ref_a, s_a["ref"], higher_better=True, target=0.5))
                rows.append(ratio_row(m_a2, s_a["batch"], ref_a, s_a["ref"], higher_better=True, target=None))
                named += [s_a["mesh"], s_a["batch"], s_a["ref"]]
                notes.append(
                    f"a: {check.succeeded:,}/{check.tasks:,} tasks of all timed rounds (repeats included) succeeded "
                    "with exit 0, "
                    f"{check.cached} answered from the cache (expected 0)"
                )
                ok &= check.ok
            except BenchFailure as exc:
                rows.append(failed_row(m_a, ref_a, ">= 0.50x", str(exc)))
                ok = False

            m_b = "action-cache hit: POST /v1/jobs, one task, answer says succeeded + cached"
            ref_b = "GET /health round trip, same kept-alive client"
            c.note(f"part b: {pairs} x (GET /health, POST cached job) per round")
            try:
                s_b = bench_cache_hit(node.url, snapshot, pairs, rounds, exclude, quiet)
                rows.append(ratio_row(m_b, s_b["mesh"], ref_b, s_b["ref"], higher_better=False, target=3.0))
                named += [s_b["mesh"], s_b["ref"]]
                notes.append("b: every POST (warm-up and timed) answered 201, job succeeded, result.cached true")
            except BenchFailure as exc:
                rows.append(failed_row(m_b, ref_b, "<= 3.00x", str(exc)))
                ok = False

            m_c = "`mesh exec -C DIR -- true`, cache hit, CLI wall time"
            ref_c = "`.venv/bin/python -c 'import httpx'`"
            c.note(f"part c: {exec_runs} runs of `mesh exec -- true` (cache hit) and `python -c 'import httpx'`")
            s_c: dict[str, Series] | None = None
            try:
                s_c, line = bench_exec(node.url, home, small, scratch.root, exec_runs, exclude, quiet)
                rows.append(ratio_row(m_c, s_c["mesh"], ref_c, s_c["ref"], higher_better=False, target=2.0))
                named += [s_c["mesh"], s_c["ref"]]
                notes.append(line)
            except BenchFailure as exc:
                rows.append(failed_row(m_c, ref_c, "<= 2.00x", str(exc)))
                ok = False
            ref_nn = "`mesh exec` through the running node (c)"
            m_nn = "`mesh exec -- true` with no node running, a later use (the background node), cache hit"
            c.note(f"part c, no node: {exec_runs} rounds of in-process, first use, later use")
            try:
                s_nn = bench_no_node(scratch.path("home-no-node"), small, scratch.root, exec_runs, exclude, quiet)
                if s_c is not None:
                    rows.append(ratio_row(m_nn, s_nn["later"], ref_nn, s_c["mesh"], higher_better=False, target=2.0))
                    for key, what in (
                        ("first", "same, the first use (it starts the background node)"),
                        ("inproc", "same, MESH_BACKGROUND=0 (an in-process node each time)"),
                    ):
                        rows.append(ratio_row(what, s_nn[key], ref_nn, s_c["mesh"], higher_better=False, target=None))
                named += list(s_nn.values())
            except BenchFailure as exc:
                rows.append(failed_row(m_nn, ref_nn, "<= 2.00x", str(exc)))
                ok = False
            node_log_errors = node.log().count("Traceback")

        for line in notes:
            print(line)
        if node_log_errors:
            print(f"the node logged {node_log_errors} traceback(s); see the failed rows")
        print()
        c.print_table(rows)
        print("All rounds (in order; * = other processes used the CPUs during the round, so it was repeated):\n")
        for s in named:
            print(f"- {s.name} ({s.unit}): {s.describe()}")
        print(flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    c.run_main(main)
