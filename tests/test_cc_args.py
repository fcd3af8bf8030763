"""mesh cc's classification of compiler commands, its frames, and its dependency files
against gcc's own (mesh.cc.args, mesh.cc.frames)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh.cc import frames
from mesh.cc.args import (
    DEBUG_CLANG,
    DEBUG_MACROS,
    SANITIZE_ADDRESS,
    SANITIZE_THREAD,
    UNSAFE_ENV,
    Plan,
    classify,
    debug_info,
    optimises,
    sanitizers,
)
from mesh.cc.args import DEBUG_OPTIMISED as OPTIMISED_HERE
from mesh.cc.wrapper import driver_name


def plan(*args: str, compiler: str = "gcc", env: dict[str, str] | None = None) -> Plan:
    got = classify(compiler, list(args), env or {})
    assert isinstance(got, Plan), got
    return got


def why(*args: str, env: dict[str, str] | None = None) -> str:
    got = classify("gcc", list(args), env or {})
    assert isinstance(got, str), got
    return got


def test_a_single_source_compile_to_an_object_is_distributed_and_split_into_two_command_lines() -> None:
    p = plan(
        "-c", "-Iinc", "-DX=1", "-include", "cfg.h", "-O0", "-g", "-Wall", "-std=c11", "-fPIC", "src/a.c", "-o", "o/a.o"
    )
    assert (p.source, p.object, p.language) == ("src/a.c", "o/a.o", "c")
    assert p.preprocess == [
        "-Iinc",
        "-DX=1",
        "-include",
        "cfg.h",
        "-O0",
        "-g",
        "-Wall",
        "-std=c11",
        "-fPIC",
        "-fdirectives-only",
        "-E",
        "src/a.c",
    ]
    assert p.compile == ["-O0", "-g", "-Wall", "-std=c11", "-fPIC"]  # the preprocessor's flags stay here


def test_without_o_the_object_is_the_source_s_base_name_in_the_working_directory() -> None:
    assert plan("-c", "src/a.c").object == "a.o"
    assert plan("-c", "src/a.c", "-obuild/a.o").object == "build/a.o"


@pytest.mark.parametrize(
    ("compiler", "source", "language"),
    [
        ("gcc", "a.c", "c"),
        ("g++", "a.cc", "c++"),
        ("gcc", "a.cpp", "c++"),
        ("g++", "a.c", "c++"),
        ("c++", "a.c", "c++"),
    ],
)
def test_the_language_follows_the_suffix_and_a_cxx_driver(compiler: str, source: str, language: str) -> None:
    assert plan("-c", source, compiler=compiler).language == language


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["a.c", "-o", "a"], "no -c"),
        (["a.o", "b.o", "-o", "prog"], "no -c"),
        (["-E", "a.c"], "-E preprocesses only"),
        (["-M", "a.c"], "-M lists dependencies only"),
        (["-MM", "-c", "a.c"], "-MM lists dependencies only"),
        (["-S", "a.c"], "-S makes assembly"),
        (["-c", "a.c", "b.c"], "2 sources in one command"),
        (["-c"], "no source file"),
        (["-c", "a.s"], "not a C or C++ source"),
        (["-c", "-x", "c", "a.txt"], "-x"),
        (["-c", "a.c", "--frobnicate"], "a flag mesh cc does not know"),
        (["-c", "a.c", "-march=native"], "this machine's processor"),
        (["-c", "a.c", "-fprofile-generate"], "profiling"),
        (["-c", "a.c", "--coverage"], "--coverage"),
        (["-c", "a.c", "-save-temps"], "-save-temps"),
        (["-c", "a.c", "-gsplit-dwarf"], ".dwo"),
        (["-c", "a.c", "-flto"], "LTO"),
        (["-c", "a.c", "-frecord-gcc-switches"], "command line"),
        (["-c", "a.c", "-B/opt/x"], "-B"),
        (["-c", "@flags"], "response file"),
        (["-c", "a.c", "-Wa,-adhln=a.lst"], "assembler option"),
        (["-c", "a.c", "-o"], "-o without a file"),
        (["-c", "a.c", "-o", "-"], "stdout"),
        (["-v", "-c", "a.c"], "-v"),
    ],
)
def test_everything_else_runs_here_with_a_reason(args: list[str], reason: str) -> None:
    assert reason in why(*args)


def test_known_safe_assembler_and_param_flags_go_to_both_runs() -> None:
    p = plan("-c", "a.c", "-Wa,--noexecstack", "--param", "max-inline-insns-single=10")
    assert p.compile == ["-Wa,--noexecstack", "--param", "max-inline-insns-single=10"]


def test_the_dependency_file_s_name_and_target_are_made_explicit_as_gcc_s_driver_derives_them() -> None:
    assert plan("-c", "-MD", "x.c", "-o", "sub/x.o").preprocess == [
        "-MD",
        "-MF",
        "sub/x.d",
        "-MQ",
        "sub/x.o",
        "-fdirectives-only",
        "-E",
        "x.c",
    ]
    assert plan("-c", "-MMD", "src/x.c").preprocess == ["-MMD", "-MF", "x.d", "-fdirectives-only", "-E", "src/x.c"]
    assert plan("-c", "-MD", "-MF", "d/x.dep", "-MT", "t", "x.c", "-o", "x.o").preprocess == [
        "-MD",
        "-MF",
        "d/x.dep",
        "-MT",
        "t",
        "-fdirectives-only",
        "-E",
        "x.c",
    ]


DEP_FLAGS = [
    ["-MD"],
    ["-MMD"],
    ["-MD", "-MP"],
    ["-MMD", "-MF", "deps/x.dep"],
    ["-MD", "-MT", "custom-target"],
    ["-MD", "-MQ", "$(odd) target"],
    ["-MMD", "-MP", "-MF", "deps/y.d", "-MT", "a", "-MT", "b"],
    ["-Wp,-MD,deps/wp.d"],
]


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed")
@pytest.mark.parametrize("flags", DEP_FLAGS, ids=[" ".join(f) for f in DEP_FLAGS])
@pytest.mark.parametrize("output", [None, "sub/x.o", "sub/x"])
def test_the_preprocessing_writes_the_dependency_file_a_local_compile_writes(
    tmp_path: Path, flags: list[str], output: str | None
) -> None:
    for side in ("local", "mesh"):
        work = tmp_path / side
        (work / "inc").mkdir(parents=True)
        (work / "sub").mkdir()
        (work / "deps").mkdir()
        (work / "inc" / "h.h").write_text("#define H 1\n")
        (work / "x.c").write_text('#include "h.h"\n#include <stdio.h>\nint f(void) { return H; }\n')
    args = ["-c", "-Iinc", *flags, "x.c", *(["-o", output] if output else [])]
    subprocess.run(["gcc", *args], cwd=tmp_path / "local", check=True)
    p = plan(*args)
    subprocess.run(["gcc", *p.preprocess], cwd=tmp_path / "mesh", check=True, stdout=subprocess.DEVNULL)
    made = {
        str(path.relative_to(tmp_path / "local")): path.read_bytes()
        for path in (tmp_path / "local").rglob("*")
        if path.suffix in (".d", ".dep")
    }
    assert made, "gcc wrote no dependency file"
    for name, content in made.items():
        assert (tmp_path / "mesh" / name).read_bytes() == content, name


@given(
    st.lists(st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=30), max_size=20),
    st.lists(st.binary(max_size=200), max_size=4),
)
def test_a_frame_reads_back_as_it_was_packed(texts: list[str], blobs: list[bytes]) -> None:
    data = b"".join(frames.pack(texts, blobs))
    at = 0

    def take(n: int) -> bytes:
        nonlocal at
        at += n
        return data[at - n : at]

    assert frames.unpack(take) == (texts, blobs)
    assert at == len(data)


@pytest.mark.parametrize(
    ("data", "message"),
    [(b"XXXX", "does not start with MCC1"), (b"MCC1\x00\x00", "ended early"), (b"MCC1\xff\xff\xff\xff", "items")],
)
def test_a_frame_that_is_not_one_is_refused_saying_why(data: bytes, message: str) -> None:
    at = 0

    def take(n: int) -> bytes:
        nonlocal at
        at += n
        return data[at - n : at]

    with pytest.raises(frames.FrameError, match=message):
        frames.unpack(take)


def test_the_wrapper_imports_neither_trio_nor_httpx_nor_hypercorn_nor_typing() -> None:
    """``mesh cc`` (through ``python -m mesh``, as the ``mesh`` script runs it) loads only
    the standard library's cheapest modules: its start-up is every compile's overhead."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "mesh", "cc", "--help"],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("MESH_")},
        check=True,
    )
    assert "mesh cc" in done.stdout
    loaded = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in done.stderr.splitlines() if "|" in line}
    assert "mesh" in loaded
    assert not loaded & {"trio", "httpx", "hypercorn", "cbor2", "blake3", "typing", "json", "argparse"}, loaded


DEBUG_OPTIMISED = [
    ["-O2", "-g"],
    ["-g", "-O2"],
    ["-O", "-g"],
    ["-Os", "-g3"],
    ["-Og", "-g"],
    ["-O3", "-ggdb"],
    ["-O2", "-gdwarf-4"],
    ["-g0", "-O2", "-g"],
    ["-O2", "-g0", "-gdwarf-5"],
    ["-O0", "-g", "-O1"],
    ["-O2", "-g", "-gno-statement-frontiers"],
    ["-O2", "-gz", "-g"],
    ["-O2", "-gtoggle"],
    ["-O2", "-gbtf"],
    ["-O2", "-gctf", "-g0"],
]
NOT_BOTH = [
    ["-O0", "-g"],
    ["-g"],
    ["-g", "-O0"],
    ["-O2", "-g", "-O0"],
    ["-O2"],
    ["-O2", "-g0"],
    ["-O2", "-g", "-g0"],
    ["-O2", "-ggdb", "-ggdb0"],
    ["-O2", "-g", "-gtoggle"],
    ["-O2", "-gz", "-gstrict-dwarf", "-gdwarf32", "-gno-record-gcc-switches", "-gcolumn-info"],
    ["-O2", "-gvariable-location-views=incompat5"],
    ["-O3", "-ggdb", "-O00"],
]


@pytest.mark.parametrize("flags", DEBUG_OPTIMISED, ids=" ".join)
def test_debug_information_with_optimisation_runs_here_kept_in_the_cache(flags: list[str]) -> None:
    """Preprocessed here all the same (its text makes its key), compiled by the wrapper."""
    got = plan("-c", "a.c", *flags)
    assert got.here and got.preprocess[-3:] == ["-fdirectives-only", "-E", "a.c"]


@pytest.mark.parametrize("flags", NOT_BOTH, ids=" ".join)
def test_debug_information_without_optimisation_or_optimisation_without_it_is_distributed(flags: list[str]) -> None:
    got = plan("-c", "a.c", *flags)
    assert got.compile == flags and not got.here


@pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("readelf") is None, reason="gcc and readelf needed")
@pytest.mark.parametrize("flags", DEBUG_OPTIMISED + NOT_BOTH, ids=" ".join)
def test_whether_a_compile_writes_debug_information_is_what_gcc_does(tmp_path: Path, flags: list[str]) -> None:
    (tmp_path / "a.c").write_text("int twice(int x) { return x * 2; }\n")
    subprocess.run(["gcc", "-c", *flags, "a.c", "-o", "a.o"], cwd=tmp_path, check=True)
    sections = subprocess.run(
        ["readelf", "-S", "--wide", "a.o"], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout
    written = any(name in sections for name in (".debug_info", ".ctf", ".BTF"))
    assert debug_info(flags) == written
    macros = subprocess.run(["gcc", *flags, "-dM", "-E", "a.c"], cwd=tmp_path, capture_output=True, text=True).stdout
    assert optimises(flags) == ("#define __OPTIMIZE__ 1" in macros)


@pytest.mark.parametrize(
    "flag",
    [
        ["-undef"],
        ["-Wp,-undef"],
        ["-Wp,-MD,x.d,-undef"],
        ["-finput-charset=latin1"],
        ["-fmodules-ts"],
        ["-fmodule-mapper=x"],
    ],
)
def test_what_the_text_sent_cannot_carry_runs_here(flag: list[str]) -> None:
    """-undef (the compile there would predefine gcc's macros) and a source charset other than
    UTF-8 (the text sent is converted already)."""
    assert why("-c", "a.c", *flag)


@pytest.mark.parametrize("flag", [["-Wp,-MD,x.d"], ["-finput-charset=UTF-8"], ["-finput-charset=utf8"]])
def test_what_the_text_carries_is_distributed(flag: list[str]) -> None:
    assert plan("-c", "a.c", *flag)


@pytest.mark.parametrize(
    ("flags", "here"),
    [
        (["-O0", "-g3"], DEBUG_MACROS),
        (["-ggdb3"], DEBUG_MACROS),
        (["-g3", "-gdwarf-4"], DEBUG_MACROS),
        (["-O2", "-g3"], OPTIMISED_HERE),
        (["-g3", "-g0"], None),
        (["-g", "-gdwarf-3"], None),
        (["-O0", "-g"], None),
    ],
)
def test_macro_debug_information_runs_here_kept_in_the_cache(flags: list[str], here: str | None) -> None:
    """-g3 records each macro with where it is defined; the text sent moves the command
    line's and gcc's own (12 of 12 brotli objects differed at -O0 -g3)."""
    assert plan("-c", "a.c", *flags).here == here


def test_clang_sends_its_rewritten_text_with_the_command_line_s_macros() -> None:
    got = plan("-O2", "-DA=1", "-U", "B", "-Iinc", "-include", "pre.h", "-c", "a.c", compiler="/usr/bin/clang-14")
    assert got.preprocess[-3:] == ["-E", "-frewrite-includes", "a.c"] and got.rewritten
    assert got.compile == ["-O2", "-DA=1", "-U", "B"]  # -I and -include are in the text
    assert got.here is None
    assert plan("-O0", "-g", "-c", "a.c", compiler="clang").here == DEBUG_CLANG
    assert plan("-imacros", "m.h", "-c", "a.c")  # gcc's text holds what -imacros defines
    assert "imacros" in str(classify("clang++", ["-imacros", "m.h", "-c", "a.cc"], {}))
    assert "-Wp,-DX" in str(classify("clang", ["-Wp,-DX", "-c", "a.c"], {}))


def test_cc_and_cxx_are_known_by_the_driver_they_resolve_to(tmp_path: Path) -> None:
    """Debian's cc and c++ are links (alternatives) to gcc or clang: the wrapper tells them by
    the file they resolve to; a name that says it is taken as it is (ccache's g++ link)."""
    target = tmp_path / "clang++-14"
    target.write_text("")
    (tmp_path / "c++").symlink_to(target)
    assert driver_name("c++", str(tmp_path / "c++")) == str(target)
    assert driver_name("g++", "/usr/lib/ccache/g++") == "g++"
    assert classify(driver_name("c++", str(tmp_path / "c++")), ["-O2", "-c", "a.c"], {}).rewritten  # type: ignore[union-attr]


@pytest.mark.parametrize("name", UNSAFE_ENV)
def test_an_environment_that_changes_the_compile_here_keeps_it_here(name: str) -> None:
    """Variables that change what the driver does here (and a node's would not see) keep
    the compile here; set but empty, they change nothing."""
    args = ["-c", "-O2", "x.c", "-o", "x.o"]
    for driver in ("gcc", "clang"):
        assert classify(driver, args, {name: "1"}) == f"{name} is set"
        assert isinstance(classify(driver, args, {name: ""}), Plan)


@pytest.mark.parametrize(
    ("flag", "reason"),
    [
        ("-fopt-info-all=opt.txt", "optimisation notes go to a file or the terminal here"),
        ("-fopt-info-vec", "optimisation notes go to a file or the terminal here"),
        ("-ftime-trace", "it writes a trace beside the object"),
        ("-ftime-trace=t.json", "it writes a trace beside the object"),
        ("-foptimization-record-file=r.yaml", "it writes a record here"),
        ("-fproc-stat-report=r.csv", "it writes a report here"),
        ("-fdiagnostics-format=sarif-file", "diagnostics are written to a file here"),
        ("-fdiagnostics-add-output=sarif", "diagnostics are written to a file here"),
        ("-fbranch-probabilities", "profiling reads files here"),
        ("-fcs-profile-generate", "profiling writes or reads files here"),
        ("-fmemory-profile-use=m.prof", "profiling writes or reads files here"),
        ("-fsanitize-ignorelist=ignore.txt", "the compile reads a list here"),
        ("-fsanitize-blacklist=ignore.txt", "the compile reads a list here"),
        ("-fsanitize-coverage-allowlist=allow.txt", "the compile reads a list here"),
        ("-fxray-attr-list=attrs.txt", "the compile reads a list here"),
        ("-fbasic-block-sections=list=bbs.txt", "the compile reads a list here"),
        ("-fprebuilt-module-path=mods", "modules read interface files here"),
        ("-fthinlto-index=a.thinlto.bc", "the compile reads a file here"),
        ("-fdeps-file=a.ddi", "it writes a module dependency file here"),
        ("-fpass-plugin=pass.so", "a plugin is a file of this machine"),
        ("-fsyntax-only", "it checks the source and makes no object"),
    ],
)
def test_flags_that_write_or_read_files_of_their_own_run_here(flag: str, reason: str) -> None:
    """A flag whose compile writes a file beside the object (a node's would stay there) or
    reads one the text does not hold (a node's file of that name, and the cache would not
    see it change) keeps the compile here, with either driver."""
    for driver in ("gcc", "clang"):
        assert classify(driver, ["-c", "-O2", flag, "a.c"], {}) == f"{flag}: {reason}"


def test_clang_s_include_pch_is_a_file_of_this_machine() -> None:
    got = classify("clang", ["-c", "-include-pch", "all.pch", "a.c"], {})
    assert got == "-include-pch: a precompiled header is a file of this machine"


def test_the_sanitizers_on_are_the_last_word_of_each_flag() -> None:
    assert sanitizers(["-fsanitize=address,undefined", "-fsanitize=thread"]) == {"address", "undefined", "thread"}
    assert sanitizers(["-fsanitize=address,undefined", "-fno-sanitize=address"]) == {"undefined"}
    assert sanitizers(["-fsanitize=address", "-fno-sanitize=all", "-fsanitize=leak"]) == {"leak"}
    assert sanitizers(["-O2", "-fsanitize-recover=address"]) == set()


@pytest.mark.parametrize(
    ("flags", "gcc_here"),
    [
        (["-O0", "-fsanitize=address"], SANITIZE_ADDRESS),
        (["-O2", "-fsanitize=undefined,address"], SANITIZE_ADDRESS),
        (["-O0", "-g", "-fsanitize=thread"], SANITIZE_THREAD),
        (["-O2", "-fsanitize=thread"], None),
        (["-O0", "-fsanitize=address", "-fno-sanitize=address"], None),
        (["-O2", "-fsanitize=undefined"], None),
    ],
)
def test_gcc_s_address_and_thread_sanitizers_run_here_and_clang_s_are_sent(
    flags: list[str], gcc_here: str | None
) -> None:
    """gcc's AddressSanitizer, and its ThreadSanitizer with -g, give other objects from the
    preprocessed text (measured on brotli); clang's gave the same objects, so they are sent."""
    assert plan("-c", *flags, "a.c").here == gcc_here
    assert plan("-c", *flags, "a.c", compiler="g++").here == gcc_here
    assert plan("-c", *flags, "a.c", compiler="clang").here == (DEBUG_CLANG if "-g" in flags else None)
