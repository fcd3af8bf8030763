"""``.meshignore``: leave paths out of a snapshot, with gitignore's rules.

A ``.meshignore`` file holds one pattern per line and applies to the directory
that holds it and everything below. Its syntax and meaning are git's, so that a
user can copy a ``.gitignore``:

* blank lines match nothing; a line starting with ``#`` is a comment;
* ``!`` negates: a path matched by an earlier pattern is included again (but
  nothing inside an excluded directory can be: the walk never enters it);
* a trailing ``/`` matches directories only;
* a pattern with a ``/`` at its start or middle is anchored to the directory of
  its ``.meshignore`` and matched against the path below it; one without is
  matched against the last component of every path below that directory;
* ``*`` and ``?`` do not match ``/``; ``[...]`` is a byte set (ranges,
  ``!``/``^`` negation, ``[:alpha:]``-style ASCII classes); ``**/`` matches
  any number of directories, ``/**`` everything inside, ``/**/`` zero or more
  directories; elsewhere ``**`` is a plain ``*``;
* a backslash makes the next byte literal (``\\#``, ``\\!``, ``\\*``), and
  trailing spaces are dropped unless escaped (``\\ ``);
* the last matching line of a file wins, and a deeper ``.meshignore`` wins over
  the ones above it.

Patterns and paths are bytes, so any name the filesystem holds can be matched.
The port follows git's ``dir.c`` and ``wildmatch.c`` down to their corner
cases (tests compare against ``git check-ignore``), because a user who wrote a
rule for git expects the same files to stay out.

:meth:`IgnoreRules.load` reads every ``.meshignore`` of a tree up front (with a
walk that itself honours the rules found above), which gives both the matcher
that :func:`mesh.cas.snapshot.ingest` takes and a :attr:`~IgnoreRules.fingerprint`
of the rules for the stat cache, whose directory nodes are only valid under the
rules they were made with. ``.git`` is always left out, like git does.

:func:`tree_rules` is the one place that decides what a snapshot of a user's tree
holds, for ``mesh snapshot`` and ``mesh exec`` alike: the tree's ``.meshignore``
files and ``.git`` (unless ``keep_all``), and never mesh's own home when the tree
holds it.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import blake3

from mesh import codec
from mesh.errors import SnapshotError

#: The name of the rules file in any directory of a tree.
FILE_NAME = b".meshignore"
#: Patterns that win over every ``.meshignore`` (anchored at the tree's root).
ALWAYS: tuple[bytes, ...] = (b".git",)
#: A ``.meshignore`` larger than this is refused rather than parsed.
MAX_FILE_BYTES = 8 << 20
#: Bumped whenever matching changes meaning, so that stat caches built under the
#: old meaning are not reused.
_VERSION = 1

_NEVER = b"(?!)"
_GLOB_SPECIAL = b"*?[\\"
_ASCII_CLASSES: dict[bytes, frozenset[int]] = {
    b"alnum": frozenset(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"),
    b"alpha": frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"),
    b"blank": frozenset(b" \t"),
    b"cntrl": frozenset([*range(0x00, 0x20), 0x7F]),
    b"digit": frozenset(b"0123456789"),
    b"graph": frozenset(range(0x21, 0x7F)),
    b"lower": frozenset(b"abcdefghijklmnopqrstuvwxyz"),
    b"print": frozenset(range(0x20, 0x7F)),
    b"punct": frozenset(b"!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"),
    b"space": frozenset(b" \t\n\r"),  # git's own isspace: no \v or \f
    b"upper": frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"),
    b"xdigit": frozenset(b"0123456789ABCDEFabcdef"),
}
_SLASH = ord("/")


Ignore = Callable[[bytes, bool], bool]
"""``ignore(relative path, is_dir)``: True leaves the path out of the snapshot."""


# -- parsing -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pattern:
    """One rule of a ``.meshignore``, compiled.

    ``regex`` is matched in full against the path's last component when
    ``basename`` is true, else against the path below the rules' directory.
    """

    source: bytes
    negated: bool
    dir_only: bool
    basename: bool
    regex: bytes

    def matches(self, below: bytes, is_dir: bool) -> bool:
        """Whether this rule alone matches path ``below`` (relative to its file's directory)."""
        if self.dir_only and not is_dir:
            return False
        text = below.rpartition(b"/")[2] if self.basename else below
        return re.fullmatch(self.regex, text, re.DOTALL) is not None


def parse(data: bytes) -> list[Pattern]:
    """The rules of a ``.meshignore`` file's contents, in file order.

    Lines end at LF (a CR before it is dropped), a UTF-8 byte-order mark is
    skipped, and a NUL ends its line, all as git reads a ``.gitignore``.
    """
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    rules = []
    for line in data.split(b"\n"):
        if line.endswith(b"\r"):
            line = line[:-1]
        rule = parse_line(line)
        if rule is not None:
            rules.append(rule)
    return rules


def parse_line(line: bytes) -> Pattern | None:
    """Compile one line; None for blank lines and comments."""
    line = line.partition(b"\0")[0]
    if not line or line.startswith(b"#"):
        return None
    source = line = _trim_trailing_spaces(line)
    negated = line.startswith(b"!")
    if negated:
        line = line[1:]
    dir_only = line.endswith(b"/")
    if dir_only:
        line = line[:-1]
    if not line:
        return Pattern(source, negated, dir_only, True, _NEVER)  # git keeps it; it matches nothing
    if b"/" not in line:
        return Pattern(source, negated, dir_only, True, _wild(line))
    if line.startswith(b"/"):
        line = line[1:]
    # git compares the part before the first wildcard literally and hands only the
    # rest to wildmatch, for which that rest starts a pattern (this decides what a
    # "**" right after the literal part means).
    literal = len(line)
    for i, byte in enumerate(line):
        if byte in _GLOB_SPECIAL:
            literal = i
            break
    return Pattern(source, negated, dir_only, False, re.escape(line[:literal]) + _wild(line[literal:]))


def _trim_trailing_spaces(line: bytes) -> bytes:
    """Drop trailing spaces not escaped by a backslash (git's trim_trailing_spaces)."""
    last_space = -1
    i = 0
    while i < len(line):
        byte = line[i]
        if byte == 0x20:
            if last_space < 0:
                last_space = i
        elif byte == 0x5C:  # backslash: the next byte is kept whatever it is
            i += 1
            if i == len(line):
                return line
            last_space = -1
        else:
            last_space = -1
        i += 1
    return line[:last_space] if last_space >= 0 else line


def escape(path: bytes) -> bytes:
    """A pattern matching exactly the literal path ``path`` (anchored when it has a ``/``).

    Prefix it with ``/`` to anchor a single name to the root. Names holding a
    newline cannot be written in a file, only passed as a pattern.
    """
    out = bytearray()
    for byte in path:
        if byte in b"*?[\\ " or (not out and byte in b"!#"):
            out.append(0x5C)
        out.append(byte)
    return bytes(out)


def _wild(pattern: bytes) -> bytes:
    """Translate wildmatch syntax (with WM_PATHNAME) into an equivalent regex source."""
    out: list[bytes] = []
    i, n = 0, len(pattern)
    while i < n:
        byte = pattern[i]
        if byte == 0x5C:  # backslash
            if i + 1 == n:
                out.append(_NEVER)  # a trailing backslash never matches
                break
            out.append(re.escape(pattern[i + 1 : i + 2]))
            i += 2
        elif byte == 0x3F:  # ?
            out.append(b"[^/]")
            i += 1
        elif byte == 0x2A:  # *
            j = i
            while j < n and pattern[j] == 0x2A:
                j += 1
            after = pattern[j : j + 2]
            if j - i >= 2 and (i == 0 or pattern[i - 1] == _SLASH) and (j == n or after[:1] == b"/" or after == b"\\/"):
                if after[:1] == b"/":
                    out.append(b"(?:.*/)?")  # "**/": zero or more whole directories
                    j += 1
                else:
                    out.append(b".*")
            else:
                out.append(b"[^/]*")
            i = j
        elif byte == 0x5B:  # [
            members, i = _bracket(pattern, i)
            if members is None:
                out.append(_NEVER)  # an unterminated or malformed set never matches
                break
            out.append(_byte_class(members))
        else:
            out.append(re.escape(pattern[i : i + 1]))
            i += 1
    return b"".join(out)


def _bracket(pattern: bytes, start: int) -> tuple[frozenset[int] | None, int]:
    """Parse the set at ``pattern[start] == '['``: its bytes and the index after it.

    A faithful port of wildmatch's loop, including its quirks: a ``]`` first in
    the set is a member, ``-`` next to the ends is literal, a reversed range holds
    only its first byte, and ``[:`` without ``:]`` is an ordinary ``[``.
    """
    n = len(pattern)
    p = start + 1
    if p < n and pattern[p] in b"!^":
        negated = True
        p += 1
    else:
        negated = False
    members: set[int] = set()
    prev = 0
    while True:
        if p >= n:
            return None, n
        ch = pattern[p]
        if ch == 0x5C:
            p += 1
            if p >= n:
                return None, n
            ch = pattern[p]
            members.add(ch)
        elif ch == 0x2D and prev and p + 1 < n and pattern[p + 1] != 0x5D:  # a range prev-ch
            p += 1
            ch = pattern[p]
            if ch == 0x5C:
                p += 1
                if p >= n:
                    return None, n
                ch = pattern[p]
            members.update(range(prev, ch + 1))
            ch = 0
        elif ch == 0x5B and p + 1 < n and pattern[p + 1] == 0x3A:  # "[:"
            s = p + 2
            q = s
            while q < n and pattern[q] != 0x5D:
                q += 1
            if q >= n:
                return None, n
            if q - s - 1 < 0 or pattern[q - 1] != 0x3A:
                members.add(0x5B)  # not a class after all: a literal "[", then go on after it
            else:
                cls = _ASCII_CLASSES.get(pattern[s : q - 1])
                if cls is None:
                    return None, n
                members.update(cls)
                p = q
                ch = 0
        else:
            members.add(ch)
        prev = ch
        p += 1
        if p < n and pattern[p] == 0x5D:
            break
    chosen = frozenset(range(256)) - members if negated else frozenset(members)
    return chosen - {_SLASH, 0}, p + 1


def _byte_class(members: frozenset[int]) -> bytes:
    """A regex character class of exactly ``members`` (never empty-set syntax)."""
    if not members:
        return _NEVER
    ordered = sorted(members)
    parts = []
    lo = prev = ordered[0]
    for b in [*ordered[1:], -1]:
        if b == prev + 1:
            prev = b
            continue
        parts.append(b"\\x%02x" % lo if lo == prev else b"\\x%02x-\\x%02x" % (lo, prev))
        lo = prev = b
    return b"[" + b"".join(parts) + b"]"


# -- matching ------------------------------------------------------------------

# A fullmatch of one compiled alternation, or None when there are no rules of that kind.
_FullMatch = Callable[[bytes], "re.Match[bytes] | None"]


class _Matcher(NamedTuple):
    """The rules of one file that apply to one kind of path (files, or directories), as two regexes.

    Each regex is an alternation of the rules' patterns, the last rule first, one
    capturing group per rule. A regex engine tries alternatives in order, so the
    group that matches is the last matching rule of its kind: which rule decides
    is known from at most two calls, however many rules and ``!`` rules there are.
    """

    on_name: _FullMatch | None  # rules without a slash, on the last component
    name_rules: list[int]  # capturing group -> index of the rule
    on_path: _FullMatch | None  # the other rules, on the path below the file's directory
    path_rules: list[int]
    ignores: list[bool]  # by rule index: True for a rule that leaves out, False for a "!" rule

    @classmethod
    def of(cls, rules: Sequence[Pattern]) -> _Matcher:
        on_name, name_rules = _alternation([(i, r) for i, r in enumerate(rules) if r.basename])
        on_path, path_rules = _alternation([(i, r) for i, r in enumerate(rules) if not r.basename])
        return cls(on_name, name_rules, on_path, path_rules, [not r.negated for r in rules])


def _alternation(rules: list[tuple[int, Pattern]]) -> tuple[_FullMatch | None, list[int]]:
    """The alternation of ``rules`` (last first) and, per capturing group, the rule's index."""
    if not rules:
        return None, []
    ordered = rules[::-1]
    regex = re.compile(b"|".join(b"(" + r.regex + b")" for _, r in ordered), re.DOTALL)
    return regex.fullmatch, [-1] + [i for i, _ in ordered]


class _RuleFile(NamedTuple):
    """The rules of one ``.meshignore`` (or the built-in ones), compiled for the walk."""

    cut: int  # how much of a path to drop to get the part below the file's directory
    for_files: _Matcher
    for_dirs: _Matcher

    @classmethod
    def of(cls, base: bytes, rules: Sequence[Pattern]) -> _RuleFile:
        return cls(len(base) + 1 if base else 0, _Matcher.of([r for r in rules if not r.dir_only]), _Matcher.of(rules))


class IgnoreRules:
    """The ignore rules in effect in one tree: its ``.meshignore`` files plus :data:`ALWAYS`.

    Build it with :meth:`load` (reads the tree) or from file contents directly.
    ``files`` maps a directory (relative to the root, ``b""`` for the root,
    ``/``-separated) to the contents of its ``.meshignore``. The object itself is
    the ``ignore(relpath, is_dir)`` callable that ingest and plans take (it is
    :meth:`matches`); ``always`` rules are anchored at the root and win over
    every file.
    """

    def __init__(self, files: Mapping[bytes, bytes] | None = None, *, always: Sequence[bytes] = ALWAYS) -> None:
        self._always = tuple(always)
        self._sources: dict[bytes, bytes] = {}
        self._files: dict[bytes, _RuleFile] = {}
        self._top = _RuleFile.of(b"", [r for r in map(parse_line, self._always) if r is not None])
        self._stacks: dict[bytes, list[_RuleFile]] = {}
        self._fingerprint: bytes | None = None
        for base, data in sorted((files or {}).items()):
            self._add(base, data)

    def __repr__(self) -> str:
        where = ", ".join(repr(os.fsdecode(b or b".")) for b in sorted(self._sources)) or "none"
        return f"IgnoreRules(files in: {where}; always: {[os.fsdecode(a) for a in self._always]})"

    @classmethod
    def load(cls, root: str | os.PathLike[str] | bytes, *, always: Sequence[bytes] = ALWAYS) -> IgnoreRules:
        """Read every ``.meshignore`` of the tree at ``root``.

        Directories that the rules found above them leave out are not entered (so
        their ``.meshignore`` files have no effect, as in git). A ``.meshignore``
        that is a symlink is not followed and counts as absent. Raises
        SnapshotError if ``root`` is not a directory or a directory or rules file
        in the tree cannot be read.
        """
        base = os.fsencode(os.path.abspath(os.fspath(root)))
        rules = cls(always=always)
        if not os.path.isdir(base):
            raise SnapshotError(f"cannot read ignore rules of {os.fsdecode(base)}: not a directory")
        stack = [b""]
        while stack:
            rel = stack.pop()
            here = base + b"/" + rel if rel else base
            try:
                with os.scandir(here) as it:
                    entries = [(e.name, e.is_dir(follow_symlinks=False), e.path) for e in it]
            except OSError as exc:
                raise SnapshotError(f"cannot read directory {os.fsdecode(here)}: {exc.strerror}") from None
            for name, is_dir, path in entries:
                if name == FILE_NAME and not is_dir:
                    data = _read_rules(path)
                    if data is not None:
                        rules._add(rel, data)
            for name, is_dir, _ in entries:
                child = rel + b"/" + name if rel else name
                if is_dir and not rules.matches(child, True):
                    stack.append(child)
        return rules

    def _add(self, base: bytes, data: bytes) -> None:
        self._sources[base] = data
        self._files[base] = _RuleFile.of(base, parse(data))
        self._stacks.clear()
        self._fingerprint = None

    @property
    def files(self) -> list[bytes]:
        """The directories (relative, ``b""`` for the root) that hold a ``.meshignore``."""
        return sorted(self._sources)

    @property
    def fingerprint(self) -> bytes:
        """A stable name for these rules (ASCII), to tell stat caches of different rules apart."""
        if self._fingerprint is None:
            files = [[base, self._sources[base]] for base in sorted(self._sources)]
            data = codec.encode(["meshignore", _VERSION, list(self._always), files])
            self._fingerprint = blake3.blake3(data).hexdigest()[:32].encode("ascii")
        return self._fingerprint

    def _stack(self, parent: bytes) -> list[_RuleFile]:
        """The rule files that apply to entries of directory ``parent``, strongest first."""
        stack = self._stacks.get(parent)
        if stack is None:
            stack = [self._top]
            where: bytes | None = parent
            while where is not None:
                found = self._files.get(where)
                if found is not None:
                    stack.append(found)
                where = where.rpartition(b"/")[0] if where else None
            self._stacks[parent] = stack
        return stack

    def matches(self, rel: bytes, is_dir: bool) -> bool:
        """Whether the rules leave out path ``rel`` itself (``b"/"``-separated, relative to the root).

        It assumes the directories above ``rel`` are not left out, which is what a
        walk from the root that never enters a left-out directory needs (this is
        the ``ignore`` argument of :func:`mesh.cas.snapshot.ingest`). For the full
        answer for any path, use :meth:`ignored`.
        """
        parent, _, name = rel.rpartition(b"/")
        # The walk's hot path: everything is inlined.
        for cut, for_files, for_dirs in self._stacks.get(parent) or self._stack(parent):
            on_name, name_rules, on_path, path_rules, ignores = for_dirs if is_dir else for_files
            last = -1
            if on_name is not None and (m := on_name(name)) is not None:
                last = name_rules[m.lastindex or 0]
            if on_path is not None and (m := on_path(rel[cut:])) is not None:
                last = max(last, path_rules[m.lastindex or 0])
            if last >= 0:
                return ignores[last]
        return False

    __call__ = matches

    def ignored(self, rel: bytes, is_dir: bool) -> bool:
        """Whether ``rel`` is left out of a snapshot: by a rule, or because a directory above it is
        (what ``git check-ignore`` answers)."""
        parts = rel.split(b"/")
        for i in range(1, len(parts)):
            if self.matches(b"/".join(parts[:i]), True):
                return True
        return self.matches(rel, is_dir)


def _read_rules(path: bytes) -> bytes | None:
    """The contents of a rules file, or None if it is not a regular file (a symlink, a FIFO)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP or isinstance(exc, IsADirectoryError):
            return None
        raise SnapshotError(f"cannot read ignore rules {os.fsdecode(path)}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        if st.st_size > MAX_FILE_BYTES:
            raise SnapshotError(
                f"{os.fsdecode(path)} is {st.st_size} bytes, more than the {MAX_FILE_BYTES} a rules file may hold"
            )
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise SnapshotError(f"cannot read ignore rules {os.fsdecode(path)}: {exc.strerror}") from None
    finally:
        os.close(fd)


def excluding(root: str | os.PathLike[str], inside: str | os.PathLike[str]) -> Ignore | None:
    """An ``ignore`` rule leaving out ``inside`` if it lies strictly within ``root``, else None.

    Used to keep mesh's own data directory out of snapshots of a tree that holds it
    (say, a home directory): storing the store in itself only wastes space.
    """
    rel = os.path.relpath(os.path.realpath(inside), os.path.realpath(root))
    if rel == "." or rel == ".." or rel.startswith("../"):
        return None
    skip = os.fsencode(rel)
    return lambda path, is_dir: path == skip


@dataclass(frozen=True)
class TreeRules:
    """What a snapshot of a user's tree leaves out: ``ignore`` for the walk (None: nothing),
    and ``variant``, which tells the stat caches of different rules apart."""

    ignore: Ignore | None
    variant: bytes


def tree_rules(root: str | os.PathLike[str], *, home: str | os.PathLike[str], keep_all: bool = False) -> TreeRules:
    """The rules of a snapshot of ``root`` made by ``mesh snapshot`` or ``mesh exec``.

    Its ``.meshignore`` files and ``.git`` leave paths out, unless ``keep_all``; mesh's
    ``home`` is always left out when it lies inside ``root``. Raises SnapshotError,
    naming ``root``, when it cannot be read, and as :meth:`IgnoreRules.load` does.
    """
    try:
        os.stat(root)
    except OSError as exc:
        raise SnapshotError(f"cannot snapshot {os.fsdecode(root)}: {exc.strerror}") from None
    home_rule = excluding(root, home)
    if keep_all:
        return TreeRules(home_rule, b"")
    rules = IgnoreRules.load(root)
    if home_rule is None:
        return TreeRules(rules, rules.fingerprint)

    def ignore(rel: bytes, is_dir: bool) -> bool:
        return rules.matches(rel, is_dir) or home_rule(rel, is_dir)

    return TreeRules(ignore, rules.fingerprint)
