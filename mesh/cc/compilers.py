"""The compilers of this node, by path and fingerprint: what ``mesh cc`` places compiles on.

A compile may run only on a node whose compiler at the same path is the same compiler.
Each node advertises, among its capabilities, ``cc:PATH=FINGERPRINT`` for the compilers
it has, and a compile requires the one of the node its wrapper talked to; placement
(mesh.sched.placement) then leaves out every node whose compiler differs or is missing.

The **fingerprint** is a digest of the driver's content (the file its path resolves to)
and of its compiler proper (gcc's ``cc1`` or ``cc1plus``, where ``-print-prog-name``
names an absolute file; clang is its own), which is what turns preprocessed text into an
object. The action-cache key covers more (the system's package database, see
mesh.exec.toolchain), and the compile declares the compiler proper as a tool, so a
``cc1`` replaced by hand changes the key too.

Which compilers a node advertises: those found at start in :data:`SEARCHED` under the
names gcc, g++, cc, c++, clang, clang++ (with a version or a target prefix:
``gcc-12``, ``x86_64-linux-gnu-gcc-12``), and any other one a local wrapper asked for.
Each costs a stat once known (mesh.exec.toolchain.FileDigests); the first look hashes
the driver and runs it once with ``-print-prog-name`` (about 2 ms), then hashes the
compiler proper (cc1 is ~35 MB: ~10 ms).
"""

from __future__ import annotations

import os
import re
import subprocess

from mesh.cas.digest import Digest
from mesh.exec.toolchain import FileDigests

#: The directories searched for compilers at start.
SEARCHED = ("/usr/bin", "/usr/local/bin")
#: Compiler names advertised (a target prefix and a version allowed).
NAMES = re.compile(r"^(?:[A-Za-z0-9_]+-[A-Za-z0-9_-]*-)?(?:gcc|g\+\+|cc|c\+\+|clang|clang\+\+)(?:-[0-9.]+)?$")
#: The capability key prefix: ``cc:/usr/bin/gcc``.
PREFIX = "cc:"
#: Seconds a driver may take to name its compiler proper.
PROG_NAME_TIMEOUT = 10.0


class Compilers:
    """Fingerprints of this node's compilers (on one worker thread at a time: they read and
    run files, and FileDigests is not thread-safe)."""

    def __init__(self, files: FileDigests | None = None) -> None:
        self.files = files or FileDigests()
        self._proper: dict[tuple[str, str, Digest], str | None] = {}  # (driver, language, digest) -> cc1
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
                    self.fingerprint(os.path.join(directory, name), "c")

    def fingerprint(self, path: str, language: str) -> str | None:
        """The fingerprint of the compiler at ``path`` for ``language`` (``c`` or ``c++``), or
        None when it is not an executable file here. Remembered for :meth:`capabilities`."""
        driver = self.files.look(path)
        if driver is None or not os.access(path, os.X_OK):
            self.known.pop(path, None)
            return None
        proper = self.proper(path, language, driver.digest)
        parts = [str(driver.digest)]
        if proper is not None:
            known = self.files.look(proper)
            parts.append(str(known.digest) if known is not None else "missing")
        fingerprint = Digest.of(" ".join(parts).encode()).hash.hex()[:32]
        if language == "c":
            self.known[path] = fingerprint
        return fingerprint

    def proper(self, path: str, language: str, digest: Digest) -> str | None:
        """The compiler proper the driver at ``path`` runs for ``language`` (an absolute file),
        or None (clang, or a driver that does not say)."""
        key = (path, language, digest)
        if key not in self._proper:
            self._proper[key] = _prog_name(path, "cc1plus" if language == "c++" else "cc1")
        return self._proper[key]

    def proper_of(self, path: str, language: str) -> str | None:
        """:meth:`proper` for the driver at ``path`` as it is now."""
        driver = self.files.look(path)
        return None if driver is None else self.proper(path, language, driver.digest)

    def requirement(self, path: str, language: str) -> tuple[dict[str, str], str | None] | None:
        """The requirement a compile with this compiler places on a node, and its compiler
        proper for ``language`` (a tool of the task); None when it is not a compiler here."""
        fingerprint = self.fingerprint(path, "c")
        if fingerprint is None:
            return None
        return {PREFIX + path: fingerprint}, self.proper_of(path, language)


def _prog_name(driver: str, program: str) -> str | None:
    try:
        done = subprocess.run(
            [driver, f"-print-prog-name={program}"],
            capture_output=True,
            text=True,
            timeout=PROG_NAME_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    found = done.stdout.strip()
    return found if done.returncode == 0 and os.path.isabs(found) and os.path.isfile(found) else None
