"""``GET /metrics``: the node's counters in the Prometheus text exposition format (0.0.4).

Read from the ``statistics()`` of the scheduler and the store, the job counts of the
state database, and the peer table; nothing here keeps state of its own. Open to
everyone, like ``/health`` and ``/status``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response

if TYPE_CHECKING:
    from mesh.node import Node

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


def exposition(node: Node) -> str:
    """The metrics of ``node`` as Prometheus text."""
    sched = node.scheduler.statistics()
    store = node.store.statistics()
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
        [({"state": state}, count) for state, count in sorted(node.db.count_jobs().items())],
    )
    workdirs = node.runner.workdirs.statistics()
    out.metric(
        "mesh_task_dirs_reused_total",
        "counter",
        "Tasks that ran in a task directory kept from an earlier task with the same input (no checkout).",
        [({}, workdirs.reused)],
    )
    out.metric("mesh_task_dirs_idle", "gauge", "Task directories kept for reuse now.", [({}, workdirs.idle)])
    out.metric("mesh_store_blobs_written_total", "counter", "Blobs written to the store.", [({}, store.blobs_written)])
    out.metric("mesh_store_bytes_written_total", "counter", "Bytes written to the store.", [({}, store.bytes_written)])
    space = node.space.statistics()
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
    peers = node.peering.table.peers()
    states = {"alive": 0, "suspect": 0, "dead": 0}
    for peer in peers:
        states[peer.state] = states.get(peer.state, 0) + 1
    out.metric("mesh_peers", "gauge", "Peers known, by state.", [({"state": s}, n) for s, n in sorted(states.items())])
    out.metric("mesh_uptime_seconds", "gauge", "Seconds since the node started.", [({}, node.uptime())])
    return out.text()


async def metrics(request: Request) -> Response:
    node: Node = request.app.state.node
    return Response(exposition(node), media_type=CONTENT_TYPE)
