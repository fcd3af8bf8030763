"""One behaviour over every executor: the same commands give the same results under process,
sandbox and docker; and the docker executor through a real node and the real CLI.

The sandbox runs where bubblewrap works, docker against the private Podman service of
tests.podmanutil; each is skipped with its printed reason where it cannot run (never in
CI, which is root on Debian with both installed by ``make test``).
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from mesh.cas.digest import Digest
from mesh.cas.store import LocalStore
from mesh.exec.action import Action, ActionResult
from mesh.exec.process import Executor, ProcessExecutor
from mesh.exec.runner import Runner
from tests import treeutil
from tests.nodeutil import NodeProcess
from tests.podmanutil import IMAGE
from tests.test_runner import listing
from tests.test_runner import wait_for as runner_wait_for

INPUT: treeutil.Tree = {
    b"a.txt": ("file", b"alpha\n", False),
    b"run.sh": ("file", b"#!/bin/sh\necho script ran\n", True),
    b"d": ("dir", {b"f": ("file", b"inner\n", False)}),
}

#: Commands whose results must not depend on the executor (busybox and the host agree on them).
COMMANDS = {
    "outputs and both streams": "echo out; echo err >&2; mkdir -p o/p; echo made > o/p/f; cat a.txt > copy; exit 3",
    "success": "cat d/f; ./run.sh",
    "failure": "false",
    # The shell's own "Killed" report is not part of the comparison: whether busybox's sh prints
    # it depends on when it reaps the child (once in 1,612 tests, in CI, it did not).
    "a child killed by a signal": "(sleep 30 & kill -9 $!; wait $!) 2>/dev/null",
    "cwd and a relative read": "cd d && cat f ../a.txt",
    "replace an input file": "rm a.txt && echo mine > a.txt && cat a.txt",
    "an environment variable": 'echo "$GREETING"',
}


@pytest.fixture
def snap(store: LocalStore, tmp_path: Path) -> Digest:
    return treeutil.stored(store, tmp_path, INPUT)


def executor_for(name: str, request: pytest.FixtureRequest, home: Path) -> Executor:
    if name == "process":
        return ProcessExecutor()
    if name == "sandbox":
        from mesh.exec.sandbox import SandboxExecutor, sandbox_unavailable

        why_not = sandbox_unavailable()
        if why_not is not None:
            pytest.skip(reason=f"the sandbox cannot run here: {why_not}")
        return SandboxExecutor(home=home)
    from mesh.exec.docker import DockerExecutor

    docker_host = request.getfixturevalue("docker_host")
    return DockerExecutor(docker_host, owner=f"test-executors-{os.getpid()}")


def summary(store: LocalStore, result: ActionResult) -> tuple[object, ...]:
    return (
        result.exit_code,
        result.signal,
        result.timed_out,
        result.error,
        store.get(result.stdout),
        store.get(result.stderr),
        listing(store, result.output),
    )


@pytest.mark.parametrize("executor_name", ["sandbox", "docker"])
async def test_every_executor_gives_the_process_executors_results(
    executor_name: str, request: pytest.FixtureRequest, store: LocalStore, snap: Digest, home: Path, tmp_path: Path
) -> None:
    other = executor_for(executor_name, request, home)
    runners = {
        "process": Runner(store, workroot=tmp_path / "w1", node_id="n", executors={"process": ProcessExecutor()}),
        executor_name: Runner(store, workroot=tmp_path / "w2", node_id="n", executors={executor_name: other}),
    }
    for what, script in COMMANDS.items():
        results = {}
        for name, runner in runners.items():
            options: dict[str, object] = {"executor": name}
            if name == "docker":
                options["image"] = IMAGE
            action = Action(
                argv=("sh", "-c", script), input=snap, env=(("GREETING", "hello there"),), timeout=30, **options
            )  # type: ignore[arg-type]
            results[name] = summary(store, await runner.run(action))
        assert results[executor_name] == results["process"], what
        if what == "outputs and both streams":
            assert results["process"][0] == 3 and results["process"][4] == b"out\n"
    for name, runner in runners.items():
        runner.close()  # the directories kept for reuse go too
        assert os.listdir(tmp_path / ("w1" if name == "process" else "w2")) == []


def test_mesh_exec_in_a_container_through_a_node(docker_host: str, home: Path, tmp_path: Path) -> None:
    """A node given DOCKER_HOST offers the docker executor and the images the engine holds;
    ``mesh exec --image`` runs there, with exit codes and separate streams, and a missing
    image fails with its name."""
    tree = tmp_path / "tree"
    tree.mkdir()
    treeutil.build(tree, INPUT)
    node = NodeProcess(str(home), env={"DOCKER_HOST": docker_host}).start()
    try:
        status = httpx.get(node.url + "/status", timeout=5, trust_env=False).json()
        caps = status["capabilities"]
        assert caps["executor.docker"] == "1" and caps[f"image.{IMAGE}"] == "1", caps
        assert status["executors"]["docker"]["available"] is True and "docker" in status["executors"]["offered"]
        assert IMAGE in status["executors"]["docker"]["images"]
        done = node.mesh("exec", "--image", IMAGE, "-C", str(tree), "--", "sh", "-c", "cat a.txt; echo e >&2; exit 4")
        assert (done.returncode, done.stdout, done.stderr) == (4, b"alpha\n", b"e\n")
        piped = node.mesh("exec", "--image", IMAGE, "-C", str(tree), "--", "cat", input=b"through a container\n")
        assert (piped.returncode, piped.stdout) == (0, b"through a container\n"), piped.stderr
        missing = node.mesh("exec", "--image", "localhost/no-such-image:1", "-C", str(tree), "--", "true")
        assert missing.returncode != 0
        assert b"localhost/no-such-image:1" in missing.stderr, missing.stderr
        usage = node.mesh("exec", "--executor", "docker", "-C", str(tree), "--", "true")
        assert usage.returncode == 2 and b"--image" in usage.stderr
        assert httpx.get(node.url + "/health", timeout=5, trust_env=False).json()["ok"] is True
    finally:
        node.stop()


@pytest.mark.parametrize("executor_name", ["process", "sandbox", "docker"])
async def test_every_executor_gives_the_task_its_stdin(
    executor_name: str, request: pytest.FixtureRequest, store: LocalStore, snap: Digest, home: Path, tmp_path: Path
) -> None:
    """The action's stdin blob is the command's stdin: read whole (more than pipes and socket
    buffers hold, while output goes the other way), left unread, or with none at all an
    empty stdin."""
    executor = executor_for(executor_name, request, home)
    runner = Runner(store, workroot=tmp_path / "w", node_id="n", executors={executor_name: executor})
    options: dict[str, object] = {"executor": executor_name, "timeout": 60}
    if executor_name == "docker":
        options["image"] = IMAGE
    data = os.urandom(5 << 20) + b"\nend\n"
    stdin = store.put(data)
    read = await runner.run(Action(argv=("cat",), input=snap, stdin=stdin, **options))  # type: ignore[arg-type]
    assert (read.exit_code, read.error) == (0, None), store.get(read.stderr)
    assert store.get(read.stdout) == data
    unread = await runner.run(Action(argv=("true",), input=snap, stdin=stdin, **options))  # type: ignore[arg-type]
    assert (unread.exit_code, store.get(unread.stdout)) == (0, b"")
    empty = await runner.run(Action(argv=("sh", "-c", "cat; echo end"), input=snap, **options))  # type: ignore[arg-type]
    assert (empty.exit_code, store.get(empty.stdout)) == (0, b"end\n")
    runner.close()
    assert os.listdir(tmp_path / "w") == []


@pytest.mark.parametrize("executor_name", ["process", "sandbox", "docker"])
async def test_a_cancelled_task_keeps_what_it_wrote_under_every_executor(
    executor_name: str, request: pytest.FixtureRequest, store: LocalStore, snap: Digest, home: Path, tmp_path: Path
) -> None:
    """As a timed-out task's output is kept, a cancelled one's is handed to ``on_cancel``:
    stored, with an error saying it was cancelled, and no output snapshot."""
    import trio

    from mesh.exec.runner import CANCELLED

    executor = executor_for(executor_name, request, home)
    runner = Runner(store, workroot=tmp_path / "w", node_id="n", executors={executor_name: executor})
    options: dict[str, object] = {"executor": executor_name, "timeout": 60}
    if executor_name == "docker":
        options["image"] = IMAGE
    action = Action(argv=("sh", "-c", "echo started; echo warned >&2; exec sleep 100"), input=snap, **options)  # type: ignore[arg-type]
    seen = bytearray()
    kept: list[ActionResult] = []

    async def follow(stream: str, chunk: bytes) -> None:
        if stream == "stdout":
            seen.extend(chunk)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:

            async def run() -> None:
                await runner.run(action, on_output=follow, on_cancel=kept.append)
                raise AssertionError("the run should have been cancelled")

            nursery.start_soon(run)
            await runner_wait_for(lambda: b"started\n" in seen)
            nursery.cancel_scope.cancel()
    (result,) = kept
    assert store.get(result.stdout) == b"started\n"
    assert store.get(result.stderr) == b"warned\n"
    assert (result.error, result.output) == (CANCELLED, None)
    runner.close()
    assert os.listdir(tmp_path / "w") == []
