"""Compiles that run where the wrapper runs, kept in the mesh-wide action cache.

When to use: for a compile ``mesh cc`` must not send (mesh.cc.args: debug information with
optimisation, whose line tables gcc lays out by how it reads its input, so only a compile
of the real files gives the local object). The wrapper compiles it itself, as gcc would
without mesh; what the mesh adds is the cache: the same compile done before anywhere in
the mesh is a hit, a ccache across machines.

The wrapper asks :meth:`KeptCompiles.lookup` with the compile's command line, its working
directory as gcc names it, the time its preprocessing began, and the preprocessing's text
(``gcc -E -fdirectives-only``). The **key** is what decides the object of a compile of the
real files, each part by content:

- the compiler: its path and fingerprint (driver, compilers proper, assembler and their
  libraries: mesh.cc.compilers);
- the command: every argument (flags, source, object, dependency files), the working
  directory, the locale variables the wrapper sends (the input character set follows
  them: mesh.cc.wrapper.KEY_ENVIRONMENT);
- what it read: the text, which holds the macros and conditions as resolved, and every
  file the text's line markers name (the source, each header, ``-include`` and
  ``-imacros`` files), by path and by the digest of its content now. Files not named
  there are not read by a compile of this text: ``__has_include`` and the search of the
  include path are resolved in the text. What the text cannot show makes the compile
  uncacheable (mesh.cc.args.READS_MORE): a precompiled header, ``.incbin`` or ``.include`` in
  inline assembly (the assembler reads a file; the words anywhere in the text count, which
  at worst leaves a compile uncached).

A hit (this node's cache, then every live peer's) answers the object. A miss answers a
token; the wrapper compiles, and when the compile was silent and succeeded it sends the
object with the token to :meth:`record`, which keeps it under the key, **unless a file it
read changed since the preprocessing began** (its change time is not before then, less
:data:`CLOCK_SLACK_NS` for the coarse clock file times are stamped from, or its digest
moved): the object may then hold a content the key does not. A compile that said
anything is not kept (the wrapper shows gcc's own diagnostics, compiled again).

Trust: only the node's user and root reach the socket (mesh.cc.service); the entries it
keeps are that user's compiles, trusted as any task a mesh-key holder submits.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from mesh import codec
from mesh.cas.digest import Digest
from mesh.cas.store import LocalStore
from mesh.cas.tree import Entry, Kind, encode_node
from mesh.cc.args import READS_MORE
from mesh.cc.frames import KEPT
from mesh.errors import InvalidCompile
from mesh.exec.action import ActionResult
from mesh.exec.toolchain import FileDigests

#: A line marker of gcc's preprocessed output: ``# 12 "path" 1 3``, the path in C's quoting.
MARKER = re.compile(rb'^# \d+ "((?:[^"\\\n]|\\.)*)"', re.MULTILINE)
#: Names of markers that are not files (gcc's, and clang's spelling of the command line).
NOT_FILES = frozenset({"<built-in>", "<command-line>", "<command line>", "<stdin>"})
#: Nanoseconds a file's change time may lag the clock: Linux stamps file times from a clock
#: that ticks every 1-10 ms (HZ 1000-100); twice the coarsest, so a change made after the
#: preprocessing began is never taken for one made before.
CLOCK_SLACK_NS = 20_000_000
#: Seconds a miss waits for its record, and how many misses wait at once.
PENDING_SECONDS = 3600.0
MAX_PENDING = 4096


class Cache(Protocol):
    """The action cache a kept compile is looked up in and recorded into (mesh.cluster.actioncache)."""

    def get(self, key: Digest) -> ActionResult | None: ...

    def put(self, key: Digest, result: ActionResult) -> None: ...

    def asks_further(self) -> bool: ...

    async def get_further(self, key: Digest) -> ActionResult | None: ...


@dataclass(frozen=True)
class Read:
    """A file the compile read: its path as the text names it, where that is, and its digest."""

    named: str
    path: str
    digest: Digest


@dataclass
class _Pending:
    key: Digest
    read: list[Read]
    began_ns: int
    until: float = field(default=0.0)


class KeptCompiles:
    """Keys, lookups and records of compiles run by the wrapper (see the module docstring).

    ``on_thread`` runs a function on the one thread that may use ``files`` (FileDigests is
    not thread-safe); ``fingerprint(compiler)`` is the compiler's (mesh.cc.compilers), None
    when it is none here.
    """

    def __init__(
        self,
        store: LocalStore,
        cache: Cache,
        node_id: str,
        *,
        files: FileDigests,
        on_thread: Callable[[Callable[[], object]], Awaitable[object]],
        fingerprint: Callable[[str], Awaitable[str | None]],
    ) -> None:
        self.store = store
        self.cache = cache
        self.node_id = node_id
        self.files = files
        self._on_thread = on_thread
        self._fingerprint = fingerprint
        self._pending: dict[str, _Pending] = {}
        self.hits = self.misses = self.kept = 0

    async def lookup(
        self, compiler: str, cwd: str, began_ns: int, args: list[str], env: list[str], text: bytes
    ) -> tuple[ActionResult | None, str]:
        """The cached result of this compile (and a note), or None and the token of its record.
        Raises InvalidCompile when it cannot be kept (a file it read is not readable here, a
        text that shows a file it does not name): the wrapper then compiles uncached."""
        for sign, why in READS_MORE.items():  # the wrapper compiles those uncached: a request can still say it
            if sign in text:
                raise InvalidCompile(f"not kept in the cache: {why}")
        fingerprint = await self._fingerprint(compiler)
        if fingerprint is None:
            raise InvalidCompile(f"{compiler} is not an executable file on the node")
        named = files_named(text)
        read = await self._on_thread(lambda: self._read(named, cwd))
        assert isinstance(read, list)
        key = Digest.of(
            codec.encode(
                {
                    "kept cc": 1,
                    "compiler": [compiler, fingerprint],
                    "args": args,
                    "cwd": cwd,
                    "env": env,
                    "text": str(Digest.of(text)),
                    "read": [[r.named, str(r.digest)] for r in read],
                }
            )
        )
        hit = self.cache.get(key)
        if hit is None and self.cache.asks_further():
            hit = await self.cache.get_further(key)
        if hit is not None and hit.success and hit.output is not None:
            self.hits += 1
            return hit, hit.cache_note or f"from the action cache of node {hit.node}"
        self.misses += 1
        self._sweep()
        token = secrets.token_hex(16)
        self._pending[token] = _Pending(key, read, began_ns, time.monotonic() + PENDING_SECONDS)
        return None, token

    async def record(self, token: str, obj: bytes) -> str:
        """Keep the object of a silent, successful compile under the key its lookup gave: what
        happened, in words (a compile whose files changed meanwhile is not kept)."""
        pending = self._pending.pop(token, None)
        if pending is None or pending.until < time.monotonic():
            raise InvalidCompile("no lookup waits for this record (it was recorded, or it is too old)")
        changed = await self._on_thread(lambda: self._changed(pending))
        if changed is not None:
            return f"not kept: {changed} changed while it was compiled"
        now = time.time()
        empty = self.store.put(b"")
        blob = self.store.put(obj)
        output = self.store.put(encode_node([Entry(b"out.o", Kind.FILE, blob)]))
        result = ActionResult(
            exit_code=0,
            stdout=empty,
            stderr=empty,
            output=output,
            started_at=now,
            finished_at=now,
            node=self.node_id,
            cache_key=pending.key,
        )
        self.cache.put(pending.key, result)
        self.kept += 1
        return KEPT

    def _read(self, named: list[str], cwd: str) -> list[Read]:
        read = []
        for name in named:
            path = os.path.normpath(os.path.join(cwd, name))
            known = self.files.look(path)
            if known is None:
                raise InvalidCompile(f"not kept in the cache: {name} is not a file the node can read")
            read.append(Read(name, path, known.digest))
        return read

    def _changed(self, pending: _Pending) -> str | None:
        """The first file read that changed since the preprocessing began, or None."""
        for read in pending.read:
            try:
                st = os.stat(read.path)
            except OSError:
                return read.named
            if max(st.st_mtime_ns, st.st_ctime_ns) >= pending.began_ns - CLOCK_SLACK_NS:
                return read.named
            known = self.files.look(read.path)
            if known is None or known.digest != read.digest:
                return read.named
        return None

    def _sweep(self) -> None:
        now = time.monotonic()
        for token in [t for t, p in self._pending.items() if p.until < now]:
            del self._pending[token]
        while len(self._pending) >= MAX_PENDING:
            del self._pending[next(iter(self._pending))]


def files_named(text: bytes) -> list[str]:
    """The files the line markers of a preprocessed text name, each once, in order."""
    seen: dict[str, None] = {}
    for match in MARKER.finditer(text):
        name = _unquote(match.group(1))
        if name not in NOT_FILES:
            seen.setdefault(name, None)
    return list(seen)


def _unquote(quoted: bytes) -> str:
    r"""A C string's body as gcc writes a file name: ``\\``, ``\"`` and ``\ooo`` escapes."""
    out = bytearray()
    at = 0
    while at < len(quoted):
        byte = quoted[at]
        if byte == 0x5C and at + 1 < len(quoted):  # a backslash
            octal = quoted[at + 1 : at + 4]
            if len(octal) == 3 and all(0x30 <= b <= 0x37 for b in octal):
                out.append(int(octal, 8) & 0xFF)
                at += 4
                continue
            out.append(quoted[at + 1])
            at += 2
            continue
        out.append(byte)
        at += 1
    return out.decode("utf-8", "surrogateescape")
