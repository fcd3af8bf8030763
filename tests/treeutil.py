"""Build directory trees from a plain description and read them back, for tests.

A description maps a name (bytes) to one of:
  ("file", content: bytes, executable: bool)
  ("link", target: bytes)
  ("dir", {name: ...})
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

Tree = dict[bytes, Any]


def build(root: str | os.PathLike[str], tree: Tree, order: Any = sorted) -> None:
    """Create ``tree`` under the existing directory ``root``, visiting names in ``order``."""
    base = os.fsencode(os.fspath(root))
    for name in order(list(tree)):
        spec = tree[name]
        path = base + b"/" + name
        if spec[0] == "file":
            with open(path, "wb") as f:
                f.write(spec[1])
            os.chmod(path, 0o755 if spec[2] else 0o644)
        elif spec[0] == "link":
            os.symlink(spec[1], path)
        else:
            os.mkdir(path)
            build(path, spec[1], order)


def executable(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` and make it executable (a test copy of a tool, say)."""
    path.write_text(text)
    path.chmod(0o755)
    return path


def read(root: str | os.PathLike[str]) -> Tree:
    """Describe the tree on disk under ``root`` (the inverse of :func:`build`)."""
    base = os.fsencode(os.fspath(root))
    out: Tree = {}
    for name in os.listdir(base):
        path = base + b"/" + name
        st = os.lstat(path)
        if os.path.islink(path):
            out[name] = ("link", os.readlink(path))
        elif os.path.isdir(path):
            out[name] = ("dir", read(path))
        else:
            with open(path, "rb") as f:
                out[name] = ("file", f.read(), bool(st.st_mode & 0o100))
    return out


def count_files(root: str | os.PathLike[str]) -> int:
    return sum(len(files) for _, _, files in os.walk(root))


def mesh(
    *args: str, input: bytes | None = None, check: bool = False, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run the real ``mesh`` CLI (this interpreter's ``-m mesh``) and capture its output."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "mesh", *args],
        input=input,
        capture_output=True,
        check=check,
        env=full_env,
        timeout=300,
    )


def b3sum() -> str | None:
    return shutil.which("b3sum")


def morph(root: str | os.PathLike[str], old: Tree, new: Tree) -> None:
    """Change the tree on disk from ``old`` to ``new`` in place, touching only what differs."""
    base = os.fsencode(os.fspath(root))
    for name, spec in old.items():
        path = base + b"/" + name
        if name not in new or new[name][0] != spec[0]:
            if spec[0] == "dir":
                shutil.rmtree(path)
            else:
                os.unlink(path)
    for name, spec in new.items():
        path = base + b"/" + name
        before = old.get(name)
        if before is not None and before[0] == spec[0]:
            if spec[0] == "dir":
                morph(path, before[1], spec[1])
            elif spec[0] == "link" and before[1] != spec[1]:
                os.unlink(path)
                os.symlink(spec[1], path)
            elif spec[0] == "file":
                if before[1] != spec[1]:
                    with open(path, "r+b") as f:  # rewrite in place: same inode
                        f.write(spec[1])
                        f.truncate()
                if before[2] != spec[2]:
                    os.chmod(path, 0o755 if spec[2] else 0o644)
        else:
            build(base, {name: spec})


def stored(store: Any, scratch: str | os.PathLike[str], tree: Tree) -> Any:
    """Build ``tree`` in a new directory ``src`` under ``scratch`` and snapshot it into ``store``."""
    from mesh.cas.snapshot import ingest

    src = os.path.join(scratch, "src")
    os.mkdir(src)
    build(src, tree)
    return ingest(store, src)
