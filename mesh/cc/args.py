"""Which compiles ``mesh cc`` sends to the mesh, and the two command lines it makes of one.

A compile is distributed when it is exactly one C or C++ source compiled to an object
(``-c``) with flags whose meaning is known to be the same on another node of the mesh
with the same compiler. Everything else runs locally, with a reason the wrapper prints
under ``-v``: linking, ``-E``, ``-S``, ``-M``/``-MM`` alone, several sources, other
languages, response files, flags that write files of their own beside the object
(profiling, coverage, ``-save-temps``, split DWARF, stack usage), flags that depend on
the machine (``-march=native``), that change where the compiler finds its parts (``-B``,
``-specs``), that put the command line into the object (``-frecord-gcc-switches``), LTO,
debug information together with optimisation (below), and any flag not in the lists below.

**The input**: the source with its headers and macros resolved here, but its macros not
expanded (gcc's ``-E -fdirectives-only``), compiled there as a C (or C++) file again, at
the source's own relative path. Chosen by measurement against the two known modes, on
brotli's 35 C files with gcc 12 (objects compared with ``cmp``, see tests/test_cc_args.py
and tests/test_cc_netns.py):

- distcc's plain mode (``gcc -E``, the remote compiles the expanded text) changes the
  objects: a macro's expansion has other columns, and gcc's code at ``-O0`` and its
  DWARF depend on them. Byte-identical objects: 34 of 35 at ``-O0`` (one more ``jmp``
  in cluster.c), 35 at ``-O2``, 5 of 35 with ``-O0 -g``;
- the same with ``-fdirectives-only`` on both sides: 35 of 35 without ``-g``, but 0 of
  35 with ``-g``: the compile's own command line, recorded in ``DW_AT_producer``, then
  holds ``-fdirectives-only``;
- this mode: 35 of 35 at ``-O0``, ``-O2``, ``-O0 -g``, ``-O1 -g`` and ``-Os -g``; 34 of
  35 at ``-O2 -g`` (block_splitter.c, which includes one header three times with other
  macros: one more ``.debug_line`` row, a location view), 34 at ``-O3 -g``, 33 at
  ``-O2 -g -gno-statement-frontiers``. pycryptodome's 65 C files and zstd's amalgamation
  gave identical objects at ``-O0 -g``, ``-O2``, ``-O3 -g`` and ``-Os -g``.
- pump mode (the source and its headers as files) would give the same objects as this
  one, and needs the header list first (the same preprocessor pass) and every header
  as a file of the input; paths outside the working directory (``-I/abs``, ``../``)
  would need the remote tree to mirror them.

``gcc -E -fdirectives-only`` costs about 6 % of an ``-O2`` compile here (plain ``-E``:
5.6 %, 0.66 s against 11.8 s over brotli's 35 files). What it writes starts with gcc's
built-in macros (dropped: the same compiler defines them there) and then the command
line's ``-D``/``-U`` as ``#define``/``#undef`` lines, so the remote compile needs none of
the preprocessor's flags. With ``-g``, the remote compile maps its directory to this one
(``-fdebug-prefix-map``, which gcc leaves out of ``DW_AT_producer``), so
``DW_AT_comp_dir`` and the source's name are those of a local compile.

**Debug information with optimisation runs here.** Over those 101 files only ``-g``
together with optimisation ever gave another object: gcc's source locations
(``location_t``) are laid out as the compiler reads its input, one preprocessed file
there against the real files here, and with optimisation the line table can show it
(one location view more in block_splitter.c; a 30-line file that includes one header
three times with other macros gets one more line-table row at ``-O3 -g``, with
``-fno-var-tracking`` too: tests/test_cc_e2e.py). That cannot be shown safe for every
source, so a compile that writes debug information (:func:`debug_info`: the last debug
level wins, ``-g0`` turns it off) and optimises (:func:`optimises`: the last ``-O``
other than ``-O0``; ``-O`` is ``-O1``, none is ``-O0``) runs here (:attr:`Plan.here`), and
``-v`` says why. It is still preprocessed here first: its text and the files the text
names make its key in the mesh's cache, where its object is kept (mesh.cc.keptcompiles),
so a rebuild, here or on any node of the mesh, is a hit. ``-O0 -g`` (the usual debug
build) and optimised builds without ``-g`` are distributed; ``-g3`` (macro information)
runs here too (:data:`DEBUG_MACROS`).

**gcc's sanitizers** were not among those 101 files' flags. Measured on brotli's 35 files
later: gcc's AddressSanitizer names a function's stack variables with their line or
without it depending on how gcc read its input (3 objects differ at ``-O0``, 1 at
``-O2``), and its ThreadSanitizer with ``-g`` places calls on other lines (4 at ``-O0
-g``); UBSan, LSan, kernel ASan, HWASan and clang's sanitizers gave identical objects. So
gcc compiles with ``-fsanitize=address`` (:func:`sanitizers`: the last word of the flags),
or ``thread`` with ``-g``, run here and are kept, as debug builds with optimisation are
(:data:`SANITIZE_ADDRESS`, :data:`SANITIZE_THREAD`).

**clang** has no ``-fdirectives-only``: its text is ``clang -E -frewrite-includes`` (each
header included in place, conditions and macros as written, ``__has_include`` evaluated),
which holds no macro of the command line, so ``-D`` and ``-U`` go to both command lines
(and ``-imacros`` runs here). Measured on brotli's 35 files: identical objects at ``-O2``;
with ``-g``, 0 of 35 (clang writes each file's MD5 into the DWARF 5 line table), so a clang
compile with debug information runs here and is kept (:data:`DEBUG_CLANG`).

**Dependency files** (``-MD``, ``-MMD``, ``-MF``, ``-MT``, ``-MQ``, ``-MP``) are made by
the preprocessing here, so they name the same files as a local compile does. gcc's
driver derives two things from ``-o`` when it compiles that it does not when it only
preprocesses: the ``.d`` file's name (the object's, with ``.d`` for its suffix) and its
target (the object, quoted as ``-MQ`` does); :func:`classify` adds both, explicitly,
to the preprocessing command line when the compile's flags leave them implicit.

This module imports nothing beyond the standard library's cheapest modules: the wrapper
runs it once per compile.
"""

from __future__ import annotations

import os

#: Source suffixes compiled as C, and as C++ (gcc's own list).
C_SUFFIXES = frozenset({".c"})
CXX_SUFFIXES = frozenset({".cc", ".cp", ".cxx", ".cpp", ".CPP", ".c++", ".C"})

#: Preprocessor flags followed by a separate argument: used here only.
_CPP_WITH_ARG = frozenset(
    {
        "-I",
        "-D",
        "-U",
        "-include",
        "-imacros",
        "-isystem",
        "-iquote",
        "-idirafter",
        "-iprefix",
        "-iwithprefix",
        "-iwithprefixbefore",
        "-isysroot",
        "-imultilib",
        "-MF",
        "-MT",
        "-MQ",
    }
)
#: Joined preprocessor flags (prefixes): used here only.
_CPP_JOINED = ("-I", "-D", "-U", "-Wp,", "-isystem", "-iquote", "-idirafter", "-isysroot", "-include", "-imacros")
#: Preprocessor flags alone: used here only.
_CPP_ALONE = frozenset({"-MD", "-MMD", "-MP", "-MG", "-nostdinc", "-nostdinc++", "-H", "-P", "-C", "-CC"})
#: Flags that make this only a preprocessing or a dependency listing, or another step.
_NOT_A_COMPILE = {
    "-E": "-E preprocesses only",
    "-S": "-S makes assembly, not an object",
    "-M": "-M lists dependencies only",
    "-MM": "-MM lists dependencies only",
    "-v": "-v shows the compiler's own steps",
    "-###": "-### shows the compiler's own steps",
    "--version": "--version asks the compiler itself",
    "--help": "--help asks the compiler itself",
    "-save-temps": "-save-temps writes intermediate files here",
    "--coverage": "--coverage writes notes beside the object",
    "-gsplit-dwarf": "-gsplit-dwarf writes a .dwo file beside the object",
    "-fstack-usage": "-fstack-usage writes a .su file beside the object",
    "-fcallgraph-info": "-fcallgraph-info writes a .ci file beside the object",
    "-ftest-coverage": "-ftest-coverage writes notes beside the object",
    "-frecord-gcc-switches": "-frecord-gcc-switches puts the command line into the object",
    "-time": "-time times the compiler's own steps",
    "-Q": "-Q prints the compiler's own progress",
    # The text sent leaves macros unexpanded, and the compile there predefines gcc's own:
    # `int v = __GNUC__;` fails here with -undef and would compile there.
    "-undef": "-undef: the compile there would predefine the macros it leaves out",
}
#: Prefixes of flags that write other files, depend on this machine, or change the compiler.
_LOCAL_PREFIXES = {
    "-fprofile": "profiling writes or reads files here",
    "-fauto-profile": "profiling reads files here",
    "-fdump-": "-fdump-* writes files here",
    "-fplugin": "a plugin is a file of this machine",
    "-flto": "LTO objects are not plain objects",
    "-fmodule": "modules read and write interface files here",
    "-fsave-optimization-record": "it writes a record beside the object",
    "-foptimization-record-file": "it writes a record here",
    "-fopt-info": "optimisation notes go to a file or the terminal here",
    "-ftime-trace": "it writes a trace beside the object",
    "-fproc-stat-report": "it writes a report here",
    "-fdiagnostics-format=sarif-file": "diagnostics are written to a file here",
    "-fdiagnostics-format=json-file": "diagnostics are written to a file here",
    "-fdiagnostics-add-output": "diagnostics are written to a file here",
    "-fdiagnostics-set-output": "diagnostics are written to a file here",
    "-fbranch-probabilities": "profiling reads files here",
    "-fcs-profile-generate": "profiling writes or reads files here",
    "-fmemory-profile": "profiling writes or reads files here",
    "-fsanitize-blacklist": "the compile reads a list here",
    "-fsanitize-ignorelist": "the compile reads a list here",
    "-fsanitize-system-ignorelist": "the compile reads a list here",
    "-fsanitize-coverage-allowlist": "the compile reads a list here",
    "-fsanitize-coverage-ignorelist": "the compile reads a list here",
    "-fsanitize-coverage-whitelist": "the compile reads a list here",
    "-fsanitize-coverage-blacklist": "the compile reads a list here",
    "-fxray-attr-list": "the compile reads a list here",
    "-fxray-always-instrument": "the compile reads a list here",
    "-fxray-never-instrument": "the compile reads a list here",
    "-fbasic-block-sections=list=": "the compile reads a list here",
    "-fprebuilt-module-path": "modules read interface files here",
    "-fdeps-": "it writes a module dependency file here",
    "-fpass-plugin": "a plugin is a file of this machine",
    "-fsyntax-only": "it checks the source and makes no object",
    "-fembed-offload-object": "the compile reads a file here",
    "-fthinlto-index": "the compile reads a file here",
    "-fcuda-include-gpubinary": "the compile reads a file here",
    "-B": "-B changes where the compiler finds its parts",
    "-specs": "-specs changes the compiler's rules",
    "-save-temps": "-save-temps writes intermediate files here",
    "-x": "-x names the language: not handled",
    "-Xassembler": "an assembler option passed as is",
    "-Xlinker": "-Xlinker is for linking",
    "-Xpreprocessor": "a preprocessor option passed as is",
    "-Wl,": "-Wl, is for linking",
    "-aux-info": "-aux-info writes a file here",
    "-l": "-l is for linking",
    "-L": "-L is for linking",
    "--sysroot": "--sysroot names a directory of this machine",
    "@": "a response file is read here",
}
#: Prefixes of flags that mean the same on a node with the same compiler: used in both runs.
_BOTH_PREFIXES = ("-O", "-g", "-f", "-W", "-m", "-std=", "--std=", "--param", "-pedantic")
#: Flags alone that mean the same on a node with the same compiler: used in both runs.
_BOTH_ALONE = frozenset({"-w", "-ansi", "-pipe", "-pthread", "-trigraphs", "-traditional-cpp"})
#: Assembler options known to change nothing but the object (-Wa,OPT).
_SAFE_ASSEMBLER = frozenset({"--noexecstack", "--compress-debug-sections", "--nocompress-debug-sections"})
#: gcc's ``-g...`` options that set no debug level (``-gno-X``, ``-gz`` and
#: ``-gvariable-location-views`` in any form neither).
_G_OPTIONS = frozenset(
    {
        "-gas-loc-support",
        "-gas-locview-support",
        "-gcolumn-info",
        "-gdescribe-dies",
        "-gdwarf32",
        "-gdwarf64",
        "-ggnu-pubnames",
        "-ginline-points",
        "-ginternal-reset-location-views",
        "-gpubnames",
        "-grecord-gcc-switches",
        "-gstatement-frontiers",
        "-gstrict-dwarf",
    }
)
#: Why a compile with debug information and optimisation runs here (module docstring): it is
#: not sent, but kept in the mesh's cache (mesh.cc.keptcompiles), which ``-v`` says after it.
DEBUG_OPTIMISED = (
    "with -g and optimisation gcc's debug information can differ when the source is compiled"
    " from its preprocessed text (measured: 1 of 35 brotli objects at -O2 -g); compiled here"
)
#: Why a compile with a debug level of 3 runs here: gcc records each macro's definition with
#: where it is, and the text sent holds the macros of the command line and of gcc itself in
#: other places (measured: 12 of 12 brotli objects differ at ``-O0 -g3``).
DEBUG_MACROS = "with -g3 gcc records where each macro is defined, which the text sent moves; compiled here"
#: Why a clang compile with debug information runs here: clang writes the MD5 of every file
#: it read into the line table (DWARF 5), and the compile there reads one rewritten file
#: (measured: 35 of 35 brotli objects differ at -O0 -g; 35 of 35 identical at -O2).
DEBUG_CLANG = "clang writes a checksum of each file it read into its debug information; compiled here"
#: Why a gcc compile with AddressSanitizer runs here: its descriptions of a function's stack
#: variables name some with their line, depending on how gcc read its input ("code:1850"
#: here, "code" from the preprocessed text). Measured on brotli's 35 files with gcc 12: 3
#: objects differ at -O0, 1 at -O2, 6 at -O0 -g; clang's are identical.
SANITIZE_ADDRESS = (
    "gcc's AddressSanitizer names stack variables as it read its input, which the text sent changes"
    " (measured: 3 of 35 brotli objects at -O0 -fsanitize=address); compiled here"
)
#: Why a gcc compile with ThreadSanitizer and debug information runs here: its calls' line
#: information depends on how gcc read its input, as an optimised one's does (measured: 4 of
#: 35 brotli objects at -O0 -g -fsanitize=thread; none without -g, none with clang).
SANITIZE_THREAD = (
    "with -g gcc's ThreadSanitizer calls can get other lines when the source is compiled from its"
    " preprocessed text (measured: 4 of 35 brotli objects at -O0 -g); compiled here"
)
#: What in a preprocessed text shows that its compile reads a file the text does not hold:
#: the same compile elsewhere would read that node's file (an absolute path) or fail, and the
#: cache could not tell its versions apart. Then it runs here, uncached. The words anywhere in
#: the text count (a comment, a string), which at worst compiles here.
READS_MORE = {
    b"#pragma GCC pch_preprocess": "a precompiled header stands for its text",
    b"incbin": "the assembler may read a file (.incbin)",
    b".include": "the assembler may read a file (.include)",
}
#: What the wrapper's environment may hold that changes a compile here, and that a node's
#: compile would not see: then it stays here. (clang's CCC_OVERRIDE_OPTIONS edits its
#: command line: ``+-O2`` adds -O2.)
UNSAFE_ENV = ("DEPENDENCIES_OUTPUT", "SUNPRO_DEPENDENCIES", "GCC_EXEC_PREFIX", "COMPILER_PATH", "CCC_OVERRIDE_OPTIONS")


class Plan:
    """A compile to distribute: the two command lines (without the compiler), and where
    its object goes.

    ``preprocess``: the flags of the local ``-E -fdirectives-only`` run, the source last
    (its output on stdout). ``compile``: the flags of the remote compile of that text,
    without its input and output. ``language``: ``c`` or ``c++`` (which compiler proper
    runs it).
    """

    __slots__ = ("source", "object", "language", "preprocess", "compile", "here", "rewritten")

    def __init__(
        self,
        source: str,
        object: str,
        language: str,
        preprocess: list[str],
        compile: list[str],
        *,
        here: str | None = None,
        rewritten: bool = False,
    ) -> None:
        self.source = source
        self.object = object
        self.language = language
        self.preprocess = preprocess
        self.compile = compile
        #: Why it is compiled here, by the wrapper, and kept in the mesh's cache (None: it is
        #: sent): :data:`DEBUG_OPTIMISED`, :data:`DEBUG_MACROS`, :data:`DEBUG_CLANG`,
        #: :data:`SANITIZE_ADDRESS`, :data:`SANITIZE_THREAD`.
        self.here = here
        #: The text is clang's ``-frewrite-includes`` output (whole), not gcc's ``-fdirectives-only``.
        self.rewritten = rewritten

    def __repr__(self) -> str:
        return f"Plan(source={self.source!r}, object={self.object!r}, language={self.language!r})"


def debug_info(flags: list[str]) -> bool:
    """Whether gcc with these flags writes debug information, as gcc 12 decides it: the last
    debug level wins (``-g``, ``-g3``, ``-ggdb``, ``-gdwarf-5`` turn it on, ``-g0`` and
    ``-ggdb0`` off; ``-gdwarf-N`` names a version, not a level), options of its form
    (``-gz``, ``-gno-*``, ``-gstrict-dwarf`` ...) change no level, ``-gtoggle`` flips the
    result once, after all the others, and CTF or BTF (``-gctf``, ``-gbtf``), once asked
    for, count as on (``-gctf -g0`` still writes CTF; ``-gctf0`` after ``-gctf`` is taken
    as on too, which keeps such a compile here at worst)."""
    level = types = toggle = False
    for arg in flags:
        if not arg.startswith("-g") or arg in _G_OPTIONS or arg.startswith(("-gno-", "-gz", "-gvariable-location")):
            continue
        if arg == "-gtoggle":
            toggle = True
            continue
        body = arg[2:]
        digits = _level(body)
        on = body.startswith("dwarf") or not digits or int(digits) > 0
        if body.startswith(("ctf", "btf")):
            types |= on
        else:
            level = on
    return types or level != toggle


def sanitizers(flags: list[str]) -> set[str]:
    """The sanitizers the flags turn on: each ``-fsanitize=`` adds its list and each
    ``-fno-sanitize=`` takes its list away, in order (``all`` takes every one away)."""
    on: set[str] = set()
    for arg in flags:
        if arg.startswith("-fsanitize="):
            on.update(arg.split("=", 1)[1].split(","))
        elif arg.startswith("-fno-sanitize="):
            off = set(arg.split("=", 1)[1].split(","))
            on = set() if "all" in off else on - off
    return on


def macro_info(flags: list[str]) -> bool:
    """Whether a debug level of 3 is asked for (``-g3``, ``-ggdb3``), which records every
    macro with the file and line that defines it. Any such option counts, whatever follows
    it: at worst such a compile runs here."""
    for arg in flags:
        if arg.startswith("-g") and not arg.startswith(("-gdwarf", "-gz", "-gno-", "-gctf", "-gbtf")):
            if _level(arg[2:]) == "3":
                return True
    return False


def _level(body: str) -> str:
    """The digits that end a ``-g`` option's body (its level: ``3`` of ``-ggdb3``), or ``""``."""
    return body[len(body.rstrip("0123456789")) :]


def optimises(flags: list[str]) -> bool:
    """Whether the last ``-O`` is another level than ``-O0`` (gcc's default); ``-O`` is ``-O1``."""
    last = "0"
    for arg in flags:
        if arg.startswith("-O"):
            last = arg[2:] or "1"
    return not (last.isdigit() and int(last) == 0)


def _local_prefix(arg: str) -> str | None:
    for prefix, why in _LOCAL_PREFIXES.items():
        if arg.startswith(prefix):
            return f"{arg}: {why}"
    return None


def classify(compiler: str, args: list[str], environ: dict[str, str] | os._Environ[str]) -> Plan | str:
    """The :class:`Plan` of a compile to distribute, or why it runs locally (a short text).
    ``compiler``'s name says which driver it is (``g++``, ``clang``): for ``cc`` and ``c++``
    the wrapper gives the file they resolve to (mesh.cc.wrapper.driver_name)."""
    for name in UNSAFE_ENV:
        if environ.get(name):
            return f"{name} is set"
    cxx_driver = "++" in os.path.basename(compiler)
    clang = "clang" in os.path.basename(compiler)
    compile_only = False
    output: str | None = None
    sources: list[str] = []
    deps = explicit_depfile = explicit_target = False
    keep: list[str] = []  # for both runs (the remote one drops the preprocessor's)
    remote: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "-c":
            compile_only = True
        elif arg == "-o" or (arg.startswith("-o") and len(arg) > 2):
            if output is not None:
                return "-o given twice"
            if arg == "-o":
                if i >= len(args):
                    return "-o without a file"
                output, i = args[i], i + 1
            else:
                output = arg[2:]
        elif arg in _NOT_A_COMPILE:
            return _NOT_A_COMPILE[arg]
        elif clang and arg == "-include-pch":
            return "-include-pch: a precompiled header is a file of this machine"
        elif clang and arg.startswith("-imacros"):
            return "-imacros: clang's rewritten text does not hold the macros it defines"
        elif arg in _CPP_WITH_ARG:
            if i >= len(args):
                return f"{arg} without its argument"
            explicit_depfile |= arg == "-MF"
            explicit_target |= arg in ("-MT", "-MQ")
            keep += [arg, args[i]]
            if clang and arg in ("-D", "-U"):  # clang's rewritten text holds no command-line macros
                remote += [arg, args[i]]
            i += 1
        elif arg in _CPP_ALONE:
            deps |= arg in ("-MD", "-MMD")
            keep.append(arg)
        elif arg.startswith(("-MF", "-MT", "-MQ")):
            explicit_depfile |= arg.startswith("-MF")
            explicit_target |= not arg.startswith("-MF")
            keep.append(arg)
        elif arg.startswith("-Wp,") and "-undef" in arg.split(","):
            return _NOT_A_COMPILE["-undef"]
        elif clang and arg.startswith("-Wp,"):
            return f"{arg}: clang's rewritten text does not hold what the preprocessor is told"
        elif arg.startswith(_CPP_JOINED):
            keep.append(arg)
            if clang and arg.startswith(("-D", "-U")):
                remote.append(arg)
        elif (why := _local_prefix(arg)) is not None:
            return why
        elif arg.startswith("-Wa,"):
            if not all(opt.split("=")[0] in _SAFE_ASSEMBLER for opt in arg[4:].split(",")):
                return f"{arg}: an assembler option not known to be safe"
            keep.append(arg)
            remote.append(arg)
        elif arg.endswith("=native") and arg.startswith("-m"):
            return f"{arg}: the result depends on this machine's processor"
        elif arg.startswith("-finput-charset=") and arg.split("=", 1)[1].lower().replace("-", "") != "utf8":
            # The preprocessing here converts the source to UTF-8: a compile there told the
            # source is in this charset would convert it again (measured: "café" in Latin-1).
            return f"{arg}: the text sent is UTF-8 already"
        elif arg == "--param":
            if i >= len(args):
                return "--param without its argument"
            keep += [arg, args[i]]
            remote += [arg, args[i]]
            i += 1
        elif arg in _BOTH_ALONE or arg.startswith(_BOTH_PREFIXES):
            keep.append(arg)
            remote.append(arg)
        elif arg.startswith("-") and arg != "-":
            return f"{arg}: a flag mesh cc does not know"
        else:
            sources.append(arg)
    if not compile_only:
        return "not a compile to an object (no -c): linking, or another step"
    if len(sources) != 1:
        return "no source file" if not sources else f"{len(sources)} sources in one command"
    source = sources[0]
    suffix = os.path.splitext(source)[1]
    if suffix in CXX_SUFFIXES or (suffix in C_SUFFIXES and cxx_driver):
        language = "c++"
    elif suffix in C_SUFFIXES:
        language = "c"
    else:
        return f"{source}: not a C or C++ source"
    obj = output if output is not None else os.path.splitext(os.path.basename(source))[0] + ".o"
    if output == "-":
        return "-o -: the object on stdout"
    preprocess = list(keep)
    if deps and not explicit_depfile:  # gcc's driver: %{!o:%b.d}%{o*:%.d%*}
        base = os.path.splitext(output)[0] if output is not None else os.path.splitext(os.path.basename(source))[0]
        preprocess += ["-MF", base + ".d"]
    if deps and not explicit_target and output is not None:  # gcc's driver: %{MD|MMD:%{o*:-MQ %*}}
        preprocess += ["-MQ", output]
    preprocess += ["-E", "-frewrite-includes", source] if clang else ["-fdirectives-only", "-E", source]
    here = None
    if debug_info(remote):
        if clang:
            here = DEBUG_CLANG
        else:
            here = DEBUG_OPTIMISED if optimises(remote) else DEBUG_MACROS if macro_info(remote) else None
    if here is None and not clang:
        on = sanitizers(remote)
        if "address" in on:
            here = SANITIZE_ADDRESS
        elif "thread" in on and debug_info(remote):
            here = SANITIZE_THREAD
    return Plan(source, obj, language, preprocess, remote, here=here, rewritten=clang)
