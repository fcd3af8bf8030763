"""Times manifests (mesh.cas.times): made by the snapshot's walk, refused when hostile, applied
by checkouts in both modes (link mode through timed copies)."""

from __future__ import annotations

import os
import stat
import textwrap
from array import array
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh import codec
from mesh.cas import times as times_mod
from mesh.cas.checkout import checkout
from mesh.cas.digest import Digest
from mesh.cas.plan import plan_tree
from mesh.cas.snapshot import ingest, ingest_timed, resolve
from mesh.cas.store import LocalStore
from mesh.cas.times import FIXED_MTIME_NS, Times, decode
from mesh.errors import CodecError, InvalidTimes
from tests.freshpy import run_fresh

T0 = 1_600_000_000_987_654_321


def _tree(root: Path) -> dict[str, int]:
    """Every kind of entry, each with its own mtime (directories set last); returns them."""
    (root / "d" / "e").mkdir(parents=True)
    (root / "f").write_text("f\n")
    (root / "x").write_text("#!/bin/sh\n")
    (root / "x").chmod(0o755)
    (root / "d" / "e" / "g").write_text("g\n")
    (root / "d" / "same").write_text("f\n")  # the same blob as f, another time
    (root / "l").symlink_to("f")
    order = ["f", "x", "d/e/g", "d/same", "l", "d/e", "d", ""]
    wanted = {p: T0 + i * 1_000_003 for i, p in enumerate(order)}
    for p, ns in wanted.items():
        os.utime(root / p if p else root, ns=(ns, ns), follow_symlinks=False)
    return wanted


def _seen(root: Path, paths: list[str]) -> dict[str, int]:
    return {p: os.lstat(root / p if p else root).st_mtime_ns for p in paths}


def test_a_manifest_round_trips_and_is_canonical() -> None:
    times = Times.of([(b"", 5), (b"b", -3), (b"a/c", 7), (b"a", 1 << 62)])
    assert times.paths == [b"", b"a", b"a/c", b"b"]
    data = times.encode()
    again = decode(data)
    assert again.paths == times.paths and list(again.mtimes) == [5, 1 << 62, 7, -3]
    assert again.get(b"a/c") == 7 and again.get(b"nope") is None
    assert again.encode() == data


@given(
    st.dictionaries(
        st.from_regex(rb"[a-z]{1,3}(/[a-z]{1,3}){0,2}", fullmatch=True), st.integers(-(1 << 63), (1 << 63) - 1)
    )
)
def test_any_valid_manifest_round_trips(items: dict[bytes, int]) -> None:
    times = Times.of([(b"", 0), *items.items()])
    assert decode(times.encode()).encode() == times.encode()


def _raw(paths: list[bytes], mtimes: list[int], magic: str = "times", version: int = 1) -> bytes:
    return codec.encode([magic, version, b"\0".join(paths), array("q", mtimes).tobytes()])


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (_raw([b"", b"../etc"], [0, 0]), "invalid path"),
        (_raw([b"", b"a/../b"], [0, 0]), "invalid path"),
        (_raw([b"", b"/abs"], [0, 0]), "invalid path"),
        (_raw([b"", b"a//b"], [0, 0]), "invalid path"),
        (_raw([b"", b"a/"], [0, 0]), "invalid path"),
        (_raw([b"", b"./a"], [0, 0]), "invalid path"),
        (_raw([b"", b"."], [0, 0]), "invalid path"),
        (_raw([b"", b""], [0, 0]), "invalid path"),
        (_raw([b"", b"a" * 256], [0, 0]), "invalid path"),
        (_raw([b"", b"/".join([b"a" * 200] * 21)], [0, 0]), "longer than 4096"),
        (_raw([b"a"], [0]), "root"),
        (_raw([b"", b"b", b"a"], [0, 0, 0]), "not sorted"),
        (_raw([b"", b"a", b"a"], [0, 0, 0]), "not sorted"),
        (_raw([b"", b"a"], [0]), "mtimes"),
        (_raw([b"", b"a"], [0, 0], version=2), "version"),
        (_raw([b""], [0], magic="tree"), "not a times manifest"),
        (codec.encode(["times", 1, "text", b""]), "must be bytes"),
        (b"\x84\x65times\x01\x40\x48" + bytes(7), "not a times manifest"),  # truncated
        (codec.encode(["times", 1, b"", bytes(8)]) + b"\x00", "not a times manifest"),  # trailing bytes
        # 1 encoded as a two-byte integer: valid CBOR, but not canonical
        (b"\x84\x65times\x18\x01\x40\x48" + bytes(8), "canonical"),
    ],
)
def test_hostile_manifests_are_refused(data: bytes, says: str) -> None:
    with pytest.raises(InvalidTimes, match=says):
        decode(data)


def test_a_manifest_over_the_size_limit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(times_mod, "MAX_BYTES", 100)
    with pytest.raises(InvalidTimes, match="exceeds the limit"):
        decode(Times.of([(b"", 0)] + [(b"p%03d" % i, i) for i in range(20)]).encode())
    assert issubclass(InvalidTimes, CodecError)  # the API answers it with a 400, like a bad tree


def test_the_walk_collects_current_times_even_from_a_warm_cache(tmp_path: Path) -> None:
    from mesh.cas.statcache import StatCache

    tree = tmp_path / "tree"
    tree.mkdir()
    wanted = _tree(tree)
    with LocalStore(tmp_path / "store") as store:
        cache = StatCache.for_tree(str(tmp_path / "home"), str(tree), store.root, store.epoch(), now_ns=lambda: 1 << 62)
        root, times = ingest_timed(store, tree, cache=cache, workers=1)
        assert root == ingest(store, tree)  # the id is content only
        assert {os.fsdecode(p): times.get(p) for p in times.paths} == wanted
        os.utime(tree / "f", ns=(T0 - 1, T0 - 1))  # a touch: same content, same id, new time
        cache = StatCache.for_tree(str(tmp_path / "home"), str(tree), store.root, store.epoch(), now_ns=lambda: 1 << 62)
        again, touched = ingest_timed(store, tree, cache=cache, workers=1)
    assert again == root and touched.get(b"f") == T0 - 1 and touched.get(b"x") == wanted["x"]
    assert plan_tree(tree, workers=1).times == touched.encode()  # a remote client's plan says the same


def test_forked_warm_walks_send_back_the_times_of_the_subtrees_they_prune(tmp_path: Path) -> None:
    """A warm walk in worker processes returns a reusable subtree as its digest only: its
    entries' times must still reach the manifest."""
    script = textwrap.dedent(
        """
        import os, sys
        from mesh.cas import walk
        from mesh.cas.snapshot import ingest_timed
        from mesh.cas.statcache import StatCache
        from mesh.cas.store import LocalStore

        walk.PARALLEL_MIN_FILES = 1
        walk.SUBTREES = 3
        base = sys.argv[1]
        tree = base + "/tree"
        for a in range(6):
            os.makedirs(f"{tree}/a{a}/deep")
            for f in range(5):
                with open(f"{tree}/a{a}/deep/f{f}", "w") as out:
                    out.write(f"{a} {f}")
                os.utime(f"{tree}/a{a}/deep/f{f}", ns=(a * 1000 + f, a * 1000 + f))
        with LocalStore(base + "/store") as store:
            def timed(workers):
                cache = StatCache.for_tree(base + "/home", tree, store.root, store.epoch(), now_ns=lambda: 1 << 62)
                root, times = ingest_timed(store, tree, cache=cache, workers=workers)
                return root, times.encode(), cache.statistics()
            one = timed(1)
            warm = timed(2)
        assert warm[:2] == one[:2], "forked warm walk lost times"
        print("hits", warm[2].hits)
        """
    )
    out = run_fresh(script, tmp_path)
    assert "hits 30" in out


@pytest.mark.parametrize("mode", ["copy", "link"])
def test_a_checkout_gives_every_entry_its_time(tmp_path: Path, mode: str) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    wanted = _tree(tree)
    with LocalStore(tmp_path / "store") as store:
        root, times = ingest_timed(store, tree)
        for workers in (1, 2):
            target = tmp_path / f"out-{mode}-{workers}"
            checkout(store, root, target, mode=mode, times=times, workers=workers)  # type: ignore[arg-type]
            assert _seen(target, list(wanted)) == wanted
            assert os.access(target / "x", os.X_OK)
        if mode == "link":
            linked = os.stat(tmp_path / "out-link-1" / "f")
            assert linked.st_nlink >= 3 and not linked.st_mode & stat.S_IWUSR  # a shared read-only timed copy
            blob = os.stat(store.blob_path(_digest_of(store, root, b"f")))
            assert blob.st_mtime_ns != wanted["f"]  # the blob file's own time is the store's


def _digest_of(store: LocalStore, root: Digest, path: bytes) -> Digest:
    return resolve(store, root, path).blob


def test_a_fixed_time_is_given_to_every_entry(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    wanted = _tree(tree)
    with LocalStore(tmp_path / "store") as store:
        root = ingest(store, tree)
        for mode in ("copy", "link"):
            target = tmp_path / mode
            checkout(store, root, target, mode=mode, times=FIXED_MTIME_NS)  # type: ignore[arg-type]
            assert set(_seen(target, list(wanted)).values()) == {FIXED_MTIME_NS}


def test_a_manifest_that_does_not_fit_the_snapshot_is_refused(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    _tree(tree)
    with LocalStore(tmp_path / "store") as store:
        root, times = ingest_timed(store, tree)
        short = Times.of((p, m) for p, m in zip(times.paths, times.mtimes, strict=True) if p != b"d/e/g")
        with pytest.raises(InvalidTimes, match="does not list 'd/e/g'"):
            checkout(store, root, tmp_path / "short", times=short)
        extra = Times.of([*zip(times.paths, times.mtimes, strict=True), (b"zzz", 1)])
        with pytest.raises(InvalidTimes, match="lists 9 entries"):
            checkout(store, root, tmp_path / "extra", times=extra)


def _one_file(tmp_path: Path, store: LocalStore) -> tuple[Digest, Times]:
    """A tree of one file ``a`` ("alpha"), stored, linked out as ``one``: its id and times."""
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "a").write_text("alpha\n")
    root, times = ingest_timed(store, tree)
    checkout(store, root, tmp_path / "one", mode="link", times=times)
    return root, times


def _timed_copies(store: LocalStore) -> list[Path]:
    return [p for p in (Path(store.root) / "timed").rglob("*") if p.is_file()]


def test_timed_copies_are_reused_and_pruned_when_unused_or_orphaned(tmp_path: Path) -> None:
    with LocalStore(tmp_path / "store") as store:
        root, times = _one_file(tmp_path, store)
        checkout(store, root, tmp_path / "two", mode="link", times=times)
        timed = _timed_copies(store)
        assert len(timed) == 1 and timed[0].stat().st_nlink == 3  # made once, linked twice
        assert store.prune_timed(unused=True) == 0  # both checkouts link it
        (tmp_path / "one" / "a").unlink()
        (tmp_path / "two" / "a").unlink()
        assert store.prune_timed(unused=True) == 1
        checkout(store, root, tmp_path / "three", mode="link", times=times)  # made again on need
        assert os.lstat(tmp_path / "three" / "a").st_mtime_ns == times.get(b"a")
        os.unlink(store.blob_path(_digest_of(store, root, b"a")))
        assert store.prune_timed(unused=False) == 1  # its blob is gone


def test_a_damaged_timed_copy_is_found_and_made_again(tmp_path: Path) -> None:
    with LocalStore(tmp_path / "store") as store:
        root, times = _one_file(tmp_path, store)
        [copy] = _timed_copies(store)
        (tmp_path / "one" / "a").unlink()
        copy.chmod(0o644)
        copy.write_text("ALPHA\n")
        checkout(store, root, tmp_path / "two", mode="link", times=times)
        assert (tmp_path / "two" / "a").read_text() == "alpha\n"
        assert os.lstat(tmp_path / "two" / "a").st_mtime_ns == times.get(b"a")
