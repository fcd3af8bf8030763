"""``mesh cc`` against a real ``mesh up`` on loopback: a small C project of real files built
with make, compared byte for byte with a local build (mesh.cc)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mesh.cc import stats
from mesh.cc.args import DEBUG_OPTIMISED, SANITIZE_ADDRESS, SANITIZE_THREAD
from mesh.cc.keptcompiles import CLOCK_SLACK_NS
from tests.nodeutil import MESH, NodeProcess, node_env, wait_for
from tests.test_cc_netns import SDIST, unpack

pytestmark = pytest.mark.skipif(
    shutil.which("gcc") is None or shutil.which("make") is None, reason="mesh cc's tests need gcc and make"
)

MAKEFILE = """\
CC ?= gcc
CFLAGS ?= -O0 -g -Wall
OBJS := build/main.o build/util.o build/list.o build/extra.o
all: $(OBJS)
-include $(OBJS:.o=.d)
build/%.o: src/%.c | build
\t$(CC) $(CFLAGS) -Iinclude -DVERSION=3 -MMD -MP -c $< -o $@
build:
\tmkdir -p build
clean:
\trm -rf build
"""

SOURCES = {
    "include/util.h": "#pragma once\n#define SQUARE(x) ((x) * (x))\nint util(int);\nextern const char *where;\n",
    "include/list.h": "#pragma once\nstruct node { struct node *next; int v; };\nint length(const struct node *);\n",
    "src/main.c": '#include <stdio.h>\n#include "util.h"\n#include "list.h"\nint main(void) {\n'
    '  struct node n = {0, SQUARE(VERSION)};\n  printf("%d %s\\n", util(length(&n)), __FILE__);\n  return 0;\n}\n',
    "src/util.c": '#include "util.h"\nconst char *where = __FILE__;\n'
    "int util(int x) { return SQUARE(x) + __LINE__; }\n",
    "src/list.c": '#include "list.h"\n'
    "int length(const struct node *n) { int k = 0; for (; n; n = n->next) k++; return k; }\n",
    "src/extra.c": "static int table[64];\nint extra(int i) { return table[i & 63] += i; }\n",
}


def make_project(root: Path) -> Path:
    for name, text in SOURCES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (root / "Makefile").write_text(MAKEFILE)
    return root


def build_files(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((root / "build").iterdir())}


@pytest.fixture(scope="module")
def cc_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """One node for the module's tests: a short home path (a unix socket's path is short)."""
    home = tmp_path_factory.mktemp("cc") / "h"
    node = NodeProcess(str(home)).start()
    try:
        wait_for(lambda: (home / "cc.sock").exists(), timeout=10, what="the compile service's socket")
        yield node
    finally:
        node.stop(timeout=30)


def settled(root: Path) -> None:
    """Wait until every file below ``root`` was written longer ago than the clock's slack
    (mesh.cc.keptcompiles.CLOCK_SLACK_NS): a compile that begins then may be kept."""
    newest = max(p.stat().st_ctime_ns for p in root.rglob("*"))
    wait_for(lambda: time.time_ns() > newest + 2 * CLOCK_SLACK_NS, timeout=5, what="the files to settle")


def make(root: Path, home: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    cc = " ".join([*MESH, "cc", "-v", "gcc"])
    return subprocess.run(
        ["make", "-j2", f"CC={cc}", *args],
        cwd=root,
        env=node_env(home, **env),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_make_build_through_mesh_cc_gives_the_local_objects_and_dependency_files_byte_for_byte(
    cc_node: NodeProcess, tmp_path: Path
) -> None:
    root = make_project(tmp_path / "p")
    done = make(root, cc_node.home, "CFLAGS=-O0 -g -Wall")
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("ran on node") == 4, done.stderr
    meshed = build_files(root)
    subprocess.run(["make", "-s", "clean"], cwd=root, check=True)
    subprocess.run(["make", "-s", "-j2", "CFLAGS=-O0 -g -Wall"], cwd=root, check=True)
    assert build_files(root) == meshed
    assert sorted(meshed) == sorted(["main.o", "main.d", "util.o", "util.d", "list.o", "list.d", "extra.o", "extra.d"])
    # Again after make clean: every compile is answered by the action cache.
    subprocess.run(["make", "-s", "clean"], cwd=root, check=True)
    again = make(root, cc_node.home, "CFLAGS=-O0 -g -Wall")
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("from the action cache") == 4, again.stderr
    assert build_files(root) == meshed
    # /status counts them (open to anyone: counts only).
    status = httpx.get(cc_node.url + "/status", timeout=10, trust_env=False).json()["cc"]
    assert status["serving"] is True and status["compilers"] >= 1 and status["compiles"] >= 8, status
    if os.geteuid() == 0:  # a root node shows its process tasks /run/mesh/work: debug builds may go there
        caps = httpx.get(cc_node.url + "/status", timeout=10, trust_env=False).json()["capabilities"]
        assert caps.get("workdir.process") == "/run/mesh/work", caps
    # make's rebuild decisions read the dependency files: touching a header recompiles its includers.
    # Newer than every object for certain: the file system's clock ticks coarser than make's view.
    newest = max(o.stat().st_mtime_ns for o in (root / "build").rglob("*.o"))
    os.utime(root / "include" / "list.h", ns=(newest + 1_000_000_000, newest + 1_000_000_000))
    third = make(root, cc_node.home, "CFLAGS=-O0 -g -Wall")
    assert sorted(line.split(":")[1].strip() for line in third.stderr.splitlines() if line.startswith("mesh cc:")) == [
        "src/list.c",
        "src/main.c",
    ], third.stderr


@pytest.mark.parametrize("where", ["absolute", "parent"])
def test_a_source_named_by_an_absolute_path_or_through_a_parent_gives_the_local_object_with_g(
    cc_node: NodeProcess, tmp_path: Path, where: str
) -> None:
    root = make_project(tmp_path / "p")
    work = root / "build"
    work.mkdir()
    source = str(root / "src" / "util.c") if where == "absolute" else "../src/util.c"
    args = ["-c", "-g", "-O0", f"-I{root / 'include'}", source, "-o", "util.o"]
    subprocess.run(["gcc", *args], cwd=work, check=True)
    local = (work / "util.o").read_bytes()
    done = subprocess.run(
        [*MESH, "cc", "-v", "gcc", *args], cwd=work, capture_output=True, text=True, env=node_env(cc_node.home)
    )
    assert done.returncode == 0, done.stderr
    assert "ran on node" in done.stderr, done.stderr
    assert (work / "util.o").read_bytes() == local


#: A header included three times with other macros (as brotli's block_splitter.c does):
#: at -O3 -g, gcc's compile of its -fdirectives-only text has one more line-table row
#: (inc.h:7) than its compile of the files (gcc 12.2).
THRICE = {
    "inc.h": """static void FN(Refine)(const DataType* data, unsigned n, unsigned* hist, unsigned k) {
  unsigned i, j;
  for (i = 0; i < n; ++i) {
    unsigned best = 0;
    double cost = 1e99;
    for (j = 0; j < k; ++j) {
      double c = (double)hist[j * 256 + data[i] % 256] * 0.5 + j;
      if (c < cost) { cost = c; best = j; }
    }
    hist[best * 256 + data[i] % 256]++;
  }
}
""",
    "thrice.c": """#include <stdint.h>
#define FN(X) X ## A
#define DataType uint8_t
#include "inc.h"
#undef DataType
#undef FN
#define FN(X) X ## B
#define DataType uint16_t
#include "inc.h"
#undef FN
#define FN(X) X ## C
#include "inc.h"
#undef DataType
#undef FN
void run(const uint8_t* a, const uint16_t* b, unsigned n, unsigned* h) {
  RefineA(a, n, h, 3); RefineB(b, n, h, 4); RefineC(b, n, h, 5);
}
""",
}


@pytest.mark.parametrize(
    ("case", "args", "why"),
    [
        ("thrice", ["-c", "-O3", "-g", "thrice.c", "-o", "thrice.o"], DEBUG_OPTIMISED),
        ("brotli", ["-c", "-O2", "-g", "-Ic/include", "c/enc/block_splitter.c", "-o", "b.o"], DEBUG_OPTIMISED),
        ("brotli", ["-c", "-O0", "-fsanitize=address", "-Ic/include", "c/dec/decode.c", "-o", "d.o"], SANITIZE_ADDRESS),
        (
            "brotli",
            ["-c", "-O0", "-g", "-fsanitize=thread", "-Ic/include", "c/dec/decode.c", "-o", "d.o"],
            SANITIZE_THREAD,
        ),
    ],
)
def test_a_compile_whose_object_depends_on_how_gcc_read_its_input_runs_here_and_gives_the_local_object(
    cc_node: NodeProcess, tmp_path: Path, case: str, args: list[str], why: str
) -> None:
    """Sources whose objects differ when compiled from their preprocessed text: at -O3 -g
    (THRICE) and -O2 -g (brotli's block_splitter.c), and brotli's decode.c with gcc's
    AddressSanitizer (the stack variables' descriptions) or ThreadSanitizer and -g (sent,
    both gave another object). mesh cc compiles them here, and keeps the object in the
    mesh's cache, whence the same compile again takes it."""
    if case == "brotli":
        if not SDIST.exists():
            pytest.fail(f"{SDIST} is missing: make test-deps fetches brotli's sdist from PyPI (make cc-deps)")
        root = unpack(tmp_path)
    else:
        root = tmp_path
        for name, text in THRICE.items():
            (root / name).write_text(text)
    obj = root / args[-1]
    subprocess.run(["gcc", *args], cwd=root, check=True)
    local = obj.read_bytes()
    obj.unlink()
    settled(root)
    done = subprocess.run(
        [*MESH, "cc", "-v", "gcc", *args], cwd=root, capture_output=True, text=True, env=node_env(cc_node.home)
    )
    assert done.returncode == 0, done.stderr
    assert obj.read_bytes() == local, done.stderr
    source = next(arg for arg in args if arg.endswith(".c"))
    reason = f"mesh cc: here: {source}: {why}"
    assert done.stderr == f"{reason}; kept in the mesh's cache\n"
    obj.unlink()
    again = subprocess.run(
        [*MESH, "cc", "-v", "gcc", *args], cwd=root, capture_output=True, text=True, env=node_env(cc_node.home)
    )
    assert again.returncode == 0 and again.stderr.startswith(f"{reason}; from the action cache"), again.stderr
    assert obj.read_bytes() == local


def kept_compile(home: str, root: Path, *args: str) -> str:
    """``mesh cc -v gcc -O2 -g ARGS`` in ``root`` through the node of ``home``: what -v said."""
    done = subprocess.run(
        [*MESH, "cc", "-v", "gcc", "-O2", "-g", *args], cwd=root, capture_output=True, text=True, env=node_env(home)
    )
    assert done.returncode == 0, done.stderr
    return done.stderr


def test_a_kept_compile_follows_its_headers_and_a_noisy_one_is_not_kept(cc_node: NodeProcess, tmp_path: Path) -> None:
    """-O2 -g compiles run here; the mesh's cache keeps their objects under a key of the
    files they read: a header changed is a miss, the header changed back a hit again, and
    every object is the one gcc makes of the files as they are."""
    root = tmp_path / "k"
    (root / "inc").mkdir(parents=True)
    header = root / "inc" / "k.h"
    (root / "k.c").write_text('#include "k.h"\nint f(int x) { return SCALE * x; }\n')
    args = ["-Iinc", "-c", "k.c", "-o", "k.o"]
    objects = {}
    for scale in ("2", "3", "2"):
        header.write_text(f"#define SCALE {scale}\n")
        subprocess.run(["gcc", "-O2", "-g", *args], cwd=root, check=True)
        local = (root / "k.o").read_bytes()
        (root / "k.o").unlink()
        settled(root)
        said = kept_compile(cc_node.home, root, *args)
        assert (root / "k.o").read_bytes() == local
        objects.setdefault(scale, []).append(said.rstrip().rsplit("; ", 1)[-1])
    assert objects["2"][0] == objects["3"][0] == "kept in the mesh's cache", objects
    assert objects["2"][1].startswith("from the action cache"), objects
    kept = httpx.get(cc_node.url + "/status", timeout=10, trust_env=False).json()["cc"]["kept"]
    assert kept["kept"] >= 2 and kept["hits"] >= 1 and kept["misses"] >= 2, kept
    # A compile that warns is not kept: gcc's own warning, and a miss the next time too.
    (root / "w.c").write_text("int g(int x) { int unused; return x; }\n")
    settled(root)
    for _ in range(2):
        done = subprocess.run(
            [*MESH, "cc", "-v", "gcc", "-O2", "-g", "-Wall", "-c", "w.c", "-o", "w.o"],
            cwd=root,
            capture_output=True,
            text=True,
            env=node_env(cc_node.home),
        )
        assert done.returncode == 0 and "unused variable" in done.stderr and "cache" not in done.stderr, done.stderr


def test_macro_debug_information_gives_the_local_object_and_is_kept(cc_node: NodeProcess, tmp_path: Path) -> None:
    """-g3 records each macro where it is defined: sent, the command line's macros and gcc's
    own came out elsewhere in .debug_macro. Compiled here, kept, then a hit."""
    (tmp_path / "m.h").write_text("#define TWICE(x) (2 * (x))\n")
    (tmp_path / "m.c").write_text('#include "m.h"\nint f(int x) { return TWICE(x) + LEVEL; }\n')
    args = ["-O0", "-g3", "-DLEVEL=4", "-c", "m.c", "-o", "m.o"]
    subprocess.run(["gcc", *args], cwd=tmp_path, check=True)
    local = (tmp_path / "m.o").read_bytes()
    settled(tmp_path)
    notes = []
    for _ in range(2):
        (tmp_path / "m.o").unlink()
        done = subprocess.run(
            [*MESH, "cc", "-v", "gcc", *args], cwd=tmp_path, capture_output=True, text=True, env=node_env(cc_node.home)
        )
        assert done.returncode == 0 and "with -g3" in done.stderr, done.stderr
        assert (tmp_path / "m.o").read_bytes() == local
        notes.append(done.stderr.rstrip().rsplit("; ", 1)[-1])
    assert notes[0] == "kept in the mesh's cache" and notes[1].startswith("from the action cache"), notes


def test_a_kept_compile_is_a_hit_on_another_node_of_the_mesh(
    two_nodes: tuple[NodeProcess, NodeProcess], tmp_path: Path
) -> None:
    a, b = two_nodes
    root = tmp_path / "k"
    root.mkdir()
    (root / "k.c").write_text("int f(int x) { return 5 * x; }\n")
    settled(root)
    assert kept_compile(a.home, root, "-c", "k.c", "-o", "k.o").endswith("; kept in the mesh's cache\n")
    first = (root / "k.o").read_bytes()
    (root / "k.o").unlink()
    said = kept_compile(b.home, root, "-c", "k.c", "-o", "k.o")
    assert "from the action cache of node" in said and f"({a.url})" in said, said  # b asked its peer
    assert (root / "k.o").read_bytes() == first


@pytest.mark.parametrize(
    "maps",
    [
        ["-fdebug-prefix-map={top}=/src"],
        ["-ffile-prefix-map={top}=."],
        ["-ffile-prefix-map={top}/p=/P", "-ffile-prefix-map={top}=/A"],  # the last matching map wins
        ["-ffile-prefix-map={top}=/A", "-ffile-prefix-map={top}/p/src=/S"],
        ["-ffile-prefix-map={short}=/Q"],  # a string prefix, not a directory, is what gcc matches
        ["-ffile-prefix-map=/usr/include=/I"],
    ],
)
def test_the_command_s_own_prefix_maps_give_the_local_object(
    cc_node: NodeProcess, tmp_path: Path, maps: list[str]
) -> None:
    """Reproducible builds map the build directory away (-ffile-prefix-map=$PWD=.): gcc takes
    the last matching map, so mesh's own map of the task's directory must be followed by the
    command's maps of the local directory, translated."""
    top = str(tmp_path)
    root = tmp_path / "p"
    (root / "src").mkdir(parents=True)
    (root / "include").mkdir()
    (root / "include" / "h.h").write_text("static inline int twice(int x) { return 2 * x; }\n")
    (root / "src" / "a.c").write_text('#include <stdio.h>\n#include "h.h"\nint f(int x) { return twice(x); }\n')
    flags = ["-O0", "-g", "-Iinclude", *(m.format(top=top, short=top[:-3]) for m in maps)]
    for cwd, source in ((root, "src/a.c"), (root, str(root / "src" / "a.c")), (root / "src", "a.c")):
        include = ["-I../include"] if cwd.name == "src" else []
        command = ["gcc", *flags, *include, "-c", source, "-o", str(tmp_path / "local.o")]
        subprocess.run(command, cwd=cwd, check=True)
        command[-1] = str(tmp_path / "mesh.o")
        done = subprocess.run(
            [*MESH, "cc", "-v", *command], cwd=cwd, capture_output=True, text=True, env=node_env(cc_node.home)
        )
        assert done.returncode == 0 and "ran on node" in done.stderr + "cache", done.stderr
        assert "here:" not in done.stderr, done.stderr
        assert (tmp_path / "mesh.o").read_bytes() == (tmp_path / "local.o").read_bytes(), (cwd, source)


@pytest.mark.parametrize("maps", [[], ["-fmacro-prefix-map={top}=/M"], ["-ffile-prefix-map={top}/p/src=/S"]])
def test_base_file_names_the_source_as_the_command_names_it(
    cc_node: NodeProcess, tmp_path: Path, maps: list[str]
) -> None:
    """__BASE_FILE__ is the source's name on the command line: for a source outside the
    directory, the task's name would show, unless it is mapped back (with the command's
    own maps after it, as gcc takes the last that matches)."""
    root = tmp_path / "p"
    (root / "src").mkdir(parents=True)
    (root / "inc").mkdir()
    (root / "inc" / "l.h").write_text("static const char *base = __BASE_FILE__, *file = __FILE__;\n")
    (root / "src" / "b.c").write_text('#include "l.h"\nconst char *f(int i) { return i ? base : file; }\n')
    flags = ["-O2", "-Iinc", *(m.format(top=tmp_path) for m in maps)]
    for source in ("src/b.c", str(root / "src" / "b.c"), "../p/src/b.c"):
        subprocess.run(["gcc", *flags, "-c", source, "-o", str(tmp_path / "local.o")], cwd=root, check=True)
        done = subprocess.run(
            [*MESH, "cc", "-v", "gcc", *flags, "-c", source, "-o", str(tmp_path / "mesh.o")],
            cwd=root,
            capture_output=True,
            text=True,
            env=node_env(cc_node.home),
        )
        assert done.returncode == 0 and "here:" not in done.stderr, done.stderr
        assert (tmp_path / "mesh.o").read_bytes() == (tmp_path / "local.o").read_bytes(), source


def test_a_directory_reached_through_a_symlink_is_named_as_gcc_names_it(cc_node: NodeProcess, tmp_path: Path) -> None:
    """gcc writes $PWD into the debug information when it is this directory (the path the
    shell reached it by), else the physical path: the mesh's object must say the same."""
    real = tmp_path / "real"
    (real / "src").mkdir(parents=True)
    (real / "src" / "a.c").write_text("int f(int x) { return x + 1; }\n")
    (tmp_path / "link").symlink_to(real)
    for pwd in (str(tmp_path / "link"), str(real), "/"):  # through the link, the real path, a stale $PWD
        local = subprocess.run(
            ["gcc", "-O0", "-g", "-c", "src/a.c", "-o", str(tmp_path / "local.o")],
            cwd=tmp_path / "link",
            env={**os.environ, "PWD": pwd},
        )
        assert local.returncode == 0
        done = subprocess.run(
            [*MESH, "cc", "-v", "gcc", "-O0", "-g", "-c", "src/a.c", "-o", str(tmp_path / "mesh.o")],
            cwd=tmp_path / "link",
            capture_output=True,
            text=True,
            env=node_env(cc_node.home, PWD=pwd),
        )
        assert done.returncode == 0 and "here:" not in done.stderr, done.stderr
        assert (tmp_path / "mesh.o").read_bytes() == (tmp_path / "local.o").read_bytes(), pwd


def test_a_compile_that_says_anything_says_exactly_what_gcc_says_with_its_exit_status(
    cc_node: NodeProcess, tmp_path: Path
) -> None:
    (tmp_path / "warn.c").write_text("int f(int x) { int unused; return x; }\n#warning careful\n")
    (tmp_path / "bad.c").write_text("int main(void) { return undefined_thing; }\n")
    for source in ("warn.c", "bad.c"):
        args = ["-c", "-Wall", source, "-o", source.replace(".c", ".o")]
        local = subprocess.run(["gcc", *args], cwd=tmp_path, capture_output=True)
        local_object = (tmp_path / args[-1]).read_bytes() if local.returncode == 0 else None
        meshed = subprocess.run(
            [*MESH, "cc", "gcc", *args], cwd=tmp_path, capture_output=True, env=node_env(cc_node.home)
        )
        assert (meshed.returncode, meshed.stdout, meshed.stderr) == (local.returncode, local.stdout, local.stderr)
        if local_object is not None:
            assert (tmp_path / args[-1]).read_bytes() == local_object
        else:
            assert not (tmp_path / args[-1]).exists()


def test_what_is_not_a_single_compile_runs_here_and_v_says_why(cc_node: NodeProcess, tmp_path: Path) -> None:
    (tmp_path / "a.c").write_text("int main(void) { return 0; }\n")
    done = subprocess.run(
        [*MESH, "cc", "-v", "gcc", "a.c", "-o", "a"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=node_env(cc_node.home),
    )
    assert done.returncode == 0, done.stderr
    assert "mesh cc: here: not a compile to an object (no -c)" in done.stderr
    assert subprocess.run([str(tmp_path / "a")]).returncode == 0


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ('const char *built = __DATE__ " " __TIME__;\n', "__DATE__"),
        ('#include <time.h>\n#include "stamp.h"\nconst char *built = STAMP;\n', "__TIMESTAMP__"),
    ],
)
def test_a_compile_that_names_the_time_of_the_compile_runs_here(
    cc_node: NodeProcess, tmp_path: Path, text: str, said: str
) -> None:
    """The macros stay unexpanded in what would be sent: the cache would keep the time of the
    first compile, and another node would expand its own time; a compile here gives now."""
    (tmp_path / "stamp.h").write_text("#define STAMP __TIMESTAMP__\n")
    (tmp_path / "t.c").write_text(text)
    done = subprocess.run(
        [*MESH, "cc", "-v", "gcc", "-O2", "-c", "t.c", "-o", "t.o"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=node_env(cc_node.home),
    )
    assert done.returncode == 0, done.stderr
    assert f"mesh cc: here: t.c: {said} is the time of the compile that expands it" in done.stderr
    assert (tmp_path / "t.o").exists()


@pytest.mark.parametrize("flags", [["-O2"], ["-O2", "-g"]])
def test_a_compile_whose_assembly_reads_a_file_runs_here(
    cc_node: NodeProcess, tmp_path: Path, flags: list[str]
) -> None:
    """.incbin of an absolute path: another node would read its own file of that name, and
    the cache could not tell the file's versions apart. Compiled here, uncached."""
    blob = tmp_path / "blob.bin"
    blob.write_bytes(b"one")
    (tmp_path / "t.c").write_text(f'__asm__(".section .rodata\\n.incbin \\"{blob}\\"\\n.text");\nint x;\n')
    for content in (b"one", b"two"):
        blob.write_bytes(content)
        done = subprocess.run(
            [*MESH, "cc", "-v", "gcc", *flags, "-c", "t.c", "-o", "t.o"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env=node_env(cc_node.home),
        )
        assert done.returncode == 0, done.stderr
        assert done.stderr == "mesh cc: here: t.c: the assembler may read a file (.incbin)\n", done.stderr
        assert content in (tmp_path / "t.o").read_bytes()


def test_undef_runs_here_where_its_compile_fails_as_gcc_s_does(cc_node: NodeProcess, tmp_path: Path) -> None:
    """-undef leaves gcc's own macros undefined; sent unexpanded, a compile on a node would
    predefine them and succeed where the local compile fails."""
    (tmp_path / "u.c").write_text("int v = __GNUC__;\n")
    local = subprocess.run(["gcc", "-undef", "-c", "u.c", "-o", "l.o"], cwd=tmp_path, capture_output=True, text=True)
    done = subprocess.run(
        [*MESH, "cc", "gcc", "-undef", "-c", "u.c", "-o", "m.o"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=node_env(cc_node.home),
    )
    assert local.returncode == done.returncode == 1
    assert done.stderr == local.stderr
    assert not (tmp_path / "m.o").exists()


@pytest.mark.parametrize("charset", ["iso-8859-1", "UTF-8"])
def test_a_source_in_another_charset_gives_the_local_object(cc_node: NodeProcess, tmp_path: Path, charset: str) -> None:
    """The preprocessing converts the source to UTF-8: sent with -finput-charset=iso-8859-1,
    the compile there would convert it a second time."""
    text = 'const char *s = "caf\u00e9";\n'.encode("latin-1" if charset != "UTF-8" else "utf-8")
    (tmp_path / "s.c").write_bytes(text)
    args = [f"-finput-charset={charset}", "-O2", "-c", "s.c"]
    subprocess.run(["gcc", *args, "-o", "l.o"], cwd=tmp_path, check=True)
    done = subprocess.run(
        [*MESH, "cc", "-v", "gcc", *args, "-o", "m.o"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=node_env(cc_node.home),
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "m.o").read_bytes() == (tmp_path / "l.o").read_bytes()
    assert ("here:" in done.stderr) == (charset != "UTF-8"), done.stderr


@pytest.mark.skipif(shutil.which("clang") is None, reason="clang is not installed (make test installs it)")
def test_a_clang_build_is_sent_rewritten_and_a_debug_build_is_kept(cc_node: NodeProcess, tmp_path: Path) -> None:
    """clang has no -fdirectives-only: its -frewrite-includes text (headers included, macros
    as written) is sent with the command line's -D/-U. With -g, clang writes each file's MD5
    into the line table, so a debug build is compiled here and kept."""
    root = make_project(tmp_path / "p")
    for cflags, where in (("-O2 -Wall", "ran on node"), ("-O0 -g", "compiled here; kept in the mesh's cache")):
        subprocess.run(["make", "-s", "clean"], cwd=root, check=True)
        subprocess.run(["make", "-s", "-j2", "CC=clang", f"CFLAGS={cflags}"], cwd=root, check=True)
        local = build_files(root)
        subprocess.run(["make", "-s", "clean"], cwd=root, check=True)
        subprocess.run(["mkdir", "-p", "build"], cwd=root, check=True)
        settled(root)
        cc = " ".join([*MESH, "cc", "-v", "clang"])
        done = subprocess.run(
            ["make", "-j2", f"CC={cc}", f"CFLAGS={cflags}"],
            cwd=root,
            env=node_env(cc_node.home),
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr
        assert done.stderr.count(where) == 4, done.stderr
        assert build_files(root) == local, cflags


def test_with_no_node_the_build_finishes_here_and_fallback_0_makes_it_an_error(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p")
    nowhere = str(tmp_path / "no-node")
    done = make(root, nowhere)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("no node's compile service") == 4, done.stderr
    meshed = build_files(root)
    subprocess.run(["make", "-s", "clean"], cwd=root, check=True)
    subprocess.run(["make", "-s", "-j2"], cwd=root, check=True)
    assert build_files(root) == meshed
    subprocess.run(["make", "-s", "clean"], cwd=root, check=True)
    # A TMPDIR that is not there (gcc goes on without it) does not stop the wrapper either.
    odd = make(root, nowhere, TMPDIR=str(tmp_path / "no-such-tmp"))
    assert odd.returncode == 0 and "Traceback" not in odd.stderr, odd.stderr
    subprocess.run(["make", "-s", "clean"], cwd=root, check=True)
    failed = make(root, nowhere, MESH_CC_FALLBACK="0")
    assert failed.returncode != 0
    assert "mesh cc: error: src/" in failed.stderr and "MESH_CC_FALLBACK=0" in failed.stderr


def test_links_named_after_compilers_run_mesh_cc_for_a_build_that_calls_gcc_by_name(
    cc_node: NodeProcess, tmp_path: Path
) -> None:
    links = tmp_path / "bin"
    made = subprocess.run([*MESH, "cc", "--links", str(links)], capture_output=True, text=True, check=True)
    assert "gcc" in made.stdout
    assert {"cc", "gcc", "g++", "c++", "clang", "clang++"} <= set(os.listdir(links))
    root = make_project(tmp_path / "p")
    env = node_env(cc_node.home, PATH=f"{links}:{os.environ['PATH']}", MESH_CC_VERBOSE="1")
    done = subprocess.run(["make", "-j2", "CC=gcc", "CFLAGS=-O1"], cwd=root, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("mesh cc: src/") == 4, done.stderr  # each compiled on the mesh (or its cache)
    meshed = build_files(root)
    subprocess.run(["make", "-s", "clean"], cwd=root, check=True)
    subprocess.run(["make", "-s", "-j2", "CFLAGS=-O1"], cwd=root, check=True)
    assert build_files(root) == meshed


def test_the_socket_lets_only_the_node_s_user_in(cc_node: NodeProcess) -> None:
    sock = Path(cc_node.home) / "cc.sock"
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    assert stat.S_IMODE(Path(cc_node.home).stat().st_mode) == 0o700
    if os.geteuid() != 0:
        pytest.skip("another user's refusal needs root to become that user (the modes above hold)")
    connect = f"import socket; s = socket.socket(socket.AF_UNIX); s.connect({str(sock)!r})"
    done = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", connect],
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0 and "PermissionError" in done.stderr, done.stderr


def test_a_compile_the_mesh_cannot_run_is_compiled_here(cc_node: NodeProcess, tmp_path: Path) -> None:
    """A compiler in root's 0700 test directory: the task's uid cannot run it, a failure of
    the mesh, not of the code (the runner's error): the wrapper compiles here; with
    MESH_CC_FALLBACK=0 it says so and fails."""
    if os.geteuid() != 0:
        pytest.skip("needs a root node, whose tasks run as task uids")
    (tmp_path / "bin").mkdir()
    private = tmp_path / "bin" / "gcc"
    private.symlink_to(os.path.realpath(shutil.which("gcc") or "gcc"))
    (tmp_path / "a.c").write_text("int a(void) { return 1; }\n")
    argv = [*MESH, "cc", "-v", str(private), "-c", "-O1", "a.c", "-o", "a.o"]
    done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, env=node_env(cc_node.home))
    assert done.returncode == 0, done.stderr
    assert f"mesh cc: here: a.c: cannot execute '{private}': Permission denied" in done.stderr, done.stderr
    meshed = (tmp_path / "a.o").read_bytes()
    subprocess.run(["gcc", "-c", "-O1", "a.c", "-o", "a.o"], cwd=tmp_path, check=True)
    assert (tmp_path / "a.o").read_bytes() == meshed
    strict = subprocess.run(
        argv, cwd=tmp_path, capture_output=True, text=True, env=node_env(cc_node.home, MESH_CC_FALLBACK="0")
    )
    assert strict.returncode == 1 and "MESH_CC_FALLBACK=0" in strict.stderr, strict.stderr


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is not installed")
def test_a_cxx_compile_with_g_gives_the_local_object(cc_node: NodeProcess, tmp_path: Path) -> None:
    (tmp_path / "inc").mkdir()
    (tmp_path / "inc" / "shape.hh").write_text(
        "#pragma once\n#include <string>\n#define AREA(w, h) ((w) * (h))\n"
        "struct Shape { virtual ~Shape() = default; virtual int area() const = 0; };\n"
    )
    (tmp_path / "box.cc").write_text(
        '#include "shape.hh"\nnamespace { struct Box : Shape { int w = 2, h = 3; int area() const override {\n'
        "  return AREA(w, h); } }; }\nstd::string describe() { Box b; return std::to_string(b.area()) + __FILE__; }\n"
    )
    args = ["-c", "-g", "-O0", "-Iinc", "-MMD", "box.cc", "-o", "box.o"]
    subprocess.run(["g++", *args], cwd=tmp_path, check=True)
    local = {name: (tmp_path / name).read_bytes() for name in ("box.o", "box.d")}
    done = subprocess.run(
        [*MESH, "cc", "-v", "g++", *args], cwd=tmp_path, capture_output=True, text=True, env=node_env(cc_node.home)
    )
    assert done.returncode == 0, done.stderr
    assert "ran on node" in done.stderr, done.stderr
    assert {name: (tmp_path / name).read_bytes() for name in local} == local


def test_an_object_that_cannot_be_written_fails_as_gcc_fails(cc_node: NodeProcess, tmp_path: Path) -> None:
    (tmp_path / "a.c").write_text("int a(void) { return 1; }\n")
    args = ["-c", "a.c", "-o", "no/such/dir/a.o"]
    local = subprocess.run(["gcc", *args], cwd=tmp_path, capture_output=True)
    meshed = subprocess.run([*MESH, "cc", "gcc", *args], cwd=tmp_path, capture_output=True, env=node_env(cc_node.home))
    assert local.returncode != 0
    assert (meshed.returncode, meshed.stdout, meshed.stderr) == (local.returncode, local.stdout, local.stderr)


#: What may stand at the object's path before the compile: gcc's assembler (BFD) unlinks a
#: regular file or symlink whose target is not empty and makes a new file; it writes into
#: anything else (an empty file, through a symlink to one, a device, a dangling symlink).
OBJECT_PATHS = ["nothing", "a file", "a hard link", "a symlink", "an empty file", "a symlink to an empty file",
                "a dangling symlink", "a device"]  # fmt: skip


@pytest.mark.parametrize("there", OBJECT_PATHS)
def test_an_object_is_left_as_gcc_leaves_it_whatever_stood_at_its_path(
    cc_node: NodeProcess, tmp_path: Path, there: str
) -> None:
    """Whatever stands at ``-o``'s path, mesh cc leaves what gcc leaves: the same kinds of
    file, contents, modes and links (a device stays a device: a root build's ``-o
    /dev/null`` must not put a file in place of /dev/null)."""
    if there == "a device" and os.geteuid() != 0:
        pytest.skip("making a device node needs root (CI runs as root)")
    (tmp_path / "a.c").write_text("int a(void) { return 1; }\n")
    names = ["a.o", "real", "other.o", "missing"]

    def arrange() -> None:
        for name in names:
            path = tmp_path / name
            if path.is_symlink() or path.is_file() or path.is_char_device():
                path.unlink()
        (tmp_path / "real").write_bytes(b"" if "empty" in there else b"old object")
        (tmp_path / "real").chmod(0o600)
        if there in ("a file", "an empty file"):
            os.rename(tmp_path / "real", tmp_path / "a.o")
        elif there == "a hard link":
            os.link(tmp_path / "real", tmp_path / "other.o")
            os.rename(tmp_path / "real", tmp_path / "a.o")
        elif "symlink" in there:
            (tmp_path / "a.o").symlink_to("real" if there != "a dangling symlink" else "missing")
        elif there == "a device":
            os.mknod(tmp_path / "a.o", 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # as /dev/null

    def outcome() -> dict[str, tuple[object, ...]]:
        seen: dict[str, tuple[object, ...]] = {}
        for name in sorted(os.listdir(tmp_path)):
            info = os.lstat(tmp_path / name)
            kind = stat.S_IFMT(info.st_mode)
            body = (
                (tmp_path / name).read_bytes()
                if stat.S_ISREG(info.st_mode)
                else os.readlink(tmp_path / name)
                if stat.S_ISLNK(info.st_mode)
                else None
            )
            seen[name] = (kind, stat.S_IMODE(info.st_mode), info.st_nlink, body)
        return seen

    args = ["-c", "a.c", "-o", "a.o"]
    arrange()
    subprocess.run(["gcc", *args], cwd=tmp_path, check=True)
    local = outcome()
    arrange()
    done = subprocess.run(
        [*MESH, "cc", "-v", "gcc", *args], cwd=tmp_path, capture_output=True, text=True, env=node_env(cc_node.home)
    )
    assert done.returncode == 0, done.stderr
    assert outcome() == local, done.stderr
    if there in ("nothing", "a file", "a hard link", "a symlink"):  # what gcc replaces: sent
        assert "ran on node" in done.stderr or "from the action cache" in done.stderr, done.stderr
    else:
        assert done.stderr.startswith("mesh cc: here: a.o: "), done.stderr


def test_stats_count_what_became_of_every_call_and_zero_starts_again(cc_node: NodeProcess, tmp_path: Path) -> None:
    """``mesh cc --stats`` after a build, its rebuild, a link, a kept -O2 -g compile (a miss,
    then a hit), a compile with a warning and a file that is not C: each call counted once,
    in its place; ``--zero-stats`` starts again. (ccache's -s and -z.)"""

    def mesh_cc(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*MESH, "cc", *args], cwd=root, capture_output=True, text=True, env=node_env(cc_node.home), timeout=60
        )

    root = make_project(tmp_path / "p")
    zeroed = mesh_cc("--zero-stats")
    assert zeroed.returncode == 0 and "statistics zeroed" in zeroed.stdout, zeroed.stderr
    assert make(root, cc_node.home).returncode == 0
    subprocess.run(["make", "-s", "clean"], cwd=root, check=True)
    assert make(root, cc_node.home).returncode == 0
    objects = [f"build/{name}.o" for name in ("main", "util", "list", "extra")]
    assert mesh_cc("gcc", *objects, "-o", "prog").returncode == 0
    settled(root)
    for _ in range(2):
        assert mesh_cc("gcc", "-O2", "-g", "-Iinclude", "-c", "src/util.c", "-o", "util2.o").returncode == 0
    (root / "warn.c").write_text("int f(int x) { int unused; return x; }\n")
    assert "unused" in mesh_cc("gcc", "-Wall", "-c", "warn.c").stderr
    (root / "a.s").write_text(".text\n")
    assert mesh_cc("gcc", "-c", "a.s").returncode == 0

    since, counts = stats.read(str(Path(cc_node.home) / "cc-stats"))
    node = httpx.get(cc_node.url + "/status", timeout=10, trust_env=False).json()["node"]
    assert since > 0
    assert counts == {
        ("mesh", f"compiled on node {node}"): 4,
        ("mesh", "from the mesh's cache"): 4,
        ("here", "not a compile to an object (no -c): linking, or another step"): 1,
        ("kept", "compiled here, kept"): 1,
        ("kept", "from the mesh's cache"): 1,
        ("said", "the compile had something to say"): 1,
        ("here", "*.s: not a C or C++ source"): 1,
    }
    shown = mesh_cc("-s")
    assert shown.returncode == 0, shown.stderr
    assert "       8   61.5  compiles the mesh answered\n" in shown.stdout, shown.stdout
    assert f"       4           compiled on node {node}\n" in shown.stdout, shown.stdout
    assert "13 calls in all" in shown.stdout
    # The node shows the totals by section, in /status and to Prometheus.
    assert httpx.get(cc_node.url + "/status", timeout=10, trust_env=False).json()["cc"]["calls"] == {
        "mesh": 8,
        "here": 2,
        "kept": 2,
        "said": 1,
    }
    metrics = httpx.get(cc_node.url + "/metrics", timeout=10, trust_env=False).text
    assert 'mesh_cc_calls{outcome="mesh"} 8.0' in metrics and 'mesh_cc_calls{outcome="fallback"} 0.0' in metrics
    assert mesh_cc("-z").returncode == 0
    assert stats.read(str(Path(cc_node.home) / "cc-stats"))[1] == {}
    usage = mesh_cc("--stats", "extra")
    assert usage.returncode == 2 and "usage: mesh cc" in usage.stderr


@pytest.mark.skipif(shutil.which("clang") is None, reason="needs clang (make test installs it)")
def test_clang_s_override_options_in_the_environment_give_the_local_object(
    cc_node: NodeProcess, tmp_path: Path
) -> None:
    """CCC_OVERRIDE_OPTIONS edits clang's command line (``+-O2`` adds -O2): a node's clang
    never sees it, so such a compile runs here, at once, and gives the local object. (It
    ran here before only because clang's "### Adding argument" lines on stderr made the
    preprocessing noisy.)"""
    (tmp_path / "f.c").write_text("int f(int x) { int s = 0; for (int i = 0; i < x; i++) s += i * i; return s; }\n")
    args = ["-c", "-O0", "f.c", "-o", "f.o"]
    env = node_env(cc_node.home, CCC_OVERRIDE_OPTIONS="+-O2")
    said = subprocess.run(["clang", *args], cwd=tmp_path, check=True, env=env, capture_output=True, text=True).stderr
    local = (tmp_path / "f.o").read_bytes()
    subprocess.run(["clang", *args], cwd=tmp_path, check=True)
    assert (tmp_path / "f.o").read_bytes() != local  # the variable changes the object
    done = subprocess.run([*MESH, "cc", "-v", "clang", *args], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "f.o").read_bytes() == local, done.stderr
    assert done.stderr == f"mesh cc: here: CCC_OVERRIDE_OPTIONS is set\n{said}"  # and clang's own "###" lines


LOOP = "int f(int x) { int s = 0; for (int i = 0; i < x; i++) s += i * i; return s; }\nint h(int *p) { return p[1]; }\n"


def test_a_compile_that_writes_or_reads_a_file_of_its_own_runs_here(
    cc_node: NodeProcess, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """gcc's -fopt-info-all=FILE writes its notes here, as a local compile does; clang's
    -ftime-trace writes its trace beside the object; clang's -fsanitize-ignorelist=FILE
    reads a list the text does not hold, and editing the list changes the object here.
    Sent, the list (at a path every node's task can read) was read there, and after an
    edit the same text was a cache hit on the old object."""
    (tmp_path / "f.c").write_text(LOOP)
    shared = Path(tempfile.mkdtemp(prefix="mesh-test-cc-list-", dir="/var/tmp"))
    request.addfinalizer(lambda: shutil.rmtree(shared))
    shared.chmod(0o755)
    ignore = shared / "ignore.txt"
    ignore.write_text("fun:nothing\n")
    ignore.chmod(0o644)
    cases: list[tuple[list[str], str | None]] = [(["gcc", "-O2", "-fopt-info-all=opt.txt"], "opt.txt")]
    if shutil.which("clang") is not None:
        cases += [
            (["clang", "-O1", "-ftime-trace"], "f.json"),
            (["clang", "-O1", "-fsanitize=address", f"-fsanitize-ignorelist={ignore}"], None),
        ]
    for command, written in cases:
        args = [*command[1:], "-c", "f.c", "-o", "f.o"]
        subprocess.run([command[0], *args], cwd=tmp_path, check=True)
        local = (tmp_path / "f.o").read_bytes()
        local_written = (tmp_path / written).read_bytes() if written else None
        for leftover in ("f.o", written):
            if leftover:
                (tmp_path / leftover).unlink()
        done = subprocess.run(
            [*MESH, "cc", "-v", *command[:1], *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env=node_env(cc_node.home),
        )
        assert done.returncode == 0, done.stderr
        assert done.stderr.startswith(f"mesh cc: here: {command[-1]}: "), done.stderr
        if written == "opt.txt":
            assert (tmp_path / written).read_bytes() == local_written
            assert (tmp_path / "f.o").read_bytes() == local
        elif written is not None:
            assert (tmp_path / written).stat().st_size > 0  # a trace: its times are this run's
        else:
            assert (tmp_path / "f.o").read_bytes() == local
            ignore.write_text("fun:h\n")
            subprocess.run([command[0], *args], cwd=tmp_path, check=True)
            edited = (tmp_path / "f.o").read_bytes()
            assert edited != local
            subprocess.run([*MESH, "cc", *command[:1], *args], cwd=tmp_path, check=True, env=node_env(cc_node.home))
            assert (tmp_path / "f.o").read_bytes() == edited


#: A CMake project with a separate build directory (CMake names sources by absolute paths),
#: a static library, C and C++, and compile definitions.
CMAKE_PROJECT = {
    "CMakeLists.txt": "cmake_minimum_required(VERSION 3.13)\nproject(demo C CXX)\n"
    "add_library(util STATIC src/lib/util.c src/lib/list.c)\n"
    "target_include_directories(util PUBLIC include)\n"
    "target_compile_definitions(util PRIVATE VERSION=3)\n"
    "add_executable(app src/main.c src/extra.cpp)\ntarget_link_libraries(app util)\n",
    "include/util.h": "#pragma once\nint util(int);\nint length(int);\n",
    "src/lib/util.c": '#include "util.h"\nconst char *where = __FILE__;\n'
    "int util(int x) { return x * VERSION + __LINE__; }\n",
    "src/lib/list.c": '#include "util.h"\n'
    "int length(int n) { int k = 0; for (int i = 0; i < n; i++) k += i; return k; }\n",
    "src/main.c": '#include <stdio.h>\n#include "util.h"\nint extra(int);\n'
    'int main(void) { printf("%d\\n", util(length(3)) + extra(2)); return 0; }\n',
    "src/extra.cpp": "#include <vector>\n"
    'extern "C" int extra(int n) { std::vector<int> v(n, 2); int s = 0; for (int x : v) s += x; return s; }\n',
}


@pytest.mark.skipif(
    shutil.which("cmake") is None or shutil.which("ninja") is None or shutil.which("g++") is None,
    reason="needs cmake, ninja and g++ (make test installs them)",
)
@pytest.mark.parametrize(("build_type", "sent"), [("Debug", 4), ("Release", 4), ("RelWithDebInfo", 0)])
def test_a_cmake_ninja_build_with_mesh_cc_as_its_compiler_launcher_gives_the_local_build(
    cc_node: NodeProcess, tmp_path: Path, build_type: str, sent: int
) -> None:
    """CMake's compiler launcher (as for ccache) with Ninja: every object and the linked
    program are the local build's, byte for byte; Debug and Release compiles are sent,
    RelWithDebInfo's (-O2 -g) run here and are kept."""
    root = tmp_path / "project"
    for name, text in CMAKE_PROJECT.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    build = root / "build"

    def built(*launcher: str) -> dict[str, bytes]:
        shutil.rmtree(build, ignore_errors=True)
        configure = ["cmake", "-S", str(root), "-B", str(build), "-G", "Ninja", f"-DCMAKE_BUILD_TYPE={build_type}"]
        for language in ("C", "CXX") if launcher else ():
            configure.append(f"-DCMAKE_{language}_COMPILER_LAUNCHER={';'.join(launcher)}")
        subprocess.run(configure, check=True, capture_output=True, timeout=120)
        done = subprocess.run(
            ["ninja", "-C", str(build)], capture_output=True, text=True, env=node_env(cc_node.home), timeout=120
        )
        assert done.returncode == 0, done.stdout + done.stderr
        outcomes.append(done.stdout)
        files = [*build.rglob("*.o"), build / "app"]
        return {str(path.relative_to(build)): path.read_bytes() for path in files}

    outcomes: list[str] = []
    local = built()
    assert len(local) == 5
    assert built(*MESH, "cc", "-v") == local
    said = outcomes[-1]
    assert said.count("ran on node") == sent, said
    assert said.count("kept in the mesh's cache") == 4 - sent, said


def test_a_source_whose_name_is_not_utf8_is_compiled_here(cc_node: NodeProcess, tmp_path: Path) -> None:
    """A file name in Latin-1 cannot go into the mesh's jobs (their texts are UTF-8): it
    compiles here, says so, and gives the local object (it said a CBOR error before)."""
    name = os.fsdecode(b"lat\xe9.c")
    (tmp_path / name).write_text("int g(void) { return 2; }\n")
    for flags in (["-O2"], ["-O2", "-g"]):
        args = [*flags, "-c", name, "-o", "g.o"]
        subprocess.run(["gcc", *args], cwd=tmp_path, check=True)
        local = (tmp_path / "g.o").read_bytes()
        (tmp_path / "g.o").unlink()
        done = subprocess.run(
            [*MESH, "cc", "-v", "gcc", *args], cwd=tmp_path, capture_output=True, env=node_env(cc_node.home)
        )
        assert done.returncode == 0, done.stderr
        assert b"a path or flag that is not UTF-8" in done.stderr, done.stderr
        assert (tmp_path / "g.o").read_bytes() == local
