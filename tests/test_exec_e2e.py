"""End to end: the real ``mesh`` CLI against a real ``mesh up`` process on loopback."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from mesh.wire.client import NodeClient
from tests.metricsutil import scrape
from tests.nodeutil import MESH, NodeProcess, free_port, host_processes, node_env, task_workroot, wait_for


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("alpha\n")
    (src / "sub" / "b.txt").write_text("beta\n")
    run = src / "run.sh"
    run.write_text("#!/bin/sh\necho script ran\n")
    run.chmod(0o755)
    return src


def test_exit_codes(node: NodeProcess, tree: Path) -> None:
    assert node.mesh("exec", "-C", str(tree), "--", "true").returncode == 0
    assert node.mesh("exec", "-C", str(tree), "--", "sh", "-c", "exit 1").returncode == 1
    assert node.mesh("exec", "-C", str(tree), "--", "sh", "-c", "exit 42").returncode == 42
    killed = node.mesh("exec", "-C", str(tree), "--", "sh", "-c", "kill -9 $$")
    assert killed.returncode == 137, killed.stderr
    missing = node.mesh("exec", "-C", str(tree), "--", "no-such-command-here")
    assert missing.returncode == 127
    assert b"no-such-command-here" in missing.stderr


def test_streams_keep_their_order_and_stay_apart(node: NodeProcess, tree: Path) -> None:
    script = "for i in $(seq 1 300); do echo out$i; echo err$i >&2; done"
    done = node.mesh("exec", "-C", str(tree), "--", "sh", "-c", script)
    assert done.returncode == 0
    assert done.stdout.decode().split() == [f"out{i}" for i in range(1, 301)]
    assert done.stderr.decode().split() == [f"err{i}" for i in range(1, 301)]


def test_env_cwd_and_inputs(node: NodeProcess, tree: Path) -> None:
    script = 'echo "FOO=$FOO"; echo "PWD=$(pwd)"; ls; cat sub/b.txt; ./run.sh; echo "HOME=$HOME"; env | sort'
    done = node.mesh("exec", "-C", str(tree), "--env", "FOO=bar baz", "--", "sh", "-c", script)
    out = done.stdout.decode()
    assert done.returncode == 0, done.stderr
    assert "FOO=bar baz" in out
    assert "a.txt" in out and "run.sh" in out and "beta" in out and "script ran" in out
    pwd = re.search(r"PWD=(.*)", out)
    assert pwd and pwd.group(1) != str(tree)  # it ran in a copy, not in the user's tree
    assert f"HOME={os.environ.get('HOME')}\n" not in out
    assert "LANG=C.UTF-8" in out and "TZ=UTC" in out
    assert "MESH_NODE" not in out  # the client's environment does not leak into the task


def test_timeout_kills_the_command(node: NodeProcess, tree: Path) -> None:
    started = time.monotonic()
    done = node.mesh("exec", "-C", str(tree), "--timeout", "1", "--", "sh", "-c", "sleep 60; echo never")
    assert done.returncode == 124
    assert b"timed out" in done.stderr
    assert b"never" not in done.stdout
    assert time.monotonic() - started < 30


def test_out_writes_the_output_snapshot(node: NodeProcess, tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = node.mesh(
        "exec", "-C", str(tree), "--out", str(out), "--", "sh", "-c", "mkdir build && echo made > build/result"
    )
    assert done.returncode == 0, done.stderr
    assert (out / "build" / "result").read_text() == "made\n"
    assert os.access(out / "build" / "result", os.W_OK)  # a copy the user owns
    assert not (out / "a.txt").exists()  # the input, unchanged, is not written (tests/test_outputs_e2e.py)


def test_cache_hit_then_miss_after_a_change(node: NodeProcess, tree: Path) -> None:
    command = ["exec", "-v", "-C", str(tree), "--", "sh", "-c", "cat a.txt; echo to-stderr >&2; date +%s%N"]
    first = node.mesh(*command)
    second = node.mesh(*command)
    assert first.returncode == second.returncode == 0
    assert b"(cached)" not in first.stderr and b"(cached)" in second.stderr
    assert second.stdout == first.stdout  # the stored output, not a new run (date would differ)
    assert b"to-stderr" in second.stderr
    (tree / "a.txt").write_text("changed\n")
    third = node.mesh(*command)
    assert b"(cached)" not in third.stderr
    assert third.stdout.startswith(b"changed\n")
    uncached = node.mesh("exec", "-v", "--no-cache", "-C", str(tree), "--", "sh", "-c", "cat a.txt; date +%s%N")
    assert b"(cached)" not in uncached.stderr


def test_failures_are_not_cached(node: NodeProcess, tree: Path) -> None:
    command = ["exec", "-v", "-C", str(tree), "--", "sh", "-c", "exit 3"]
    assert node.mesh(*command).returncode == 3
    again = node.mesh(*command)
    assert again.returncode == 3 and b"(cached)" not in again.stderr


def test_meshignore_and_git_are_left_out(node: NodeProcess, tree: Path) -> None:
    (tree / ".git").mkdir()
    (tree / ".git" / "HEAD").write_text("ref\n")
    (tree / "build").mkdir()
    (tree / "build" / "big.o").write_text("object\n")
    (tree / "keep.log").write_text("kept\n")
    (tree / "drop.log").write_text("dropped\n")
    (tree / ".meshignore").write_text("build/\n*.log\n!keep.log\n")
    done = node.mesh("exec", "-C", str(tree), "--", "sh", "-c", "find . | sort")
    listing = done.stdout.decode().split()
    assert "./keep.log" in listing and "./a.txt" in listing and "./.meshignore" in listing
    assert not any(p.startswith(("./.git", "./build", "./drop.log")) for p in listing)


def require_sandbox() -> None:
    """Skip, saying why, where the sandbox executor cannot run (never in CI: root, bubblewrap)."""
    from mesh.exec.sandbox import sandbox_unavailable

    why_not = sandbox_unavailable()
    if why_not is not None:
        pytest.skip(reason=f"no sandbox here: {why_not}")


def test_tasks_cannot_damage_the_store(node: NodeProcess, tree: Path) -> None:
    """The process executor's task owns its copies: it may change them, never the store.
    (On a root node the task is a task uid, which owns its copies; the store is root's.)"""
    vandal = (
        "chmod -R u+w . && echo vandal > a.txt && rm sub/b.txt && echo new > sub/b.txt"
        " && chmod 777 run.sh && echo 'echo replaced' > run.sh && mv a.txt moved"
    )
    process = ("--executor", "process", "--no-cache", "-C", str(tree), "--")
    assert node.mesh("exec", *process, "sh", "-c", vandal).returncode == 0
    after = node.mesh("exec", *process, "sh", "-c", "cat a.txt sub/b.txt; ./run.sh")
    assert after.stdout == b"alpha\nbeta\nscript ran\n"
    fsck = node.mesh("fsck")
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


@pytest.mark.parametrize("inputs", ["link", "copy"])
def test_sandboxed_tasks_change_their_inputs_never_the_store(home: Path, tree: Path, inputs: str) -> None:
    """With linked inputs (``sandbox_inputs = "link"``, a root node) the sandbox runs tasks as a
    uid that owns none of its input files: each attempt on one fails, and replacing one (the
    directory is the task's) leaves the store's blob alone. With copies (the default) the task
    owns its input, as a local command does, and may change it in place. Either way the store
    is intact and the next task sees the input as it was."""
    require_sandbox()
    if inputs == "link" and os.geteuid() != 0:
        pytest.skip(reason="linked sandbox inputs are a root node's: a node that is not root copies")
    sandbox = ("--executor", "sandbox", "--no-cache", "-C", str(tree), "--")
    attempts = {
        "chmod": "chmod u+w a.txt",
        "rewrite": "echo vandal > a.txt",
        "append": "echo vandal >> sub/b.txt",
        "truncate": ": > run.sh",
    }
    node = NodeProcess(str(home), env={"MESH_SANDBOX_INPUTS": inputs}).start()
    try:
        for what, script in attempts.items():
            done = node.mesh("exec", *sandbox, "sh", "-c", script)
            if inputs == "link":
                assert done.returncode != 0, (what, done.stderr)
                said = done.stderr
                assert b"Operation not permitted" in said or b"Permission denied" in said, (what, said)
            else:
                assert done.returncode == 0, (what, done.stderr)
        replaced = node.mesh("exec", *sandbox, "sh", "-c", "rm a.txt && echo mine > a.txt && cat a.txt")
        assert replaced.returncode == 0 and replaced.stdout == b"mine\n", replaced.stderr
        after = node.mesh("exec", *sandbox, "sh", "-c", "cat a.txt sub/b.txt; ./run.sh")
        assert after.stdout == b"alpha\nbeta\nscript ran\n", after.stderr
        fsck = node.mesh("fsck")
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr
        assert httpx.get(node.url + "/health", timeout=5, trust_env=False).json()["ok"] is True
    finally:
        node.stop(timeout=30)


def test_a_sandboxed_task_cannot_reach_the_nodes_key_store_or_api(node: NodeProcess, tree: Path) -> None:
    """Escape attempts through a real node (tests/test_sandbox.py has each in detail): the mesh
    key, the store and the node's own API are out of reach, and the node stays healthy."""
    require_sandbox()
    port = node.url.rsplit(":", 1)[1]
    # The home is hidden (an empty read-only directory) or, below the host's /tmp, absent.
    hidden = (b"No such file or directory", b"nonexistent", b"Read-only file system")
    attempts = {
        "read the key": (f"cat {node.home}/mesh.key", hidden),
        "write the store": (f"echo x > {node.home}/cas/planted", hidden),
        "call the node": (f"exec 3<>/dev/tcp/127.0.0.1/{port}", (b"Connection refused",)),
    }
    for what, (script, words) in attempts.items():
        shell = "bash" if "/dev/tcp" in script else "sh"
        done = node.mesh("exec", "--executor", "sandbox", "--no-cache", "-C", str(tree), "--", shell, "-c", script)
        assert done.returncode != 0, (what, done.stdout, done.stderr)
        assert any(w in done.stderr for w in words), (what, done.stderr)
    assert not (Path(node.home) / "cas" / "planted").exists()
    assert httpx.get(node.url + "/health", timeout=5, trust_env=False).json()["ok"] is True
    fsck = node.mesh("fsck")
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


def test_exec_with_limits(node: NodeProcess, tree: Path) -> None:
    require_sandbox()
    done = node.mesh(
        "exec",
        "--limit",
        "processes=40",
        "--limit",
        "file_size=1M",
        "-C",
        str(tree),
        "--",
        "bash",
        "-c",
        "ulimit -u; ulimit -f",
    )
    assert (done.returncode, done.stdout) == (0, b"40\n1024\n"), done.stderr  # bash counts 1 KiB blocks
    too_many = node.mesh("exec", "--limit", "processes=100000000", "-C", str(tree), "--", "true")
    assert too_many.returncode == 126 and b"more than this node allows" in too_many.stderr, too_many.stderr
    for bad, words in (
        (["--limit", "memory=1"], b"choose from"),
        (["--limit", "processes=lots"], b"whole number"),
        (["--executor", "process", "--limit", "processes=9"], b"sandbox executor"),
    ):
        refused = node.mesh("exec", *bad, "-C", str(tree), "--", "true")
        assert refused.returncode == 2 and words in refused.stderr, (bad, refused.stderr)


def _snapshot(node: NodeProcess, path: Path) -> str:
    done = node.mesh("snapshot", str(path))
    assert done.returncode == 0, done.stderr
    return done.stdout.decode().strip()


def test_dag_with_reactions_and_chained_snapshots(node: NodeProcess, tree: Path) -> None:
    snapshot = _snapshot(node, tree)
    job = {
        "label": "dag",
        "tasks": [
            {"name": "gen", "argv": ["sh", "-c", "echo generated > gen.txt"], "input": snapshot},
            {"name": "use", "argv": ["sh", "-c", "cat gen.txt a.txt; exit 1"], "input_task": "gen"},
            {
                "name": "on-failure",
                "argv": ["echo", "it failed"],
                "input": snapshot,
                "after": ["use"],
                "when": "failure",
            },
            {"name": "on-success", "argv": ["echo", "it worked"], "input": snapshot, "after": ["use"]},
            {
                "name": "cleanup",
                "argv": ["sh", "-c", "cat gen.txt"],
                "input_task": "gen",
                "after": ["use"],
                "when": "always",
            },
        ],
    }
    with NodeClient(node.url) as client:
        job_id = client.submit(job)["id"]
        wait_for(lambda: client.job(job_id)["state"] != "running", what="the DAG job to finish")
        status = client.job(job_id)
        states = {t["name"]: t["state"] for t in status["tasks"]}
        assert states == {
            "gen": "succeeded",
            "use": "failed",
            "on-failure": "succeeded",
            "on-success": "skipped",
            "cleanup": "succeeded",
        }
        assert status["state"] == "failed"
        results = {t["name"]: t["result"] for t in status["tasks"]}
        use_out = b"".join(client.read_blob(_digest(results["use"]["stdout"])))
        assert use_out == b"generated\nalpha\n"
        assert b"".join(client.read_blob(_digest(results["cleanup"]["stdout"]))) == b"generated\n"
    shown = node.mesh("job", job_id)
    assert b"on-success" in shown.stdout and b"skipped" in shown.stdout
    logs = node.mesh("logs", job_id, "--task", "on-failure")
    assert logs.stdout == b"it failed\n"


def _digest(text: str):  # type: ignore[no-untyped-def]
    from mesh.cas.digest import Digest

    return Digest.parse(text)


def test_cancel_kills_the_running_task(node: NodeProcess, tree: Path, tmp_path: Path) -> None:
    """With the node's default executor (the sandbox where bubblewrap works): the task is
    found on the host by a unique argument, whatever pid namespace it runs in."""
    snapshot = _snapshot(node, tree)
    sleeper = ["sleep", f"{300 + os.getpid() % 1000}.{time.time_ns() % 10**6}"]
    job = {
        "tasks": [
            {"name": "long", "argv": ["sh", "-c", 'echo started; exec "$@"', "sh", *sleeper], "input": snapshot},
            {"name": "next", "argv": ["true"], "input": snapshot, "after": ["long"]},
        ]
    }
    with NodeClient(node.url) as client:
        job_id = client.submit(job)["id"]

        def started() -> bool:
            return any(event["type"] == "output" for event in client.events(job_id))

        wait_for(started, what="the long task to start")
        assert wait_for(lambda: host_processes(sleeper[1]), what="the task's process to show on the host")
        cancelled = node.mesh("cancel", job_id)
        assert cancelled.returncode == 0, cancelled.stderr
        wait_for(lambda: client.job(job_id)["state"] == "cancelled", what="the job to be cancelled")
        states = {t["name"]: t["state"] for t in client.job(job_id)["tasks"]}
        assert states == {"long": "cancelled", "next": "cancelled"}
    wait_for(lambda: not host_processes(sleeper[1]), timeout=10, what="the task's process to die")


def test_listing_status_and_json(node: NodeProcess, tree: Path) -> None:
    for i in range(3):
        assert node.mesh("exec", "-C", str(tree), "--", "echo", str(i)).returncode == 0
    jobs = json.loads(node.mesh("jobs", "--json").stdout)
    assert len(jobs["jobs"]) == 3 and all(j["state"] == "succeeded" for j in jobs["jobs"])
    first_page = json.loads(node.mesh("jobs", "--json", "--limit", "2").stdout)
    rest = json.loads(node.mesh("jobs", "--json", "--limit", "2", "--before", str(first_page["next"])).stdout)
    assert [j["id"] for j in first_page["jobs"] + rest["jobs"]] == [j["id"] for j in jobs["jobs"]]
    status = json.loads(node.mesh("status", "--json").stdout)
    assert status["slots"]["total"] == 2 and status["jobs"]["counts"]["succeeded"] == 3
    shown = node.mesh("status")
    text = shown.stdout.decode()
    assert shown.returncode == 0 and "action cache: " in text
    assert "  mesh: asked peers 0 times, 0 found" in text, text  # a lone node asks no one


def test_unreachable_node_is_an_error(home: Path, tree: Path) -> None:
    port = free_port()
    done = subprocess.run(
        MESH + ["exec", "--node", f"http://127.0.0.1:{port}", "-C", str(tree), "--", "true"],
        env=node_env(str(home)),
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert b"no mesh node answers" in done.stderr


def test_embedded_node_when_none_runs(home: Path, tree: Path) -> None:
    port = free_port()  # nothing listens there: the default address for this test
    env = node_env(str(home), MESH_LISTEN=f"127.0.0.1:{port}")
    done = subprocess.run(
        MESH + ["exec", "-C", str(tree), "--", "cat", "a.txt"], env=env, capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"alpha\n"
    assert b"in-process node" in done.stderr
    again = subprocess.run(
        MESH + ["exec", "-v", "-C", str(tree), "--", "cat", "a.txt"], env=env, capture_output=True, timeout=60
    )
    assert b"(cached)" in again.stderr  # same store and state as a real node would use


def test_second_node_on_one_home_is_refused(node: NodeProcess) -> None:
    second = NodeProcess(node.home)
    second.port = free_port()
    done = subprocess.run(
        MESH + ["up", "--listen", f"127.0.0.1:{second.port}"], env=node_env(node.home), capture_output=True, timeout=60
    )
    assert done.returncode == 1
    assert b"another mesh node already uses" in done.stderr


def test_sigterm_stops_the_node_cleanly(home: Path) -> None:
    process = NodeProcess(str(home)).start()
    assert process.stop() == 0


def test_task_directories_are_reused_and_removed_at_shutdown(home: Path, tree: Path) -> None:
    """A second task with the same input runs in the first one's directory (no checkout),
    which /metrics counts; a node that stops leaves no task directory behind. (On a root
    node, process tasks run as task uids, whose task directories are not in the home.)"""
    node = NodeProcess(str(home)).start()  # two slots, two task uids: the owner of the kept one is chosen
    try:
        workroot = Path(task_workroot(home) or home / "work")
        process = ("--executor", "process", "--no-cache", "-C", str(tree), "--")
        for _ in range(2):
            assert node.mesh("exec", *process, "cat", "a.txt").stdout == b"alpha\n"
        metrics = scrape(node.url)
        assert metrics["mesh_task_dirs_reused_total"] == 1, metrics
        assert metrics["mesh_task_dirs_idle"] == 1
        assert len(os.listdir(workroot)) == 1
        assert node.stop() == 0
        assert not workroot.exists() or os.listdir(workroot) == []
    finally:
        node.kill()


def test_remote_node_gets_only_missing_blobs_uploaded(node: NodeProcess, tree: Path, tmp_path: Path) -> None:
    """A client with its own store uploads the tree from its files; a second run uploads nothing new."""
    client_home = tmp_path / "client-home"
    unkeyed = subprocess.run(
        MESH + ["exec", "-C", str(tree), "--", "true"],
        env=node_env(str(client_home), MESH_NODE=node.url),
        capture_output=True,
        timeout=120,
    )
    assert unkeyed.returncode == 1
    assert b"unsigned request" in unkeyed.stderr and b"mesh key show" in unkeyed.stderr
    key = node.mesh("key", "show").stdout.decode().strip()
    env = node_env(str(client_home), MESH_NODE=node.url, MESH_KEY=key)

    def mesh_exec(*argv: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            MESH + ["exec", "-v", "-C", str(tree), "--", *argv], env=env, capture_output=True, timeout=120
        )

    first = mesh_exec("sh", "-c", "cat a.txt sub/b.txt; ./run.sh")
    assert first.returncode == 0, first.stderr
    assert first.stdout == b"alpha\nbeta\nscript ran\n"
    with NodeClient(node.url) as client:
        blobs_before = client.status()
    (tree / "sub" / "c.txt").write_text("gamma\n")
    second = mesh_exec("cat", "sub/c.txt")
    assert second.stdout == b"gamma\n", second.stderr
    out = tmp_path / "out"
    third = subprocess.run(
        MESH + ["exec", "-C", str(tree), "--out", str(out), "--", "sh", "-c", "echo r > r.txt"],
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert third.returncode == 0, third.stderr
    assert (out / "r.txt").read_text() == "r\n" and not (out / "sub").exists()  # only what the task made
    assert blobs_before["node"]


def test_the_client_side_imports_neither_trio_nor_the_server() -> None:
    """mesh exec's start-up is most of a cache hit's time: the client must stay light."""
    code = (
        "import sys, mesh.cli, mesh.cli_node, mesh.execute, mesh.wire.client as c\n"
        "mesh.cli.build_parser(); c.NodeClient('http://127.0.0.1:1').close()\n"
        "heavy = sorted(m for m in ('trio', 'anyio', 'hypercorn', 'starlette', 'h2') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    done = subprocess.run([MESH[0], "-c", code], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == b""


def test_task_cwd_inside_the_snapshot(node: NodeProcess, tree: Path) -> None:
    snapshot = _snapshot(node, tree)
    job = {
        "tasks": [
            {"name": "in-sub", "argv": ["sh", "-c", "pwd; cat b.txt"], "input": snapshot, "cwd": "sub"},
            {"name": "no-dir", "argv": ["true"], "input": snapshot, "cwd": "a.txt"},
        ]
    }
    with NodeClient(node.url) as client:
        job_id = client.submit(job)["id"]
        wait_for(lambda: client.job(job_id)["state"] != "running", what="the job to finish")
        tasks = {t["name"]: t for t in client.job(job_id)["tasks"]}
        out = b"".join(client.read_blob(_digest(tasks["in-sub"]["result"]["stdout"]))).decode()
    assert out.endswith("/work/sub\nbeta\n")
    assert tasks["no-dir"]["state"] == "failed"
    assert "is not a directory" in tasks["no-dir"]["reason"]


def test_exec_require(node: NodeProcess, tree: Path) -> None:
    ok = node.mesh("exec", "--require", "executor.process=1", "-C", str(tree), "--", "true")
    assert ok.returncode == 0, ok.stderr
    missing = node.mesh("exec", "--require", "label.gpu=1", "-C", str(tree), "--", "true")
    assert missing.returncode == 1
    assert b"no node meets the requirements" in missing.stderr and b"lacks label.gpu=1" in missing.stderr
