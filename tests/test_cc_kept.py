"""Compiles the wrapper runs itself, kept in the action cache (mesh.cc.keptcompiles): their
keys, and when a record is refused. With real files, a real store and a real gcc's output;
the cache is a dictionary (the mesh's cache is tested in tests/test_mesh_cache.py), and
end to end through a node in tests/test_cc_e2e.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from mesh.cas.digest import Digest
from mesh.cas.store import LocalStore
from mesh.cc.keptcompiles import CLOCK_SLACK_NS, KeptCompiles, files_named
from mesh.errors import InvalidCompile
from mesh.exec.action import ActionResult
from mesh.exec.toolchain import FileDigests

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="these tests read gcc's preprocessed output")


class Cache:
    def __init__(self) -> None:
        self.entries: dict[Digest, ActionResult] = {}

    def get(self, key: Digest) -> ActionResult | None:
        return self.entries.get(key)

    def put(self, key: Digest, result: ActionResult) -> None:
        self.entries[key] = result

    def asks_further(self) -> bool:
        return False

    async def get_further(self, key: Digest) -> ActionResult | None:
        return None


async def on_thread(work: Callable[[], object]) -> object:
    return work()


async def fingerprint(compiler: str) -> str | None:
    return "fp" if os.path.isabs(compiler) else None


def kept(tmp_path: Path) -> tuple[KeptCompiles, Cache]:
    cache = Cache()
    store = LocalStore(tmp_path / "store")
    return KeptCompiles(store, cache, "me", files=FileDigests(), on_thread=on_thread, fingerprint=fingerprint), cache


def project(root: Path) -> Path:
    (root / "inc").mkdir(parents=True)
    (root / "inc" / "h.h").write_text("#define TWICE(x) (2 * (x))\n")
    (root / "a.c").write_text('#include <stddef.h>\n#include "h.h"\nint f(int x) { return TWICE(x); }\n')
    return root


def later() -> int:
    """A preprocessing that began after the clock's slack: the files just written are older."""
    return time.time_ns() + 2 * CLOCK_SLACK_NS


def text(root: Path) -> bytes:
    return subprocess.run(
        ["gcc", "-Iinc", "-E", "-fdirectives-only", "a.c"], cwd=root, capture_output=True, check=True
    ).stdout


ARGS = ["-O2", "-g", "-Iinc", "-c", "a.c", "-o", "a.o"]


def test_the_files_a_text_names_are_its_source_and_headers_each_once() -> None:
    named = files_named(b'# 0 "<built-in>"\n# 1 "a.c"\n# 1 "inc/h.h" 1\n# 2 "a.c" 2\n# 1 "d\\\\q\\"\\101.h" 1\n')
    assert named == ["a.c", "inc/h.h", 'd\\q"A.h']


def test_a_recorded_compile_is_a_hit_and_a_header_s_change_is_a_miss(tmp_path: Path) -> None:
    root = project(tmp_path / "p")
    service, cache = kept(tmp_path)

    async def scenario() -> None:
        hit, token = await service.lookup("/usr/bin/gcc", str(root), later(), ARGS, [], text(root))
        assert hit is None
        assert await service.record(token, b"OBJECT") == "kept in the mesh's cache"
        with pytest.raises(InvalidCompile, match="no lookup waits"):
            await service.record(token, b"OBJECT")  # one record a lookup
        hit, note = await service.lookup("/usr/bin/gcc", str(root), time.time_ns(), ARGS, [], text(root))
        assert hit is not None and hit.output is not None and note
        # The same text with a header of other content: another key (the text shows only what
        # it expands; a header's comment, or a line a condition skips, changes no text).
        (root / "inc" / "h.h").write_text("#define TWICE(x) (2 * (x))\n/* a comment */\n")
        assert (await service.lookup("/usr/bin/gcc", str(root), time.time_ns(), ARGS, [], text(root)))[0] is None
        assert (await service.lookup("/usr/bin/gcc", str(root), time.time_ns(), [*ARGS, "-DX"], [], text(root)))[
            0
        ] is None
        assert (await service.lookup("/usr/bin/gcc", str(root), time.time_ns(), ARGS, ["LANG=C"], text(root)))[
            0
        ] is None

    trio.run(scenario)
    assert len(cache.entries) == 1


def test_a_compile_whose_files_changed_after_its_preprocessing_began_is_not_kept(tmp_path: Path) -> None:
    root = project(tmp_path / "p")
    service, cache = kept(tmp_path)

    async def scenario() -> None:
        began = later()
        _, token = await service.lookup("/usr/bin/gcc", str(root), began, ARGS, [], text(root))
        (root / "inc" / "h.h").write_text("#define TWICE(x) (3 * (x))\n")  # while it compiles
        while time.time_ns() < began:  # the compile ran past the slack: the change is after its start
            os.utime(root / "inc" / "h.h")
        assert await service.record(token, b"OBJECT") == "not kept: inc/h.h changed while it was compiled"
        # Written just before the preprocessing began, within the clock's slack: not kept either.
        _, token = await service.lookup("/usr/bin/gcc", str(root), time.time_ns(), ARGS, [], text(root))
        assert (await service.record(token, b"OBJECT")).startswith("not kept: inc/h.h")

    trio.run(scenario)
    assert not cache.entries


def test_what_a_text_cannot_show_is_not_kept(tmp_path: Path) -> None:
    root = project(tmp_path / "p")
    service, _ = kept(tmp_path)

    async def lookup(body: bytes) -> object:
        return await service.lookup("/usr/bin/gcc", str(root), time.time_ns(), ARGS, [], body)

    with pytest.raises(InvalidCompile, match="incbin"):
        trio.run(lookup, text(root) + b'__asm__(".incbin \\"blob.bin\\"");\n')
    with pytest.raises(InvalidCompile, match="include"):
        trio.run(lookup, text(root) + b'__asm__(".include \\"macros.s\\"");\n')
    with pytest.raises(InvalidCompile, match="precompiled header"):
        trio.run(lookup, b'#pragma GCC pch_preprocess "h.h.gch"\n' + text(root))
    with pytest.raises(InvalidCompile, match="gone.h is not a file"):
        trio.run(lookup, b'# 1 "gone.h" 1\n' + text(root))
    with pytest.raises(InvalidCompile, match="not an executable"):
        trio.run(lambda: service.lookup("gcc", str(root), time.time_ns(), ARGS, [], text(root)))
