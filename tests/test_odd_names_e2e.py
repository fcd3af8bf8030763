"""File names that are not UTF-8, met by a real node (``mesh up``, the process executor).

A task may leave anything in its workdir: a FIFO, which a snapshot cannot hold, or a file
whose name is not UTF-8 (byte 0xff), which it can. Either way the job ends with a clear
state and reason, both recorded in the state database; the jobs after it are recorded too,
and after a restart every one of them is there. On cec0609 the FIFO's message carried the
name as Python's surrogate escape ('\\udcff'), which neither CBOR nor SQLite can encode:
the state database's transaction stayed open, never committed, and every later job was
lost on restart while submissions still answered 201.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from pathlib import Path
from typing import Any

from mesh.wire.client import NodeClient
from tests.nodeutil import NodeProcess, wait_for
from tests.test_durability import make_snapshot

FIFO = """mkfifo "$(printf '\\377')" """
ODD_FILE = """printf 'odd\\n' > "$(printf 'caf\\351-\\377')" """


def recorded(node: NodeProcess) -> dict[str, tuple[str, str | None]]:
    """The jobs as state.db holds them, read through a connection of the test's own (the WAL
    shows it what the node committed, and nothing it did not): id -> (state, first task's reason)."""
    uri = f"file:{os.path.join(node.home, 'state.db')}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=5)) as db:
        rows = db.execute("SELECT jobs.id, jobs.state, tasks.reason FROM jobs JOIN tasks ON tasks.job = jobs.id")
        return {str(job): (str(state), reason) for job, state, reason in rows}


def ended(client: NodeClient, job_id: str) -> dict[str, Any]:
    wait_for(lambda: client.job(job_id)["state"] != "running", what=f"job {job_id} to end")
    return client.job(job_id)


def test_odd_file_names_in_a_workdir_end_their_job_recorded(home: Path, tmp_path: Path) -> None:
    snapshot = make_snapshot(home, tmp_path)

    def job(name: str, script: str) -> dict[str, Any]:
        task = {"name": name, "argv": ["sh", "-c", script], "input": snapshot, "executor": "process"}
        return {"tasks": [task], "no_cache": True}

    node = NodeProcess(str(home)).start()
    try:
        with NodeClient(node.url) as client:
            fifo = client.submit(job("fifo", FIFO))["id"]
            status = ended(client, fifo)
            [task] = status["tasks"]
            assert status["state"] == "failed", status
            reason = task["reason"]
            assert "cannot snapshot" in reason and "\\xff" in reason and "a FIFO" in reason, reason
            assert task["result"]["error"] == reason
            assert reason.encode("utf-8")  # text any client can take

            odd = client.submit(job("odd", ODD_FILE))["id"]
            assert ended(client, odd)["state"] == "succeeded"
            later = client.submit(job("later", "true"))["id"]
            assert ended(client, later)["state"] == "succeeded"

            expected = {fifo: ("failed", reason), odd: ("succeeded", None), later: ("succeeded", None)}
            wait_for(lambda: recorded(node) == expected, what="the three jobs to be committed")
            assert "Traceback" not in node.log()
        assert node.stop() == 0, node.log()

        node.start()
        with NodeClient(node.url) as client:
            assert {job["id"]: job["state"] for job in client.jobs()["jobs"]} == {
                fifo: "failed",
                odd: "succeeded",
                later: "succeeded",
            }
            assert client.job(fifo)["tasks"][0]["reason"] == reason
            output = client.job(odd)["tasks"][0]["result"]["output"]
        listing = node.mesh("ls", "--json", output)
        assert listing.returncode == 0, listing.stderr
        sizes = {os.fsencode(entry["path"]): entry["size"] for entry in json.loads(listing.stdout)}
        assert sizes == {b"README": 29, b"caf\xe9-\xff": 4}  # the workdir as the task left it, names and all
    finally:
        node.stop()
