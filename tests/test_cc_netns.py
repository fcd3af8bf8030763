"""``mesh cc`` builds brotli's C sources across three nodes in network namespaces.

The project is real: the 35 C files of brotli 1.2.1's source distribution from PyPI
(``make test-deps`` fetches it into tests/.data), built by a Makefile with -MMD -MP
dependency files, with ``make -j6 CC="mesh cc -v gcc"`` in the namespace of node 0, whose
compile service is the one the wrapper talks to. One test, one mesh, in steps: a cold
build spread over the nodes, a rebuild after ``make clean`` answered by the action
cache, a touched header, a node killed mid-build, and no node at all. Every build's
objects and dependency files are compared byte for byte with gcc's own, made at the same
path. Needs root (namespaces); elsewhere it is skipped with the reason printed.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import tarfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.netns import Lan, NsProcess, require_namespaces
from tests.nodeutil import MESH, node_env, wait_for
from tests.test_mesh_netns import PORT, start_mesh

SDIST = Path(__file__).parent / ".data" / "brotli-1.2.1.tar.gz"

MAKEFILE = """\
CC ?= gcc
CFLAGS ?= -O0
SRCS := $(sort $(wildcard c/common/*.c c/dec/*.c c/enc/*.c))
OBJS := $(patsubst c/%.c,build/%.o,$(SRCS))
all: $(OBJS)
-include $(OBJS:.o=.d)
build/%.o: c/%.c
\t@mkdir -p $(dir $@)
\t$(CC) $(CFLAGS) -Ic/include -MMD -MP -c $< -o $@
clean:
\trm -rf build
"""

#: One line of ``mesh cc -v``: the source, and where it ran or why here.
LINE = re.compile(r"^mesh cc: (?:(here): )?(c/\S+\.c): (.*)$")


@pytest.fixture
def lan() -> Iterator[Lan]:
    require_namespaces("the mesh cc namespace test")
    if shutil.which("gcc") is None or shutil.which("make") is None:
        pytest.skip("mesh cc's mesh test needs gcc and make (make test-deps installs them)")
    if not SDIST.exists():
        pytest.fail(f"{SDIST} is missing: make test-deps fetches brotli's sdist from PyPI (make cc-deps)")
    with Lan(3) as built:
        yield built


def unpack(into: Path) -> Path:
    with tarfile.open(SDIST) as tar:
        members = [m for m in tar.getmembers() if re.match(r"^brotli-1\.2\.1/c/(common|dec|enc|include)/", m.name)]
        tar.extractall(into, members=members, filter="data")
    root = into / "brotli-1.2.1"
    (root / "Makefile").write_text(MAKEFILE)
    return root


def outputs(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / "build").rglob("*")) if p.is_file()}


def local_build(root: Path, cflags: str) -> dict[str, bytes]:
    subprocess.run(["make", "-s", "clean"], cwd=root, check=True)
    subprocess.run(["make", "-s", "-j2", f"CFLAGS={cflags}"], cwd=root, check=True)
    built = outputs(root)
    subprocess.run(["make", "-s", "clean"], cwd=root, check=True)
    return built


def make_command(cflags: str) -> list[str]:
    wrapper = " ".join([*MESH, "cc", "-v", "gcc"])
    return ["make", "-j6", f"CC={wrapper}", f"CFLAGS={cflags}"]


def compiles(lines: list[str]) -> dict[str, str]:
    """source -> what ``mesh cc -v`` said of it (``here: WHY`` when it ran here)."""
    found = {}
    for line in lines:
        m = LINE.match(line)
        if m:
            found[m.group(2)] = ("here: " if m.group(1) else "") + m.group(3)
    return found


def start_cc_mesh(lan: Lan, at: Path) -> tuple[list[Path], list[NsProcess], list[str]]:
    """A node in each namespace (tests/test_mesh_netns.py), once node 0 has heard that both
    of its peers have gcc (their compilers are advertised after they start)."""
    homes, nodes, ids = start_mesh(lan, at, {})
    env = node_env(str(homes[0]), PATH=os.environ["PATH"])

    def peers_know_gcc() -> bool:
        done = lan.run(0, [*MESH, "peers", "--json", "--node", f"http://127.0.0.1:{PORT}"], env=env)
        peers = json.loads(done.stdout) if done.returncode == 0 else []
        return len(peers) == 2 and all("cc:/usr/bin/gcc" in p.get("capabilities", {}) for p in peers)

    wait_for(peers_know_gcc, timeout=30, what="node 0 to hear that its peers have gcc")
    return homes, nodes, ids


def test_a_brotli_build_through_mesh_cc_spreads_over_three_nodes_and_stays_byte_identical(
    lan: Lan, tmp_path: Path, shared: Path
) -> None:
    root = unpack(tmp_path)
    sources = sorted(str(p.relative_to(root)) for p in root.glob("c/*/*.c") if p.parent.name != "include")
    assert len(sources) == 35
    reference = local_build(root, "-O0 -g")
    killed_reference = local_build(root, "-O0 -g -fno-inline")
    homes, nodes, ids = start_cc_mesh(lan, tmp_path)
    env = node_env(str(homes[0]), PATH=os.environ["PATH"])

    def build(cflags: str, node: int = 0) -> dict[str, str]:
        """A build in namespace ``node``, its wrapper talking to that node's compile service."""
        here = node_env(str(homes[node]), PATH=os.environ["PATH"])
        done = lan.run(node, make_command(cflags), cwd=root, env=here, timeout=300)
        assert done.returncode == 0, done.stderr[-4000:]
        return compiles(done.stderr.splitlines())

    # Cold: every compile went to the mesh, on more than one node; objects as gcc makes them.
    cold = build("-O0 -g")
    assert sorted(cold) == sources
    assert not [s for s, said in cold.items() if said.startswith("here")], cold
    ran_on = Counter(re.search(r"ran on node (\w+)", said).group(1) for said in cold.values())  # type: ignore[union-attr]
    assert len(ran_on) > 1, ran_on
    assert outputs(root) == reference

    # After make clean: every compile is a hit of the mesh's action cache.
    subprocess.run(["make", "-s", "clean"], cwd=root, check=True)
    warm = build("-O0 -g")
    assert sorted(warm) == sources
    assert all("from the action cache" in said for said in warm.values()), warm
    assert outputs(root) == reference

    # The same build in namespace 2, through node 2: hits too, of whichever node holds them.
    subprocess.run(["make", "-s", "clean"], cwd=root, check=True)
    elsewhere = build("-O0 -g", node=2)
    assert sorted(elsewhere) == sources
    assert all("from the action cache" in said for said in elsewhere.values()), elsewhere
    assert outputs(root) == reference

    # A touched header: make recompiles exactly the objects whose dependency files name it.
    header = "c/enc/hash.h"
    includers = sorted(
        "c/" + d.relative_to(root / "build").with_suffix(".c").as_posix()
        for d in (root / "build").rglob("*.d")
        if re.search(rf"(^|\s){re.escape(header)}(\s|$)", d.read_text())
    )
    assert 0 < len(includers) < len(sources)
    # Newer than every object for certain: the file system's clock ticks coarser than make's view.
    newest = max(o.stat().st_mtime_ns for o in (root / "build").rglob("*.o"))
    os.utime(root / header, ns=(newest + 1_000_000_000, newest + 1_000_000_000))
    touched = build("-O0 -g")
    assert sorted(touched) == includers
    assert outputs(root) == reference

    # A compiler only node 0 advertises (gcc through a link at a path of the test's): its compiles
    # stay on node 0, even with its two slots busy and the peers idle.
    private = shared / "gcc"  # where the task's uid may run it
    private.symlink_to(os.path.realpath(shutil.which("gcc") or "gcc"))
    subprocess.run(["make", "-s", "clean"], cwd=root, check=True)
    targets = [f"build/{s.removeprefix('c/').removesuffix('.c')}.o" for s in sources[:8]]
    wrapper = " ".join([*MESH, "cc", "-v", str(private)])
    done = lan.run(0, ["make", "-j6", f"CC={wrapper}", "CFLAGS=-O0 -g", *targets], cwd=root, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    own = compiles(done.stderr.splitlines())
    assert len(own) == 8 and all(f"ran on node {ids[0]}" in said for said in own.values()), own

    # A node killed mid-build: the build finishes, with the right objects.
    subprocess.run(["make", "-s", "clean"], cwd=root, check=True)
    command = shlex.join(make_command("-O0 -g -fno-inline")) + " 2>&1"
    making = lan.spawn(0, ["sh", "-c", command], env=env, cwd=str(root))
    making.wait_for(
        lambda lines: any(f"ran on node {ids[2]}" in line for line in lines),
        timeout=120,
        what="a compile on node 2",
    )
    nodes[2].stop(signal.SIGKILL)
    assert making.popen.wait(timeout=300) == 0, "\n".join(making.lines[-40:])
    assert sorted(compiles(making.lines)) == sources
    assert outputs(root) == killed_reference

    # No node running: the build finishes here.
    for node in nodes[:2]:
        assert node.stop() == 0
    subprocess.run(["make", "-s", "clean"], cwd=root, check=True)
    alone = build("-O0 -g")
    assert sorted(alone) == sources
    assert all(said.startswith("here: no node's compile service") for said in alone.values()), alone
    assert outputs(root) == reference
