"""A full disk is a clear answer: a real node whose home is on a small filesystem made here.

Each test mounts an 8 MiB tmpfs (``small_fs`` in conftest.py: the tests run as root, and it
is unmounted even when a test fails), puts a node's MESH_HOME on it and fills it. Uploads that meet the full disk answer
507 with a message naming the store and its free space; an upload larger than the node's
store cap (MESH_STORE_MAX) or than the free space is refused before its body is read; a
task whose output cannot be stored fails with that reason and its job is recorded; the
CLI says the same in one line. Afterwards the node still serves and fsck is clean: no
partial blob, no temp file.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import shutil
import socket
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h11
import httpx
import pytest

from mesh import codec
from mesh.cas.digest import Digest
from mesh.wire.auth import load_key
from mesh.wire.client import MeshAuth, NodeClient
from mesh.wire.formats import RECORD_HEADER
from tests.nodeutil import MESH, NodeProcess, node_env, wait_for

MIB = 1 << 20


def start_node(small_fs: Path, **env: str) -> NodeProcess:
    home = small_fs / "home"
    # The node's log goes to the regular disk (an absolute log_name), so that a full disk
    # does not cost the test its evidence.
    log = str(small_fs.parent / f"node-{secrets.token_hex(4)}.log")
    return NodeProcess(str(home), env=env, log_name=log).start()


@pytest.fixture
def node_on_small_fs(small_fs: Path) -> Iterator[NodeProcess]:
    node = start_node(small_fs)
    try:
        yield node
    finally:
        node.stop()


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def signed(node: NodeProcess) -> httpx.Client:
    key = load_key(node.home)
    assert key is not None
    return httpx.Client(base_url=node.url, timeout=60, trust_env=False, auth=MeshAuth(key))


def error_of(response: httpx.Response) -> str:
    message = codec.decode(response.content)["error"]
    assert isinstance(message, str)
    return message


def assert_names_the_store(message: str, node: NodeProcess) -> None:
    store = os.path.join(node.home, "cas")
    assert store in message and "no room" in message and "free" in message, message
    assert "internal error" not in message and "Traceback" not in message, message


def assert_clean_and_serving(node: NodeProcess) -> None:
    """/health answers, a small upload works, no temp file is left, and fsck is clean."""
    assert httpx.get(node.url + "/health", trust_env=False).status_code == 200
    data = secrets.token_bytes(1000)
    with signed(node) as http:
        assert http.put(f"/v1/blobs/{Digest.of(data)}", content=data).status_code == 201
    assert os.listdir(os.path.join(node.home, "cas", "tmp")) == []
    run = subprocess.run([*MESH, "fsck", "--json"], env=node_env(node.home), capture_output=True, timeout=60)
    report = json.loads(run.stdout)
    assert run.returncode == 0 and report["clean"] and report["temp_removed"] == 0, (run.stdout, run.stderr)


def announce(node: NodeProcess, method: str, path: str, length: int, sent: bytes = b"") -> tuple[int, str]:
    """Send a signed request head announcing ``length`` body bytes, and only ``sent`` of them;
    return the node's answer (status, error message), which must come without the rest."""
    key = load_key(node.home)
    assert key is not None
    request = httpx.Request(
        method, node.url + path, headers={"content-length": str(length), "content-type": "application/octet-stream"}
    )
    request = next(MeshAuth(key).auth_flow(request))
    connection = h11.Connection(h11.CLIENT)
    with socket.create_connection(("127.0.0.1", node.port), timeout=30) as sock:
        target = request.url.raw_path
        head = h11.Request(method=method, target=target, headers=list(request.headers.raw))
        sock.sendall(connection.send(head) + connection.send(h11.Data(data=sent)))
        status, body = 0, bytearray()
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                connection.receive_data(sock.recv(65536))  # times out if the node waits for the body
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                break
    return status, codec.decode(bytes(body))["error"]


def record(digest: Digest, data: bytes) -> bytes:
    text = str(digest).encode()
    return RECORD_HEADER.pack(len(text)) + text + data


# -- uploads ------------------------------------------------------------------------------


def test_uploads_into_a_full_store_answer_507_naming_the_store(node_on_small_fs: NodeProcess) -> None:
    """PUT 1 MiB blobs until the disk is full: the refusal is a 507 that names the store and its
    free space (not a 500, not a reset connection); so is a batched upload; the node serves on."""
    node = node_on_small_fs
    stored = 0
    with signed(node) as http:
        while True:
            data = secrets.token_bytes(MIB)
            response = http.put(f"/v1/blobs/{Digest.of(data)}", content=data)
            if response.status_code != 201:
                break
            stored += 1
            assert stored < 16, "an 8 MiB filesystem took 16 MiB"
        assert response.status_code == 507, response.content
        assert_names_the_store(error_of(response), node)
        assert stored >= 3
        data = secrets.token_bytes(MIB)
        response = http.post("/v1/blobs:upload", content=record(Digest.of(data), data))
        assert response.status_code == 507, response.content
        assert_names_the_store(error_of(response), node)
    assert "internal error" not in node.log()
    assert_clean_and_serving(node)


def test_a_disk_that_fills_during_an_upload_is_a_507(node_on_small_fs: NodeProcess, small_fs: Path) -> None:
    """The blob fitted when the upload began; the disk fills while it streams in (another
    writer): the node's write meets ENOSPC, answers 507, and keeps nothing of the blob."""
    node = node_on_small_fs
    data = secrets.token_bytes(3 * MIB)
    digest = Digest.of(data)
    filler = small_fs / "filler"
    before = free_bytes(small_fs)

    def body(f: io.FileIO) -> Iterator[bytes]:
        yield data[:MIB]
        wait_for(lambda: free_bytes(small_fs) <= before - MIB, what="the node to write the first MiB")
        try:  # take the rest of the disk
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
        yield data[MIB:]

    # Made before the upload: once the disk is full, not even an empty file can be made on it.
    with open(filler, "wb", buffering=0) as f, signed(node) as http:
        response = http.put(f"/v1/blobs/{digest}", content=body(f), headers={"content-length": str(len(data))})
    assert response.status_code == 507, response.content
    assert_names_the_store(error_of(response), node)
    assert not os.path.exists(os.path.join(node.home, "cas", "blobs", digest.hex[:2], digest.hex))
    filler.unlink()
    assert_clean_and_serving(node)


def test_an_upload_larger_than_the_store_cap_is_refused_before_it_is_sent(small_fs: Path) -> None:
    """MESH_STORE_MAX=2M: a PUT, or a batched record, announcing 3 MiB gets 413 before its
    bytes are sent (the node does not wait for them), and nothing is written."""
    node = start_node(small_fs, MESH_STORE_MAX="2M")
    try:
        free = free_bytes(small_fs)
        big = Digest.of(secrets.token_bytes(3 * MIB))
        status, message = announce(node, "PUT", f"/v1/blobs/{big}", big.size, b"x" * 1000)
        assert status == 413 and "MESH_STORE_MAX" in message and str(2 * MIB) in message, (status, message)
        header = record(big, b"")
        status, message = announce(node, "POST", "/v1/blobs:upload", len(header) + big.size, header + b"x" * 1000)
        assert status == 413 and "MESH_STORE_MAX" in message, (status, message)
        assert free_bytes(small_fs) >= free - 64 * 1024  # nothing of either was kept
        # Blobs within the cap are still taken.
        small = secrets.token_bytes(MIB)
        with signed(node) as http:
            assert http.put(f"/v1/blobs/{Digest.of(small)}", content=small).status_code == 201
        assert_clean_and_serving(node)
    finally:
        node.stop()


def test_an_upload_larger_than_the_free_space_is_refused_before_it_is_sent(node_on_small_fs: NodeProcess) -> None:
    node = node_on_small_fs
    big = Digest.of(secrets.token_bytes(20 * MIB))
    status, message = announce(node, "PUT", f"/v1/blobs/{big}", big.size, b"x" * 1000)
    assert status == 507, (status, message)
    assert_names_the_store(message, node)
    assert "20.0 MiB" in message
    assert_clean_and_serving(node)


# -- tasks and the CLI --------------------------------------------------------------------


def test_a_task_whose_output_does_not_fit_fails_with_that_reason(node_on_small_fs: NodeProcess, tmp_path: Path) -> None:
    node = node_on_small_fs
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "input.txt").write_text("in\n")
    with NodeClient(node.url, key=load_key(node.home)) as client:
        snapshot = snapshot_of(node, tree)
        job: dict[str, Any] = {
            "tasks": [{"name": "loud", "argv": ["sh", "-c", "head -c 20000000 /dev/zero"], "input": snapshot}],
            "no_cache": True,
        }
        events = list(client.submit_and_follow(job))
        assert events[-1]["type"] == "job_finished" and events[-1]["state"] == "failed", events[-3:]
        recorded = client.job(events[-1]["job"])
    [task] = recorded["tasks"]
    assert task["state"] == "failed" and task["result"] is None, task
    assert_names_the_store(task["reason"], node)
    assert_clean_and_serving(node)


def test_the_cli_says_the_store_is_full_in_one_line(node_on_small_fs: NodeProcess, tmp_path: Path) -> None:
    """``mesh snapshot`` into the full store, and ``mesh exec`` from a client with its own store
    uploading to the node: one line naming the store and its free space, exit status 1."""
    node = node_on_small_fs
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "big.bin").write_bytes(secrets.token_bytes(10 * MIB))
    (tree / "small.txt").write_text("small\n")

    run = subprocess.run([*MESH, "snapshot", "-q", str(tree)], env=node_env(node.home), capture_output=True)
    assert run.returncode == 1 and run.stdout == b"", run
    assert run.stderr.startswith(b"mesh: error: ") and run.stderr.count(b"\n") == 1, run.stderr
    assert_names_the_store(run.stderr.decode(), node)

    client_home = tmp_path / "client"
    client_home.mkdir()
    shutil.copy(Path(node.home) / "mesh.key", client_home / "mesh.key")
    run = subprocess.run(
        [*MESH, "exec", "-C", str(tree), "--", "true"],
        env=node_env(str(client_home), MESH_NODE=node.url),
        capture_output=True,
        timeout=120,
    )
    assert run.returncode == 1, run
    assert run.stderr.startswith(b"mesh: error: ") and run.stderr.count(b"\n") == 1, run.stderr
    assert_names_the_store(run.stderr.decode(), node)
    assert_clean_and_serving(node)


# -- the state database -------------------------------------------------------------------


def fill(mount: Path) -> Path:
    """Take every free byte of the filesystem at ``mount`` with a file of its own; returns it."""
    filler = mount / f"filler-{secrets.token_hex(4)}"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        for chunk in (MIB, 4096, 1):
            try:
                while True:
                    os.write(fd, b"\0" * chunk)
            except OSError:
                pass
    finally:
        os.close(fd)
    assert free_bytes(mount) == 0
    return filler


class Gate:
    """A task that notes each run in a file, then waits until the test opens its gate (a FIFO);
    with ``once``, it waits on its first run only. It writes nothing into the store (no output,
    its workdir untouched), so it succeeds on a full disk."""

    def __init__(self, where: Path, name: str, *, once: bool = False) -> None:
        self.fifo = where / f"{name}.gate"
        self.runs = where / f"{name}.runs"
        os.mkfifo(self.fifo)
        script = f"echo run >> {self.runs}; read line < {self.fifo}"
        if once:
            script = f"if [ -e {self.runs} ]; then echo again >> {self.runs}; exit 0; fi; {script}"
        self.task = {"name": name, "argv": ["sh", "-c", script]}

    def started(self) -> bool:
        return self.runs.exists()

    def open(self) -> None:
        wait_for(self.started, what=f"{self.runs.name} to start")
        with open(self.fifo, "w") as f:  # blocks until the task opens its end
            f.write("go\n")


def job_of(snapshot: str, *tasks: dict[str, Any]) -> dict[str, Any]:
    return {"tasks": [{**task, "input": snapshot, "executor": "process"} for task in tasks], "no_cache": True}


def gated_node(small_fs: Path, tmp_path: Path) -> tuple[NodeProcess, str]:
    """A node on ``small_fs`` and the snapshot of a small tree stored in it (with the empty
    blob, which the gated tasks' empty output streams are)."""
    node = start_node(small_fs)
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "input.txt").write_text("in\n")
    with signed(node) as http:
        assert http.put(f"/v1/blobs/{Digest.of(b'')}", content=b"").status_code in (200, 201)
    return node, snapshot_of(node, tree)


def snapshot_of(node: NodeProcess, tree: Path) -> str:
    run = subprocess.run([*MESH, "snapshot", "-q", str(tree)], env=node_env(node.home), capture_output=True, check=True)
    return run.stdout.decode().strip()


def listed(client: NodeClient) -> dict[str, str]:
    """The jobs as the node's database lists them (GET /v1/jobs reads it): id -> state."""
    return {job["id"]: job["state"] for job in client.jobs()["jobs"]}


def task_states(node: NodeProcess) -> list[str]:
    """The states of the tasks as the node's state.db holds them, read beside the node (WAL allows it)."""
    uri = f"file:{os.path.join(node.home, 'state.db')}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=5)) as db:
        return [str(row[0]) for row in db.execute("SELECT state FROM tasks ORDER BY job, idx")]


def ended(client: NodeClient, job_id: str) -> dict[str, Any]:
    wait_for(lambda: client.job(job_id)["state"] != "running", what=f"job {job_id} to end", timeout=60)
    return client.job(job_id)


def test_a_full_disk_under_the_state_database_stops_no_node(small_fs: Path, tmp_path: Path, shared: Path) -> None:
    """Something else fills the disk while tasks run: the end of one cannot be written to the
    state database. The node serves on and says so in one line; the job says it is not recorded
    yet; a submit and a cancel are refused with 507 naming the database and its free space, and
    change nothing. Once space is freed the end is recorded, a new job runs, and after a
    restart the state is whole: no job lost, none left running."""
    node, snapshot = gated_node(small_fs, tmp_path)
    first, other = Gate(shared, "first"), Gate(shared, "other")  # where a task uid reaches them
    try:
        with signed(node) as http, NodeClient(node.url, key=load_key(node.home)) as client:
            gated = client.submit(job_of(snapshot, first.task))["id"]
            kept = client.submit(job_of(snapshot, other.task))["id"]
            wait_for(lambda: first.started() and other.started(), what="both tasks to start")

            filler = fill(small_fs)
            first.open()
            status = ended(client, gated)
            assert status["state"] == "succeeded" and status["recorded"] is False, status
            assert listed(client)[gated] == "running"  # what the database holds meanwhile
            assert "not recorded yet" in node.mesh("job", gated).stdout.decode()
            assert httpx.get(node.url + "/health", trust_env=False).status_code == 200
            lines = [line for line in node.log().splitlines() if "state database" in line]
            assert len(lines) == 1 and "cannot record" in lines[0] and "tried again" in lines[0], node.log()

            later = job_of(snapshot, {"name": "later", "argv": ["true"]})
            refused = [
                http.post("/v1/jobs", content=codec.encode(later), headers={"content-type": "application/cbor"}),
                http.post(f"/v1/jobs/{kept}/cancel"),
            ]
            for response in refused:
                assert response.status_code == 507, response.content
                message = error_of(response)
                assert os.path.join(node.home, "state.db") in message, message
                assert "no room" in message and "0 bytes free" in message, message
            assert client.job(kept)["state"] == "running"  # the cancel that could not be recorded did nothing
            assert set(listed(client)) == {gated, kept}  # the refused job left nothing
            assert node.answers() and "Traceback" not in node.log()

            filler.unlink()
            wait_for(lambda: client.job(gated)["recorded"], what="the first job's end to be recorded")
            assert listed(client)[gated] == "succeeded"
            second = client.submit(later)["id"]
            assert ended(client, second)["state"] == "succeeded"
            other.open()
            assert ended(client, kept)["state"] == "succeeded"
        assert node.stop() == 0, node.log()
        node.start()
        with NodeClient(node.url, key=load_key(node.home)) as client:
            assert listed(client) == {gated: "succeeded", kept: "succeeded", second: "succeeded"}
            for job_id in (gated, kept):
                [task] = client.job(job_id)["tasks"]
                assert task["state"] == "succeeded" and task["attempts"] == 1, task
        assert_clean_and_serving(node)
    finally:
        node.stop()


def test_a_node_stopped_before_it_could_record_runs_the_task_again(
    small_fs: Path, tmp_path: Path, shared: Path
) -> None:
    """The node stops while a task's end waits to be recorded (the disk is full): it says so
    and exits 0; the next start resumes the job from what the database holds, and the task
    runs again (at least once, as after a crash)."""
    node, snapshot = gated_node(small_fs, tmp_path)
    gate = Gate(shared, "gated", once=True)  # where a task uid reaches it
    try:
        with NodeClient(node.url, key=load_key(node.home)) as client:
            job_id = client.submit(job_of(snapshot, gate.task))["id"]
            wait_for(lambda: task_states(node) == ["running"], what="the task's start to be recorded")
            filler = fill(small_fs)
            gate.open()
            assert ended(client, job_id)["recorded"] is False
        assert node.stop() == 0, node.log()
        assert "could not be recorded before the node stopped" in node.log()
        assert task_states(node) == ["running"]
        filler.unlink()
        node.start()
        with NodeClient(node.url, key=load_key(node.home)) as client:
            status = ended(client, job_id)
            [task] = status["tasks"]
            assert status["state"] == "succeeded" and status["recorded"], status
            assert task["attempts"] == 2, task
            assert gate.runs.read_text() == "run\nagain\n"
            assert listed(client) == {job_id: "succeeded"}
        assert_clean_and_serving(node)
    finally:
        node.stop()
