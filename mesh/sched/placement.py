"""Placement: which node should run a task. Pure functions over plain data, unit-tested.

The coordinator of a job scores every node it knows (itself included) for each
ready task and offers the task to the best; a node that declines (no room any
more) passes it to the next. The order of preference, most important first:

1. **Requirements** must all hold (``arch=x86_64``, ``docker=1``,
   ``label.gpu=1``, ``executor.sandbox=1``); a node that fails one is not a
   candidate at all. A task no known node can meet fails with a reason naming
   the unmet requirement, rather than waiting forever.
2. **Free slots**: a node with a free slot beats one without.
3. **Data locality**: more of the task's input bytes already on the node
   (or produced there by the task's predecessor) is better.
4. **Queue length**: a shorter queue is better; then the node id breaks ties,
   so every coordinator ranks the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, kw_only=True)
class NodeView:
    """What a coordinator knows of a node when placing: capabilities and load."""

    node: str
    capabilities: Mapping[str, str] = field(default_factory=dict)
    slots: int = 1
    busy: int = 0
    queued: int = 0
    alive: bool = True

    @property
    def free(self) -> int:
        return max(0, self.slots - self.busy)


@dataclass(frozen=True)
class Candidate:
    """A node that may run the task, with the facts its rank came from."""

    node: str
    free: int
    local_bytes: int
    queued: int


class Unplaceable(ValueError):
    """No known node meets the task's requirements; the message says which one fails."""


def unmet(requirements: Mapping[str, str], capabilities: Mapping[str, str]) -> list[str]:
    """The requirements a node's capabilities do not meet, as ``key=value`` texts (sorted)."""
    return sorted(f"{k}={v}" for k, v in requirements.items() if capabilities.get(k) != v)


def rank(
    requirements: Mapping[str, str],
    nodes: Iterable[NodeView],
    local_bytes: Mapping[str, int] | None = None,
) -> list[Candidate]:
    """The live nodes that meet ``requirements``, best first (see the module docstring).

    ``local_bytes`` maps a node id to how many of the task's input bytes it
    already holds. Raises Unplaceable when no live node meets the requirements.
    """
    local = local_bytes or {}
    live = [n for n in nodes if n.alive]
    fits = [n for n in live if not unmet(requirements, n.capabilities)]
    if not fits:
        raise Unplaceable(_why_not(requirements, live))
    candidates = [Candidate(n.node, n.free, local.get(n.node, 0), n.queued) for n in fits]
    candidates.sort(key=lambda c: (c.free == 0, -c.local_bytes, c.queued, -c.free, c.node))
    return candidates


def _why_not(requirements: Mapping[str, str], live: list[NodeView]) -> str:
    if not live:
        return "no live node is known"
    wanted = ", ".join(f"{k}={v}" for k, v in sorted(requirements.items()))
    closest = min(live, key=lambda n: (len(unmet(requirements, n.capabilities)), n.node))
    missing = unmet(requirements, closest.capabilities)
    why = (
        f"no node meets the requirements {wanted}: of {len(live)} live node(s), the closest "
        f"({closest.node}) lacks {', '.join(missing)}"
    )
    if any(m.startswith(_EXECUTOR) for m in missing):
        offered = sorted(
            {
                k[len(_EXECUTOR) :]
                for n in live
                for k, v in n.capabilities.items()
                if k.startswith(_EXECUTOR) and v == "1"
            }
        )
        why += f"; the executors offered: {', '.join(offered) or 'none'}"
    return why


_EXECUTOR = "executor."
