"""A task gets exactly what its executor grants, whoever submits it.

Against real ``mesh up`` processes as root (as CI runs), for every executor the node
offers (process, sandbox; docker against the private Podman service where podmanutil
finds Podman): a task cannot read the mesh key, write the store or the state database,
read the node's environment, or read another running task's files. The process
executor's tasks run as task uids: never root, nothing of them outlives the task, and
what they leave in /tmp is removed. A node that is not root offers process only when
its operator names it. A range of task uids that belongs to someone is refused at start.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mesh.cas.digest import Digest
from mesh.cas.store import LocalStore
from mesh.exec.paths import PROCESS_VIEW
from mesh.wire.client import NodeClient
from tests import podmanutil
from tests.conftest import NOBODY
from tests.nodeutil import MESH, NodeProcess, free_port, host_processes, node_env, task_workroot
from tests.podmanutil import IMAGE

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="a root node's executors, and mesh up as another user")

SECRET = "the-other-tasks-secret"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("alpha\n")
    return src


def options_for(executor: str) -> list[str]:
    """The ``mesh exec`` options that pick ``executor``."""
    return ["--image", IMAGE] if executor == "docker" else ["--executor", executor]


@pytest.fixture(params=["process", "sandbox", "docker"])
def offered(request: pytest.FixtureRequest, home: Path) -> Iterator[tuple[NodeProcess, str]]:
    """A root node offering the executor of the parameter, and its name (skipped, saying why,
    where that executor cannot run here)."""
    executor = request.param
    env: dict[str, str] = {}
    if executor == "sandbox":
        from mesh.exec.sandbox import sandbox_unavailable

        why_not = sandbox_unavailable()
        if why_not is not None:
            pytest.skip(reason=f"no sandbox here: {why_not}")
    if executor == "docker":
        why_not = podmanutil.unavailable_reason()
        if why_not is not None:
            pytest.skip(reason=f"no Podman here: {why_not}")
        env["DOCKER_HOST"] = request.getfixturevalue("docker_host")
    node = NodeProcess(str(home), env=env).start()
    try:
        yield node, executor
    finally:
        node.stop()


def attempts(node: NodeProcess, blob: str) -> dict[str, str]:
    """What a task tries, by what it is: each a shell command that must fail."""
    assert node.process is not None
    return {
        "read the mesh key": f"cat {node.home}/mesh.key",
        "create a file in the store": f"echo x > {node.home}/cas/planted",
        "open a blob for writing": f"exec 3>>{blob}",
        "make a blob writable": f"chmod u+w {blob}",
        "open the state database for writing": f"exec 3>>{node.home}/state.db",
        "read the node's environment": f"cat /proc/{node.process.pid}/environ",
    }


def test_no_task_reaches_the_key_the_store_the_state_or_the_node(offered: tuple[NodeProcess, str], tree: Path) -> None:
    node, executor = offered
    with LocalStore(Path(node.home) / "cas") as store:
        blob = store.blob_path(Digest.of(b"alpha\n"))
    snapshot = node.mesh("snapshot", str(tree))  # a.txt's blob is in the store
    assert snapshot.returncode == 0, snapshot.stderr
    key = (Path(node.home) / "mesh.key").read_bytes()
    for what, script in attempts(node, blob).items():
        done = node.mesh("exec", *options_for(executor), "--no-cache", "-C", str(tree), "--", "sh", "-c", script)
        assert done.returncode not in (0, 124), (executor, what, done.stdout, done.stderr)
        refused = (b"Permission denied", b"No such file or directory", b"nonexistent", b"Read-only file system")
        assert any(word in done.stderr for word in refused), (executor, what, done.stderr)
        assert done.stdout == b"", (executor, what, done.stdout)
    assert (Path(node.home) / "mesh.key").read_bytes() == key
    assert not (Path(node.home) / "cas" / "planted").exists()
    fsck = node.mesh("fsck")
    assert fsck.returncode == 0 and b"clean" in fsck.stdout, fsck.stdout + fsck.stderr
    assert httpx.get(node.url + "/health", timeout=5, trust_env=False).json()["ok"] is True


def test_no_task_reads_another_running_tasks_files(offered: tuple[NodeProcess, str], tree: Path) -> None:
    """One task writes a secret in its directory and waits; another, of the same executor,
    tries to read it by its host path while the first still runs."""
    node, executor = offered
    snapshot = node.mesh("snapshot", str(tree)).stdout.decode().strip()
    holder = {
        "name": "holder",
        "argv": ["sh", "-c", f'echo {SECRET} > mine.txt; chmod 644 mine.txt; echo "$MESH_TASK_DIR"; exec sleep 120'],
        "input": snapshot,
        "executor": executor,
        **({"image": IMAGE} if executor == "docker" else {}),
    }
    with NodeClient(node.url) as client:
        job_id = client.submit({"tasks": [holder], "no_cache": True})["id"]
        try:
            said = b""
            for event in client.events(job_id):  # live: the first line of output is where it is
                if event["type"] == "output":
                    said += event["data"]
                    if said.endswith(b"\n"):
                        break
            task_dir = said.decode().strip()
            assert client.job(job_id)["tasks"][0]["state"] == "running"
            spy = f"cat {task_dir}/work/mine.txt; ls {task_dir}/work"
            done = node.mesh("exec", *options_for(executor), "--no-cache", "-C", str(tree), "--", "sh", "-c", spy)
            assert SECRET.encode() not in done.stdout + done.stderr, (executor, done.stdout)
            assert done.returncode != 0, (executor, done.stdout, done.stderr)
            assert b"Permission denied" in done.stderr or b"No such file" in done.stderr, (executor, done.stderr)
            assert client.job(job_id)["tasks"][0]["state"] == "running"  # it was there all along
        finally:
            node.mesh("cancel", job_id)


def test_process_tasks_run_as_task_uids_and_leave_nothing_running(home: Path, tree: Path) -> None:
    """Never root; a daemon that left the task's process group is gone when the task is done,
    and so is what the task put in /tmp; the next task of the node has a clean uid."""
    node = NodeProcess(str(home), slots=1).start()
    try:
        mark = f"1000.{secrets.randbelow(10**9):09d}"
        planted = f"/tmp/mesh-test-left-{secrets.token_hex(4)}"
        shm = f"/dev/shm/mesh-test-left-{secrets.token_hex(4)}"
        segment = "import ctypes; print(ctypes.CDLL(None).shmget(0, 4096, 0o1600))"  # IPC_PRIVATE, IPC_CREAT
        script = (
            f"id -u; id -G; echo left > {planted}; echo left > {shm}; python3 -c '{segment}' >&2; "
            f"setsid sh -c 'exec sleep {mark}' </dev/null >/dev/null 2>&1 & "  # a daemon: its own session
            "sleep 0.2; echo started"
        )
        process = ("--executor", "process", "--no-cache", "-C", str(tree), "--")
        done = node.mesh("exec", *process, "sh", "-c", script)
        assert done.returncode == 0, done.stderr
        uid, groups, started = done.stdout.decode().splitlines()
        assert uid != "0" and groups == uid and started == "started", done.stdout
        assert int(uid) >= 2_100_000_000  # the default task_uids
        assert not host_processes(mark), "a daemon of the task outlived it"
        assert not os.path.exists(planted), "what the task left in /tmp is still there"
        assert not os.path.exists(shm), "what the task left in /dev/shm is still there"
        shmid = done.stderr.decode().split()[0]
        with open("/proc/sysvipc/shm") as f:
            segments = [line.split() for line in f.read().splitlines()[1:]]
        assert shmid.isdigit() and all(fields[1] != shmid for fields in segments), (shmid, segments)
        again = node.mesh("exec", *process, "sh", "-c", f"id -u; ls {planted}")
        assert again.stdout.decode().splitlines() == [uid], again.stdout  # same uid (one slot), clean
        assert b"No such file" in again.stderr
    finally:
        node.stop()
        for pid in host_processes(mark):
            os.kill(pid, 9)


def test_task_uids_that_belong_to_someone_are_refused_at_start(home: Path) -> None:
    """An account (nobody is 65534), or processes no node holds the uid for: one line, exit 1."""
    up = [*MESH, "up", "--listen", f"127.0.0.1:{free_port()}", "--slots", "1"]
    taken = subprocess.run(
        [*up, "--task-uids", "65534-65534"], env=node_env(str(home)), capture_output=True, timeout=60
    )
    assert taken.returncode == 1, taken.stderr
    assert b"task uid 65534" in taken.stderr and b"'nobody'" in taken.stderr, taken.stderr
    busy_uid = 2_100_009_990
    sleeper = subprocess.Popen(
        ["setpriv", f"--reuid={busy_uid}", f"--regid={busy_uid}", "--clear-groups", "sleep", "60"]
    )
    try:
        busy = subprocess.run(
            [*up, "--task-uids", f"{busy_uid}-{busy_uid}"], env=node_env(str(home)), capture_output=True, timeout=60
        )
        assert busy.returncode == 1, busy.stderr
        assert f"task uid(s) {busy_uid}".encode() in busy.stderr and b"run processes" in busy.stderr, busy.stderr
        assert sleeper.poll() is None  # not killed: it is not the node's
        node = NodeProcess(str(home), slots=1, extra_args=["--task-uids", f"{busy_uid}-{busy_uid + 1}"]).start()
        try:  # with a uid to spare, the node does without the busy one, and says so
            assert f"task uid(s) {busy_uid}" in node.log() and "does without them" in node.log()
            assert sleeper.poll() is None
        finally:
            node.stop()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_what_a_killed_nodes_task_left_running_is_killed_by_the_next_node_that_takes_its_uid(home: Path) -> None:
    """A process of a task uid that no live node holds, started by a task of a node killed since
    (its environment carries a task's marker), does not keep the uid from any node: the next
    one to take the uid kills it (the node killed may never start again, its home gone)."""
    orphan_uid = 2_100_009_980
    env = {**os.environ, "MESH_TASK_DIR": "/var/tmp/mesh-tasks-gone/1/work"}
    orphan = subprocess.Popen(
        ["setpriv", f"--reuid={orphan_uid}", f"--regid={orphan_uid}", "--clear-groups", "sleep", "60"], env=env
    )
    node = NodeProcess(str(home), slots=1, extra_args=["--task-uids", f"{orphan_uid}-{orphan_uid}"])
    try:
        node.start()
        assert orphan.wait(timeout=10) == -9
        assert f"left running as uid {orphan_uid}" in node.log()
    finally:
        node.stop()
        if orphan.poll() is None:
            orphan.kill()
            orphan.wait()


def nobody_node(home: Path, *extra: str) -> NodeProcess:
    launcher = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--"]
    return NodeProcess(str(home), slots=1, launcher=launcher, extra_args=list(extra), env={"HOME": str(home)})


def offered_executors(node: NodeProcess) -> list[str]:
    return list(httpx.get(node.url + "/status", timeout=5, trust_env=False).json()["executors"]["offered"])


def test_a_node_that_is_not_root_offers_process_only_when_named(nobody_home: Path, tree: Path) -> None:
    node = nobody_node(nobody_home).start()
    try:
        assert "process" not in offered_executors(node)
        assert "no process executor: this node is not root" in node.log()
        refused = node.mesh("exec", "--executor", "process", "-C", str(tree), "--", "true")
        assert refused.returncode == 1, refused.stderr
        have = ", ".join(offered_executors(node))
        assert b"executor.process=1" in refused.stderr, refused.stderr  # what it asked for, and what there is
        assert f"the executors offered: {have}\n".encode() in refused.stderr, refused.stderr
        if "sandbox" in have:  # the sandbox of a node that is not root makes no user namespace either
            inside = node.mesh("exec", "--executor", "sandbox", "-C", str(tree), "--", "unshare", "-Ur", "true")
            assert inside.returncode == 1 and b"Operation not permitted" in inside.stderr, inside.stderr
    finally:
        node.stop()
    named = nobody_node(nobody_home, "--executors", "process,sandbox").start()
    try:
        assert "process" in offered_executors(named)
        said = [line for line in named.log().splitlines() if "process executor's tasks run as this node's user" in line]
        assert len(said) == 1 and str(nobody_home) in said[0], named.log()
        done = named.mesh("exec", "--executor", "process", "-C", str(tree), "--", "id", "-u")
        assert (done.returncode, done.stdout) == (0, f"{NOBODY}\n".encode()), done.stderr
    finally:
        named.stop()


def test_the_task_uids_directory_is_not_in_the_home_and_goes_with_the_node(home: Path, tree: Path) -> None:
    """The home is private (0700, even when made open: task uids cannot reach the store or the
    state database, readable files inside); the task directories' directory is root's, 0711
    (reachable, not listable), and is removed when the node stops."""
    home.chmod(0o755)
    node = NodeProcess(str(home)).start()
    try:
        workroot = task_workroot(home)
        assert workroot is not None and not workroot.startswith(str(home))
        st = os.stat(workroot)
        assert (st.st_uid, st.st_mode & 0o777) == (0, 0o711)
        assert os.stat(home).st_mode & 0o777 == 0o700
        script = f"ls {workroot}; ls {home}; cat {home}/state.db; pwd"
        done = node.mesh("exec", "--executor", "process", "-C", str(tree), "--", "sh", "-c", script)
        assert done.stderr.count(b"Permission denied") == 3, done.stderr
        assert done.stdout == f"{PROCESS_VIEW.work}\n".encode()  # its task directory, shown at a stable path
    finally:
        node.stop()
    assert not os.path.exists(workroot)


def test_a_killed_nodes_task_directories_go_when_another_node_starts(tmp_path: Path) -> None:
    """A node killed and never started again leaves its task uids' directory in /var/tmp; the
    next node to start removes it once it is old enough not to be a node still starting."""
    killed = NodeProcess(str(tmp_path / "killed")).start()
    left = task_workroot(killed.home)
    killed.kill()
    assert left is not None and os.path.isdir(left)
    alive = NodeProcess(str(tmp_path / "alive")).start()
    try:
        assert os.path.isdir(left)  # too young to tell from a node that has not locked it yet
        held = str(task_workroot(alive.home))
        for path in (left, held):
            os.utime(path, (1, 1))
        other = NodeProcess(str(tmp_path / "other")).start()
        other.stop()
        assert not os.path.exists(left)
        assert os.path.isdir(held)  # old, but a live node holds it
    finally:
        alive.stop()


def test_a_process_task_cannot_run_a_program_its_uid_cannot_reach(home: Path, tree: Path) -> None:
    """The command is looked up as the task uid: a program in a directory of root's (0700),
    named by its path, on the PATH, or as a script's interpreter, is refused (126), not run
    with the capabilities setpriv holds until its own execve."""
    private = Path(tempfile.mkdtemp(dir="/var/tmp", prefix="mesh-test-private-"))  # 0700, root's
    try:
        tool = private / "tool"
        tool.write_text("#!/bin/sh\necho ran\n")
        tool.chmod(0o755)
        shutil.copy("/bin/echo", private / "echo-bin")
        (tree / "script").write_text(f"#!{private}/echo-bin\n")
        (tree / "script").chmod(0o755)
        node = NodeProcess(str(home), slots=1).start()
        try:
            process = ("exec", "--executor", "process", "--no-cache", "-C", str(tree))
            for command in (
                [str(private / "echo-bin"), "ran"],
                ["--env", f"PATH={private}:/usr/bin:/bin", "--", "tool"],
            ):
                args = command if command[0] == "--env" else ["--", *command]
                done = node.mesh(*process, *args)
                assert done.returncode == 126 and b"ran" not in done.stdout, (done.stdout, done.stderr)
                assert b"Permission denied" in done.stderr, done.stderr
            done = node.mesh(*process, "--", "./script")
            assert done.returncode == 126 and done.stdout == b"", (done.stdout, done.stderr)
            done = node.mesh(*process, "--", "sh", "-c", "echo still runs")
            assert done.returncode == 0 and done.stdout == b"still runs\n", done.stderr
            done = node.mesh(*process, "--", "no-such-program")
            assert done.returncode == 127 and b"command not found" in done.stderr, done.stderr
        finally:
            node.stop()
    finally:
        shutil.rmtree(private)
