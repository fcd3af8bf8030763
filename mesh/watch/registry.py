"""The watchers registered with one node (``mesh watch``), and their health as the node sees it.

A watcher registers (its directory, host and pid) and gets an id and the interval at
which it must beat: :attr:`WatchRegistry.beat_every`, a third of the timeout, so two
lost beats in a row still leave it healthy. Each beat may carry the directory's new
snapshot. A watcher not heard from for :attr:`WatchRegistry.timeout` seconds (default
:data:`DEFAULT_TIMEOUT`; MESH_WATCH_TIMEOUT, ``watch_timeout`` in mesh.toml) is unhealthy
and dropped: its snapshot leaves gossip and ``/files``, its pin on the store ends, and
its next beat is answered WatchNotFound, upon which it registers again. A watcher that
stops cleanly deregisters at once.

At most one live watcher claims a directory of a host on a node: a second one is
refused (WatchConflict) while the first is healthy. Watchers live in memory only: a
restarted node knows none, and each registers again when its beat is refused.

Pure: the clock is passed in, nothing here does I/O.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from mesh.cas.digest import Digest
from mesh.cluster.membership import MAX_WATCHES, Watched
from mesh.config import DEFAULT_WATCH_TIMEOUT
from mesh.errors import CodecError, WatchConflict, WatchError, WatchNotFound

log = logging.getLogger("mesh.watch")

#: Seconds of silence after which a watcher is unhealthy and dropped (at most 30 s, the
#: issue's bound): three missed beats at the 5 s a watcher then beats at.
DEFAULT_TIMEOUT = DEFAULT_WATCH_TIMEOUT
#: Longest directory path and host name a watcher may register (PATH_MAX, HOST_NAME_MAX).
MAX_DIRECTORY = 4096
MAX_HOST = 255


@dataclass(kw_only=True)
class Watcher:
    """One registered watcher."""

    id: str
    directory: str
    host: str
    pid: int
    registered_at: float  # wall clock, for people
    heard_at: float  # the registry's clock
    snapshot: Digest | None = None  # None until its first snapshot arrived

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}, watching {self.directory}"


def check_registration(directory: str, host: str, pid: int) -> None:
    """Refuse (CodecError: 400) what cannot be a watcher's directory, host or pid."""
    if not directory.startswith("/") or "\0" in directory or len(directory) > MAX_DIRECTORY:
        raise CodecError(f"a watched directory is an absolute path of at most {MAX_DIRECTORY} characters")
    if not host or "\0" in host or len(host) > MAX_HOST:
        raise CodecError(f"a watcher's host is a name of 1 to {MAX_HOST} characters")
    if pid < 1:
        raise CodecError(f"a watcher's pid is a positive number, not {pid}")


class WatchRegistry:
    """The watchers of one node, each dropped after ``timeout`` seconds without a beat."""

    def __init__(self, timeout: float = DEFAULT_TIMEOUT, *, clock: Callable[[], float] = time.monotonic) -> None:
        if timeout <= 0:
            raise ValueError("a watcher timeout must be positive")
        self.timeout = timeout
        self._clock = clock
        self._watchers: dict[str, Watcher] = {}
        self.dropped = 0  # watchers dropped because they fell silent

    def __repr__(self) -> str:
        return f"WatchRegistry({len(self._watchers)} watchers, timeout={self.timeout:g}s)"

    @property
    def beat_every(self) -> float:
        """Seconds between a watcher's beats."""
        return self.timeout / 3

    def register(self, directory: str, host: str, pid: int) -> Watcher:
        """A new watcher of ``directory`` on ``host``. Raises WatchConflict while another live
        watcher claims it, WatchError when the node has MAX_WATCHES watchers already."""
        check_registration(directory, host, pid)
        for other in self.live():
            if other.directory == directory and other.host == host:
                raise WatchConflict(
                    f"{directory} on {host} is already watched through this node by a live watcher "
                    f"({other.describe()}); stop that one first, or watch another directory"
                )
        if len(self._watchers) >= MAX_WATCHES:
            raise WatchError(f"this node has {MAX_WATCHES} watchers already; register with another node")
        watcher = Watcher(
            id=secrets.token_hex(10),
            directory=directory,
            host=host,
            pid=pid,
            registered_at=time.time(),
            heard_at=self._clock(),
        )
        self._watchers[watcher.id] = watcher
        log.info("watcher %s registered: %s", watcher.id, watcher.describe())
        return watcher

    def beat(self, watcher_id: str, snapshot: Digest | None = None) -> Watcher:
        """A beat of a watcher, with its directory's snapshot when it changed (or was resent).
        Raises WatchNotFound for one this node does not hold (timed out, or a restart)."""
        watcher = self._get(watcher_id)
        watcher.heard_at = self._clock()
        if snapshot is not None and snapshot != watcher.snapshot:
            watcher.snapshot = snapshot
            log.info("watcher %s: %s is now %s", watcher.id, watcher.directory, snapshot)
        return watcher

    def remove(self, watcher_id: str) -> Watcher:
        """Deregister a watcher (it stops). Raises WatchNotFound."""
        watcher = self._get(watcher_id)
        del self._watchers[watcher_id]
        log.info("watcher %s stopped: %s", watcher.id, watcher.describe())
        return watcher

    def _get(self, watcher_id: str) -> Watcher:
        self.expire()
        watcher = self._watchers.get(watcher_id)
        if watcher is None:
            raise WatchNotFound(
                f"this node holds no watcher {watcher_id[:40]!r} (it was silent for over {self.timeout:g} s, "
                "or the node restarted): register again"
            )
        return watcher

    def expire(self) -> list[Watcher]:
        """Drop the watchers silent for longer than the timeout; returns them."""
        now = self._clock()
        gone = [w for w in self._watchers.values() if now - w.heard_at > self.timeout]
        for watcher in gone:
            del self._watchers[watcher.id]
            self.dropped += 1
            log.warning(
                "watcher %s unhealthy: not heard from for %.1f s (%s)",
                watcher.id,
                now - watcher.heard_at,
                watcher.describe(),
            )
        return gone

    def live(self) -> list[Watcher]:
        """The healthy watchers, oldest first."""
        self.expire()
        return list(self._watchers.values())

    def watched(self) -> tuple[Watched, ...]:
        """The healthy watchers that sent a snapshot, as gossip carries them."""
        return tuple(
            Watched(directory=w.directory, host=w.host, snapshot=w.snapshot)
            for w in self.live()
            if w.snapshot is not None
        )

    def roots(self) -> frozenset[Digest]:
        """The snapshots of the live watchers: pinned in the store while watched."""
        return frozenset(w.snapshot for w in self._watchers.values() if w.snapshot is not None)
