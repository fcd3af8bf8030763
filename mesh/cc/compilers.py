"""The compilers of this node, by path and fingerprint: what ``mesh cc`` places compiles on.

A compile may run only on a node whose compiler at the same path is the same compiler.
Each node advertises, among its capabilities, ``cc:PATH=FINGERPRINT`` for the compilers
it has, and a compile requires the one of the node its wrapper talked to; placement
(mesh.sched.placement) then leaves out every node whose compiler differs or is missing.

The **fingerprint** is a digest of the files a compile runs, each by its content:

- the driver (the file its path resolves to);
- its compilers proper, both gcc's ``cc1`` and ``cc1plus`` (where ``-print-prog-name``
  names an absolute file; clang is its own), which turn preprocessed text into assembly:
  one fingerprint for C and C++ compiles, so that a C++ compile is never placed on a node
  whose ``cc1plus`` differs because its ``cc1`` is the same;
- the assembler the driver runs, which turns that into the object (binutils' version
  changes objects): ``-print-prog-name=as`` names an absolute file when the driver finds
  one in its own program directories (its install tree, ``-B``, ``COMPILER_PATH``: the
  ``programs:`` of ``-print-search-dirs``), else the bare ``as``, which the driver then runs
  from PATH: the PATH of a compile task (:data:`TASK_PATH`) is searched as execvp does.
  One not found is "missing" (a compile there would fail: a node like that matches only
  another like it);
- the shared libraries the driver, the compiler proper and the assembler load (cc1 folds
  constants with libmpfr and libgmp, and loads libisl, libmpc, libz, libzstd; as loads
  libbfd, libsframe), as ``ldd`` lists them: the loader's own resolution (DT_NEEDED,
  RUNPATH, ld.so.cache, the default directories) with the libraries' own dependencies,
  which reading DT_NEEDED by hand would have to redo. ldd runs the loader on files this
  node runs anyway as compilers. A library not found is "missing".

The driver is asked, and ldd run, in a compile task's environment (mesh.exec.action.BASE_ENV,
not the node's: no ``COMPILER_PATH`` or ``LD_LIBRARY_PATH`` of the node's shell), so what
they name is what the task runs. The action-cache key covers more (the system's package
database, see mesh.exec.toolchain), and the compile declares the compiler proper as a
tool, so a ``cc1`` replaced by hand changes the key too.

Which compilers a node advertises: those found at start in :data:`SEARCHED` under the
names gcc, g++, cc, c++, clang, clang++ (with a version or a target prefix:
``gcc-12``, ``x86_64-linux-gnu-gcc-12``), and any other one a local wrapper asked for.

**Cost**, measured on the 2-core Debian 12 test machine with gcc 12 (files in the page
cache): the first look at a compiler runs the driver twice (``cc1``, ``as``) and ldd once
per binary (~6 ms each), and hashes the driver, cc1 (~35 MB), as and 10 libraries: ~30
ms, against ~7 ms for the driver and cc1 alone. The names and library lists are
remembered by the digest of the file they came from (a driver's by the driver's, a
binary's libraries by the binary's), and each file's digest with its stat
(mesh.exec.toolchain.FileDigests): a known compiler costs ~15 stats, ~37 us a compile
request (~5 us without the assembler and the libraries). A scan at start of the 10
compiler names here takes ~90 ms (cc1, as and their libraries are shared).
"""

from __future__ import annotations

import os
import re
import subprocess

from mesh.cas.digest import Digest
from mesh.exec.action import BASE_ENV
from mesh.exec.toolchain import FileDigests, resolve

#: The directories searched for compilers at start.
SEARCHED = ("/usr/bin", "/usr/local/bin")
#: Compiler names advertised (a target prefix and a version allowed).
NAMES = re.compile(r"^(?:[A-Za-z0-9_]+-[A-Za-z0-9_-]*-)?(?:gcc|g\+\+|cc|c\+\+|clang|clang\+\+)(?:-[0-9.]+)?$")
#: The languages whose compilers proper join a driver's fingerprint.
LANGUAGES = ("c", "c++")
#: The capability key prefix: ``cc:/usr/bin/gcc``.
PREFIX = "cc:"
#: Seconds a driver may take to name a program it runs, and ldd to list libraries.
PROG_NAME_TIMEOUT = 10.0
#: The PATH a compile task runs with (mesh.exec.action.BASE_ENV): where its driver finds
#: the assembler it names without a directory.
TASK_PATH = BASE_ENV["PATH"]
#: ``ldd``'s line for a library: ``libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x...)``,
#: ``libq.so.2 => not found``, or the loader itself, ``/lib64/ld-linux-x86-64.so.2 (0x...)``.
_LDD_LINE = re.compile(r"^\s*(?:(\S+) => (?:(/\S*) \(0x[0-9a-f]+\)|(not found))|(/\S*) \(0x[0-9a-f]+\))\s*$")


class Compilers:
    """Fingerprints of this node's compilers (on one worker thread at a time: they read and
    run files, and FileDigests is not thread-safe).

    ``path``: the PATH on which a bare program name the driver gives (``as``) is found, the
    one compile tasks run with."""

    def __init__(self, files: FileDigests | None = None, *, path: str = TASK_PATH) -> None:
        self.files = files or FileDigests()
        self.path = path
        self._proper: dict[tuple[str, str, Digest], str | None] = {}  # (driver, language, digest) -> cc1
        self._assembler: dict[tuple[str, Digest], str] = {}  # (driver, digest) -> what it names
        self._libraries: dict[tuple[str, Digest], tuple[tuple[str, str], ...]] = {}  # (binary, digest) -> ldd's
        self.known: dict[str, str] = {}  # path -> fingerprint, advertised

    def capabilities(self) -> dict[str, str]:
        """``cc:PATH`` -> fingerprint, for every compiler known here."""
        return {PREFIX + path: fp for path, fp in sorted(self.known.items())}

    def scan(self, directories: tuple[str, ...] = SEARCHED) -> None:
        """Look for the usual compilers in ``directories`` and fingerprint them."""
        for directory in directories:
            try:
                names = sorted(os.listdir(directory))
            except OSError:
                continue
            for name in names:
                if NAMES.match(name):
                    self.fingerprint(os.path.join(directory, name))

    def fingerprint(self, path: str) -> str | None:
        """The fingerprint of the compiler at ``path``, for its C and C++ compiles alike, or
        None when it is not an executable file here. Remembered for :meth:`capabilities`."""
        driver = self.files.look(path)
        if driver is None or not os.access(path, os.X_OK):
            self.known.pop(path, None)
            return None
        parts = [str(driver.digest)]
        libraries = set(self._libraries_of(path, driver.digest))
        for tongue in LANGUAGES:
            proper = self.proper(path, tongue, driver.digest)
            if proper is not None:
                known = self.files.look(proper)
                parts.append(f"{tongue} {known.digest if known is not None else 'missing'}")
                if known is not None:
                    libraries.update(self._libraries_of(proper, known.digest))
        assembler = resolve(self.assembler(path, driver.digest), self.path)
        known = self.files.look(assembler) if assembler is not None else None
        parts.append(f"as {known.digest}" if known is not None else "as missing")
        if assembler is not None and known is not None:
            libraries.update(self._libraries_of(assembler, known.digest))
        for name, where in sorted(libraries):
            library = self.files.look(where) if where else None
            parts.append(f"lib {name} {library.digest if library is not None else 'missing'}")
        fingerprint = Digest.of(" ".join(parts).encode()).hash.hex()[:32]
        self.known[path] = fingerprint
        return fingerprint

    def proper(self, path: str, language: str, digest: Digest) -> str | None:
        """The compiler proper the driver at ``path`` runs for ``language`` (an absolute file),
        or None (clang, or a driver that does not say)."""
        key = (path, language, digest)
        if key not in self._proper:
            found = _prog_name(path, "cc1plus" if language == "c++" else "cc1")
            self._proper[key] = found if found and os.path.isabs(found) and os.path.isfile(found) else None
        return self._proper[key]

    def assembler(self, path: str, digest: Digest) -> str:
        """The assembler the driver at ``path`` runs: an absolute file found in its own program
        directories (``-B``, its install tree), else a name the compile's PATH resolves
        (gcc's ``-print-prog-name=as`` says which; ``as`` when the driver does not say)."""
        key = (path, digest)
        if key not in self._assembler:
            self._assembler[key] = _prog_name(path, "as") or "as"
        return self._assembler[key]

    def _libraries_of(self, binary: str, digest: Digest) -> tuple[tuple[str, str], ...]:
        """The shared libraries the binary loads, (name, path) with ``""`` for one not found,
        as the loader resolves them; remembered by the binary's digest."""
        key = (binary, digest)
        if key not in self._libraries:
            self._libraries[key] = _ldd(binary)
        return self._libraries[key]

    def proper_of(self, path: str, language: str) -> str | None:
        """:meth:`proper` for the driver at ``path`` as it is now."""
        driver = self.files.look(path)
        return None if driver is None else self.proper(path, language, driver.digest)

    def requirement(self, path: str, language: str) -> tuple[dict[str, str], str | None] | None:
        """The requirement a compile with this compiler places on a node, and its compiler
        proper for ``language`` (a tool of the task); None when it is not a compiler here."""
        fingerprint = self.fingerprint(path)
        if fingerprint is None:
            return None
        return {PREFIX + path: fingerprint}, self.proper_of(path, language)


def _run(argv: list[str]) -> str | None:
    """The stdout of ``argv`` run with a compile task's environment, or None when it fails."""
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=PROG_NAME_TIMEOUT, check=False, env=dict(BASE_ENV)
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def _prog_name(driver: str, program: str) -> str | None:
    """What ``DRIVER -print-prog-name=PROGRAM`` says (None: nothing, or it failed)."""
    return (_run([driver, f"-print-prog-name={program}"]) or "").strip() or None


def _ldd(binary: str) -> tuple[tuple[str, str], ...]:
    """The shared libraries ``binary`` loads, as ``ldd`` lists them (the loader's own answer,
    with every library's dependencies): (name, resolved path or ``""`` when not found); none
    for a script or a static binary (ldd fails), and where ldd is missing: none."""
    found: list[tuple[str, str]] = []
    for line in (_run(["ldd", binary]) or "").splitlines():
        if (match := _LDD_LINE.match(line)) is not None:
            name, where, _missing, loader = match.groups()
            found.append((name or loader, where or loader or ""))
    return tuple(found)
