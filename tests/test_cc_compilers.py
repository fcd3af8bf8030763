"""The compilers a node advertises for mesh cc, and placement by them (mesh.cc.compilers)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from mesh.cc.compilers import PREFIX, Compilers
from mesh.sched.placement import NodeView, Unplaceable, rank

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="the compiler tests need gcc")


def test_a_scan_advertises_the_usual_compilers_by_path_with_a_fingerprint() -> None:
    compilers = Compilers()
    compilers.scan()
    caps = compilers.capabilities()
    gcc = os.path.realpath(shutil.which("gcc") or "")
    assert PREFIX + "/usr/bin/gcc" in caps
    assert all(key.startswith(PREFIX) and len(value) == 32 for key, value in caps.items())
    assert caps[PREFIX + "/usr/bin/gcc"] == compilers.fingerprint(gcc)  # a link and its target are one compiler


def test_a_fingerprint_is_the_same_each_time_and_another_binary_has_another(tmp_path: Path) -> None:
    compilers = Compilers()
    gcc = os.path.realpath(shutil.which("gcc") or "")
    assert Compilers().fingerprint(gcc) == compilers.fingerprint(gcc) == compilers.fingerprint(gcc)
    other = tmp_path / "cc"
    other.write_text("#!/bin/sh\nexit 0\n")
    other.chmod(0o755)
    assert compilers.fingerprint(str(other)) not in (None, compilers.fingerprint(gcc))
    assert compilers.fingerprint(str(tmp_path / "missing")) is None
    assert compilers.proper_of(gcc, "c") is not None and compilers.proper_of(gcc, "c").endswith("cc1")  # type: ignore[union-attr]


def test_placement_leaves_out_nodes_whose_compiler_differs_or_is_missing() -> None:
    compilers = Compilers()
    found = compilers.requirement("/usr/bin/gcc", "c")
    assert found is not None
    requirement, proper = found
    assert proper is not None and proper.endswith("/cc1")
    key, fingerprint = next(iter(requirement.items()))
    nodes = [
        NodeView(node="same", capabilities={key: fingerprint}, slots=2, busy=2),
        NodeView(node="other", capabilities={key: "0" * 32}, slots=2),
        NodeView(node="none", capabilities={}, slots=2),
    ]
    assert [c.node for c in rank(requirement, nodes)] == ["same"]
    with pytest.raises(Unplaceable, match="cc:/usr/bin/gcc"):
        rank(requirement, nodes[1:])


#: A driver that names its compiler proper and its assembler as gcc does: an absolute file
#: of its own program directory, else the bare name, which the compile's PATH resolves.
DRIVER = """#!/bin/sh
here=${0%/*}
case "$1" in
  -print-prog-name=cc1) echo "$here/cc1" ;;
  -print-prog-name=cc1plus) if [ -x "$here/cc1plus" ]; then echo "$here/cc1plus"; else echo cc1plus; fi ;;
  -print-prog-name=as) if [ -x "$here/as" ]; then echo "$here/as"; else echo as; fi ;;
esac
"""


def toolchain(
    where: Path, assembler: str | None, cc1: str = "#!/bin/sh\n# cc1 12.2\n", cc1plus: str | None = None
) -> str:
    """A toolchain directory: the driver (the same file in each), cc1, and ``as`` and
    ``cc1plus`` when given."""
    where.mkdir(parents=True)
    files = {"gcc": DRIVER, "cc1": cc1, **({"as": assembler} if assembler is not None else {})}
    files.update({"cc1plus": cc1plus} if cc1plus is not None else {})
    for name, text in files.items():
        (where / name).write_text(text)
        (where / name).chmod(0o755)
    return str(where / "gcc")


def test_toolchains_that_differ_only_in_their_assembler_have_other_fingerprints(tmp_path: Path) -> None:
    compilers = Compilers()
    one = toolchain(tmp_path / "one", "#!/bin/sh\n# as 2.40\n")
    same = toolchain(tmp_path / "same", "#!/bin/sh\n# as 2.40\n")
    other = toolchain(tmp_path / "other", "#!/bin/sh\n# as 2.41\n")
    assert compilers.fingerprint(one) == compilers.fingerprint(same) == Compilers().fingerprint(one)
    assert compilers.fingerprint(other) not in (None, compilers.fingerprint(one))
    (tmp_path / "one" / "as").write_text("#!/bin/sh\n# as 2.41, installed over 2.40\n")
    assert compilers.fingerprint(one) not in (None, compilers.fingerprint(same))


def test_toolchains_that_differ_only_in_their_cc1plus_have_other_fingerprints(tmp_path: Path) -> None:
    """One fingerprint places C and C++ compiles alike: a node whose cc1 is the same but whose
    cc1plus differs (or is missing) is not the same compiler for a C++ compile."""
    assembler = "#!/bin/sh\n# as 2.40\n"
    one = toolchain(tmp_path / "one", assembler, cc1plus="#!/bin/sh\n# cc1plus 12.2\n")
    same = toolchain(tmp_path / "same", assembler, cc1plus="#!/bin/sh\n# cc1plus 12.2\n")
    other = toolchain(tmp_path / "other", assembler, cc1plus="#!/bin/sh\n# cc1plus 12.3\n")
    without = toolchain(tmp_path / "without", assembler)
    compilers = Compilers()
    found = [compilers.fingerprint(driver) for driver in (one, same, other, without)]
    assert None not in found
    assert found[0] == found[1]
    assert len({found[0], found[2], found[3]}) == 3
    assert compilers.requirement(one, "c++") == ({PREFIX + one: found[0]}, str(tmp_path / "one" / "cc1plus"))


def test_an_assembler_named_without_a_directory_is_the_one_on_the_compile_s_path(tmp_path: Path) -> None:
    driver = toolchain(tmp_path / "tc", None)
    for name, text in {"old": "#!/bin/sh\n# as 2.40\n", "new": "#!/bin/sh\n# as 2.41\n"}.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "as").write_text(text)
        (tmp_path / name / "as").chmod(0o755)
    (tmp_path / "none").mkdir()
    found = {name: Compilers(path=f"{tmp_path / name}:/usr/bin").fingerprint(driver) for name in ("old", "new")}
    again = Compilers(path=f"{tmp_path / 'old'}:{tmp_path / 'new'}").fingerprint(driver)
    missing = Compilers(path=str(tmp_path / "none")).fingerprint(driver)  # "missing", not a crash
    assert None not in (found["old"], found["new"], missing)
    assert len({found["old"], found["new"], missing}) == 3
    assert again == found["old"]  # the first on PATH, as execvp takes it


def build(where: Path, *args: str) -> None:
    subprocess.run(["gcc", *args], cwd=where, check=True, capture_output=True)


def test_a_shared_library_of_the_compiler_proper_joins_the_fingerprint(tmp_path: Path) -> None:
    """A real cc1 (an ELF program) loading a real libfold.so through its RUNPATH: the
    library changed (constant folding in libmpfr, say) changes the fingerprint, and the
    library gone is "missing", not a crash."""
    tc = tmp_path / "tc"
    driver = toolchain(tc, "#!/bin/sh\n# as 2.40\n")
    (tc / "fold.c").write_text("int fold(int x) { return x + 1; }\n")
    (tc / "main.c").write_text("int fold(int);\nint main(void) { return fold(41); }\n")
    build(tc, "-shared", "-fPIC", "fold.c", "-o", "libfold.so")
    build(tc, "main.c", "-L.", "-lfold", f"-Wl,-rpath,{tc}", "-o", "cc1")
    assert subprocess.run([str(tc / "cc1")]).returncode == 42  # it does load the library
    compilers = Compilers()
    first = compilers.fingerprint(driver)
    assert compilers.fingerprint(driver) == first
    (tc / "fold.c").write_text("int fold(int x) { return x + 2; }\n")
    build(tc, "-shared", "-fPIC", "fold.c", "-o", "libfold.so")
    assert subprocess.run([str(tc / "cc1")]).returncode == 43
    changed = compilers.fingerprint(driver)
    assert changed not in (None, first)
    (tc / "libfold.so").unlink()
    assert compilers.fingerprint(driver) not in (None, first, changed)
