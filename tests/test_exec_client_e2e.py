"""End to end: ``mesh exec`` and ``mesh logs`` as a user meets them: signals, lost nodes, live logs.

The real CLI as a subprocess against real ``mesh up`` processes on loopback (tests/nodeutil.py).
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from mesh.cas.digest import Digest
from mesh.wire.auth import load_key
from mesh.wire.client import NodeClient
from tests.nodeutil import MESH, NodeProcess, host_processes, node_env, wait_for


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """The directory ``mesh exec`` snapshots (the commands here read nothing of it)."""
    (tmp_path / "src").mkdir()
    return tmp_path / "src"


def mesh_process(node: NodeProcess, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """``mesh ARGS`` started against ``node``, stdout and stderr piped, stdin empty."""
    return subprocess.Popen(
        [*MESH, *args],
        env=node_env(node.home, MESH_NODE=node.url, **(env or {})),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def exec_process(
    node: NodeProcess, tree: Path, *argv: str, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """``mesh exec -C tree -- argv`` started against ``node``."""
    return mesh_process(node, "exec", "-C", str(tree), "--", *argv, env=env)


class Reader:
    """What a process wrote to a pipe so far, read without blocking past a deadline."""

    def __init__(self, pipe: object) -> None:
        self.fd = pipe.fileno()  # type: ignore[attr-defined]
        self.data = b""

    def read_until(self, wanted: bytes, timeout: float = 60.0) -> bytes:
        deadline = time.monotonic() + timeout
        while wanted not in self.data:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {wanted!r}; got {self.data!r}")
            if select.select([self.fd], [], [], left)[0]:
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    raise AssertionError(f"the pipe ended before {wanted!r}; got {self.data!r}")
                self.data += chunk
        return self.data

    def rest(self) -> bytes:
        while chunk := os.read(self.fd, 65536):
            self.data += chunk
        return self.data


def only_job(client: NodeClient) -> dict[str, Any]:
    jobs = client.jobs()["jobs"]
    assert len(jobs) == 1, jobs
    return client.job(str(jobs[0]["id"]))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGQUIT])
def test_a_signal_cancels_the_remote_task_and_exits_128_plus_n(
    node: NodeProcess, tree: Path, sig: signal.Signals
) -> None:
    marker = f"{400 + os.getpid() % 1000}.{time.time_ns() % 10**6}"
    client_process = exec_process(node, tree, "sh", "-c", 'echo started; exec sleep "$0"', marker)
    out = Reader(client_process.stdout)
    out.read_until(b"started\n")
    assert wait_for(lambda: host_processes(marker), what="the task's process on the host")
    client_process.send_signal(sig)
    assert client_process.wait(60) == 128 + sig
    stderr = client_process.stderr.read()  # type: ignore[union-attr]
    assert f"{sig.name}: job".encode() in stderr and b"cancelled" in stderr, stderr
    with NodeClient(node.url) as client:
        job = only_job(client)
        assert job["state"] == "cancelled"
        (task,) = job["tasks"]
        assert task["state"] == "cancelled"
        # What the task wrote before the cancel is kept, as a timed-out task's output is.
        assert b"".join(client.read_blob(Digest.parse(task["result"]["stdout"]))) == b"started\n"
    wait_for(lambda: not host_processes(marker), timeout=10, what="the task's process to die")
    logs = node.mesh("logs", str(job["id"]))
    assert logs.returncode == 0 and logs.stdout == b"started\n", logs


def test_a_closed_stdout_cancels_the_task_and_exits_141(node: NodeProcess, tree: Path) -> None:
    script = 'echo started; sleep "$0"; while true; do echo more; sleep 0.05; done'
    client_process = exec_process(node, tree, "sh", "-c", script, "0.5")
    out = Reader(client_process.stdout)
    out.read_until(b"started\n")
    client_process.stdout.close()  # type: ignore[union-attr]  # as `| head -1` does
    assert client_process.wait(60) == 128 + signal.SIGPIPE
    with NodeClient(node.url) as client:
        assert only_job(client)["state"] == "cancelled"


def test_the_client_reconnects_to_a_restarted_node_and_ends_with_the_commands_status(home: Path, tree: Path) -> None:
    node = NodeProcess(str(home)).start()
    try:
        script = "echo one; sleep 3; echo two; echo err >&2; exit 7"
        client_process = exec_process(node, tree, "sh", "-c", script)
        out = Reader(client_process.stdout)
        out.read_until(b"one\n")
        node.kill()  # mid-job, the client attached
        node = NodeProcess(str(home), port=node.port).start()  # the same home and port: it resumes the job
        status = client_process.wait(120)
        assert status == 7, (client_process.stderr.read(), node.log()[-3000:])  # type: ignore[union-attr]
        assert out.rest() == b"one\ntwo\n"  # nothing twice, nothing lost
        stderr = client_process.stderr.read()  # type: ignore[union-attr]
        assert stderr.startswith(b"err\n"), stderr
        assert b"Traceback" not in stderr
    finally:
        node.stop()


def test_a_node_that_stays_away_leaves_the_job_and_says_how_to_follow_it(home: Path, tree: Path) -> None:
    node = NodeProcess(str(home)).start()
    try:
        client_process = exec_process(node, tree, "sh", "-c", "echo one; sleep 60", env={"MESH_RECONNECT": "2"})
        Reader(client_process.stdout).read_until(b"one\n")
        with NodeClient(node.url) as client:
            job_id = str(client.jobs()["jobs"][0]["id"])
        node.kill()
        started = time.monotonic()
        assert client_process.wait(60) == 255
        assert time.monotonic() - started < 30
        stderr = client_process.stderr.read()  # type: ignore[union-attr]
        assert f"mesh logs -f {job_id}".encode() in stderr, stderr
        assert b"Traceback" not in stderr
    finally:
        node.kill()


def test_logs_follow_shows_a_running_jobs_lines_as_they_are_printed(
    node: NodeProcess, tree: Path, shared: Path
) -> None:
    go = shared / "go"
    script = f"echo first; while [ ! -e {go} ]; do sleep 0.05; done; echo second; exit 5"
    with NodeClient(node.url) as client:
        snapshot = _snapshot(node, tree)
        job_id = client.submit({"tasks": [{"name": "t", "argv": ["sh", "-c", script], "input": snapshot}]})["id"]
        follower = mesh_process(node, "logs", "-f", job_id)
        out = Reader(follower.stdout)
        out.read_until(b"first\n")
        assert client.job(job_id)["state"] == "running"  # shown live, before the task ended
        so_far = node.mesh("logs", job_id)  # without -f: what is there now, at once
        assert so_far.returncode == 0 and so_far.stdout == b"first\n", so_far
        go.touch()
        assert follower.wait(60) == 5  # it ends with the job, with the command's status
        assert out.rest() == b"first\nsecond\n"


def test_logs_of_a_job_of_several_tasks_prefix_each_line_with_its_task(node: NodeProcess, tree: Path) -> None:
    snapshot = _snapshot(node, tree)
    job = {
        "tasks": [
            {"name": "build", "argv": ["sh", "-c", "echo compiled; echo warned >&2"], "input": snapshot},
            {"name": "test", "argv": ["sh", "-c", "echo passed"], "input": snapshot, "after": ["build"]},
        ]
    }
    with NodeClient(node.url) as client:
        events = list(client.submit_and_follow(job))
    job_id = events[-1]["job"]
    logs = node.mesh("logs", job_id)
    assert logs.returncode == 0, logs
    assert logs.stdout == b"build | compiled\ntest  | passed\n"
    assert logs.stderr == b"build | warned\n"
    followed = node.mesh("logs", "-f", job_id)
    assert followed.returncode == 0 and followed.stdout == logs.stdout
    one = node.mesh("logs", job_id, "--task", "test")
    assert one.stdout == b"passed\n"


def _snapshot(node: NodeProcess, tree: Path) -> str:
    done = node.mesh("snapshot", str(tree))
    assert done.returncode == 0, done.stderr
    return done.stdout.decode().strip()


# -- stdin -------------------------------------------------------------------------------


def test_stdin_reaches_the_command(node: NodeProcess, tree: Path) -> None:
    done = node.mesh("exec", "-C", str(tree), "--", "cat", input=b"hi\n")
    assert (done.returncode, done.stdout) == (0, b"hi\n"), done.stderr


@pytest.mark.parametrize("executor", ["process", "sandbox"])
def test_stdin_reaches_the_command_in_each_executor(node: NodeProcess, tree: Path, executor: str) -> None:
    data = os.urandom(3 << 20) + b"end\n"  # more than a pipe holds, and not text
    done = node.mesh("exec", "--executor", executor, "-C", str(tree), "--", "cat", input=data)
    assert done.returncode == 0, done.stderr
    assert done.stdout == data


def test_stdin_is_part_of_the_cache_key(node: NodeProcess, tree: Path) -> None:
    def run(data: bytes) -> subprocess.CompletedProcess[bytes]:
        done = node.mesh("exec", "-v", "-C", str(tree), "--", "sh", "-c", "cat; echo done", input=data)
        assert done.returncode == 0, done.stderr
        return done

    first = run(b"one\n")
    assert first.stdout == b"one\ndone\n" and b"(cached)" not in first.stderr
    other = run(b"two\n")  # another stdin: not the first one's result
    assert other.stdout == b"two\ndone\n" and b"(cached)" not in other.stderr
    again = run(b"one\n")  # the same stdin again: a hit
    assert again.stdout == b"one\ndone\n" and b"(cached)" in again.stderr
    empty = run(b"")  # an empty stdin is no stdin
    assert empty.stdout == b"done\n" and b"(cached)" not in empty.stderr
    none = node.mesh("exec", "-v", "--no-stdin", "-C", str(tree), "--", "sh", "-c", "cat; echo done", input=b"x\n")
    assert none.stdout == b"done\n" and b"(cached)" in none.stderr, none.stderr  # the empty one's result


def test_no_stdin_gives_an_empty_stdin(node: NodeProcess, tree: Path) -> None:
    done = node.mesh("exec", "--no-stdin", "-C", str(tree), "--", "sh", "-c", "cat; echo end", input=b"hi\n")
    assert (done.returncode, done.stdout) == (0, b"end\n"), done.stderr


def test_a_terminal_stdin_gives_an_empty_stdin(node: NodeProcess, tree: Path) -> None:
    """A terminal is not read (it would wait for the user to type and press ^D)."""
    controller, terminal = os.openpty()
    try:
        done = subprocess.run(
            [*MESH, "exec", "-C", str(tree), "--", "sh", "-c", "cat; echo end"],
            env=node_env(node.home, MESH_NODE=node.url),
            stdin=terminal,
            capture_output=True,
            timeout=60,
        )
    finally:
        os.close(terminal)
        os.close(controller)
    assert (done.returncode, done.stdout) == (0, b"end\n"), done.stderr


def test_stdin_travels_to_the_peer_that_runs_the_task(two_nodes: tuple[NodeProcess, NodeProcess], tree: Path) -> None:
    a, b = two_nodes
    data = os.urandom(1 << 20)
    done = a.mesh("exec", "-v", "--require", "label.where=b", "-C", str(tree), "--", "cat", input=data)
    assert done.returncode == 0, done.stderr
    assert done.stdout == data
    with NodeClient(b.url) as client:
        b_id = client.health()["node"]
    assert f"ran on node {b_id}".encode() in done.stderr, done.stderr


def test_a_signal_cancels_the_task_on_the_peer_that_runs_it(
    two_nodes: tuple[NodeProcess, NodeProcess], tree: Path
) -> None:
    a, b = two_nodes
    marker = f"{500 + os.getpid() % 1000}.{time.time_ns() % 10**6}"
    argv = ["sh", "-c", 'echo started; exec sleep "$0"', marker]
    client_process = mesh_process(a, "exec", "--require", "label.where=b", "-C", str(tree), "--", *argv)
    Reader(client_process.stdout).read_until(b"started\n")
    client_process.send_signal(signal.SIGTERM)
    assert client_process.wait(60) == 128 + signal.SIGTERM
    with NodeClient(b.url, key=load_key(b.home)) as client:  # the peer's own job of the task, checked there
        wait_for(lambda: only_job(client)["state"] == "cancelled", timeout=15, what="b to cancel its task")
    wait_for(lambda: not host_processes(marker), timeout=15, what="the task's process on b to die")
    with NodeClient(a.url, key=load_key(a.home)) as client:
        job_id = str(only_job(client)["id"])
    logs = a.mesh("logs", job_id)  # what it wrote on b before the cancel, kept
    assert (logs.returncode, logs.stdout) == (0, b"started\n"), logs


def test_a_stdin_over_the_limit_is_refused_with_a_clear_message(node: NodeProcess, tree: Path) -> None:
    from mesh.errors import NodeError
    from mesh.exec.action import MAX_STDIN

    too_big = Digest.parse(f"b3:{'0' * 64}:{MAX_STDIN + 1}")
    with NodeClient(node.url) as client:
        job = {"tasks": [{"name": "t", "argv": ["cat"], "input": _snapshot(node, tree), "stdin": str(too_big)}]}
        with pytest.raises(NodeError) as refused:
            client.submit(job)
    assert refused.value.status == 400
    assert "stdin" in str(refused.value) and str(MAX_STDIN) in str(refused.value)


def test_logs_of_a_job_resumed_by_a_restarted_node_keep_its_finished_tasks(
    home: Path, tree: Path, shared: Path
) -> None:
    """A restarted node's events of a resumed job start afresh: what finished before the
    restart comes from the tasks' stored results, and the rest follows live."""
    go = shared / "go"
    node = NodeProcess(str(home)).start()
    try:
        snapshot = _snapshot(node, tree)
        wait = f"while [ ! -e {go} ]; do sleep 0.05; done"
        job = {
            "tasks": [
                {"name": "first", "argv": ["sh", "-c", "echo done before"], "input": snapshot},
                {"name": "second", "argv": ["sh", "-c", f"echo waiting; {wait}; echo after"], "input": snapshot},
            ]
        }
        with NodeClient(node.url) as client:
            job_id = client.submit(job)["id"]

            def second_runs_after_first() -> bool:
                states = {t["name"]: t["state"] for t in client.job(job_id)["tasks"]}
                return states == {"first": "succeeded", "second": "running"}

            wait_for(second_runs_after_first, what="the first task to end and the second to run")
        node.kill()
        node = NodeProcess(str(home), port=node.port).start()
        follower = mesh_process(node, "logs", "-f", job_id)
        out = Reader(follower.stdout)
        out.read_until(b"second | waiting\n")  # the second task, run again after the restart, live
        go.touch()
        assert follower.wait(60) == 0
        assert out.rest() == b"first  | done before\nsecond | waiting\nsecond | after\n"
    finally:
        node.stop()
