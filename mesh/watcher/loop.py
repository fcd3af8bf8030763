"""The watcher's loop: snapshot the directory when it settles, send it, beat, hold, resync.

Start: the directory must be a readable directory (UsageError), the node must answer
(NodeUnreachable: exit 1, there is nothing to hold updates for yet) and take the
registration (NodeError 409 when another live watcher claims the directory: exit 1).
Then the first snapshot is sent, and from then on:

* a change (mesh.watcher.changes) settles for the debounce, then the directory is
  snapshotted again (through the stat cache: only changed files are read) the way
  ``mesh exec`` snapshots (mesh.execute.snapshot_for: .meshignore, .git left out, blobs
  uploaded to a remote node or ingested into a store shared with it); a new snapshot id
  goes to the node at once, in a beat;
* every ``beat`` seconds (the node says: a third of its timeout) a beat says the watcher
  is alive;
* a node that stops serving (no answer, a 5xx) makes the watcher hold: it says so once,
  sends nothing, and looks at the node's /health every :data:`RETRY` seconds; when the
  node serves again the watcher registers again and resyncs in full: a fresh snapshot of
  the whole directory, sent as new;
* a beat refused because the node forgot the watcher (its timeout, a restart) is the same
  resync, without the hold;
* SIGINT or SIGTERM cancels the ``--run`` under way, deregisters the watcher and ends it
  with status 0.
"""

from __future__ import annotations

import math
import os
import signal
import sys
from dataclasses import dataclass

import trio

from mesh.cas.digest import Digest
from mesh.config import Settings
from mesh.errors import MeshError, NodeError, SnapshotError, UsageError
from mesh.watcher.changes import DEFAULT_DEBOUNCE, DEFAULT_POLL, Wakeup, notify, poll, settle
from mesh.watcher.link import Forgotten, NodeLink, NotServing
from mesh.watcher.runs import PipelineRuns, say
from mesh.wire.client import NodeClient

#: Seconds between looks at a node that does not serve, while the watcher holds.
RETRY = 0.5


@dataclass(kw_only=True)
class WatchOptions:
    """How ``mesh watch`` was asked to watch."""

    directory: str  # absolute
    debounce: float = DEFAULT_DEBOUNCE
    poll: float = DEFAULT_POLL
    notify: bool = True  # OS notifications; False: rescans every ``poll`` seconds only


def check_directory(directory: str) -> str:
    """``directory`` made absolute (symlinks resolved), or UsageError when it is not a readable directory."""
    path = os.path.realpath(directory)
    if not os.path.isdir(path):
        raise UsageError(f"{directory}: not a directory")
    if not os.access(path, os.R_OK | os.X_OK):
        raise UsageError(f"{directory}: not readable by this user")
    return path


class Watcher:
    """One watched directory, kept on the node ``client`` talks to."""

    def __init__(
        self, client: NodeClient, settings: Settings, options: WatchOptions, runs: PipelineRuns | None = None
    ) -> None:
        self.client = client
        self.settings = settings
        self.options = options
        self.runs = runs
        self.link = NodeLink(client, options.directory)
        self.wakeup = Wakeup()
        self.sent: Digest | None = None  # what the node has now
        self.latest: Digest | None = None  # the last snapshot of the directory: a new one is a change
        self.snapshot: tuple[Digest, Digest] | None = None  # the latest (root, times manifest)
        self.holding = False
        self.stopping = trio.Event()  # set before the watcher is cancelled (mesh.watcher.changes.notify)

    async def scan(self) -> tuple[Digest, Digest]:
        """Snapshot the directory (its blobs onto the node); NotServing when the node went away."""
        from mesh.execute import snapshot_for

        directory = self.options.directory

        def snap() -> tuple[Digest, Digest]:
            return snapshot_for(self.client, self.settings, directory, progress=False)

        try:
            self.snapshot = await trio.to_thread.run_sync(snap)
        except MeshError as exc:
            if not _node_failed(exc):
                raise
            raise NotServing(str(exc)) from None
        return self.snapshot

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the node's snapshot of the directory live until cancelled (see the module).
        Registers and sends the first snapshot before it reports started; the errors that end
        the watcher then (no node, a refused registration) are raised."""
        await self.link.register()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._beat)  # during the first snapshot too, however long it takes
            root, _ = await self.scan()
            await self.link.beat(root)
            self.sent = self.latest = root
            say(f"watching {self.options.directory} through {self.client.url}: {root}")
            if self.options.notify:
                nursery.start_soon(notify, self.options.directory, self.settings.home, self.wakeup, self.stopping)
            nursery.start_soon(poll, self.options.poll, self.wakeup)
            if self.runs is not None:
                nursery.start_soon(self.runs.run)
            task_status.started()
            await self._keep()

    async def _beat(self) -> None:
        """Beat every ``beat_every`` seconds while registered and not holding; a beat that fails
        wakes the loop, which meets the failure again and holds or resyncs (see the module)."""
        while True:
            await trio.sleep(self.link.beat_every)
            if self.holding:
                continue
            try:
                await self.link.keep_alive()
            except (NotServing, Forgotten):
                self.wakeup.raise_("beat failed")

    async def _keep(self) -> None:
        resync = False
        while True:
            with trio.move_on_after(RETRY if self.holding else math.inf):
                await self.wakeup.wait()
            reason = self.wakeup.reason
            if reason == "change":
                await settle(self.wakeup, self.options.debounce)
            self.wakeup.take()
            try:
                if self.holding:
                    if not await self.link.serving():
                        continue
                    self.holding, resync = False, True
                    say(f"the node at {self.client.url} serves again: resyncing {self.options.directory} in full")
                if resync or self.link.watcher_id is None:
                    await self.link.register()
                    self.sent, resync = None, False
                await self.scan()
                await self._send()
            except NotServing as exc:
                if not self.holding:
                    say(f"the node at {self.client.url} is not serving ({exc}): holding updates")
                self.holding = True
            except SnapshotError as exc:  # the directory cannot be snapshotted now (a FIFO in it...)
                say(f"{exc}; the node keeps the last snapshot until the next change")
            except Forgotten:
                say(f"the node at {self.client.url} forgot this watcher: registering again")
                resync = True
                self.wakeup.raise_("resync")

    async def _send(self) -> None:
        """A beat, carrying the latest snapshot when the node does not have it yet."""
        assert self.snapshot is not None
        root, times = self.snapshot
        await self.link.beat(root if root != self.sent else None)
        self.sent = root
        if root != self.latest:  # a change (a resync of the same tree runs nothing)
            self.latest = root
            say(f"{self.options.directory} is now {root}")
            if self.runs is not None:
                self.runs.offer(root, times)


def _node_failed(exc: MeshError) -> bool:
    """Whether a snapshot failed because of the node (not of the directory)."""
    return isinstance(exc, NodeError) and (exc.status is None or exc.status >= 500)


async def watch(client: NodeClient, settings: Settings, options: WatchOptions, runs: PipelineRuns | None) -> int:
    """``mesh watch``: run until SIGINT or SIGTERM, then deregister; the exit status."""
    watcher = Watcher(client, settings, options, runs)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        try:
            async with trio.open_nursery() as nursery:

                async def stop_on_signal() -> None:
                    async for signum in signals:
                        say(f"{signal.Signals(signum).name}: stopping")
                        watcher.stopping.set()
                        nursery.cancel_scope.cancel()
                        return

                nursery.start_soon(stop_on_signal)
                await nursery.start(watcher.run)
        finally:
            with trio.CancelScope(shield=True):
                if runs is not None:
                    await runs.stop()
                await watcher.link.stop()
            watcher.link.close()
    sys.stderr.flush()
    return 0
