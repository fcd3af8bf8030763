"""Hypothesis strategies for directory trees (see treeutil for the description format)."""

from __future__ import annotations

from hypothesis import strategies as st

_unicode_names = st.text(
    alphabet=st.characters(blacklist_characters="/\0", blacklist_categories=("Cs",)), min_size=1, max_size=12
).map(lambda s: s.encode("utf-8"))
_byte_names = st.binary(min_size=1, max_size=12).filter(lambda b: b"/" not in b and b"\0" not in b)
names = (
    _unicode_names | _byte_names | st.sampled_from([b"a", b"b", b".hidden", b"-dash", b" sp ", b"\xff\xfe"])
).filter(lambda b: b not in (b".", b"..") and len(b) <= 255)

link_targets = st.sampled_from([b"/etc/passwd", b"../../outside", b"dangling", b"/", b"a/b/c"]) | st.binary(
    min_size=1, max_size=40
).filter(lambda b: b"\0" not in b)

contents = st.binary(max_size=300) | st.sampled_from([b"", b"\0" * 5000]) | st.binary(min_size=2000, max_size=70_000)

leaves = st.tuples(st.just("file"), contents, st.booleans()) | st.tuples(st.just("link"), link_targets)

trees = st.recursive(
    st.dictionaries(names, leaves, max_size=4),
    lambda children: st.dictionaries(names, leaves | children.map(lambda d: ("dir", d)), max_size=4),
    max_leaves=16,
)
