"""Stopping a node that has been idle: no job, no request, for a given time.

A background node (the one ``mesh exec`` starts on first use, :mod:`mesh.background`) is
told ``mesh up --idle-stop S``: like sccache's server (``SCCACHE_IDLE_TIMEOUT``, 600 s) or
the Gradle daemon (3 hours), it goes away on its own when nobody uses it. Idle means: no
job running or queued on this node (its own or a peer's task in a slot), no request open,
and none received for ``S`` seconds. Requests a node's peers make as a matter of routine
(gossip, once a second each) do not count: they would keep a node of a mesh up forever.

:class:`Activity` wraps the ASGI app and notes when requests come and go;
:func:`stop_when_idle` looks once a second (or sooner, for a short idle time) and stops the
node through its graceful shutdown, as SIGTERM does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import trio
from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger("mesh.node")

#: Request paths that do not make a node busy: what peers send on their own, every second.
ROUTINE_PATHS = frozenset({"/v1/gossip"})
#: Seconds between two looks at whether the node is idle (at most).
LOOK_EVERY = 1.0


class Activity:
    """An ASGI wrapper that keeps when the last request (not a routine one) ended, and how
    many are open."""

    def __init__(self, app: ASGIApp, *, routine: frozenset[str] = ROUTINE_PATHS) -> None:
        self.app = app
        self.routine = routine
        self.last = time.monotonic()
        self.open = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in self.routine:
            await self.app(scope, receive, send)
            return
        self.open += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.open -= 1
            self.last = time.monotonic()

    def idle_for(self, busy: bool) -> float:
        """Seconds the node has been idle (0 while it is busy or serves a request)."""
        now = time.monotonic()
        if busy or self.open:
            self.last = now
        return now - self.last


async def stop_when_idle(
    activity: Activity,
    idle: float,
    busy: Callable[[], bool],
    stop: Callable[[], None],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Call ``stop`` once the node has been idle for ``idle`` seconds (``busy()``: a job runs
    or waits here), logging one line; then return."""
    task_status.started()
    while True:
        idle_for = activity.idle_for(busy())
        if idle_for >= idle:
            log.info("idle for %.0f s (no job, no request): stopping, as --idle-stop %g says", idle_for, idle)
            stop()
            return
        await trio.sleep(min(LOOK_EVERY, idle - idle_for))
