"""A node killed or stopped in the middle of its work resumes it after a restart.

Real ``mesh up`` processes on one ``$MESH_HOME``: 50 jobs in flight, SIGKILL,
restart on the same home and port, and every job completes exactly once in the
listing with the right output; SIGTERM with a short grace exits 0 and the
interrupted task runs again after the restart. Tasks that leave marks for the test, or
report their host pid, run with the process executor (the sandbox hides the host's /tmp and
has a pid namespace of its own); as task uids (the node is root), they write their marks in
a directory every uid may write (the ``shared`` fixture): the test's own temporary directory
is root's. The 50 jobs run in the node's default executor.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from mesh.cas.digest import Digest
from mesh.cas.snapshot import ingest, resolve
from mesh.cas.store import LocalStore
from mesh.wire.client import NodeClient
from tests.nodeutil import NodeProcess, pid_alive, wait_for

pytestmark = pytest.mark.slow

JOBS = 50
#: Every fifth job is a two-task DAG: "check" reads the output snapshot of "make".
DAG_EVERY = 5
MAKE = 'sleep 0.2; echo "$N" > out.txt; echo "job $N"'
CHECK = 'sleep 0.2; test "$(cat out.txt)" = "$N" || exit 3; echo "checked $N" > check.txt; echo "job $N"'


def client_for(node: NodeProcess) -> NodeClient:
    # verify=False: plain HTTP, and it skips building a TLS context for every client
    return NodeClient(node.url, timeout=60, transport=httpx.HTTPTransport(verify=False))


def make_snapshot(home: Path, tmp_path: Path) -> str:
    src = tmp_path / "input"
    src.mkdir()
    (src / "README").write_text("input of the durability test\n")
    with LocalStore(home / "cas") as store:
        return str(ingest(store, src))


def job_for(n: int, snapshot: str) -> dict[str, Any]:
    env = {"N": str(n)}
    tasks: list[dict[str, Any]] = [{"name": "make", "argv": ["sh", "-c", MAKE], "env": env, "input": snapshot}]
    if n % DAG_EVERY == DAG_EVERY - 1:
        tasks.append({"name": "check", "argv": ["sh", "-c", CHECK], "env": env, "input_task": "make"})
    return {"tasks": tasks, "label": f"durability {n}"}


def all_jobs(client: NodeClient, page: int = 7) -> list[dict[str, Any]]:
    """Every job the node lists, following ``next`` page by page."""
    jobs: list[dict[str, Any]] = []
    before = None
    while True:
        listing = client.jobs(limit=page, before=before)
        jobs += listing["jobs"]
        if listing["next"] is None:
            return jobs
        assert listing["next"] != before, "paging did not move on"
        before = listing["next"]


def test_sigkill_mid_run_then_restart_finishes_every_job_once(home: Path, tmp_path: Path) -> None:
    snapshot = make_snapshot(home, tmp_path)
    node = NodeProcess(str(home), slots=2)
    node.start()
    try:
        with client_for(node) as client:
            numbers: dict[str, int] = {}
            for n in range(JOBS):
                reply = client.submit(job_for(n, snapshot))
                assert reply["state"] == "running", reply
                numbers[reply["id"]] = n

            def some_done_some_running() -> bool:
                status = client.status()
                if status["tasks_run"] < 3 or status["slots"]["busy"] < 1:
                    return False
                # A start is committed within MARK_DELAY (mesh.sched.recording); the kill must come after
                # one, or the interrupted task resumes as queued and its first attempt is not counted.
                return "running" in _task_states(home)

            wait_for(some_done_some_running, timeout=30, what="tasks to finish and others to run")
        node.kill()
        assert node.process is not None and node.process.returncode == -signal.SIGKILL

        port = node.port
        node.start()  # same home, same port
        assert node.port == port

        with client_for(node) as client:

            def all_final() -> bool:
                counts = client.status()["jobs"]["counts"]
                return counts.get("running", 0) == 0 and sum(counts.values()) == JOBS

            wait_for(all_final, timeout=60, what=f"all {JOBS} jobs to finish after the restart")

            listed = all_jobs(client)
            ids = [j["id"] for j in listed]
            assert len(ids) == JOBS and len(set(ids)) == JOBS, f"{len(ids)} listed, {len(set(ids))} distinct"
            assert set(ids) == set(numbers)
            assert {j["state"] for j in listed} == {"succeeded"}, [j for j in listed if j["state"] != "succeeded"]

            attempts: list[int] = []
            with LocalStore(home / "cas") as store:
                for job_id, n in numbers.items():
                    status = client.job(job_id)
                    assert status["state"] == "succeeded", status
                    assert status["label"] == f"durability {n}"
                    expected = ["make", "check"] if n % DAG_EVERY == DAG_EVERY - 1 else ["make"]
                    assert [t["name"] for t in status["tasks"]] == expected, status
                    for task in status["tasks"]:
                        assert task["state"] == "succeeded", (job_id, task, node.log()[-3000:])
                        attempts.append(task["attempts"])
                        result = task["result"]
                        assert result["exit_code"] == 0, task
                        stdout = b"".join(client.read_blob(Digest.parse(result["stdout"])))
                        assert stdout == f"job {n}\n".encode(), (job_id, task["name"], stdout)
                        output = Digest.parse(result["output"])
                        assert store.get(resolve(store, output, "out.txt").blob) == f"{n}\n".encode()
                        if task["name"] == "check":
                            check = store.get(resolve(store, output, "check.txt").blob)
                            assert check == f"checked {n}\n".encode()
        # Only the tasks running at the kill (at most one per slot) ran twice: finished results were kept.
        assert min(attempts) == 1 and max(attempts) == 2, attempts
        assert 1 <= sum(a == 2 for a in attempts) <= node.slots, f"tasks interrupted by the kill: {attempts}"

        # The CLI reads the same outputs.
        last = max(numbers, key=lambda i: numbers[i])
        with client_for(node) as client:
            output = client.job(last)["tasks"][0]["result"]["output"]
        cat = node.mesh("cat", output, "out.txt")
        assert cat.returncode == 0 and cat.stdout == f"{numbers[last]}\n".encode(), cat

        assert node.stop() == 0, node.log()
        fsck = node.mesh("fsck")
        assert fsck.returncode == 0, (fsck.stdout, fsck.stderr)
        assert b"clean" in fsck.stdout
    finally:
        node.kill()


def test_sigterm_with_a_running_task_and_short_grace(home: Path, tmp_path: Path, shared: Path) -> None:
    """The node exits 0 once the grace runs out, the task is killed, and it runs again after a restart.

    The first attempt records its pid and blocks; the second finds the record and finishes at once
    (the marker lives outside the task's workdir, in a directory the test made writable for
    task uids, which the process executor allows).
    """
    snapshot = make_snapshot(home, tmp_path)
    marks = shared
    script = (
        f'if [ -e {marks}/first ]; then echo "second attempt"; exit 0; fi; '
        f"echo $$ > {marks}/first.tmp; mv {marks}/first.tmp {marks}/first; exec sleep 300"
    )
    node = NodeProcess(str(home), slots=1, grace=0.3)
    node.start()
    try:
        with client_for(node) as client:
            task = {"name": "slow", "argv": ["sh", "-c", script], "input": snapshot, "executor": "process"}
            job_id = client.submit({"tasks": [task]})["id"]
            wait_for(lambda: (marks / "first").exists(), timeout=30, what="the first attempt to start")
            assert client.job(job_id)["tasks"][0]["state"] == "running"
        pid = int((marks / "first").read_text())

        started = time.monotonic()
        assert node.stop(signal.SIGTERM, timeout=30) == 0, node.log()
        assert time.monotonic() - started < 20
        assert "received SIGTERM" in node.log()
        # the interrupted task's process (group) was killed, not left behind
        wait_for(lambda: not pid_alive(pid), timeout=10, what=f"the interrupted task (pid {pid}) to be gone")

        node.start()
        with client_for(node) as client:
            wait_for(lambda: client.job(job_id)["state"] != "running", timeout=30, what="the job to finish")
            status = client.job(job_id)
            [task] = status["tasks"]
            assert status["state"] == "succeeded" and task["state"] == "succeeded", (status, node.log())
            assert task["attempts"] == 2, task
            stdout = b"".join(client.read_blob(Digest.parse(task["result"]["stdout"])))
            assert stdout == b"second attempt\n"
        assert node.stop() == 0
    finally:
        node.kill()


def test_sigterm_within_grace_lets_the_running_task_finish(home: Path, tmp_path: Path, shared: Path) -> None:
    """A task that finishes within the grace is recorded before the node exits; the task that
    depends on it, never started, runs after the restart."""
    snapshot = make_snapshot(home, tmp_path)
    marks = shared
    first = f"touch {marks}/started; sleep 1; echo first > out.txt; echo first"
    job = {
        "tasks": [
            {"name": "first", "argv": ["sh", "-c", first], "input": snapshot, "executor": "process"},
            {"name": "second", "argv": ["sh", "-c", "cat out.txt; echo second"], "input_task": "first"},
        ]
    }
    node = NodeProcess(str(home), slots=1, grace=20)
    node.start()
    try:
        with client_for(node) as client:
            job_id = client.submit(job)["id"]
            wait_for(lambda: (marks / "started").exists(), timeout=30, what="the first task to start")
        assert node.stop(signal.SIGTERM, timeout=30) == 0, node.log()

        node.start()
        with client_for(node) as client:
            wait_for(lambda: client.job(job_id)["state"] != "running", timeout=30, what="the job to finish")
            status = client.job(job_id)
            assert status["state"] == "succeeded", (status, node.log())
            by_name = {t["name"]: t for t in status["tasks"]}
            assert by_name["first"]["attempts"] == 1, by_name["first"]  # it was not interrupted
            assert by_name["second"]["attempts"] == 1
            stdout = b"".join(client.read_blob(Digest.parse(by_name["second"]["result"]["stdout"])))
            assert stdout == b"first\nsecond\n"
        assert node.stop() == 0
    finally:
        node.kill()


def _task_states(home: Path, job_id: str | None = None) -> list[str]:
    """The states of the tasks (of one job, or of all) as state.db holds them, read beside the
    running node (WAL allows it)."""
    query, args = ("SELECT state FROM tasks WHERE job = ?", (job_id,)) if job_id else ("SELECT state FROM tasks", ())
    with contextlib.closing(sqlite3.connect(f"file:{home / 'state.db'}?mode=ro", uri=True, timeout=5)) as db:
        return [str(row[0]) for row in db.execute(query, args)]


def test_sigkill_with_a_task_still_writing_then_restart(home: Path, tmp_path: Path, shared: Path) -> None:
    """After a SIGKILL the interrupted attempt must not keep running, nor keep the node from
    restarting; the job then completes on its second attempt."""
    snapshot = make_snapshot(home, tmp_path)
    marks = shared
    script = (
        f'if [ -e {marks}/first ]; then echo "second attempt"; exit 0; fi; '
        f"echo $$ > {marks}/first.tmp; mv {marks}/first.tmp {marks}/first; "
        "i=0; while :; do i=$((i+1)); mkdir -p d$i; : > d$i/f; done"
    )
    node = NodeProcess(str(home), slots=1)
    node.start()
    pid = None
    try:
        with client_for(node) as client:
            task = {"name": "busy", "argv": ["sh", "-c", script], "input": snapshot, "executor": "process"}
            job_id = client.submit({"tasks": [task]})["id"]
            wait_for(lambda: (marks / "first").exists(), timeout=30, what="the first attempt to start")
        # The start is committed within MARK_DELAY (mesh.sched.recording): the kill comes after it,
        # so that the restart counts a second attempt.
        wait_for(lambda: _task_states(home, job_id) == ["running"], timeout=10, what="the start to be committed")
        pid = int((marks / "first").read_text())
        node.kill()

        node.start()
        wait_for(lambda: not pid_alive(pid), timeout=10, what=f"the first attempt (pid {pid}) to be gone")
        with client_for(node) as client:
            wait_for(lambda: client.job(job_id)["state"] != "running", timeout=30, what="the job to finish")
            [task] = client.job(job_id)["tasks"]
            assert task["state"] == "succeeded" and task["attempts"] == 2, task
        assert node.stop() == 0
    finally:
        node.kill()
        if pid is not None and pid_alive(pid):
            os.killpg(pid, signal.SIGKILL)  # the orphaned first attempt (its own process group)
