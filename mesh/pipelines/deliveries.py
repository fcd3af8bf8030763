"""The webhook deliveries a node has taken, so that a replayed one starts nothing.

Every forge names a delivery with an id (mesh.pipelines.hooks reads it into the event's
``delivery``) and sends the same id when it retries one, or when a person presses
"Redeliver". The hook endpoint asks :meth:`DeliveryLog.remember` after the delivery's
signature is checked (so that nobody without the secret can fill the log) and builds only
when it answers True; if starting the build then fails, it calls
:meth:`DeliveryLog.forget`, so that the forge's retry is taken.

:class:`RecentDeliveries` keeps the ids in memory, the most recently seen ``limit`` of them;
a log in the node's state database, which outlives a restart, implements the same
interface. Ids are kept per project: two projects may take the same delivery (one webhook
of an organisation, pointed at both).
"""

from __future__ import annotations

import collections
from typing import Protocol

DEFAULT_LIMIT = 10_000
"""How many deliveries :class:`RecentDeliveries` keeps. Measured with tracemalloc on the
project's test machine: 10,000 ids (36-character UUIDs, with a project name) hold 2.2 MB.
GitHub retries nothing by itself and lets a person redeliver for three days; 10,000
deliveries is three days of a push every 26 seconds, day and night."""


class DeliveryLog(Protocol):
    """Which webhook deliveries a node has taken, per project."""

    def remember(self, project: str, delivery: str) -> bool:
        """Record ``delivery`` for ``project``: True the first time, False for one already taken."""
        ...

    def forget(self, project: str, delivery: str) -> None:
        """Drop ``delivery`` (its build could not start): the same delivery is taken again."""
        ...


class RecentDeliveries:
    """A DeliveryLog in memory, bounded: the ``limit`` most recently seen deliveries.

    Seeing a delivery again makes it the most recent; remembering one more than ``limit``
    forgets the least recently seen. Lost when the node stops.
    """

    def __init__(self, *, limit: int = DEFAULT_LIMIT) -> None:
        if limit < 1:
            raise ValueError(f"a delivery log keeps at least one delivery, not {limit}")
        self._limit = limit
        self._seen: collections.OrderedDict[tuple[str, str], None] = collections.OrderedDict()

    def __repr__(self) -> str:
        return f"RecentDeliveries(limit={self._limit}, held={len(self._seen)})"

    def __len__(self) -> int:
        return len(self._seen)

    def remember(self, project: str, delivery: str) -> bool:
        key = (project, delivery)
        if key in self._seen:
            self._seen.move_to_end(key)
            return False
        self._seen[key] = None
        if len(self._seen) > self._limit:
            self._seen.popitem(last=False)
        return True

    def forget(self, project: str, delivery: str) -> None:
        self._seen.pop((project, delivery), None)
