"""The action cache in the scheduler: keys with the toolchain identity, and why a run was no hit."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from mesh.cas.digest import Digest
from mesh.exec.action import Action, ActionResult
from mesh.exec.toolchain import Identity, Toolchain
from mesh.sched.actioncache import LocalActionCache, MissReasons
from mesh.sched.scheduler import Scheduler
from mesh.sched.statedb import StateDB
from tests.test_scheduler import SNAP, AllPresent, FakeRunner, job, t, wait_state
from tests.treeutil import executable

OTHER = Digest.of(b"another input")


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    """A directory on the tasks' PATH holding a test copy of a compiler, ``cc``."""
    path = tmp_path / "bin"
    path.mkdir()
    executable(path / "cc", "#!/bin/sh\necho cc version 1\n")
    return path


def chain(tmp_path: Path, **extra: Any) -> Toolchain:
    packages = tmp_path / "status"
    if not packages.exists():
        packages.write_text("Package: one\n")
    return Toolchain(package_databases=[str(packages)], **extra)


def compile_task(bin_dir: Path, name: str = "cc", **extra: Any) -> dict[str, Any]:
    return {**t(name, ["cc", "-c", "x.c"], env={"PATH": f"{bin_dir}:/usr/bin:/bin"}), **extra}


def result_of(scheduler: Scheduler, job_id: str) -> dict[str, Any]:
    task: dict[str, Any] = scheduler.job_status(job_id)["tasks"][0]
    return task


async def test_a_compiler_replaced_on_path_makes_the_same_action_a_miss(tmp_path: Path, bin_dir: Path) -> None:
    runner = FakeRunner()
    scheduler = Scheduler(
        StateDB(str(tmp_path / "state.db")), runner, AllPresent(), node_id="n", slots=2, toolchain=chain(tmp_path)
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        first = scheduler.submit(job(compile_task(bin_dir)))
        await wait_state(scheduler, first, "succeeded")
        assert result_of(scheduler, first)["result"]["cache_note"] == "not in the cache: first run"
        assert len(runner.ran) == 1

        again = scheduler.submit(job(compile_task(bin_dir)))  # a hit: finished on return
        result = result_of(scheduler, again)["result"]
        assert result["cached"] and len(runner.ran) == 1
        assert result["cache_note"] == "from the action cache of node n, run on node fake"

        executable(bin_dir / "cc.new", "#!/bin/sh\necho cc version 2\n").replace(bin_dir / "cc")
        replaced = scheduler.submit(job(compile_task(bin_dir)))
        await wait_state(scheduler, replaced, "succeeded")
        result = result_of(scheduler, replaced)["result"]
        assert not result["cached"] and len(runner.ran) == 2
        assert result["cache_note"] == "not in the cache: toolchain changed (the argv[0] binary cc)"

        hit = scheduler.submit(job(compile_task(bin_dir)))  # the new compiler's result is cached
        assert result_of(scheduler, hit)["result"]["cached"] and len(runner.ran) == 2

        other = scheduler.submit(job(compile_task(bin_dir, input=str(OTHER))))
        await wait_state(scheduler, other, "succeeded")
        assert result_of(scheduler, other)["result"]["cache_note"] == "not in the cache: inputs changed"
        nursery.cancel_scope.cancel()


async def test_a_declared_tool_joins_the_key_and_a_missing_one_fails_the_task(tmp_path: Path, bin_dir: Path) -> None:
    helper = executable(tmp_path / "cc1", "v1")
    runner = FakeRunner()
    scheduler = Scheduler(
        StateDB(str(tmp_path / "state.db")), runner, AllPresent(), node_id="n", slots=1, toolchain=chain(tmp_path)
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        first = scheduler.submit(job(compile_task(bin_dir, tools=[str(helper)])))
        await wait_state(scheduler, first, "succeeded")
        assert result_of(scheduler, scheduler.submit(job(compile_task(bin_dir, tools=[str(helper)]))))["result"][
            "cached"
        ]
        helper.write_text("v2")
        changed = scheduler.submit(job(compile_task(bin_dir, tools=[str(helper)])))
        await wait_state(scheduler, changed, "succeeded")
        assert (
            result_of(scheduler, changed)["result"]["cache_note"]
            == f"not in the cache: toolchain changed (tool {helper})"
        )

        gone = scheduler.submit(job(compile_task(bin_dir, tools=[str(tmp_path / "gone")])))
        await wait_state(scheduler, gone, "failed")
        task = result_of(scheduler, gone)
        assert task["reason"] == f"tool {tmp_path}/gone (--tool) is not a file on this node"
        assert len(runner.ran) == 2  # it did not run
        nursery.cancel_scope.cancel()


async def test_a_toolchain_changed_while_the_task_ran_is_not_cached(tmp_path: Path, bin_dir: Path) -> None:
    class Replacing(FakeRunner):
        async def run(self, action: Action, *, on_output: Any = None, on_cancel: Any = None) -> ActionResult:
            executable(bin_dir / "cc.new", f"#!/bin/sh\necho {len(self.ran)}\n").replace(bin_dir / "cc")
            return await super().run(action, on_output=on_output)

    runner = Replacing()
    scheduler = Scheduler(
        StateDB(str(tmp_path / "state.db")), runner, AllPresent(), node_id="n", slots=1, toolchain=chain(tmp_path)
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        for _ in range(2):
            done = await wait_state(scheduler, scheduler.submit(job(compile_task(bin_dir))), "succeeded")
            assert not done["tasks"][0]["result"]["cached"]
        assert len(runner.ran) == 2 and scheduler.db.cache_size() == 0
        nursery.cancel_scope.cancel()


class DockerRunner(FakeRunner):
    executors = {"process": object(), "docker": object()}


async def test_a_docker_action_is_keyed_by_its_image_id(tmp_path: Path) -> None:
    images = {"busybox:1": "sha256:aaa"}

    async def image_id(name: str) -> str | None:
        await trio.sleep(0)
        return images.get(name)

    runner = DockerRunner()
    toolchain = Toolchain(image_id=image_id)
    scheduler = Scheduler(
        StateDB(str(tmp_path / "state.db")), runner, AllPresent(), node_id="n", slots=1, toolchain=toolchain
    )
    docker = t("d", ["true"], executor="docker", image="busybox:1")
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        await wait_state(scheduler, scheduler.submit(job(docker)), "succeeded")
        hit = await wait_state(scheduler, scheduler.submit(job(docker)), "succeeded")  # after the engine said
        assert hit["tasks"][0]["result"]["cached"] and len(runner.ran) == 1

        images["busybox:1"] = "sha256:bbb"  # the image was rebuilt under the same tag
        rebuilt = await wait_state(scheduler, scheduler.submit(job(docker)), "succeeded")
        assert (
            rebuilt["tasks"][0]["result"]["cache_note"] == "not in the cache: toolchain changed (the image busybox:1)"
        )
        assert len(runner.ran) == 2

        del images["busybox:1"]  # not on this node: a miss, never an error; and not cached
        for _ in range(2):
            absent = await wait_state(scheduler, scheduler.submit(job(docker)), "succeeded")
            note = absent["tasks"][0]["result"]["cache_note"]
            assert note.startswith("not in the cache: this node has no toolchain identity for it (the image busybox:1")
        assert len(runner.ran) == 4
        nursery.cancel_scope.cancel()


async def test_entries_a_version_without_the_identity_made_are_never_served(tmp_path: Path) -> None:
    """A state database whose action cache an earlier version filled (keys: the action's
    digest alone) opens, and none of those entries answers: the task runs."""
    path = str(tmp_path / "state.db")
    StateDB(path).close()
    action = Action(argv=("ok", "a"), input=SNAP)
    now = time.time()
    old = ActionResult(exit_code=0, stdout=SNAP, stderr=SNAP, output=None, started_at=now, finished_at=now, node="old")
    with sqlite3.connect(path) as raw:  # as the earlier version left it
        from mesh import codec

        raw.execute("DELETE FROM meta WHERE key = 'cache_keys'")
        raw.execute(
            "INSERT INTO action_cache VALUES (?, ?, ?)", (str(action.digest()), codec.encode(old.to_wire()), now)
        )
    db = StateDB(path)
    assert db.cache_size() == 0
    runner = FakeRunner()
    scheduler = Scheduler(db, runner, AllPresent(), node_id="n", slots=1)
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        done = await wait_state(scheduler, scheduler.submit(job(t("a", ["ok", "a"]))), "succeeded")
        assert not done["tasks"][0]["result"]["cached"] and runner.ran == [("ok", "a")]
        nursery.cancel_scope.cancel()
    db.close()
    assert StateDB(path).cache_size() == 1  # entries of this version stay


def test_miss_reasons_say_first_run_inputs_toolchain_or_neither(tmp_path: Path) -> None:
    reasons = MissReasons(StateDB(str(tmp_path / "state.db")))
    one, two = Identity.of({"argv0:cc": "1", "packages:/s": "p"}), Identity.of({"argv0:cc": "2", "packages:/s": "q"})
    action = Action(argv=("cc",), input=SNAP)
    moved = action.with_input(OTHER)
    assert reasons.note(action, one) == "not in the cache: first run"
    assert reasons.note(action, one).endswith("left no result (it failed, ran uncached, or its outputs were evicted)")
    assert reasons.note(moved, one) == "not in the cache: inputs changed"
    assert reasons.note(moved, two) == (
        "not in the cache: toolchain changed (the argv[0] binary cc, the system packages /s)"
    )
    assert reasons.note(action, one) == (
        "not in the cache: inputs changed and toolchain changed (the argv[0] binary cc, the system packages /s)"
    )
    assert reasons.note(Action(argv=("cc", "-O2"), input=SNAP), one) == "not in the cache: first run"
    why = reasons.note(action, None, no_identity="the image x is not on this node")
    assert why == "not in the cache: this node has no toolchain identity for it (the image x is not on this node)"


def test_the_local_cache_serves_only_results_whose_blobs_are_here(tmp_path: Path) -> None:
    db = StateDB(str(tmp_path / "state.db"))
    present = {SNAP}
    cache = LocalActionCache(db, node_id="n", has=present.__contains__, holds_tree=present.__contains__)
    now = time.time()
    result = ActionResult(
        exit_code=0, stdout=SNAP, stderr=SNAP, output=OTHER, started_at=now, finished_at=now, node="m"
    )
    key = Digest.of(b"key")
    cache.put(key, result)
    assert cache.get(key) is None and db.cache_size() == 0  # its output tree is gone: dropped
    present.add(OTHER)
    cache.put(key, result)
    hit = cache.get(key)
    assert hit is not None and hit.cached and hit.cache_key == key
    assert hit.cache_note == "from the action cache of node n, run on node m"
    assert not cache.asks_further() and trio.run(cache.get_further, key) is None
