"""Benchmark the executors: trivial tasks per second against the bare spawn of the same isolation.

Every row runs N tasks ``argv ["true"]`` one after another through a :class:`mesh.exec.runner.Runner`
in this process (a store and workroot in a scratch MESH_HOME, an input snapshot of one small
file), so a task pays all of the runner's work (task directory, checkout in the executor's
mode, the executor, stdout/stderr into the store, output snapshot, removal). The reference of
each row is the bare spawn of the same isolation in a loop, measured in the same rounds:

* ``process``: ``subprocess.run(["/bin/true"])``.
* ``docker``: create + start + wait + remove of ``true`` through the Docker Engine API
  (and, as info, ``docker run``'s own sequence); see bench/exec_docker.py.
* ``sandbox``: ``bwrap <the sandbox's own options for a task> /bin/true`` (the same mounts
  and namespaces, from :meth:`SandboxExecutor.isolation`; no uid switch, no rlimits).
  An info row gives ``SandboxExecutor.run`` of /bin/true in the same loop, without a
  runner: the executor's own cost (rlimits, setpriv, pipes and supervision) apart from
  the runner's. Another gives the same tasks on a runner whose sandbox links its inputs
  (``sandbox_inputs = "link"``; the main row is the default, copies of the task's uid).
  Reported as not measured, with the reason, where
  :func:`sandbox_unavailable` says the sandbox cannot run.

Each row is a function returning table rows (``ROWS``); another executor's row is another
such function. Rounds alternate reference and mesh; before each (untimed) ``sync`` and a
short wait for an idle machine; a round in which other processes used the CPUs is marked *
and repeated (up to 3 tries; for the sandbox, pid 1 does not count: see sandbox_rows).
Tables give the median of the unmarked rounds and the spread.

Usage: python bench/exec.py [--quick] [--rounds N] [--tasks N] [--work DIR]
Prints markdown tables on stdout, progress on stderr. Exit 1 if a task failed.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

import _common as c

c.use_repo()

import trio  # noqa: E402
from throughput import BenchFailure, Series, failed_row, ratio_row, run_rounds  # noqa: E402

from mesh.cas.digest import Digest  # noqa: E402
from mesh.cas.snapshot import ingest  # noqa: E402
from mesh.cas.store import LocalStore  # noqa: E402
from mesh.exec.action import BASE_ENV, Action  # noqa: E402
from mesh.exec.process import Command, Executor, NoCancel, ProcessExecutor  # noqa: E402
from mesh.exec.runner import Runner  # noqa: E402
from mesh.exec.sandbox import UMASK, SandboxExecutor, sandbox_unavailable  # noqa: E402


@dataclass
class Bench:
    """What every row uses: the scratch home, its store, the input snapshot, the settings."""

    home: str
    store: LocalStore
    snapshot: Digest
    tasks: int
    rounds: int
    quiet: float
    series: list[Series]  # every series measured, for the list of all rounds
    notes: list[str]


def runner_for(bench: Bench, executor: Executor) -> Runner:
    return Runner(
        bench.store,
        workroot=os.path.join(bench.home, "work"),
        node_id="bench",
        executors={executor.name: executor},
    )


def through_runner(runner: Runner, bench: Bench, executor: str, n: int) -> float:
    """Seconds for ``n`` trivial tasks run one after another; raises BenchFailure if one fails."""

    async def tasks() -> float:
        start = time.perf_counter()
        for i in range(n):
            action = Action(argv=("true",), input=bench.snapshot, executor=executor, env=(("TASK", str(i)),))
            result = await runner.run(action)
            if not result.success:
                raise BenchFailure(f"a {executor} task failed: exit {result.exit_code}, {result.error}")
        return time.perf_counter() - start

    return trio.run(tasks)


def spawn_loop(argv: list[str], n: int, **kwargs: object) -> float:
    """Seconds for ``n`` runs of ``argv`` with subprocess.run, one after another."""
    start = time.perf_counter()
    for _ in range(n):
        subprocess.run(argv, check=True, stdin=subprocess.DEVNULL, **kwargs)  # type: ignore[call-overload]
    return time.perf_counter() - start


# -- one function per executor ---------------------------------------------------------------


def process_rows(bench: Bench) -> list[c.Row]:
    """The process executor as the node's own user, and (as root) as a root node runs it: each
    task as a task uid (setpriv, its directory handed over, its uid's processes and leftovers
    looked for afterwards), measured in the same rounds against the same bare loop."""
    measurement = f"`process`: {bench.tasks} trivial tasks through a Runner, one at a time"
    reference = "`subprocess.run(['/bin/true'])` loop"
    runner = runner_for(bench, ProcessExecutor())
    users = None
    if os.geteuid() == 0:
        from mesh.config import DEFAULT_TASK_UIDS
        from mesh.exec.taskusers import TaskUsers

        users = TaskUsers.claim(*DEFAULT_TASK_UIDS, 1, record=os.path.join(bench.home, "task-users"))
    series = {
        "mesh": Series(f"process: {bench.tasks} tasks through a Runner", "tasks/s"),
        "ref": Series(f"process: {bench.tasks} x subprocess.run(['/bin/true'])", "runs/s"),
    }
    if users is not None:
        series["uids"] = Series(f"process, task uids: {bench.tasks} tasks through a Runner", "tasks/s")
        as_uids = runner_for(bench, ProcessExecutor(users=users))
    n = bench.tasks
    through_runner(runner, bench, "process", min(n, 20))  # warm-up
    if users is not None:
        through_runner(as_uids, bench, "process", min(n, 20))

    def one_round() -> dict[str, float]:
        ref = spawn_loop(["/bin/true"], n)
        mesh = through_runner(runner, bench, "process", n)
        figures = {"ref": n / ref, "mesh": n / mesh}
        if users is not None:
            figures["uids"] = n / through_runner(as_uids, bench, "process", n)
        return figures

    c.note(f"process: {bench.rounds} rounds of {n} tasks and {n} bare spawns")
    try:
        run_rounds("process", bench.rounds, one_round, series, exclude=set(), quiet_limit=bench.quiet)
    finally:
        if users is not None:
            as_uids.close()
            users.close()
    bench.series += series.values()
    rows = [ratio_row(measurement, series["mesh"], reference, series["ref"], higher_better=True, target=None)]
    if users is not None:
        rows.append(
            ratio_row(
                f"`process` as a root node runs it (task uids): {bench.tasks} tasks through a Runner",
                series["uids"],
                reference,
                series["ref"],
                higher_better=True,
                target=None,
            )
        )
    return rows


def sandbox_rows(bench: Bench) -> list[c.Row]:
    measurement = f"`sandbox`: {bench.tasks} trivial tasks through a Runner, one at a time"
    reference = "`bwrap <the same options> /bin/true` loop"
    why_not = sandbox_unavailable()
    if why_not is not None:
        return [failed_row(measurement, reference, ">= 0.50x", f"the sandbox cannot run here: {why_not}")]
    executor = SandboxExecutor(home=bench.home)
    runner = runner_for(bench, executor)
    link_runner = runner_for(bench, SandboxExecutor(home=bench.home, inputs="link"))
    # A task directory of the runner's layout for the loops without a runner (not named
    # task-*: not the runner's).
    task = os.path.join(bench.home, "work", "bare-task")
    work, tmp = os.path.join(task, "work"), os.path.join(task, "tmp")
    os.makedirs(work)
    os.mkdir(tmp, 0o700)
    env = {**BASE_ENV, "HOME": tmp, "TMPDIR": tmp}
    command = Command(argv=("/bin/true",), workdir=work, cwd="", env=env, home=tmp, tmpdir=tmp, timeout=60)
    executor.prepare(command)
    bare = [*executor.isolation(command), "/bin/true"]

    def executor_loop(n: int) -> float:
        """Seconds for ``n`` runs of /bin/true by the executor itself, without a runner."""
        start = time.perf_counter()
        with NoCancel() as cancel:
            for _ in range(n):
                status = executor.run(command, lambda stream, chunk: True, cancel)
                if status.exit_code != 0:
                    raise BenchFailure(f"SandboxExecutor.run of /bin/true: {status}")
        return time.perf_counter() - start

    series = {
        "mesh": Series(f"sandbox: {bench.tasks} tasks through a Runner", "tasks/s"),
        "ref": Series(f"sandbox: {bench.tasks} x bwrap <same options> /bin/true", "runs/s"),
        "executor": Series(f"sandbox: {bench.tasks} x SandboxExecutor.run of /bin/true", "runs/s"),
        "link": Series(f"sandbox, inputs linked: {bench.tasks} tasks through a Runner", "tasks/s"),
    }
    n = bench.tasks
    through_runner(runner, bench, "sandbox", min(n, 20))  # warm-up
    through_runner(link_runner, bench, "sandbox", min(n, 20))
    spawn_loop(bare, min(n, 20), env=env, umask=UMASK)
    executor_loop(min(n, 20))

    def one_round() -> dict[str, float]:
        ref = spawn_loop(bare, n, env=env, umask=UMASK)
        alone = executor_loop(n)
        mesh = through_runner(runner, bench, "sandbox", n)
        linked = through_runner(link_runner, bench, "sandbox", n)
        return {"ref": n / ref, "executor": n / alone, "mesh": n / mesh, "link": n / linked}

    c.note(f"sandbox: {bench.rounds} rounds of {n} bare bwrap runs, {n} executor runs and {n} tasks")
    # pid 1 is left out of the contention check: on the project's VMs the init (process_api)
    # spends CPU on every namespace bwrap makes (~0.2-0.6 CPU-s per 200 sandboxes, measured),
    # in the reference loop as in the tasks: that is load the workload causes, not another's.
    run_rounds("sandbox", bench.rounds, one_round, series, exclude={1}, quiet_limit=bench.quiet)
    bench.series += series.values()
    bench.notes.append(f"sandbox executor: {executor!r}")
    bench.notes.append(f"sandbox reference: `{' '.join(bare)}`")
    return [
        ratio_row(measurement, series["mesh"], reference, series["ref"], higher_better=True, target=0.5),
        ratio_row(
            "`SandboxExecutor.run` of /bin/true, no runner (bwrap + rlimits + setpriv + supervision)",
            series["executor"],
            reference,
            series["ref"],
            higher_better=True,
            target=None,
        ),
        ratio_row(
            f"`sandbox` with `sandbox_inputs = link`: {bench.tasks} trivial tasks through a Runner",
            series["link"],
            reference,
            series["ref"],
            higher_better=True,
            target=None,
        ),
    ]


def docker_rows(bench: Bench) -> list[c.Row]:
    """The docker executor's rows (bench/exec_docker.py), against a private Podman service
    started for them (tests.podmanutil); not measured, with the reason, where podman cannot run."""
    from exec_docker import docker_rows as measure

    from tests.podmanutil import unavailable_reason

    reason = unavailable_reason()
    if reason is not None:
        return [failed_row("`docker`", "-", "-", f"not measured: {reason}")]
    return measure(rounds=max(5, bench.tasks // 15), repeat=max(2, bench.rounds // 2))


#: The rows of the table, one function per executor.
ROWS: list[Callable[[Bench], list[c.Row]]] = [process_rows, sandbox_rows, docker_rows]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a fast smoke run (50 tasks, 2 rounds, short waits)")
    parser.add_argument("--rounds", type=c.positive_int, metavar="N", help="rounds per row (default 5; --quick 2)")
    parser.add_argument("--tasks", type=c.positive_int, metavar="N", help="tasks per round (default 300; --quick 50)")
    parser.add_argument(
        "--work", metavar="DIR", default="/var/tmp", help="parent of the scratch directory (removed at the end)"
    )
    args = parser.parse_args()
    rows: list[c.Row] = []
    ok = True
    with c.scratch_dir(args.work, "mesh-bench-exec-") as scratch:
        c.print_header("mesh executor benchmark", scratch.root)
        print(f"- {c._first_line(['bwrap', '--version'])}; {c._first_line(['setpriv', '--version'])}")
        print(f"- running as uid {os.geteuid()} on {platform.node()}\n")
        home = scratch.path("home")
        tree = scratch.path("tree")
        os.makedirs(home)
        os.makedirs(tree)
        with open(os.path.join(tree, "input.txt"), "w") as f:
            f.write("the input of every task\n")
        with LocalStore(os.path.join(home, "cas")) as store:
            bench = Bench(
                home=home,
                store=store,
                snapshot=ingest(store, tree),
                tasks=args.tasks or (50 if args.quick else 300),
                rounds=args.rounds or (2 if args.quick else 5),
                quiet=2.0 if args.quick else 10.0,
                series=[],
                notes=[],
            )
            print(
                f"{bench.tasks} tasks per round, {bench.rounds} rounds; median of the rounds not marked *, "
                "spread (min-max) in brackets\n",
                flush=True,
            )
            for row_fn in ROWS:
                try:
                    rows += row_fn(bench)
                except BenchFailure as exc:
                    ok = False
                    name = row_fn.__name__.removesuffix("_rows")
                    rows.append(failed_row(f"`{name}`", "-", "-", str(exc)))
        for line in bench.notes:
            print(f"- {line}")
        print()
        c.print_table(rows)
        print("All rounds (in order; * = other processes used the CPUs during the round, so it was repeated):\n")
        for s in bench.series:
            print(f"- {s.name} ({s.unit}): {s.describe()}")
        print(flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    c.run_main(main)
