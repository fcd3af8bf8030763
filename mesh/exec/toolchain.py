"""The toolchain identity: what an action runs with on this node, for its action-cache key.

An action's digest (mesh.exec.action) says what to run; it does not say with what. The
same ``cc -c x.c`` gives another object file once the compiler was upgraded, so the
cache key is a digest over the action and an :class:`Identity` of what the executing node
would run it with (:meth:`mesh.exec.action.Action.cache_key`). Nodes whose identity for an
action is the same share its cache entries; any other node computes another key and misses.

What the identity covers, per executor:

- ``docker``: the image's ID as the node's engine reports it (``GET /images/NAME/json``),
  nothing else: the container sees the image and the input only. A node whose engine
  lacks the image has no identity for the action (its lookup is a miss, never an error).
- ``sandbox`` and ``process``, which run the node's own software:

  * the **argv[0] binary**, resolved as the executor resolves it: a name without ``/`` is
    looked up on the task's PATH (:data:`~mesh.exec.action.BASE_ENV` with the action's env
    laid over it); the path found and the digest of its content (a symlink is followed: a
    link retargeted to another binary changes it). A relative path (``./build.sh``)
    and a relative PATH entry name a file of the input snapshot, which the action's digest
    covers already, and so do a path and a PATH entry below the workdir's path in the task
    (``/work/build.sh``, :mod:`mesh.exec.paths`), so they are left out (a relative PATH entry is skipped, and the first
    match in an absolute one is taken: a spurious miss at worst, never a wrong hit);
  * the **interpreter** of a script, from its ``#!`` line (and what ``/usr/bin/env NAME``
    runs, looked up on the same PATH), up to :data:`MAX_INTERPRETERS` levels;
  * the **package database** of the system: ``/var/lib/dpkg/status`` (Debian, Ubuntu), the
    rpm database and apk's ``installed`` where present. Any package installed, upgraded or
    removed changes it, so every entry made before is a miss afterwards: coarse, but sound
    for what package managers install, and cheap;
  * the **tools** the action declares (``mesh exec --tool PATH``): files on the node whose
    content joins the identity. A declared tool missing on the node is an error there
    (:class:`~mesh.errors.ToolMissing`).

Not covered (declare them with ``--tool`` when they matter): the shared libraries and helper
programs a binary loads (gcc's ``cc1``, say) when they were changed by hand rather than by a
package manager, files a tool reads from the node at run time (headers outside packages,
config in /etc), the kernel, and the node's environment beyond the action's own.

**Cost.** A file's digest is kept with its stat (mesh.cas.statcache.file_key): a warm
look costs a stat, not a read. Files changed within the stat cache's RACY_WINDOW_NS of being
hashed are hashed again at the next look (git's "racily clean" rule, as mesh.cas.statcache
does), so a compiler replaced a moment ago is never taken for the old one. Measured on the
2-core Debian 12 test machine, with the task's default PATH: a warm identity of ``sh``,
``gcc`` or ``python3`` takes 27-32 us (ten stats: the PATH search, the binary, the package
databases), and its cache key 7 us more; a cold one 0.3-1.8 ms (the binary, 0.1-6.8 MB, and
the 0.66 MB dpkg status read and hashed; 3.2 ms when python3's 6.8 MB are not in the page
cache). A task's key is made three times (its lookup, and before and after it runs, so that a
compiler replaced meanwhile is not cached under either identity): ~0.1 ms against the ~2.9
ms of node CPU a trivial task costs (mesh.exec.runner).
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

from mesh import codec
from mesh.cas.digest import Digest
from mesh.cas.hasher import hash_fd
from mesh.cas.statcache import RACY_WINDOW_NS, file_key
from mesh.errors import CodecError, ToolMissing
from mesh.exec.action import BASE_ENV, Action
from mesh.exec.paths import PROCESS_VIEW, SANDBOX_VIEW

#: The package databases looked at, where present: dpkg, rpm (sqlite and Berkeley DB), apk.
PACKAGE_DATABASES = (
    "/var/lib/dpkg/status",
    "/var/lib/rpm/rpmdb.sqlite",
    "/var/lib/rpm/Packages",
    "/usr/lib/sysimage/rpm/rpmdb.sqlite",
    "/lib/apk/db/installed",
)
#: Bytes of a file read for its ``#!`` line (Linux reads 256).
SHEBANG_BYTES = 256
#: Levels of interpreters followed (a script run by a script is rare; Linux allows 4).
MAX_INTERPRETERS = 2
#: Files whose digests are remembered (the oldest are forgotten past this).
MEMO_FILES = 4096

#: How each kind of part reads in an explanation of a miss (``mesh exec -v``).
_KINDS = {
    "argv0": "the argv[0] binary",
    "interpreter": "the interpreter",
    "packages": "the system packages",
    "tool": "tool",
    "image": "the image",
}

ImageId = Callable[[str], Awaitable[str | None]]


@dataclass(frozen=True)
class Identity:
    """What an action runs with on one node: named parts, each a short text (a digest, an
    image ID), sorted by name. Equal identities on two nodes mean they share cache entries."""

    parts: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, parts: Mapping[str, str]) -> Identity:
        return cls(tuple(sorted(parts.items())))

    def digest(self) -> Digest:
        """The identity's digest, which joins the action's in the cache key."""
        known: Digest | None = self.__dict__.get("_digest")
        if known is None:
            known = Digest.of(codec.encode({"toolchain": dict(self.parts), "v": 1}))
            object.__setattr__(self, "_digest", known)
        return known

    def changed(self, earlier: Identity) -> list[str]:
        """The parts that differ from ``earlier`` (or that one of them lacks), in words."""
        mine, theirs = dict(self.parts), dict(earlier.parts)
        return [
            describe_part(name) for name in sorted(mine.keys() | theirs.keys()) if mine.get(name) != theirs.get(name)
        ]

    def to_wire(self) -> dict[str, str]:
        return dict(self.parts)

    @classmethod
    def from_wire(cls, value: object) -> Identity:
        if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise CodecError(f"a toolchain identity is a map of text to text, not {str(value)[:100]!r}")
        return cls.of(value)


def describe_part(name: str) -> str:
    """A part's name (``argv0:cc``) in words: ``the argv[0] binary cc``."""
    kind, _, what = name.partition(":")
    return f"{_KINDS.get(kind, kind)} {what}".strip()


@dataclass(frozen=True, slots=True)
class _Known:
    key: tuple[int, int, int, int, int, int]  # mesh.cas.statcache.file_key
    digest: Digest
    head: bytes  # the first bytes, for a #! line


class FileDigests:
    """Content digests of files on this node, remembered with their stat, so a warm look is a
    stat. Not thread-safe: the scheduler's thread uses it."""

    def __init__(self, *, memo: int = MEMO_FILES) -> None:
        self._known: dict[str, _Known] = {}
        self._memo = memo

    def look(self, path: str) -> _Known | None:
        """``path``'s digest and head (following symlinks), or None when it is not a regular file."""
        try:
            st = os.stat(path)
        except (OSError, ValueError):
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        key = file_key(st)
        known = self._known.get(path)
        if known is not None and known.key == key:
            return known
        return self._hash(path, key)

    def _hash(self, path: str, key: tuple[int, int, int, int, int, int]) -> _Known | None:
        began = time.time_ns()
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            head = os.pread(fd, SHEBANG_BYTES, 0)
            digest = hash_fd(fd, st.st_size)
        except OSError:
            return None
        finally:
            os.close(fd)
        known = _Known(file_key(st), digest, head)
        self._known.pop(path, None)
        if known.key == key and max(st.st_mtime_ns, st.st_ctime_ns) < began - RACY_WINDOW_NS:
            self._known[path] = known  # changed long enough ago: its stat vouches for it from now on
            if len(self._known) > self._memo:
                del self._known[next(iter(self._known))]
        return known


#: Where the task sees its workdir, by executor (mesh.exec.paths): what is below it is the input.
WORKDIRS = {"sandbox": SANDBOX_VIEW.work, "process": PROCESS_VIEW.work}


class Toolchain:
    """Computes the :class:`Identity` of actions on this node (see the module docstring).

    ``image_id``: asks the node's container engine for an image's ID (None when it lacks
    the image); without one, docker actions have no identity here.
    """

    def __init__(
        self,
        *,
        package_databases: Iterable[str] = PACKAGE_DATABASES,
        image_id: ImageId | None = None,
        files: FileDigests | None = None,
    ) -> None:
        self.package_databases = tuple(package_databases)
        self.image_id = image_id
        self.files = files or FileDigests()
        self._made: dict[tuple[tuple[str, str], ...], Identity] = {}  # parts -> identity, its digest made once

    @staticmethod
    def needs_engine(action: Action) -> bool:
        """Whether the identity of ``action`` comes from the container engine (:meth:`of_image`)."""
        return action.executor == "docker"

    def identity(self, action: Action) -> Identity:
        """The identity of a ``sandbox`` or ``process`` action on this node (synchronous: a few
        stats when warm). Raises ToolMissing for a declared tool that is not a file here."""
        parts: dict[str, str] = {}
        path = dict(BASE_ENV, **dict(action.env)).get("PATH", "")
        inside = WORKDIRS.get(action.executor)
        self._program(parts, "argv0", action.argv[0], path, MAX_INTERPRETERS, inside)
        for database in self.package_databases:
            known = self.files.look(database)
            if known is not None:
                parts[f"packages:{database}"] = str(known.digest)
        for tool in action.tools:
            known = self.files.look(tool)
            if known is None:
                raise ToolMissing(f"tool {tool} (--tool) is not a file on this node")
            parts[f"tool:{tool}"] = str(known.digest)
        return self._identity(parts)

    def _identity(self, parts: Mapping[str, str]) -> Identity:
        """The Identity of ``parts``, the same object as last time for the same parts (so its
        digest is encoded and hashed once, not per lookup)."""
        key = tuple(sorted(parts.items()))
        known = self._made.get(key)
        if known is None:
            if len(self._made) >= MEMO_FILES:
                self._made.clear()
            known = self._made[key] = Identity(key)
        return known

    async def of_image(self, action: Action) -> Identity | None:
        """The identity of a ``docker`` action: its image's ID here, or None when the engine
        lacks the image or cannot say (the lookup is then a miss)."""
        if self.image_id is None or action.image is None:
            return None
        image = await self.image_id(action.image)
        return None if image is None else Identity.of({f"image:{action.image}": image})

    def _program(
        self, parts: dict[str, str], kind: str, name: str, path: str, depth: int, inside: str | None = None
    ) -> None:
        """Add the part for program ``name`` (run on ``path``), and its interpreters; ``inside``
        is where the task sees its workdir (what is below it is the input)."""
        found = resolve(name, path, inside)
        if found is None:
            if "/" not in name:  # run from the input (a relative path, or below inside) when it has a "/"
                parts[f"{kind}:{name}"] = "not found"
            return
        known = self.files.look(found)
        if known is None:
            parts[f"{kind}:{name}"] = "not a file"
            return
        parts[f"{kind}:{name}"] = f"{found} {known.digest}"
        if depth > 0:
            for interpreter in interpreters(known.head):
                self._program(parts, "interpreter", interpreter, path, depth - 1, inside)


def resolve(name: str, path: str, inside: str | None = None) -> str | None:
    """Where the executor finds program ``name`` on ``path`` (execvp's rule): the first
    absolute PATH entry holding an executable regular file of that name. None for a relative
    path or one below ``inside`` (a file of the input: the task's workdir is there) or a
    program not found."""

    def of_input(where: str) -> bool:
        below = inside is not None and (where.rstrip("/") == inside or where.startswith(inside + "/"))
        return below or not where.startswith("/")

    if "/" in name:
        return None if of_input(name) else name
    for directory in path.split(":"):
        if of_input(directory):
            continue  # "", relative entries and those below the workdir's path: the input
        candidate = os.path.join(directory, name)
        try:
            st = os.stat(candidate)
        except (OSError, ValueError):
            continue
        if stat.S_ISREG(st.st_mode) and st.st_mode & 0o111:
            return candidate
    return None


def interpreters(head: bytes) -> list[str]:
    """The programs a ``#!`` line runs: its interpreter, and for ``/usr/bin/env NAME`` also
    NAME (options of env, ``-S`` and the like, are skipped). Empty for a file without one."""
    if not head.startswith(b"#!"):
        return []
    line = head[2:].split(b"\n", 1)[0].decode("utf-8", "replace").split()
    if not line:
        return []
    programs = [line[0]]
    if os.path.basename(line[0]) == "env":
        programs += [word for word in line[1:] if not word.startswith("-") and "=" not in word][:1]
    return programs


__all__ = ["Identity", "Toolchain", "FileDigests", "PACKAGE_DATABASES", "describe_part", "interpreters", "resolve"]
