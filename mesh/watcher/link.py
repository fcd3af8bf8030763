"""The watcher's side of its registration with a node: register, beat, stop.

Each call is the sync NodeClient's, run on a worker thread. What the node's answers
mean to the watcher is decided here, once: a node that does not answer, or answers
that it cannot serve (5xx, a 503 health), is :class:`NotServing`, and the watcher
holds its updates; a beat refused because the node no longer knows the watcher (it
timed out, or the node restarted) is :class:`Forgotten`, and the watcher registers
again; a refused registration (another live watcher claims the directory) is a
NodeError that ends the watcher with the node's message.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import trio

from mesh.cas.digest import Digest
from mesh.errors import MeshError, NodeError, NodeUnreachable
from mesh.wire.client import NodeClient


class NotServing(MeshError):
    """The node does not answer, or cannot serve now: hold updates, look again later."""


class Forgotten(MeshError):
    """The node does not know this watcher (any more): register again, and resend in full."""


class NodeLink:
    """One watcher's registration with the node ``client`` talks to."""

    def __init__(self, client: NodeClient, directory: str) -> None:
        self.client = client
        # The beats between changes go on while a snapshot is made, on a connection of their own.
        self._beats = NodeClient(client.url, key=client.key)
        self.directory = directory
        self.watcher_id: str | None = None
        self.beat_every = 5.0  # until the node says

    def close(self) -> None:
        self._beats.close()

    async def _call(self, method: str, path: str, body: Any = None, *, client: NodeClient | None = None) -> Any:
        use = client or self.client
        try:
            return await trio.to_thread.run_sync(lambda: use.request(method, path, body=body))
        except NodeUnreachable as exc:
            raise NotServing(str(exc)) from None
        except NodeError as exc:
            if exc.status is None or exc.status >= 500:
                raise NotServing(str(exc)) from None
            if exc.status == 404 and path != "/v1/watches":
                raise Forgotten(str(exc)) from None
            raise

    async def serving(self) -> bool:
        """Whether the node answers its ``/health`` with ok."""
        try:
            answer = await self._call("GET", "/health")
        except NotServing:
            return False
        return isinstance(answer, dict) and answer.get("ok") is True

    async def register(self) -> None:
        """Register (NotServing; NodeError 409 when another live watcher has the directory)."""
        answer = await self._call(
            "POST", "/v1/watches", {"dir": self.directory, "host": socket.gethostname(), "pid": os.getpid()}
        )
        self.watcher_id = str(answer["id"])
        self.beat_every = max(0.05, float(answer["beat"]))

    async def beat(self, snapshot: Digest | None) -> None:
        """A beat, with ``snapshot`` when it is new to the node (NotServing, Forgotten)."""
        if self.watcher_id is None:
            raise Forgotten("not registered")
        body = {} if snapshot is None else {"snapshot": str(snapshot)}
        await self._call("POST", f"/v1/watches/{self.watcher_id}", body)

    async def keep_alive(self) -> None:
        """A beat with no snapshot, on the beats' own connection (NotServing, Forgotten)."""
        if self.watcher_id is not None:
            await self._call("POST", f"/v1/watches/{self.watcher_id}", {}, client=self._beats)

    async def stop(self) -> None:
        """Deregister, if registered; a node that cannot be told forgets the watcher by its timeout."""
        if self.watcher_id is None:
            return
        try:
            await self._call("DELETE", f"/v1/watches/{self.watcher_id}")
        except MeshError:
            pass
        self.watcher_id = None
