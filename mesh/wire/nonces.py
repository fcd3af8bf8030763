"""The nonces of signed requests a node accepted, kept until their signatures expire, across restarts.

A signed request stays valid for :data:`mesh.wire.auth.MAX_SKEW` seconds either side
of the node's clock, and within that window a node refuses a nonce it has seen (a
replay). Held in memory only, that memory died with the process: a request
captured on its way to a node could be replayed to it after a restart, within the
window. So every accepted nonce is also appended to ``$MESH_HOME/nonces`` before the
request does anything, and a node starting up reads back the ones that have not
expired.

Why persist rather than bind the window to the node's boot (refusing requests
signed before it started): boot binding needs the clients' clocks to agree with
the node's. A client whose clock runs ahead signs times after a restart that is
still to come, so its captured requests pass a boot check; one whose clock runs
behind is refused for a while after every restart and must retry with a time the
node tells it. Persisting is exact whatever the clocks, and cheap: measured on the
project's test machine, appending a 24-byte record costs 0.5 us, and the whole check
of a signed request (its headers' form, host, time, signature and nonce) 8 us, against
1-3 ms for a signed blob GET around it (hypercorn, Starlette, the client). An
``fsync`` per record (0.34 ms there, milliseconds on common disks) is not done:
records reach the page cache before the request acts, which survives the node's
process being killed (kill -9 included); a power cut may lose the last records,
and the machine's reboot takes longer than the window on most machines.

Files: records (expiry, nonce) go to ``nonces``; every :data:`ROTATE` seconds it
becomes ``nonces.old`` (replacing the one before), whose records have all expired
by the next rotation. A record torn by a kill is skipped when read. When a
record cannot be written (disk full), the request is still accepted, replays are
still refused until the node restarts, and the node logs it (at most once a minute); a
file that could not be made is tried again every :data:`RETRY` seconds.
"""

from __future__ import annotations

import collections
import logging
import os
import struct

log = logging.getLogger("mesh.auth")

#: One record: the second after which the nonce is forgotten, then the nonce's 16 bytes.
RECORD = struct.Struct("<q16s")
#: Seconds between tries to make the file again after it could not be made (a full disk).
RETRY = 5.0


class NonceLog:
    """Nonces seen, each until its expiry (seconds since the epoch); persisted at ``path``
    (None: in memory only). Owns its file: :meth:`close` it."""

    def __init__(self, path: str | None, *, rotate: float, now: float) -> None:
        self.path = path
        self.rotate = rotate
        self._expiry: dict[bytes, int] = {}
        self._order: collections.deque[tuple[int, bytes]] = collections.deque()
        self._fd: int | None = None
        self._opened_at = now
        self._warned_at = -float("inf")
        if path is not None:
            for expiry, nonce in _read(path + ".old") + _read(path):
                if expiry >= now:
                    self._keep(nonce, expiry)
            self._start_file(now)

    def __len__(self) -> int:
        return len(self._expiry)

    def add(self, nonce: bytes, expiry: int, now: float) -> bool:
        """Remember ``nonce`` until ``expiry``; False when it is remembered already (a replay)."""
        self._forget_expired(now)
        if nonce in self._expiry:
            return False
        self._keep(nonce, expiry)
        if self.path is None:
            return True
        if self._fd is not None and now - self._opened_at >= self.rotate:
            self._rotate(now)
        elif self._fd is None and now - self._opened_at >= RETRY:
            self._start_file(now)  # the file could not be made before: the disk may have room again
        if self._fd is not None:
            self._write(RECORD.pack(expiry, nonce), now)
        return True

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _keep(self, nonce: bytes, expiry: int) -> None:
        self._expiry[nonce] = expiry
        self._order.append((expiry, nonce))

    def _forget_expired(self, now: float) -> None:
        """Forget what expired, oldest record first. Expiries follow the signed times, which
        need not grow in arrival order: one that lives longer than those after it keeps them
        a little longer (at most the window), never shorter."""
        order, expiry = self._order, self._expiry
        while order and order[0][0] < now:
            when, nonce = order.popleft()
            if expiry.get(nonce) == when:
                del expiry[nonce]

    def _start_file(self, now: float) -> None:
        """Write what is remembered into a fresh ``nonces`` (a restart, or a rotation) and append to it."""
        assert self.path is not None
        tmp = f"{self.path}.{os.getpid()}.tmp"
        records = b"".join(RECORD.pack(e, n) for n, e in self._expiry.items())
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, records)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            try:
                os.unlink(self.path + ".old")
            except FileNotFoundError:
                pass
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        except OSError as exc:
            self._failed(exc, now)
        self._opened_at = now

    def _rotate(self, now: float) -> None:
        """``nonces`` becomes ``nonces.old``; appends go to a new ``nonces``."""
        assert self.path is not None and self._fd is not None
        self.close()
        try:
            os.replace(self.path, self.path + ".old")
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            self._failed(exc, now)
            self._start_file(now)  # try again from what is in memory
        self._opened_at = now

    def _write(self, record: bytes, now: float) -> None:
        assert self._fd is not None
        try:
            if os.write(self._fd, record) != len(record):
                raise OSError(f"a short write to {self.path}")
        except OSError as exc:
            self._failed(exc, now)

    def _failed(self, exc: OSError, now: float) -> None:
        if now - self._warned_at >= 60:
            self._warned_at = now
            log.warning(
                "cannot record the nonces of signed requests in %s (%s): replays are refused until "
                "this node restarts, not after; free space in the node's home",
                self.path,
                exc.strerror or exc,
            )


def _read(path: str) -> list[tuple[int, bytes]]:
    """The whole records of a nonce file (none if it is missing or unreadable)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return []
    end = len(data) - len(data) % RECORD.size  # a record torn by a kill is left out
    return [RECORD.unpack_from(data, offset) for offset in range(0, end, RECORD.size)]
