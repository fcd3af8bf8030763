"""What wakes the watcher: OS notifications (watchfiles), and a full rescan every
``poll`` seconds, since a notifier can drop events.

A notification only says *that* something changed: every wake-up rescans the whole
directory (the stat cache finds what changed), so events lost in a burst cost nothing as
long as one of them arrives. watchfiles (inotify through Rust's notify) drops notify's
overflow ("rescan") events without a word, though, so an overflow that delivers nothing
is seen only by the periodic rescan, which bounds how stale the snapshot can be.
A notifier that fails (too many watches, a directory it cannot read) is logged in one
line and the watcher goes on by rescans alone, starting with one at once. A rescan is
cheap: the stat cache (mesh.cas.statcache) reads only files whose stat changed.

Events under mesh's own home are ignored (a home inside the watched directory would
otherwise wake the watcher with every stat cache it saves), and so are those under
``.git``, which a snapshot leaves out.
"""

from __future__ import annotations

import os
import sys

import trio

#: How long a change must be quiet before the watcher snapshots (seconds): an editor's save
#: (write a temp file, rename it over) or a ``git checkout`` settles well within it.
DEFAULT_DEBOUNCE = 0.3
#: Longest a stream of changes holds a snapshot back (seconds), however busy the directory.
MAX_HOLD = 5.0
#: Seconds between full rescans. Measured here (2 cores, 2026-12-04), a warm rescan through
#: the stat cache (snapshot and times manifest, as the watcher makes them) took 2 ms for
#: mesh/ (242 files) and 0.36 s for 50,000 small files in 200 directories: every 10 s,
#: under 4% of one core for a tree that large.
DEFAULT_POLL = 10.0
#: Milliseconds between watchfiles' looks at its stop event and at the events it gathered.
NOTIFY_STEP = 20


class Wakeup:
    """A flag the notifier and the poller raise and the watcher waits on; ``reason`` says
    which raised it first since it was last taken."""

    def __init__(self) -> None:
        self._event = trio.Event()
        self.reason = ""

    def raise_(self, reason: str) -> None:
        if not self._event.is_set():
            self.reason = reason
            self._event.set()

    async def wait(self) -> None:
        await self._event.wait()

    def take(self) -> str:
        """Lower the flag; what raised it ("" if nothing did)."""
        reason = self.reason if self._event.is_set() else ""
        self._event = trio.Event()
        self.reason = ""
        return reason


async def settle(wakeup: Wakeup, debounce: float) -> None:
    """Wait until ``debounce`` seconds pass without a change (at most MAX_HOLD in all)."""
    with trio.move_on_after(MAX_HOLD):
        while True:
            wakeup.take()
            with trio.move_on_after(debounce) as quiet:
                await wakeup.wait()
            if quiet.cancelled_caught:
                return


def _ignored(directory: str, home: str) -> tuple[str, ...]:
    return (os.path.join(home, ""), os.path.join(directory, ".git", ""))


async def notify(directory: str, home: str, wakeup: Wakeup, stop: trio.Event) -> None:
    """Raise ``wakeup`` on every change the OS reports under ``directory``, until cancelled.
    A notifier that fails says so on stderr and raises it once more: a rescan then, and
    rescans alone after. Set ``stop`` before cancelling: watchfiles waits for changes on a
    thread that a cancel cannot interrupt, and that checks ``stop`` every NOTIFY_STEP ms
    (without it, a stop would wait up to its 5 s timeout)."""
    import watchfiles

    ignored = _ignored(directory, home)

    def wanted(_change: watchfiles.Change, path: str) -> bool:
        return not path.startswith(ignored)

    try:
        async for _changes in watchfiles.awatch(
            directory,
            watch_filter=wanted,
            debounce=50,
            step=NOTIFY_STEP,
            stop_event=stop,
            recursive=True,
            ignore_permission_denied=True,
        ):
            wakeup.raise_("change")
    except Exception as exc:  # the notifier's own failure: the rescans go on
        print(
            f"mesh watch: OS notifications of {directory} failed ({type(exc).__name__}: {exc}); "
            "rescanning every poll interval instead",
            file=sys.stderr,
            flush=True,
        )
        wakeup.raise_("notifier failed")


async def poll(every: float, wakeup: Wakeup) -> None:
    """Raise ``wakeup`` for a full rescan every ``every`` seconds, until cancelled."""
    while True:
        await trio.sleep(every)
        wakeup.raise_("poll")
