"""Tasks per second of the docker executor, as a ratio to bare container runs through the API.

mesh: ``true`` in the test image as an action through a Runner with the
DockerExecutor (task directory, checkout, container created, attached, started,
its exit read, removed, result recorded), one task at a time.
References, one at a time against the same engine: the bare minimum of ``podman
run --rm IMAGE true`` through the API with httpx (``POST /containers/create``,
``/start``, ``/wait``, ``DELETE``), and ``docker run``'s own sequence, the
executor's API calls without the Runner (create, attach, start, output to its
end, inspect, remove). Alternating blocks of ``rounds`` runs, best block of each;
ratios are tasks/s mesh / reference (higher is better).

:func:`docker_row` is the row ``bench/exec.py`` prints in its table (against the
first reference); run alone this script starts a private Podman service
(tests.podmanutil, as the test suite does) and prints both rows.

Usage: python bench/exec_docker.py [--rounds N] [--repeat N]
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable

import _common as c

c.use_repo()

import httpx  # noqa: E402
import trio  # noqa: E402

from mesh.cas.snapshot import ingest  # noqa: E402
from mesh.cas.store import LocalStore  # noqa: E402
from mesh.exec.action import Action  # noqa: E402
from mesh.exec.docker import DockerExecutor  # noqa: E402
from mesh.exec.engine import Engine, socket_path  # noqa: E402
from mesh.exec.runner import Runner  # noqa: E402
from tests.podmanutil import IMAGE, podman_service, unavailable_reason  # noqa: E402

#: Runs of each kind before timing (the engine's caches, the first connection).
WARMUP = 2


def docker_row(rounds: int = 20, host: str | None = None, *, repeat: int = 2) -> c.Row:
    """The docker row of ``bench/exec.py``: mesh's docker tasks/s vs bare create+start+wait+remove runs/s.

    ``host`` is the ``DOCKER_HOST`` to measure against (with the test image); None
    starts a private Podman service for the measurement and stops it after.
    """
    return docker_rows(rounds, host, repeat=repeat)[0]


def docker_rows(rounds: int = 20, host: str | None = None, *, repeat: int = 2) -> list[c.Row]:
    """Both rows: against the issue's reference (create, start, wait, remove), and against
    ``docker run``'s own sequence (create, attach, start, output to its end, inspect,
    remove), which is what the executor does, so that ratio is the cost of the Runner
    and the thread hops alone. Podman's ``/wait`` answers on a 250 ms poll, so the
    first reference is slower than the executor itself.
    """
    if host is None:
        reason = unavailable_reason()
        if reason is not None:
            raise SystemExit(f"the docker row needs podman: {reason}")
        with podman_service() as started:
            return docker_rows(rounds, started, repeat=repeat)
    rates = trio.run(_measure, rounds, host, repeat)
    mesh = rates["mesh"]
    references = [
        ("wait", "create + start + wait + remove `true` through the API (httpx), one at a time"),
        ("attach", "create + attach + start + output to its end + inspect + remove `true`, one at a time"),
    ]
    return [
        c.Row(
            "docker executor: `true` tasks through a Runner, one at a time",
            f"{mesh:.2f} tasks/s",
            what,
            f"{rates[key]:.2f} runs/s",
            f"{mesh / rates[key]:.2f}x (tasks/s mesh/ref, higher is better)",
            "info",
            "info",
        )
        for key, what in references
    ]


async def _measure(rounds: int, host: str, repeat: int) -> dict[str, float]:
    """Best rates (per second) of mesh's tasks and of both bare sequences, in alternating blocks."""
    with tempfile.TemporaryDirectory(prefix="mesh-bench-docker-") as scratch:
        os.mkdir(os.path.join(scratch, "src"))
        with LocalStore(os.path.join(scratch, "cas")) as store:
            snap = ingest(store, os.path.join(scratch, "src"))
            executor = DockerExecutor(host, owner=f"bench-{uuid.uuid4().hex[:8]}")
            runner = Runner(
                store, workroot=os.path.join(scratch, "work"), node_id="bench", executors={"docker": executor}
            )
            action = Action(argv=("true",), input=snap, executor="docker", image=IMAGE)
            transport = httpx.AsyncHTTPTransport(uds=socket_path(host), verify=False)
            async with (
                httpx.AsyncClient(transport=transport, base_url="http://docker", timeout=60) as client,
                Engine(socket_path(host)) as engine,
            ):

                async def mesh_task() -> None:
                    result = await runner.run(action)
                    if result.exit_code != 0:
                        raise RuntimeError(f"the benchmark task failed: {result.error or result.exit_code}")

                contestants: dict[str, Callable[[], Awaitable[None]]] = {
                    "mesh": mesh_task,
                    "wait": functools.partial(_bare_run, client),
                    "attach": functools.partial(_attached_run, engine),
                }
                for one in contestants.values():
                    for _ in range(WARMUP):
                        await one()
                best = dict.fromkeys(contestants, 0.0)
                for block in range(repeat):
                    for name, one in contestants.items():
                        start = time.perf_counter()
                        for _ in range(rounds):
                            await one()
                        rate = rounds / (time.perf_counter() - start)
                        c.note(f"block {block + 1}/{repeat}: {name} {rate:.2f}/s")
                        best[name] = max(best[name], rate)
            left = await executor.remove_leftovers()
            if left:
                raise RuntimeError(f"{left} containers of the benchmark were left behind")
    return best


async def _attached_run(engine: Engine) -> None:
    """``docker run --rm IMAGE true``'s own sequence, through mesh.exec.engine without the executor."""
    name = f"mesh-bench-{uuid.uuid4().hex}"
    await engine.create(name, {"Image": IMAGE, "Cmd": ["true"], "HostConfig": {"NetworkMode": "none"}})
    try:
        output = await engine.attach(name)
        try:
            await engine.start(name)
            while await output.read():
                pass
        finally:
            await output.aclose()
        state = await engine.inspect(name)
        if state.get("Status") not in ("exited", "stopped"):
            await engine.wait(name)
            state = await engine.inspect(name)
        if state.get("ExitCode") != 0:
            raise RuntimeError(f"the attached run failed: {state}")
    finally:
        await engine.remove(name)


async def _bare_run(client: httpx.AsyncClient) -> None:
    """``podman run --rm IMAGE true`` reduced to its API calls (no network, like mesh's tasks)."""
    response = await client.post(
        "/containers/create", json={"Image": IMAGE, "Cmd": ["true"], "HostConfig": {"NetworkMode": "none"}}
    )
    response.raise_for_status()
    container = response.json()["Id"]
    try:
        (await client.post(f"/containers/{container}/start")).raise_for_status()
        waited = await client.post(f"/containers/{container}/wait", timeout=None)
        if waited.json()["StatusCode"] != 0:
            raise RuntimeError(f"the bare run failed: {waited.text}")
    finally:
        (await client.delete(f"/containers/{container}", params={"force": 1})).raise_for_status()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=c.positive_int, default=20, help="runs per timed block (default 20)")
    parser.add_argument("--repeat", type=c.positive_int, default=2, help="timed blocks of each kind (default 2)")
    args = parser.parse_args()
    rows = docker_rows(args.rounds, repeat=args.repeat)
    print(f"# bench/exec_docker.py ({args.rounds} runs a block, best of {args.repeat} blocks)\n")
    c.print_table(rows)
    return 0


if __name__ == "__main__":
    c.run_main(main)
