"""fsck: re-hash every blob in a LocalStore and move damaged ones out of the way.

A blob is damaged when its file's BLAKE3 hash or size is not what its name says,
when it is not a regular file, or when its name is not a hash at all. Damaged
files go to ``quarantine/`` (kept for inspection, never served again) and the
store's epoch changes so that no cache keeps vouching for them: the store's own
:meth:`~mesh.cas.store.LocalStore.quarantine`, which every read that finds a
damaged blob calls too. A blob whose
content is right but whose mode was changed (someone made it writable) is
reported and made read-only again.
"""

from __future__ import annotations

import os
import re
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from mesh.cas.blobio import BLOB_MODE
from mesh.cas.hasher import hash_fd
from mesh.cas.store import EXEC_MODE, LocalStore, StoredBlob

_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(slots=True)
class FsckReport:
    """What fsck found. ``problems`` holds one line per damaged or repaired file."""

    checked: int = 0
    bytes: int = 0
    quarantined: int = 0
    repaired: int = 0
    temp_removed: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        """True when no blob was damaged (repairs of modes alone still count as clean)."""
        return self.quarantined == 0


def _check(store: LocalStore, blob: StoredBlob) -> tuple[str | None, bool]:
    """(what is wrong or None, whether the mode needs repair) for one blob file."""
    path = store.file_of(blob)
    if not _HEX.fullmatch(blob.hex):
        return "not a blob name", False
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None, False
    except OSError as exc:
        return f"unreadable ({exc.strerror})", False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return "not a regular file", False
        digest = hash_fd(fd, st.st_size)
    finally:
        os.close(fd)
    if digest.hex != blob.hex:
        return f"content hashes to {digest.hex[:16]}... ({digest.size} bytes)", False
    want = EXEC_MODE if blob.executable_copy else BLOB_MODE
    return None, stat.S_IMODE(st.st_mode) != want


def fsck(store: LocalStore, *, workers: int = 2) -> FsckReport:
    """Verify every blob of ``store``; quarantine the damaged ones. Returns the report."""
    report = FsckReport(temp_removed=store.remove_stale_temp_files())
    blobs = list(store.iter_blobs())
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = pool.map(lambda b: _check(store, b), blobs)
        for blob, (problem, fix_mode) in zip(blobs, results, strict=True):
            report.checked += 1
            report.bytes += blob.size
            where = store.file_of(blob)
            if problem is not None:
                store.quarantine(blob)
                report.quarantined += 1
                report.problems.append(f"{where}: {problem}; moved to {store.quarantine_dir}")
            elif fix_mode:
                os.chmod(where, EXEC_MODE if blob.executable_copy else BLOB_MODE)
                report.repaired += 1
                report.problems.append(f"{where}: was made writable; content intact, made read-only again")
    return report
