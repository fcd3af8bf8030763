"""Builds by project and result, and how long they took: what ``/metrics`` says of pipelines.

The pipelines code calls :meth:`BuildMetrics.observe` once per finished build; the node's
``/metrics`` registry (mesh.api.metrics) collects from this object at scrape time. The two
families exist from the start, with no samples until a build ends:

- ``mesh_builds_total{project, result}``: a counter of finished builds, ``result`` one of
  the final job states (succeeded, failed, cancelled);
- ``mesh_build_duration_seconds{project}``: a histogram of their wall-clock durations.

Both are prometheus_client's own Counter and Histogram, kept out of the library's global
registry (``registry=None``), so that several nodes in one process (the tests) count apart.
Like the library's counters they also carry ``_created`` series (when a label set was
first seen), which Prometheus uses to place counter resets.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from prometheus_client import Counter, Histogram
from prometheus_client.metrics_core import Metric

from mesh.sched.jobs import JOB_STATES, JobState

#: The ``result`` label's values: the job states a build ends in.
RESULTS: tuple[JobState, ...] = tuple(state for state in JOB_STATES if state != "running")
#: Upper bounds of the duration histogram's buckets, in seconds: a build takes from seconds
#: (a cached no-op) to hours (a cold full build and its tests), so the buckets run from 5 s
#: to 2 h, about doubling, rather than the library's default 5 ms to 10 s (made for requests).
DURATION_BUCKETS = (5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0, math.inf)


class BuildMetrics:
    """The build counters of one node; a prometheus_client collector (it has ``collect``)."""

    def __init__(self) -> None:
        self._builds = Counter(
            "mesh_builds", "Builds finished, by project and result.", ["project", "result"], registry=None
        )
        self._durations = Histogram(
            "mesh_build_duration_seconds",
            "Wall-clock time of finished builds, by project.",
            ["project"],
            buckets=DURATION_BUCKETS,
            registry=None,
        )

    def observe(self, project: str, result: JobState, seconds: float) -> None:
        """Count one finished build of ``project`` that ended ``result`` after ``seconds``.

        Raises ValueError for what no finished build can be (an empty project name, a result
        that is not a final job state, a negative or non-finite duration): the caller's bug,
        which would otherwise become a series that stays in every scrape.
        """
        if not project:
            raise ValueError("a build's project name cannot be empty")
        if result not in RESULTS:
            raise ValueError(f"a build's result is one of {', '.join(RESULTS)}, not {result!r}")
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"a build's duration is a finite number of seconds >= 0, not {seconds!r}")
        self._builds.labels(project=project, result=result).inc()
        self._durations.labels(project=project).observe(seconds)

    def collect(self) -> Iterable[Metric]:
        """The two families, read now (prometheus_client's Collector protocol)."""
        yield from self._builds.collect()
        yield from self._durations.collect()
