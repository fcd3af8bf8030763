"""mesh.pipelines.buildmetrics: builds by project and result, and their durations, in /metrics."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from mesh.pipelines.buildmetrics import DURATION_BUCKETS, BuildMetrics
from tests.metricsutil import parse


def text(builds: BuildMetrics) -> str:
    """What a scrape of a registry holding ``builds`` reads."""
    registry = CollectorRegistry()
    registry.register(builds)
    return generate_latest(registry).decode()


def test_with_no_builds_the_families_exist_with_no_samples() -> None:
    body = text(BuildMetrics())
    assert "# TYPE mesh_builds_total counter\n" in body
    assert "# TYPE mesh_build_duration_seconds histogram\n" in body
    assert parse(body) == {}


def test_a_build_is_counted_by_project_and_result_and_its_duration_lands_in_its_bucket() -> None:
    builds = BuildMetrics()
    builds.observe("web", "succeeded", 42.5)
    builds.observe("web", "succeeded", 3.0)
    builds.observe("web", "failed", 700.0)
    builds.observe("api", "cancelled", 0.0)
    samples = parse(text(builds))
    assert samples['mesh_builds_total{project="web",result="succeeded"}'] == 2
    assert samples['mesh_builds_total{project="web",result="failed"}'] == 1
    assert samples['mesh_builds_total{project="api",result="cancelled"}'] == 1
    assert 'mesh_builds_total{project="api",result="succeeded"}' not in samples  # no build, no series
    assert samples['mesh_build_duration_seconds_count{project="web"}'] == 3
    assert samples['mesh_build_duration_seconds_sum{project="web"}'] == 745.5
    assert samples['mesh_build_duration_seconds_bucket{le="5.0",project="web"}'] == 1
    assert samples['mesh_build_duration_seconds_bucket{le="60.0",project="web"}'] == 2
    assert samples['mesh_build_duration_seconds_bucket{le="600.0",project="web"}'] == 2
    assert samples['mesh_build_duration_seconds_bucket{le="1200.0",project="web"}'] == 3
    assert samples['mesh_build_duration_seconds_bucket{le="+Inf",project="web"}'] == 3
    buckets = [k for k in samples if k.startswith("mesh_build_duration_seconds_bucket{") and 'project="api"' in k]
    assert len(buckets) == len(DURATION_BUCKETS)


def test_two_nodes_in_one_process_count_apart() -> None:
    first, second = BuildMetrics(), BuildMetrics()
    first.observe("web", "succeeded", 1.0)
    assert parse(text(second)) == {}
    assert parse(text(first))['mesh_builds_total{project="web",result="succeeded"}'] == 1


@pytest.mark.parametrize(
    ("project", "result", "seconds", "message"),
    [
        ("", "succeeded", 1.0, "project name cannot be empty"),
        ("web", "running", 1.0, "one of succeeded, failed, cancelled, not 'running'"),
        ("web", "passed", 1.0, "not 'passed'"),
        ("web", "failed", -1.0, "not -1.0"),
        ("web", "failed", math.nan, "not nan"),
        ("web", "failed", math.inf, "not inf"),
    ],
)
def test_what_no_finished_build_can_be_is_refused_and_counts_nothing(
    project: str, result: str, seconds: float, message: str
) -> None:
    builds = BuildMetrics()
    with pytest.raises(ValueError, match=message):
        builds.observe(project, result, seconds)  # type: ignore[arg-type]  # what an untyped caller may pass
    assert parse(text(builds)) == {}
