"""The node's counters in the Prometheus text exposition format (0.0.4), for ``GET /metrics``.

The node reads them into :class:`NodeFigures` from the ``statistics()`` of the scheduler,
the store and its space, the job counts of the state database and the peer table; nothing
here keeps state of its own. Open to everyone, like ``/health`` and ``/status``.
"""

from __future__ import annotations

from dataclasses import dataclass

from mesh.cas.space import SpaceStatistics
from mesh.cas.store import StoreStatistics
from mesh.exec.workpool import PoolStatistics
from mesh.sched.scheduler import SchedulerStatistics

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class _Exposition:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def metric(self, name: str, kind: str, help_: str, samples: list[tuple[dict[str, str], float]]) -> None:
        self.lines.append(f"# HELP {name} {help_}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            text = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
            self.lines.append(f"{name}{{{text}}} {value:g}" if text else f"{name} {value:g}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


@dataclass(frozen=True)
class NodeFigures:
    """What a node counts, read at one moment: the input of :func:`exposition`."""

    scheduler: SchedulerStatistics
    store: StoreStatistics
    space: SpaceStatistics
    workdirs: PoolStatistics
    jobs: dict[str, int]  # jobs in the state database, by state
    peers: dict[str, int]  # peers known, by state (alive, suspect, dead)
    uptime: float  # seconds since the node started


def exposition(figures: NodeFigures) -> str:
    """The metrics of a node, from its ``figures``, as Prometheus text."""
    sched = figures.scheduler
    store = figures.store
    out = _Exposition()
    out.metric("mesh_slots", "gauge", "Task slots of this node.", [({}, sched.slots)])
    out.metric("mesh_slots_busy", "gauge", "Slots running a task now.", [({}, sched.busy)])
    out.metric("mesh_tasks_queued", "gauge", "Tasks waiting for a slot.", [({}, sched.queued)])
    out.metric(
        "mesh_jobs_running", "gauge", "Jobs this node coordinates that have not finished.", [({}, sched.running_jobs)]
    )
    out.metric("mesh_tasks_run_total", "counter", "Tasks run since the node started.", [({}, sched.tasks_run)])
    out.metric(
        "mesh_tasks_stolen_total",
        "counter",
        "Queued tasks this node took from peers (work stealing).",
        [({}, sched.tasks_stolen)],
    )
    out.metric(
        "mesh_tasks_given_total",
        "counter",
        "Queued tasks of this node that idle peers took.",
        [({}, sched.tasks_given)],
    )
    out.metric(
        "mesh_cache_hits_total", "counter", "Action-cache hits since the node started.", [({}, sched.cache_hits)]
    )
    out.metric(
        "mesh_jobs",
        "gauge",
        "Jobs in the state database, by state.",
        [({"state": state}, count) for state, count in sorted(figures.jobs.items())],
    )
    workdirs = figures.workdirs
    out.metric(
        "mesh_task_dirs_reused_total",
        "counter",
        "Tasks that ran in a task directory kept from an earlier task with the same input (no checkout).",
        [({}, workdirs.reused)],
    )
    out.metric("mesh_task_dirs_idle", "gauge", "Task directories kept for reuse now.", [({}, workdirs.idle)])
    out.metric("mesh_store_blobs_written_total", "counter", "Blobs written to the store.", [({}, store.blobs_written)])
    out.metric("mesh_store_bytes_written_total", "counter", "Bytes written to the store.", [({}, store.bytes_written)])
    space = figures.space
    if space.held_bytes is not None:  # once the store is counted
        out.metric("mesh_store_bytes", "gauge", "Bytes the store holds.", [({}, space.held_bytes)])
    if space.cap is not None:
        out.metric("mesh_store_cap_bytes", "gauge", "The store's cap (MESH_STORE_MAX).", [({}, space.cap)])
    out.metric(
        "mesh_store_evicted_bytes_total",
        "counter",
        "Bytes evicted to keep the store under its cap.",
        [({}, space.evicted_bytes)],
    )
    states = {"alive": 0, "suspect": 0, "dead": 0} | figures.peers
    out.metric("mesh_peers", "gauge", "Peers known, by state.", [({"state": s}, n) for s, n in sorted(states.items())])
    out.metric("mesh_uptime_seconds", "gauge", "Seconds since the node started.", [({}, figures.uptime)])
    return out.text()
