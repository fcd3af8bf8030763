"""The compile task mesh.cc.service makes: its executor, and the workdir it requires when its
command names that path (a node that runs tasks at host paths would write another path into
a debug build's object).

The service is driven with a real store and the real gcc; the job intake is a stand-in that
keeps the job it is given (submitting it is the scheduler's business, tested elsewhere).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio

from mesh.cas.store import LocalStore
from mesh.cc.service import CompileService, choose_executor
from mesh.cluster.peering import capabilities
from mesh.errors import MeshError
from mesh.sched.jobs import JobSpec

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="the compile service's tests need gcc")

PROCESS, SANDBOX = "/run/mesh/work", "/work"


class KeptJob(MeshError):
    """Stops the compile once its job is made: the test reads the job."""


class Intake:
    default_executor = "process"

    def __init__(self) -> None:
        self.spec: JobSpec | None = None

    async def submit(self, spec: JobSpec) -> str:
        self.spec = spec
        raise KeptJob("kept")


def task_of(tmp_path: Path, workdirs: dict[str, str | None], source: str, *flags: str) -> dict[str, Any]:
    """The task the service makes of ``gcc FLAGS -c SOURCE`` sent from /home/u/p."""
    intake = Intake()
    service = CompileService(
        str(tmp_path / "home"),
        intake,  # type: ignore[arg-type]
        SimpleNamespace(store=LocalStore(tmp_path / "store")),  # type: ignore[arg-type]
        lambda: workdirs,
        lambda: None,
    )
    texts = ["/usr/bin/gcc", "c", source, "/home/u/p", *flags]
    with pytest.raises(KeptJob):
        trio.run(service.compile, texts, [b"int x;\n"])
    assert intake.spec is not None
    (task,) = intake.spec.tasks
    return task.wire


def test_a_debug_build_requires_the_workdir_its_debug_information_names(tmp_path: Path) -> None:
    task = task_of(tmp_path, {"process": PROCESS, "sandbox": SANDBOX}, "src/x.c", "-O0", "-g")
    assert task["executor"] == "process"
    assert task["requirements"]["workdir.process"] == PROCESS
    assert f"-fdebug-prefix-map={PROCESS}=/home/u/p" in task["argv"]
    assert task["requirements"]["cc:/usr/bin/gcc"]


def test_a_relative_source_without_g_goes_to_any_node_with_the_compiler(tmp_path: Path) -> None:
    task = task_of(tmp_path, {"process": PROCESS}, "src/x.c", "-O2")
    assert not [key for key in task["requirements"] if key.startswith("workdir.")]


def test_a_source_outside_the_directory_is_named_at_the_workdir_and_requires_it(tmp_path: Path) -> None:
    task = task_of(tmp_path, {"process": PROCESS}, "/abs/x.c", "-O2")
    assert f"{PROCESS}/root/abs/x.c" in task["argv"]
    assert task["requirements"]["workdir.process"] == PROCESS


def test_a_node_whose_process_tasks_run_at_host_paths_compiles_in_its_sandbox(tmp_path: Path) -> None:
    task = task_of(tmp_path, {"process": None, "sandbox": SANDBOX}, "src/x.c", "-O0", "-g")
    assert task["executor"] == "sandbox"
    assert task["requirements"]["workdir.sandbox"] == SANDBOX
    assert f"-fdebug-prefix-map={SANDBOX}=/home/u/p" in task["argv"]


def test_without_a_stable_workdir_here_a_debug_build_goes_where_there_is_one(tmp_path: Path) -> None:
    """Placed only on a node that shows process tasks /run/mesh/work: none here, so with no
    such peer the mesh cannot place it and the wrapper compiles here."""
    task = task_of(tmp_path, {"process": None}, "src/x.c", "-O0", "-g")
    assert (task["executor"], task["requirements"]["workdir.process"]) == ("process", PROCESS)
    assert choose_executor({"process": None}) == "process"
    assert choose_executor({"docker": "/work", "sandbox": SANDBOX, "process": PROCESS}) == "process"


def test_nodes_advertise_the_workdirs_their_executors_show(tmp_path: Path) -> None:
    caps = capabilities(["process", "sandbox"], {}, (), {"process": PROCESS, "sandbox": SANDBOX})
    assert (caps["workdir.process"], caps["workdir.sandbox"]) == (PROCESS, SANDBOX)
    assert "workdir.process" not in capabilities(["process"], {}, (), {"process": None})
