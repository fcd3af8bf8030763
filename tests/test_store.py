"""LocalStore: immutable verified blobs, atomic publication, pins and eviction."""

from __future__ import annotations

import contextlib
import errno
import io
import os
import stat
import threading
import time
from pathlib import Path

import pytest

from mesh.cas import gc
from mesh.cas.digest import Digest
from mesh.cas.fsck import fsck
from mesh.cas.hasher import MMAP_THRESHOLD
from mesh.cas.snapshot import ingest
from mesh.cas.store import LocalStore
from mesh.errors import BlobDamaged, BlobNotFound, DigestMismatch, StoreError, StoreFull


def damage(store: LocalStore, digest: Digest, data: bytes) -> None:
    """Overwrite a blob file in place, as a careless process with the owner's rights could."""
    path = store.blob_path(digest)
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.write(data)


def test_put_get_has(store: LocalStore) -> None:
    d = store.put(b"hello")
    assert d == Digest.of(b"hello")
    assert store.has(d)
    assert store.get(d) == b"hello"
    assert store.find_missing([d, Digest.of(b"nope"), d, Digest.of(b"nope")]) == [Digest.of(b"nope")]
    assert stat.S_IMODE(os.stat(store.blob_path(d)).st_mode) == 0o444
    with pytest.raises(BlobNotFound):
        store.get(Digest.of(b"absent"))
    with pytest.raises(BlobNotFound):
        store.open(Digest.of(b"absent"))


def test_sharded_layout(store: LocalStore) -> None:
    d = store.put(b"layout")
    assert store.blob_path(d) == os.path.join(store.root, "blobs", d.hex[:2], d.hex)


def test_put_is_idempotent(store: LocalStore) -> None:
    a = store.put(b"same")
    b = store.put(b"same")
    assert a == b
    stats = store.statistics()
    assert stats.blobs_written == 1 and stats.blobs_already_present == 1
    assert store.usage() == (1, 4)


def test_put_file_small_and_large(store: LocalStore, tmp_path: Path) -> None:
    for size in (0, 10, MMAP_THRESHOLD - 1, MMAP_THRESHOLD, 3 * MMAP_THRESHOLD + 5):
        src = tmp_path / f"f{size}"
        data = os.urandom(size)
        src.write_bytes(data)
        d = store.put_file(str(src))
        assert d == Digest.of(data)
        assert store.get(d) == data


def test_put_file_refuses_symlinks_and_fifos(store: LocalStore, tmp_path: Path) -> None:
    (tmp_path / "t").write_bytes(b"x")
    os.symlink("t", tmp_path / "l")
    with pytest.raises(OSError):
        store.put_file(str(tmp_path / "l"))
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(Exception, match="not a regular file"):
        store.put_file(str(tmp_path / "fifo"))


def test_writer_verifies_expected_digest(store: LocalStore) -> None:
    good = b"streamed " * 1000
    with store.writer(Digest.of(good)) as w:
        for i in range(0, len(good), 777):
            w.write(good[i : i + 777])
        assert w.commit() == Digest.of(good)
    assert store.get(Digest.of(good)) == good

    wrong = Digest.of(b"something else entirely")
    with store.writer(Digest(wrong.hash, 5)) as w:
        w.write(b"12345")
        with pytest.raises(DigestMismatch):
            w.commit()
    assert not store.has(Digest(wrong.hash, 5))

    with store.writer(Digest.of(b"abc")) as w:
        with pytest.raises(DigestMismatch, match="more than 3 bytes"):
            w.write(b"abcd")
    assert os.listdir(os.path.join(store.root, "tmp")) == []


def _read_all(store: LocalStore, digest: Digest, **kwargs: bool) -> bytes:
    """The blob through ``store.open``, read in pieces; what was handed out before any error is kept
    in ``_read_all.seen``."""
    _read_all.seen = b""  # type: ignore[attr-defined]
    with store.open(digest, **kwargs) as r:
        while chunk := r.read(65536):
            _read_all.seen += chunk  # type: ignore[attr-defined]
    return _read_all.seen  # type: ignore[attr-defined]


def _copied(store: LocalStore, digest: Digest) -> bytes:
    fd = os.open(store.root + "/../copy", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        store.copy_to(digest, fd)
    finally:
        os.close(fd)
    return b"copied"


READS = {
    "get": lambda store, d: store.get(d),
    "open": _read_all,
    "open, check_first": lambda store, d: _read_all(store, d, check_first=True),
    "copy_to": _copied,
}


@pytest.mark.parametrize("size", [100, MMAP_THRESHOLD + 200_000], ids=["small", "large"])
@pytest.mark.parametrize("how", ["same size", "shorter", "longer"])
@pytest.mark.parametrize("read", list(READS))
def test_a_read_that_finds_a_blob_damaged_quarantines_it(store: LocalStore, read: str, how: str, size: int) -> None:
    """Every read path verifies: a blob whose file was changed on disk raises BlobDamaged (a
    BlobNotFound and a DigestMismatch), the file goes to quarantine as fsck would move it (fsck
    is clean afterwards), and the blob can be stored again."""
    data = os.urandom(size)
    d = store.put(data)
    other = store.put(b"an intact neighbour")
    assert READS[read](store, d)
    path = store.blob_path(d)
    os.chmod(path, 0o644)  # as someone with the owner's rights on the disk could
    with open(path, "r+b") as f:
        if how == "same size":
            f.seek(size // 2)
            f.write(b"\0\1\2")
        elif how == "shorter":
            f.truncate(size - 1)
        else:
            f.seek(0, os.SEEK_END)
            f.write(b"!")
    epoch = store.epoch()
    with pytest.raises(BlobDamaged) as caught:
        READS[read](store, d)
    assert isinstance(caught.value, BlobNotFound) and isinstance(caught.value, DigestMismatch)
    assert "damaged" in str(caught.value) and "quarantine" in str(caught.value)
    assert not os.path.exists(path) and not store.has(d)
    assert [n for n in os.listdir(store.quarantine_dir) if n.startswith(d.hex)]
    assert store.epoch() != epoch  # stat caches forget that the blob was stored
    with pytest.raises(BlobNotFound):
        store.get(d)
    report = fsck(store)
    assert report.clean and report.checked == 1, report.problems  # the neighbour alone
    assert store.get(other) == b"an intact neighbour"
    assert store.put(data) == d and store.get(d) == data  # stored again, whole


@pytest.mark.parametrize("size", [100, MMAP_THRESHOLD + 200_000], ids=["small", "large"])
def test_a_damaged_blob_never_hands_out_its_last_piece(store: LocalStore, size: int) -> None:
    """The streaming reader raises on the read that would complete a damaged blob, so whoever
    passes the pieces on has not passed on the whole; check_first raises before the first piece."""
    data = os.urandom(size)
    d = store.put(data)
    damage(store, d, b"\xff")  # the first byte: found only when the whole was hashed
    with pytest.raises(BlobDamaged):
        _read_all(store, d)
    assert len(_read_all.seen) < size  # type: ignore[attr-defined]
    store.put(data)
    damage(store, d, b"\xff")
    with pytest.raises(BlobDamaged):
        _read_all(store, d, check_first=True)
    assert _read_all.seen == b""  # type: ignore[attr-defined]


def test_a_damaged_blob_is_not_quarantined_twice_nor_its_good_replacement(store: LocalStore) -> None:
    """Two readers find the same damaged file: one moves it; the other finds it gone, or a good
    copy stored meanwhile under the name, and leaves that alone."""
    data = os.urandom(MMAP_THRESHOLD + 10)
    d = store.put(data)
    damage(store, d, b"\0")
    first, second = store.open(d), store.open(d)
    with pytest.raises(BlobDamaged):
        _read_all_from(first)
    assert store.put(data) == d  # a good copy comes back under the name
    with pytest.raises(BlobDamaged):
        _read_all_from(second)
    assert store.get(d) == data
    assert len([n for n in os.listdir(store.quarantine_dir) if n.startswith(d.hex)]) == 1


def _read_all_from(reader: io.RawIOBase) -> None:
    with reader:
        while reader.read(65536):
            pass


def test_fsck_quarantines_damaged_blobs_and_repairs_modes(store: LocalStore) -> None:
    keep = store.put(b"keep me")
    bad = store.put(b"break me")
    writable = store.put(b"made writable")
    damage(store, bad, b"X")
    os.chmod(store.blob_path(writable), 0o644)
    epoch = store.epoch()
    report = fsck(store)
    assert report.quarantined == 1 and report.repaired == 1 and report.checked == 3
    assert not report.clean
    assert any(bad.hex in p for p in report.problems)
    assert not os.path.exists(store.blob_path(bad))
    assert any(n.startswith(bad.hex) for n in os.listdir(store.quarantine_dir))
    assert store.get(keep) == b"keep me"
    assert stat.S_IMODE(os.stat(store.blob_path(writable)).st_mode) == 0o444
    assert store.epoch() != epoch
    assert fsck(store).clean


def test_stale_named_temp_files_are_removed_on_open(home: Path) -> None:
    root = home / "cas"
    LocalStore(root).close()
    dead_pid = 2**22 + 12345  # above pid_max's default: no such process
    stale = root / "tmp" / f"{dead_pid}-deadbeef"
    stale.write_bytes(b"partial")
    mine = root / "tmp" / f"{os.getpid()}-cafe"
    mine.write_bytes(b"in progress")
    old_but_alive = root / "tmp" / f"{os.getpid()}-old"
    old_but_alive.write_bytes(b"ancient")
    long_ago = time.time() - 3 * 24 * 3600
    os.utime(old_but_alive, (long_ago, long_ago))
    with LocalStore(root):
        pass
    assert not stale.exists()
    assert mine.exists()  # a live writer's temp file is left alone
    assert not old_but_alive.exists()


def test_named_temp_path_publishes_too(store: LocalStore) -> None:
    store._o_tmpfile = False  # the fallback for filesystems without O_TMPFILE
    d = store.put(b"via a named temp file")
    assert store.get(d) == b"via a named temp file"
    assert os.listdir(os.path.join(store.root, "tmp")) == []


def test_concurrent_puts_of_the_same_blob(store: LocalStore) -> None:
    data = os.urandom(3 * MMAP_THRESHOLD)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(5):
                assert store.put(data) == Digest.of(data)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert store.usage() == (1, len(data))
    assert fsck(store).clean


def test_unusable_root_is_a_store_error(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_bytes(b"")
    with pytest.raises(StoreError, match="cannot use"):
        LocalStore(f)


def test_pins(store: LocalStore) -> None:
    d = store.put(b"pinned")
    store.pin("job-1", d)
    assert store.pins() == {"job-1": d}
    store.unpin("job-1")
    assert store.pins() == {}
    with pytest.raises(StoreError, match="invalid pin name"):
        store.pin("../escape", d)


def _age(store: LocalStore, digest: Digest, seconds_ago: float) -> None:
    t = time.time() - seconds_ago
    os.utime(store.blob_path(digest), (t, t))


def test_eviction_is_lru_and_never_touches_pinned_snapshots(store: LocalStore, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "big").write_bytes(os.urandom(50_000))
    (tree / "small").write_bytes(b"s" * 1000)
    snap = ingest(store, tree)
    store.pin("result", snap)
    for blob in store.iter_blobs():
        os.utime(store.file_of(blob), (0, 0))  # the pinned tree is the oldest of all
    oldest = store.put(os.urandom(30_000))
    _age(store, oldest, 4 * 3600)
    middle = store.put(os.urandom(30_000))
    _age(store, middle, 3 * 3600)
    newest = store.put(os.urandom(30_000))
    _age(store, newest, 2 * 3600)
    store.get(middle)  # a read makes it recent (reads older than TOUCH_INTERVAL_S are recorded)

    _, total = store.usage()
    report = gc.evict(store, total - 40_000)
    assert report.removed == 2
    assert not store.has(oldest) and not store.has(newest) and store.has(middle)
    # Everything the pinned snapshot reaches is still there and checks out.
    from mesh.cas.checkout import checkout

    checkout(store, snap, tmp_path / "out")
    assert (tmp_path / "out" / "sub" / "big").read_bytes() == (tree / "sub" / "big").read_bytes()

    report = gc.evict(store, 0)  # even a cap of zero keeps what is pinned
    assert store.has(snap) and not store.has(middle)
    assert report.pinned_bytes > 0
    assert fsck(store).clean


def test_a_full_disk_is_store_full_on_every_write_path(small_fs: Path, tmp_path: Path) -> None:
    """ENOSPC met by put, put_file and a writer (or foreseen from a known size) is StoreFull,
    naming the store and its free space; nothing partial is left, and fsck is clean."""
    with LocalStore(small_fs / "cas") as store:
        big = tmp_path / "big"
        big.write_bytes(os.urandom(12 << 20))
        writes = {
            "put, large": lambda: store.put(os.urandom(12 << 20)),
            "put_file, large": lambda: store.put_file(str(big)),
            "writer, announced": lambda: store.writer(Digest.of(big.read_bytes())),
        }
        for what, write in writes.items():
            with pytest.raises(StoreFull, match="has no room for 12.0 MiB") as caught:
                write()
            assert store.root in str(caught.value) and "free on its filesystem" in str(caught.value), what
        with store.writer() as writer:  # no size announced: it meets ENOSPC as it writes
            with pytest.raises(StoreFull, match="its filesystem is full") as caught:
                for _ in range(12):
                    writer.write(os.urandom(1 << 20))
        assert caught.value.store == store.root and caught.value.free is not None
        stored = 0
        with pytest.raises(StoreFull):  # small blobs, until there is no room for one more
            while True:
                store.put(os.urandom(256 << 10))
                stored += 1
        assert stored >= 20
        assert os.listdir(os.path.join(store.root, "tmp")) == []
        report = fsck(store)
        assert report.clean and report.checked == stored


def test_a_full_quota_is_store_full_too(store: LocalStore) -> None:
    full = store.full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert isinstance(full, StoreFull) and "quota" in str(full) and store.root in str(full)
    assert store.full(OSError(errno.EACCES, "Permission denied")) is None


@pytest.mark.parametrize("read", ["get", "open", "open, check_first"])
def test_a_full_disk_while_quarantining_is_still_blob_damaged(
    small_fs: Path, read: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A read finds a blob damaged on a full disk, where the store cannot write its new epoch:
    the read raises BlobDamaged all the same (not StoreFull), a batched download leaves such a
    blob out, this process's epoch changes at once, and the file gets a new epoch with the
    next write that succeeds."""
    from mesh.wire.records import write_records

    with LocalStore(small_fs / "cas") as store:
        kept, data, other = store.put(b"a neighbour"), os.urandom(MMAP_THRESHOLD + 100_000), os.urandom(3000)
        d, e = store.put(data), store.put(other)
        store.new_epoch()
        on_disk = store.epoch()
        filler = small_fs / "filler"
        with open(filler, "wb") as f, contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        damage(store, d, b"\xff\xfe")  # in place: no room needed
        damage(store, e, b"\xff\xfe")
        epoch = store.epoch()
        with pytest.raises(BlobDamaged):
            READS[read](store, d)
        assert not store.has(d) and store.epoch() not in (epoch, on_disk)
        records = b"".join(write_records(store, [kept, e]))  # a batched download's answer
        assert str(kept).encode() in records and str(e).encode() not in records and not store.has(e)
        with open(os.path.join(store.root, "epoch")) as f:
            assert f.read().strip() == on_disk  # no room for it
        assert "cannot write the store's epoch file" in caplog.text

        filler.unlink()
        store.put(b"a write that succeeds")
        with open(os.path.join(store.root, "epoch")) as f:
            written = f.read().strip()
        assert written not in ("", on_disk) and store.epoch() == written
        assert "is written again" in caplog.text
        assert os.listdir(os.path.join(store.root, "tmp")) == []
        assert [n for n in os.listdir(store.root) if n.startswith("epoch.")] == []  # no temp epoch file left
        assert fsck(store).clean


def test_a_damaged_blob_that_cannot_be_moved_to_quarantine_is_deleted(store: LocalStore) -> None:
    d = store.put(os.urandom(5000))
    os.rmdir(store.quarantine_dir)
    with open(store.quarantine_dir, "w"):  # quarantine/ is a file now: nothing can be moved into it
        pass
    damage(store, d, b"\0\1")
    with pytest.raises(BlobDamaged):
        store.get(d)
    assert not os.path.exists(store.blob_path(d)) and not store.has(d)  # never served again
