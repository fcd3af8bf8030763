""".meshignore: gitignore's rules, checked against real git and by table."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.cas.snapshot import ingest, walk
from mesh.cas.statcache import StatCache
from mesh.cas.store import LocalStore
from mesh.errors import SnapshotError
from mesh.ignore import ALWAYS, IgnoreRules, escape, parse

GIT = shutil.which("git")
needs_git = pytest.mark.skipif(GIT is None, reason="git is not installed")


def rules_of(text: bytes, **nested: bytes) -> IgnoreRules:
    files = {b"": text}
    files.update({k.encode(): v for k, v in nested.items()})
    return IgnoreRules(files)


# -- table tests -------------------------------------------------------------------

# (rules, path, is_dir, whether the path itself is matched)
TABLE: list[tuple[bytes, bytes, bool, bool]] = [
    # blank lines, comments and escapes
    (b"\n\n", b"a", False, False),
    (b"#a\n", b"#a", False, False),
    (b"\\#a\n", b"#a", False, True),
    (b" #a\n", b" #a", False, True),
    (b"\\!a\n", b"!a", False, True),
    (b"*\n!a\n", b"a", False, False),
    (b"*\n!a\n", b"b", False, True),
    (b"!a\n*\n", b"a", False, True),  # the last matching line wins
    # trailing spaces
    (b"a  \n", b"a", False, True),
    (b"a  \n", b"a  ", False, False),
    (b"a\\ \n", b"a ", False, True),
    (b"a\\  \n", b"a ", False, True),
    (b"a \\ \n", b"a  ", False, True),
    (b"a\t\n", b"a\t", False, True),  # only spaces are trimmed
    # directories only
    (b"build/\n", b"build", True, True),
    (b"build/\n", b"build", False, False),
    (b"build/\n", b"src/build", True, True),
    (b"!build/\n", b"build", True, False),
    # anchoring: leading or middle slash
    (b"/top\n", b"top", False, True),
    (b"/top\n", b"d/top", False, False),
    (b"top\n", b"d/top", False, True),
    (b"d/x\n", b"d/x", False, True),
    (b"d/x\n", b"e/d/x", False, False),
    (b"d/x/\n", b"d/x", True, True),
    (b"d/x/\n", b"d/x", False, False),
    # * ? and sets
    (b"*.o\n", b"a/b/c.o", False, True),
    (b"*.o\n", b"c.oo", False, False),
    (b"a/*\n", b"a/b", False, True),
    (b"a/*\n", b"a/b/c", False, False),
    (b"a?c\n", b"abc", False, True),
    (b"a?c\n", b"ac", False, False),
    (b"a/?/c\n", b"a/b/c", False, True),
    (b"[a-c]x\n", b"bx", False, True),
    (b"[a-c]x\n", b"dx", False, False),
    (b"[!a-c]x\n", b"dx", False, True),
    (b"[^a-c]x\n", b"ax", False, False),
    (b"[]]\n", b"]", False, True),
    (b"[!]]\n", b"a", False, True),
    (b"[a-]\n", b"-", False, True),
    (b"[c-a]\n", b"c", False, True),  # a reversed range holds its first byte only
    (b"[c-a]\n", b"b", False, False),
    (b"[[:digit:]]x\n", b"7x", False, True),
    (b"[[:digit:]]x\n", b"ax", False, False),
    (b"[[:space:]]\n", b"\x0b", False, False),
    (b"[[:bogus:]]\n", b"b", False, False),
    (b"[ab\n", b"[ab", False, False),  # an unterminated set matches nothing
    (b"/a?b\n", b"a/b", False, False),  # neither ? nor a set nor * matches a slash
    (b"/a[!x]b\n", b"a/b", False, False),
    (b"/a[[:punct:]]b\n", b"a/b", False, False),
    (b"/a*\n", b"a/b", False, False),
    (b"\\*\n", b"*", False, True),
    (b"\\*\n", b"x", False, False),
    (b"a\\\n", b"a\\", False, False),  # a trailing backslash matches nothing
    (b"\xff*\n", b"\xff\xfe", False, True),
    # ** in all its places
    (b"**/foo\n", b"foo", False, True),
    (b"**/foo\n", b"a/b/foo", False, True),
    (b"**/foo/bar\n", b"x/foo/bar", False, True),
    (b"**/foo/bar\n", b"foo/bar", False, True),
    (b"abc/**\n", b"abc/x/y", False, True),
    (b"abc/**\n", b"abc", True, False),
    (b"a/**/b\n", b"a/b", False, True),
    (b"a/**/b\n", b"a/x/b", False, True),
    (b"a/**/b\n", b"a/x/y/b", False, True),
    (b"a/**/b\n", b"a/xb", False, False),
    (b"a**/b\n", b"a/b", False, True),
    (b"a**/b\n", b"ab", False, True),  # git's quirk: the literal "a" is split off, "**/b" starts a pattern
    (b"x/a**/b\n", b"x/ab/c/b", False, True),
    (b"a/b**\n", b"a/bc/d", False, True),
    (b"a/x**y\n", b"a/x/y", False, False),
    (b"**\n", b"anything", False, True),
    (b"a/**\\/b\n", b"a/x/b", False, True),
    (b"a/**\\/b\n", b"a/b", False, False),
    # CRLF, BOM, NUL
    (b"a\r\nb\r\n", b"b", False, True),
    (b"\xef\xbb\xbfa\n", b"a", False, True),
    (b"a\0b\n", b"a", False, True),
    (b"!\n/\n", b"a", True, False),
]


@pytest.mark.parametrize(("text", "path", "is_dir", "expected"), TABLE)
def test_table(text: bytes, path: bytes, is_dir: bool, expected: bool) -> None:
    assert rules_of(text).matches(path, is_dir) is expected


def test_ignored_includes_parent_directories() -> None:
    rules = rules_of(b"a/*\n!a/b/c\n")
    assert not rules.matches(b"a/b/c", False)
    assert rules.ignored(b"a/b/c", False)  # a/b is left out, so nothing below it can come back
    assert not rules.ignored(b"a", True)


def test_deeper_files_win_and_anchor_to_their_directory() -> None:
    rules = rules_of(b"*.log\n/top\n", sub=b"!keep.log\n/top\n", **{"sub/deep": b"keep.log\n"})
    assert rules.matches(b"x.log", False)
    assert rules.matches(b"sub/x.log", False)
    assert not rules.matches(b"sub/keep.log", False)
    assert rules.matches(b"sub/deep/keep.log", False)
    assert rules.matches(b"sub/top", False)
    assert not rules.matches(b"sub/deep/top", False)
    assert not rules.matches(b"other/top", False)


def test_git_is_always_left_out() -> None:
    rules = rules_of(b"!.git\n!*\n")
    assert rules.matches(b".git", True) and rules.matches(b"sub/.git", False)
    assert not IgnoreRules(always=()).matches(b".git", True)
    assert ALWAYS == (b".git",)


def test_parse_keeps_the_line_and_flags() -> None:
    [rule] = parse(b"!/a/b/  \n")
    assert rule.source == b"!/a/b/" and rule.negated and rule.dir_only and not rule.basename
    assert rule.matches(b"a/b", True) and not rule.matches(b"a/b", False)


def test_escape_gives_a_literal_pattern() -> None:
    for name in [b"!x", b"#x", b"a b ", b"*?[x]\\", b"\xff"]:
        rules = IgnoreRules(always=(b"/" + escape(name),))
        assert rules.matches(name, False), name
        assert not rules.matches(b"d/" + name, False)
        assert not rules.matches(name + b"x", False)


# -- loading a tree ------------------------------------------------------------------


def write(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def test_load_reads_nested_files_but_not_inside_ignored_directories(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            ".meshignore": b"out/\n*.tmp\n",
            "src/.meshignore": b"!*.tmp\n",
            "src/a.tmp": b"",
            "out/.meshignore": b"!*\n",
            "out/x": b"",
            "b.tmp": b"",
            ".git/.meshignore": b"!*\n",
        },
    )
    rules = IgnoreRules.load(tmp_path)
    assert rules.files == [b"", b"src"]
    assert rules.matches(b"b.tmp", False) and not rules.matches(b"src/a.tmp", False)
    assert rules.ignored(b"out/x", False)


def test_symlinked_or_directory_rules_files_are_not_read(tmp_path: Path) -> None:
    write(tmp_path, {"elsewhere": b"*\n", "sub/.meshignore/x": b"*\n"})
    (tmp_path / ".meshignore").symlink_to("elsewhere")
    rules = IgnoreRules.load(tmp_path)
    assert rules.files == [] and not rules.matches(b"a", False)


def test_load_refuses_a_missing_root(tmp_path: Path) -> None:
    with pytest.raises(SnapshotError, match="not a directory"):
        IgnoreRules.load(tmp_path / "nope")


def test_fingerprint_is_stable_and_follows_every_file(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for root in (a, b):
        write(root, {".meshignore": b"*.o\n", "sub/.meshignore": b"x\n", "sub/f": b""})
    one = IgnoreRules.load(a).fingerprint
    assert one == IgnoreRules.load(b).fingerprint  # the tree's location does not matter
    assert one.isascii() and b"\0" not in one
    (b / "sub" / ".meshignore").write_bytes(b"y\n")
    assert IgnoreRules.load(b).fingerprint != one
    assert IgnoreRules.load(a, always=(*ALWAYS, b"/cas")).fingerprint != one


def test_ingest_with_rules_and_a_cache_per_rule_set(store: LocalStore, home: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(
        src, {".meshignore": b"*.o\n", "sub/.meshignore": b"!keep.o\n", "a.o": b"", "sub/keep.o": b"", "sub/b.o": b""}
    )
    (src / ".git").mkdir()

    def snapshot() -> list[bytes]:
        rules = IgnoreRules.load(src)
        cache = StatCache.for_tree(str(home), str(src), store.root, store.epoch(), variant=rules.fingerprint)
        digest = ingest(store, src, cache=cache, ignore=rules.matches, sync=False)
        return [p for p, _ in walk(store, digest)]

    assert snapshot() == [b".meshignore", b"sub", b"sub/.meshignore", b"sub/keep.o"]
    (src / "sub" / ".meshignore").write_bytes(b"!*.o\n")  # the directory's own stat does not change
    assert snapshot() == [b".meshignore", b"sub", b"sub/.meshignore", b"sub/b.o", b"sub/keep.o"]


# -- against git ---------------------------------------------------------------------

# Names and patterns are drawn from one small alphabet, mostly "a" and "b", so that
# patterns often match; the special bytes appear often enough to meet every rule.
NAME_BYTES = b"aaaabbbc.*?[]!#\\ -\xff"
names = (
    st.binary(min_size=1, max_size=3)
    .map(lambda b: bytes(NAME_BYTES[x % len(NAME_BYTES)] for x in b))
    .filter(lambda n: n not in (b".", b"..", b".git"))
)

TOKENS = [
    b"a", b"a", b"b", b"b", b"c", b".", b"*", b"*", b"**", b"?", b"?", b"[ab]", b"[!a]", b"[a-c]", b"[c-a]",
    b"[]a]", b"[[:alpha:]]", b"[^b]", b"[*?]", b"\\*", b"\\ ", b"\\!", b"\\#", b"\\\\", b"\\[", b"/", b"/",
    b"/", b" ", b"-", b"[", b"\xff", b"#", b"!", b"[a-]", b"[\\]]", b"[[:x]", b"[b-\\c]", b"[[:nope:]]",
]  # fmt: skip
pattern_lines = st.builds(
    lambda neg, lead, toks, trail, spaces: neg + lead + b"".join(toks) + trail + spaces,
    st.sampled_from([b"", b"", b"!"]),
    st.sampled_from([b"", b"", b"/", b"**/"]),
    st.lists(st.sampled_from(TOKENS), min_size=1, max_size=4),
    st.sampled_from([b"", b"", b"/", b"/**"]),
    st.sampled_from([b"", b"", b"  ", b"\\ "]),
)
trees = st.recursive(
    st.dictionaries(names, st.just(None), max_size=4),
    lambda children: st.dictionaries(names, st.none() | children, max_size=4),
    max_leaves=20,
).filter(lambda tree: len(all_paths(tree)) >= 3)


def all_paths(tree: dict[bytes, Any], prefix: bytes = b"") -> list[bytes]:
    out = []
    for name, sub in tree.items():
        path = prefix + b"/" + name if prefix else name
        out.append(path)
        if sub is not None:
            out.extend(all_paths(sub, path))
    return out


# How a pattern derived from a real path may rewrite each of its bytes: mostly kept.
_BYTE_EDITS = ["keep"] * 6 + ["escape", "?", "*", "set", "notset", "range", "class"]


@st.composite
def derived_line(draw: st.DrawFn, paths: list[bytes]) -> bytes:
    """A rule made from an existing path (a suffix of it, some bytes turned into wildcards)."""
    parts = draw(st.sampled_from(paths)).split(b"/")
    parts = parts[draw(st.integers(0, len(parts) - 1)) :]
    out = []
    for part in parts:
        whole = draw(st.sampled_from([None] * 6 + [b"*", b"**", b"?*"]))
        if whole is not None:
            out.append(whole)
            continue
        pieces = []
        for byte in part:
            edit = draw(st.sampled_from(_BYTE_EDITS))
            char = bytes([byte])
            pieces.append(
                {
                    "keep": char,
                    "escape": b"\\" + char,
                    "?": b"?",
                    "*": b"*",
                    "set": b"[x" + char + b"]",
                    "notset": b"[!" + char + b"]",
                    "range": b"[" + bytes([max(1, byte - 1)]) + b"-" + bytes([min(255, byte + 1)]) + b"]",
                    "class": b"[[:alpha:][:punct:]]",
                }[edit]
            )
        out.append(b"".join(pieces))
    body = out[0]
    for part in out[1:]:  # a slash now and then becomes a wildcard that must not match it
        body += draw(st.sampled_from([b"/"] * 3 + [b"?", b"[/]", b"[!x]", b"*/", b"[[:punct:]]"])) + part
    lead = draw(st.sampled_from([b"", b"", b"/", b"**/"]))
    trail = draw(st.sampled_from([b"", b"", b"/", b"/**", b"  "]))
    return draw(st.sampled_from([b"", b"", b"!"])) + lead + body + trail


def rule_files(paths: list[bytes]) -> st.SearchStrategy[bytes]:
    lines = pattern_lines | st.sampled_from([b"", b"# c", b"*", b"!*/"])
    if paths:
        lines = derived_line(paths) | derived_line(paths) | lines
    return st.builds(
        lambda lines, sep, bom: (b"\xef\xbb\xbf" if bom else b"") + sep.join(lines) + sep,
        st.lists(lines, min_size=1, max_size=6),
        st.sampled_from([b"\n", b"\r\n"]),
        st.booleans(),
    )


def git(root: Path, *args: str, input: bytes = b"") -> bytes:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(root),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": "/dev/null",
    }
    done = subprocess.run(
        ["git", "-c", "core.excludesFile=/dev/null", "-c", "core.ignoreCase=false", *args],
        cwd=root,
        input=input,
        capture_output=True,
        env=env,
        timeout=60,
    )
    assert done.returncode in (0, 1), done.stderr
    return done.stdout


def build(root: Path, tree: dict[bytes, Any], rules: list[bytes]) -> Iterator[tuple[bytes, bool]]:
    """Create the tree, writing the next rules file (as .gitignore and .meshignore) in each directory."""
    base = os.fsencode(root)
    stack: list[tuple[bytes, dict[bytes, Any]]] = [(b"", tree)]
    while stack:
        rel, entries = stack.pop()
        here = base + b"/" + rel if rel else base
        if rules:
            text = rules.pop()
            for name in (b".gitignore", b".meshignore"):
                with open(here + b"/" + name, "wb") as f:
                    f.write(text)
        for name, sub in entries.items():
            if name in (b".gitignore", b".meshignore"):
                continue
            path = rel + b"/" + name if rel else name
            if sub is None:
                open(base + b"/" + path, "wb").close()
                yield path, False
            else:
                os.mkdir(base + b"/" + path)
                yield path, True
                stack.append((path, sub))


def kept_files(root: Path, rules: IgnoreRules) -> set[bytes]:
    """The files a top-down walk that asks ``rules.matches`` keeps (what ingest does)."""
    out = set()
    base = os.fsencode(root)
    stack = [b""]
    while stack:
        rel = stack.pop()
        with os.scandir(base + b"/" + rel if rel else base) as it:
            for entry in it:
                path = rel + b"/" + entry.name if rel else entry.name
                is_dir = entry.is_dir(follow_symlinks=False)
                if rules.matches(path, is_dir):
                    continue
                if is_dir:
                    stack.append(path)
                else:
                    out.add(path)
    return out


@needs_git
@given(trees, st.data())
def test_same_answers_as_git(tree: dict[bytes, Any], data: st.DataObject) -> None:
    files = data.draw(st.lists(rule_files(all_paths(tree)), min_size=1, max_size=4), label="rule files")
    root = Path(tempfile.mkdtemp(prefix="mesh-ign-"))
    try:
        git(root, "init", "-q", ".")
        paths = [(p, d) for p, d in build(root, tree, list(files)) if not p.startswith(b":")]
        rules = IgnoreRules.load(root)

        asked = b"".join(p + b"\0" for p, _ in paths)
        ignored_by_git = set(git(root, "check-ignore", "--no-index", "--stdin", "-z", input=asked).split(b"\0")) - {b""}
        mismatches = [(p, d, p in ignored_by_git) for p, d in paths if rules.ignored(p, d) != (p in ignored_by_git)]
        assert not mismatches

        listed_by_git = set(git(root, "ls-files", "-z", "--others", "--exclude-standard").split(b"\0")) - {b""}
        assert kept_files(root, rules) == listed_by_git
    finally:
        shutil.rmtree(root)


def plain_name(name: bytes) -> bool:
    """A name git can be asked about and a rules file can hold."""
    return not (set(name) & set(b"/\0\n\r")) and name not in (b".", b"..", b".git") and not name.startswith(b":")


@needs_git
@settings(max_examples=40)
@given(st.lists(st.binary(min_size=1, max_size=6).filter(plain_name), min_size=1, max_size=5, unique=True))
def test_escaped_names_match_only_themselves_in_git_too(all_names: list[bytes]) -> None:
    root = Path(tempfile.mkdtemp(prefix="mesh-esc-"))
    try:
        git(root, "init", "-q", ".")
        target = all_names[0]
        (root / ".gitignore").write_bytes(b"/" + escape(target) + b"\n")
        for name in all_names:
            with open(os.fsencode(root) + b"/" + name, "wb"):
                pass
        out = git(root, "check-ignore", "--no-index", "--stdin", "-z", input=b"".join(n + b"\0" for n in all_names))
        assert set(out.split(b"\0")) - {b""} == {target}
        rules = IgnoreRules({b"": b"/" + escape(target) + b"\n"})
        assert [n for n in all_names if rules.matches(n, False)] == [target]
    finally:
        shutil.rmtree(root)
