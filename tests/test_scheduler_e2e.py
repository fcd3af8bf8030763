"""End to end: long chains and jobs that cannot be resumed, against a real ``mesh up`` on loopback.

A job of a 600-task chain behind a failing task ended the node on cec0609 (the skipping
recursed once per task), and again at every start after, when the node resumed the job; a
10,000-task chain of cache hits answered 500. Tasks run in the node's default executor.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from mesh import codec
from mesh.sched.jobs import MAX_TASKS, parse_job
from mesh.sched.scheduler import new_job_id
from mesh.sched.statedb import StateDB, state_path
from mesh.wire.client import NodeClient
from mesh.wire.formats import CBOR
from tests.nodeutil import NodeProcess, wait_for
from tests.test_durability import make_snapshot


def chain(n: int, snapshot: str, head: list[str], argv: list[str]) -> dict[str, Any]:
    tasks = [{"name": "t0", "argv": head, "input": snapshot}]
    tasks += [{"name": f"t{i}", "argv": argv, "input": snapshot, "after": [f"t{i - 1}"]} for i in range(1, n)]
    return {"tasks": tasks, "label": f"chain of {n}"}


def finished(client: NodeClient, job_id: str, timeout: float = 30) -> dict[str, Any]:
    def final() -> dict[str, Any] | None:
        status = client.job(job_id)
        return status if status["state"] != "running" else None

    status: dict[str, Any] = wait_for(final, timeout=timeout, what=f"job {job_id} to finish")  # type: ignore[assignment]
    return status


def test_a_600_task_chain_behind_a_failing_task_fails_and_the_node_serves(home: Path, tmp_path: Path) -> None:
    snapshot = make_snapshot(home, tmp_path)
    node = NodeProcess(str(home)).start()
    try:
        with NodeClient(node.url) as client:
            reply = client.submit(chain(600, snapshot, ["false"], ["true"]))
            status = finished(client, reply["id"])
            assert status["state"] == "failed"
            tasks = status["tasks"]
            assert (tasks[0]["state"], tasks[0]["reason"]) == ("failed", "exit code 1")
            assert {(t["state"], t["reason"]) for t in tasks[1:]} == {("skipped", "'when: success' does not hold")}
            assert len(tasks) == 600
            assert node.answers()
            again = client.submit({"tasks": [{"name": "after", "argv": ["true"], "input": snapshot}]})
            assert finished(client, again["id"])["state"] == "succeeded"
    finally:
        assert node.stop() == 0


def test_a_chain_of_10000_cache_hits_is_answered_201_finished(home: Path, tmp_path: Path) -> None:
    snapshot = make_snapshot(home, tmp_path)
    node = NodeProcess(str(home)).start()
    try:
        with NodeClient(node.url) as client:
            fill = client.submit({"tasks": [{"name": "fill", "argv": ["true"], "input": snapshot}]})
            assert finished(client, fill["id"])["state"] == "succeeded"
            # Every link is the action just run (the name and `after` are not part of it): all hits.
            body = codec.encode(chain(MAX_TASKS, snapshot, ["true"], ["true"]))
            response = client.http.post("/v1/jobs", content=body, headers={"content-type": CBOR})
            assert response.status_code == 201, response.text[:500]
            status = codec.decode(response.content)
            assert status["state"] == "succeeded"
            assert len(status["tasks"]) == MAX_TASKS
            assert all(t["state"] == "succeeded" and t["result"]["cached"] for t in status["tasks"])
            assert client.job(status["id"])["state"] == "succeeded"
        shown = node.mesh("job", status["id"])
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout.decode().count(" cached\n") == MAX_TASKS
        assert node.answers()
    finally:
        assert node.stop() == 0


def test_a_job_that_cannot_be_resumed_is_failed_and_the_node_starts(home: Path, tmp_path: Path) -> None:
    """The state database holds a running job whose spec this version no longer reads (it
    names a field the job rules do not know): the node starts, serves, shows the job failed
    with the reason, and starts again without trying it a second time."""
    snapshot = make_snapshot(home, tmp_path)
    node = NodeProcess(str(home)).start()
    assert node.stop() == 0  # the node made its state database and key

    job_id = new_job_id()
    spec = parse_job({"tasks": [{"name": "old", "argv": ["true"], "input": snapshot}], "label": "from before"})
    StateDB(state_path(str(home))).add_job(job_id, spec, {"old": "queued"})
    unreadable = {"tasks": [{"name": "old", "argv": ["true"], "input": snapshot, "priority": 9}]}
    with sqlite3.connect(state_path(str(home))) as db:
        db.execute("UPDATE jobs SET spec = ? WHERE id = ?", (codec.encode(unreadable), job_id))

    node.start()
    try:
        with NodeClient(node.url) as client:
            status = client.job(job_id)
            assert status["state"] == "failed", status
            assert status["reason"].startswith("the node could not resume this job: ")
            assert "unknown field(s): 'priority'" in status["reason"]
            fresh = client.submit({"tasks": [{"name": "new", "argv": ["true"], "input": snapshot}]})
            assert finished(client, fresh["id"])["state"] == "succeeded"
        shown = node.mesh("job", job_id)
        assert shown.returncode == 0, shown.stderr
        assert b"could not resume this job" in shown.stdout
        assert [line for line in node.log().splitlines() if job_id in line and "could not resume" in line]
    finally:
        assert node.stop() == 0
    logged = node.log().count("could not resume")

    node.start()  # the job is failed for good: not tried again
    try:
        with NodeClient(node.url) as client:
            assert client.job(job_id)["state"] == "failed"
        assert node.log().count("could not resume") == logged
    finally:
        assert node.stop() == 0
