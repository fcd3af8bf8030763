"""The node's counters for Prometheus, for ``GET /metrics``, through prometheus_client.

The node reads what it counts into :class:`NodeFigures` from the ``statistics()`` of the
scheduler, the store and its space, the job counts of the state database and the peer table;
:class:`NodeCollector` turns one reading into metric families at scrape time, so nothing here
keeps state of its own. :func:`node_registry` puts it and the build counters
(mesh.pipelines.buildmetrics) in a registry of the node's own, never the library's global one,
so several nodes in one process (the tests) stay apart. ``/metrics`` answers every scrape
with the library's ``generate_latest`` (the Prometheus text format) and ``CONTENT_TYPE_LATEST``.
It does not negotiate OpenMetrics with the library's ``choose_encoder``: an ``Accept`` header
with a version such as ``version=abc`` makes that raise TypeError (prometheus_client 0.26),
a 500 for anyone, and Prometheus reads the text format as well.

The library writes values as Go does: 123456789 is ``1.23456789e+08``, which Prometheus parses
exactly (the hand-written exposition this replaces wrote ``1.23457e+08``, 44 off).

Open to everyone, like ``/health`` and ``/status``: counts only, never a command line, an
environment, a file name or an output.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mesh.cas.space import SpaceStatistics
from mesh.cas.store import StoreStatistics
from mesh.cc.stats import CATEGORIES
from mesh.exec.workpool import PoolStatistics
from mesh.sched.scheduler import SchedulerStatistics


@dataclass(frozen=True)
class NodeFigures:
    """What a node counts, read at one moment: what :class:`NodeCollector` exposes."""

    scheduler: SchedulerStatistics
    store: StoreStatistics
    space: SpaceStatistics
    workdirs: PoolStatistics
    jobs: dict[str, int]  # jobs in the state database, by state
    peers: dict[str, int]  # peers known, by state (alive, suspect, dead)
    uptime: float  # seconds since the node started
    cc_calls: dict[str, int] = field(default_factory=dict)  # mesh cc's calls by outcome (mesh.cc.stats)


def _by_state(family: GaugeMetricFamily, counts: dict[str, int]) -> GaugeMetricFamily:
    for state, count in sorted(counts.items()):
        family.add_metric([state], count)
    return family


class NodeCollector:
    """The node's own metrics, from a fresh reading of ``read()`` at each scrape."""

    def __init__(self, read: Callable[[], NodeFigures]) -> None:
        self._read = read

    def collect(self) -> Iterable[Metric]:
        """The node's metric families, read now (prometheus_client's Collector protocol)."""
        figures = self._read()
        sched, store, space, workdirs = figures.scheduler, figures.store, figures.space, figures.workdirs
        yield GaugeMetricFamily("mesh_slots", "Task slots of this node.", value=sched.slots)
        yield GaugeMetricFamily("mesh_slots_busy", "Slots running a task now.", value=sched.busy)
        yield GaugeMetricFamily("mesh_tasks_queued", "Tasks waiting for a slot.", value=sched.queued)
        yield GaugeMetricFamily(
            "mesh_jobs_running", "Jobs this node coordinates that have not finished.", value=sched.running_jobs
        )
        yield CounterMetricFamily("mesh_tasks_run_total", "Tasks run since the node started.", value=sched.tasks_run)
        yield CounterMetricFamily(
            "mesh_tasks_stolen_total",
            "Queued tasks this node took from peers (work stealing).",
            value=sched.tasks_stolen,
        )
        yield CounterMetricFamily(
            "mesh_tasks_given_total", "Queued tasks of this node that idle peers took.", value=sched.tasks_given
        )
        yield CounterMetricFamily(
            "mesh_cache_hits_total", "Action-cache hits since the node started.", value=sched.cache_hits
        )
        yield _by_state(
            GaugeMetricFamily("mesh_jobs", "Jobs in the state database, by state.", labels=["state"]), figures.jobs
        )
        yield CounterMetricFamily(
            "mesh_task_dirs_reused_total",
            "Tasks that ran in a task directory kept from an earlier task with the same input (no checkout).",
            value=workdirs.reused,
        )
        yield GaugeMetricFamily("mesh_task_dirs_idle", "Task directories kept for reuse now.", value=workdirs.idle)
        yield CounterMetricFamily(
            "mesh_store_blobs_written_total", "Blobs written to the store.", value=store.blobs_written
        )
        yield CounterMetricFamily(
            "mesh_store_bytes_written_total", "Bytes written to the store.", value=store.bytes_written
        )
        if space.held_bytes is not None:  # once the store is counted
            yield GaugeMetricFamily("mesh_store_bytes", "Bytes the store holds.", value=space.held_bytes)
        if space.cap is not None:
            yield GaugeMetricFamily("mesh_store_cap_bytes", "The store's cap (MESH_STORE_MAX).", value=space.cap)
        yield CounterMetricFamily(
            "mesh_store_evicted_bytes_total",
            "Bytes evicted to keep the store under its cap.",
            value=space.evicted_bytes,
        )
        peers = {"alive": 0, "suspect": 0, "dead": 0} | figures.peers
        yield _by_state(GaugeMetricFamily("mesh_peers", "Peers known, by state.", labels=["state"]), peers)
        yield GaugeMetricFamily("mesh_uptime_seconds", "Seconds since the node started.", value=figures.uptime)
        calls = GaugeMetricFamily(
            "mesh_cc_calls",
            "Calls of mesh cc through this node's socket since mesh cc --zero-stats, by outcome: answered by the"
            " mesh, run here and kept in its cache, compiled here because the mesh could not or it had something"
            " to say, or not a compile mesh cc sends.",
            labels=["outcome"],
        )
        yield _by_state(calls, dict.fromkeys(CATEGORIES, 0) | figures.cc_calls)


def node_registry(*collectors: Collector) -> CollectorRegistry:
    """A registry of one node's own holding ``collectors`` (never the library's global one)."""
    registry = CollectorRegistry()
    for collector in collectors:
        registry.register(collector)
    return registry
