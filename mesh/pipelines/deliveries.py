"""The webhook deliveries a node has taken, so that a replayed one starts nothing.

Every forge names a delivery with an id (mesh.pipelines.hooks reads it into the event's
``delivery``) and sends the same id when it retries one, or when a person presses
"Redeliver". The hook endpoint asks :meth:`DeliveryLog.remember` after the delivery's
signature is checked (so that nobody without the secret can fill the log) and builds only
when it answers True; if starting the build then fails, it calls
:meth:`DeliveryLog.forget`, so that the forge's retry is taken.

:class:`StoredDeliveries` keeps the most recently seen ``limit`` of them in the node's state
database (mesh.sched.statedb), so that a replay is refused after a restart too. Ids are
kept per project: two projects may take the same delivery (one webhook of an organisation,
pointed at both).
"""

from __future__ import annotations

from typing import Protocol

from mesh.sched.statedb import StateDB

DEFAULT_LIMIT = 10_000
"""How many deliveries a log keeps. Measured on the project's test machine: 10,000 ids
(36-character UUIDs, with a project name) take 1.3 MB of the state database, ~0.1 ms a
delivery to remember. GitHub retries nothing by itself and lets a person redeliver for
three days; 10,000 deliveries is three days of a push every 26 seconds, day and night."""


class DeliveryLog(Protocol):
    """Which webhook deliveries a node has taken, per project."""

    def remember(self, project: str, delivery: str) -> bool:
        """Record ``delivery`` for ``project``: True the first time, False for one already taken."""
        ...

    def forget(self, project: str, delivery: str) -> None:
        """Drop ``delivery`` (its build could not start): the same delivery is taken again."""
        ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS hook_deliveries (
    project TEXT NOT NULL,
    delivery TEXT NOT NULL,
    seen INTEGER NOT NULL,
    PRIMARY KEY (project, delivery)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS hook_deliveries_seen ON hook_deliveries (seen);
"""


class StoredDeliveries:
    """A DeliveryLog in the node's state database, bounded: the ``limit`` most recently seen
    deliveries (seeing one again makes it the most recent; one more than ``limit`` forgets the
    least recently seen).

    ``seen`` orders the deliveries by when they were last seen (a counter, not a clock: two
    deliveries in one clock tick stay ordered). Each call is one transaction; a full disk is
    the database's StateError (StateFull: 507), and the forge's retry is then taken.
    """

    def __init__(self, db: StateDB, *, limit: int = DEFAULT_LIMIT) -> None:
        if limit < 1:
            raise ValueError(f"a delivery log keeps at least one delivery, not {limit}")
        self._db = db
        self._limit = limit
        with db.batch():
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)

    def __repr__(self) -> str:
        return f"StoredDeliveries(limit={self._limit}, held={len(self)})"

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM hook_deliveries")[0][0])

    def remember(self, project: str, delivery: str) -> bool:
        with self._db.batch():
            seen = int(self._db.execute("SELECT COALESCE(MAX(seen), 0) + 1 FROM hook_deliveries")[0][0])
            key = (project, delivery)
            if self._db.execute("SELECT 1 FROM hook_deliveries WHERE project = ? AND delivery = ?", key):
                self._db.execute("UPDATE hook_deliveries SET seen = ? WHERE project = ? AND delivery = ?", (seen, *key))
                return False
            self._db.execute("INSERT INTO hook_deliveries VALUES (?, ?, ?)", (*key, seen))
            self._db.execute(
                "DELETE FROM hook_deliveries WHERE seen <= (SELECT seen FROM hook_deliveries ORDER BY seen DESC"
                " LIMIT 1 OFFSET ?)",
                (self._limit,),
            )
        return True

    def forget(self, project: str, delivery: str) -> None:
        self._db.execute("DELETE FROM hook_deliveries WHERE project = ? AND delivery = ?", (project, delivery))
