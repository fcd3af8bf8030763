"""The toolchain identity: what an action runs with on a node, in its action-cache key."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from mesh.cas.digest import Digest
from mesh.errors import CodecError, ToolMissing
from mesh.exec import toolchain as toolchain_module
from mesh.exec.action import BASE_ENV, Action, ActionResult
from mesh.exec.paths import PROCESS_VIEW, SANDBOX_VIEW
from mesh.exec.toolchain import FileDigests, Identity, Toolchain, interpreters, resolve
from tests.treeutil import executable

SNAP = Digest.of(b"input")


def action(argv: tuple[str, ...], bin_dir: Path | None = None, **extra: object) -> Action:
    env = {"PATH": f"{bin_dir}:{BASE_ENV['PATH']}"} if bin_dir else {}
    return Action(argv=argv, input=SNAP, env=tuple(env.items()), **extra)  # type: ignore[arg-type]


@pytest.fixture
def packages(tmp_path: Path) -> Path:
    """A package database of our own, so the tests do not depend on the machine's."""
    return executable(tmp_path / "status", "Package: one\nVersion: 1\n")


def test_resolve_finds_argv0_on_the_path_as_the_executor_does(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    executable(second / "cc", "#!/bin/sh\n")
    (first / "cc").write_text("not executable")  # skipped, as execvp skips it
    path = f"relative/dir::{first}:{second}"
    assert resolve("cc", path) == f"{second}/cc"
    assert resolve("absent", path) is None
    assert resolve("./build.sh", path) is None  # a file of the input: its digest covers it
    assert resolve("/bin/sh", path) == "/bin/sh"
    # Below where the task sees its workdir: a file of the input too, and so is a PATH entry there.
    (tmp_path / "work").mkdir()
    executable(tmp_path / "work" / "cc", "#!/bin/sh\n")
    inside = str(tmp_path / "work")
    assert resolve(f"{inside}/cc", path, inside) is None and resolve(f"{inside}/cc", path) == f"{inside}/cc"
    assert resolve("cc", f"{inside}:{second}", inside) == f"{second}/cc"


def test_replacing_the_argv0_binary_on_path_changes_the_identity(tmp_path: Path, packages: Path) -> None:
    executable(tmp_path / "cc", "#!/bin/sh\necho one\n")
    chain = Toolchain(package_databases=[str(packages)])
    act = action(("cc", "-c", "x.c"), tmp_path)
    before = chain.identity(act)
    assert chain.identity(act) == before
    assert chain.identity(act.with_input(Digest.of(b"other"))) == before  # the input is not the toolchain's
    executable(tmp_path / "cc.new", "#!/bin/sh\necho two\n").replace(tmp_path / "cc")
    after = chain.identity(act)
    assert after != before and after.digest() != before.digest()
    assert after.changed(before) == ["the argv[0] binary cc"]
    assert act.cache_key(after.digest()) != act.cache_key(before.digest())


def test_an_argv0_not_found_and_one_from_the_input_are_parts_or_left_out(packages: Path) -> None:
    chain = Toolchain(package_databases=[str(packages)])
    missing = chain.identity(action(("no-such-tool-anywhere",)))
    assert dict(missing.parts)["argv0:no-such-tool-anywhere"] == "not found"
    relative = chain.identity(action(("./build.sh",)))
    assert [name for name, _ in relative.parts] == [f"packages:{packages}"]
    for executor, view in (("sandbox", SANDBOX_VIEW), ("process", PROCESS_VIEW)):  # mesh.exec.paths
        inside = chain.identity(action((f"{view.work}/build.sh",), executor=executor))
        assert [name for name, _ in inside.parts] == [f"packages:{packages}"]


def test_a_scripts_interpreter_is_part_of_it_and_env_is_followed(tmp_path: Path, packages: Path) -> None:
    assert interpreters(b"#!/bin/sh -e\nx") == ["/bin/sh"]
    assert interpreters(b"#! /usr/bin/env -S python3 -u\n") == ["/usr/bin/env", "python3"]
    assert interpreters(b"\x7fELF...") == []
    interp = executable(tmp_path / "interp", "#!/bin/sh\n")
    executable(tmp_path / "script", f"#!{interp}\n")
    chain = Toolchain(package_databases=[str(packages)])
    act = action(("script",), tmp_path)
    before = chain.identity(act)
    assert f"interpreter:{interp}" in dict(before.parts)
    executable(tmp_path / "interp.new", "#!/bin/sh\n# another\n").replace(interp)
    assert chain.identity(act).changed(before) == [f"the interpreter {interp}"]
    executable(tmp_path / "viaenv", "#!/usr/bin/env interp\n")
    parts = dict(chain.identity(action(("viaenv",), tmp_path)).parts)
    assert {"interpreter:/usr/bin/env", "interpreter:interp"} <= parts.keys()


def test_a_package_installed_or_upgraded_changes_it(tmp_path: Path, packages: Path) -> None:
    chain = Toolchain(package_databases=[str(packages), str(tmp_path / "absent")])
    act = action(("sh", "-c", "true"))
    before = chain.identity(act)
    with packages.open("a") as f:
        f.write("\nPackage: two\nVersion: 1\n")
    assert chain.identity(act).changed(before) == [f"the system packages {packages}"]


def test_the_machines_own_package_database_is_found() -> None:
    """On this machine (Debian) dpkg's database is part of every process/sandbox identity."""
    if not os.path.exists("/var/lib/dpkg/status"):
        pytest.skip("not a dpkg system")
    assert "packages:/var/lib/dpkg/status" in dict(Toolchain().identity(action(("true",))).parts)


def test_declared_tools_join_it_and_a_missing_one_is_a_clear_error(tmp_path: Path, packages: Path) -> None:
    helper = executable(tmp_path / "cc1", "v1")
    chain = Toolchain(package_databases=[str(packages)])
    act = action(("sh",), tools=(str(helper),))
    before = chain.identity(act)
    helper.write_text("v2")
    assert chain.identity(act).changed(before) == [f"tool {helper}"]
    with pytest.raises(ToolMissing, match=f"tool {tmp_path}/gone .*not a file on this node"):
        chain.identity(action(("sh",), tools=(str(tmp_path / "gone"),)))


def test_a_warm_look_is_a_stat_and_a_changed_file_is_hashed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hashed: list[int] = []
    real = toolchain_module.hash_fd

    def counting(fd: int, size: int | None = None) -> Digest:
        hashed.append(fd)
        return real(fd, size)

    monkeypatch.setattr(toolchain_module, "hash_fd", counting)
    monkeypatch.setattr(toolchain_module, "RACY_WINDOW_NS", -(10**9))  # no racy window: trusted at once
    old = executable(tmp_path / "old", "old enough")
    files = FileDigests()
    first = files.look(str(old))
    assert first is not None and files.look(str(old)) == first and len(hashed) == 1
    monkeypatch.setattr(toolchain_module, "RACY_WINDOW_NS", 2 * 10**9)
    fresh = executable(tmp_path / "fresh", "just made")
    files.look(str(fresh))
    files.look(str(fresh))
    assert len(hashed) == 3  # changed within the racy window: not trusted from its stat yet
    old.write_text("changed!!!")  # same size, new content
    again = files.look(str(old))
    assert again is not None and again.digest == Digest.of(b"changed!!!") and len(hashed) == 4
    assert files.look(str(tmp_path)) is None  # a directory is no file


def test_a_docker_actions_identity_is_its_image_id() -> None:
    images = {"busybox:1": "sha256:aaa"}

    async def image_id(name: str) -> str | None:
        return images.get(name)

    import trio

    chain = Toolchain(image_id=image_id)
    act = Action(argv=("true",), input=SNAP, executor="docker", image="busybox:1")
    assert chain.needs_engine(act)
    first = trio.run(chain.of_image, act)
    assert first == Identity.of({"image:busybox:1": "sha256:aaa"})
    images["busybox:1"] = "sha256:bbb"
    second = trio.run(chain.of_image, act)
    assert second is not None and second.changed(first) == ["the image busybox:1"]
    del images["busybox:1"]
    assert trio.run(chain.of_image, act) is None  # a node without the image has no identity for it
    assert trio.run(Toolchain().of_image, act) is None  # nor one without an engine


def test_identity_round_trips_and_refuses_what_is_not_one() -> None:
    ident = Identity.of({"b": "2", "a": "1"})
    assert ident.parts == (("a", "1"), ("b", "2"))
    assert Identity.from_wire(ident.to_wire()) == ident
    with pytest.raises(CodecError):
        Identity.from_wire({"a": 1})


def test_an_actions_tools_are_absolute_sorted_and_not_for_docker() -> None:
    act = Action(argv=("cc",), input=SNAP, tools=("/usr/bin//gcc", "/opt/x/../cc1", "/usr/bin/gcc"))
    assert act.tools == ("/opt/cc1", "/usr/bin/gcc")
    assert Action.from_wire(act.to_wire()) == act
    assert act.digest() != Action(argv=("cc",), input=SNAP).digest()
    assert "tools" not in Action(argv=("cc",), input=SNAP).to_wire()  # keys of actions without tools are unchanged
    with pytest.raises(CodecError, match="absolute"):
        Action(argv=("cc",), input=SNAP, tools=("bin/cc",))
    with pytest.raises(CodecError, match="docker"):
        Action(argv=("cc",), input=SNAP, executor="docker", image="x", tools=("/bin/cc",))


def test_the_cache_key_covers_action_and_identity_and_the_shape_leaves_out_the_input() -> None:
    act = Action(argv=("cc",), input=SNAP)
    one, two = Digest.of(b"identity one"), Digest.of(b"identity two")
    assert act.cache_key(one) == act.cache_key(one)
    assert act.cache_key(one) not in (act.cache_key(two), act.digest())
    other = act.with_input(Digest.of(b"other input"))
    assert other.shape() == act.shape() and other.cache_key(one) != act.cache_key(one)
    assert Action(argv=("cc", "-O2"), input=SNAP).shape() != act.shape()


def test_a_results_cache_fields_are_on_the_wire_only_when_set() -> None:
    result = ActionResult(exit_code=0, stdout=SNAP, stderr=SNAP, output=None, started_at=1, finished_at=2, node="n")
    assert "cache_key" not in result.to_wire() and "cache_note" not in result.to_wire()
    noted = ActionResult.from_wire({**result.to_wire(), "cache_key": str(SNAP), "cache_note": "first run"})
    assert noted.cache_key == SNAP and noted.cache_note == "first run"
    assert ActionResult.from_wire(noted.to_wire()) == noted


def test_copying_a_system_tool_gives_the_same_content_digest(tmp_path: Path, packages: Path) -> None:
    """The identity is content, not inode: two nodes with the same binary share entries."""
    true = shutil.which("true")
    assert true is not None
    shutil.copy2(true, tmp_path / "true")
    chain = Toolchain(package_databases=[str(packages)])
    here = dict(chain.identity(action(("true",), tmp_path)).parts)["argv0:true"]
    there = dict(chain.identity(action(("true",))).parts)["argv0:true"]
    assert here.split()[1] == there.split()[1] and here.split()[0] != there.split()[0]
