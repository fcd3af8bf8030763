"""mesh.api.metrics: the node's /metrics through prometheus_client, linted by promtool.

The unit tests render a registry of made-up figures; the end-to-end test lints a real
node's ``/metrics`` with Debian's ``promtool`` (package prometheus, which ``make test``
installs). A real Prometheus scraping a node: tests/test_metrics_prometheus.py.
"""

from __future__ import annotations

import re
import secrets
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from mesh.api.metrics import NodeCollector, NodeFigures, node_registry
from mesh.cas.digest import Digest
from mesh.cas.snapshot import ingest
from mesh.cas.space import SpaceStatistics
from mesh.cas.store import LocalStore, StoreStatistics
from mesh.exec.workpool import PoolStatistics
from mesh.pipelines.buildmetrics import BuildMetrics
from mesh.sched.scheduler import SchedulerStatistics
from mesh.wire.auth import load_key
from mesh.wire.client import MeshAuth, NodeClient
from tests.metricsutil import parse, scrape
from tests.nodeutil import NodeProcess

PROMTOOL = shutil.which("promtool")
README = Path(__file__).resolve().parent.parent / "README.md"
#: What Prometheus 2.42 sends (scrape.go's acceptHeader), and what prometheus_client's own
#: negotiation (choose_encoder) fails on with a TypeError: both get the text format.
ACCEPTS = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    "text/plain;version=abc",
)


def figures(*, tasks_run: int = 0) -> NodeFigures:
    return NodeFigures(
        scheduler=SchedulerStatistics(slots=2, busy=1, queued=0, running_jobs=1, tasks_run=tasks_run, cache_hits=0),
        store=StoreStatistics(blobs_written=3, bytes_written=0, blobs_already_present=0),
        space=SpaceStatistics(
            cap=None, held_bytes=10, held_blobs=3, reserved_bytes=0, evicted_blobs=0, evicted_bytes=0, refused=0
        ),
        workdirs=PoolStatistics(idle=0, reused=0, kept=0, evicted=0),
        jobs={"succeeded": 4, "failed": 1},
        peers={"alive": 2},
        uptime=12.5,
        cc_calls={"mesh": 7, "here": 2},
    )


def test_a_large_counter_is_written_so_that_prometheus_reads_it_exactly() -> None:
    """123456789 was written ``1.23457e+08`` (``{:g}``): 44 off. Now every digit is kept."""
    body = generate_latest(node_registry(NodeCollector(lambda: figures(tasks_run=123_456_789))))
    line = next(line for line in body.decode().splitlines() if line.startswith("mesh_tasks_run_total "))
    assert float(line.split()[1]) == 123_456_789, line  # float(): correctly rounded, like Go's ParseFloat
    assert parse(body.decode())["mesh_tasks_run_total"] == 123_456_789


def test_the_node_figures_keep_their_names_and_labels() -> None:
    samples = parse(generate_latest(node_registry(NodeCollector(figures))).decode())
    assert samples["mesh_slots"] == 2 and samples["mesh_slots_busy"] == 1 and samples["mesh_jobs_running"] == 1
    assert samples['mesh_jobs{state="succeeded"}'] == 4 and samples['mesh_jobs{state="failed"}'] == 1
    assert samples['mesh_peers{state="alive"}'] == 2 and samples['mesh_peers{state="dead"}'] == 0
    assert samples["mesh_store_bytes"] == 10 and "mesh_store_cap_bytes" not in samples  # no cap, no gauge
    assert samples["mesh_uptime_seconds"] == 12.5
    assert samples['mesh_cc_calls{outcome="mesh"}'] == 7 and samples['mesh_cc_calls{outcome="here"}'] == 2
    assert samples['mesh_cc_calls{outcome="kept"}'] == 0  # every outcome, counted or not
    for counter in ("tasks_run", "tasks_stolen", "tasks_given", "cache_hits", "task_dirs_reused"):
        assert f"mesh_{counter}_total" in samples, counter
    for counter in ("store_blobs_written", "store_bytes_written", "store_evicted_bytes"):
        assert f"mesh_{counter}_total" in samples, counter


def test_the_readme_lists_every_metric_family() -> None:
    space = SpaceStatistics(
        cap=1, held_bytes=0, held_blobs=0, reserved_bytes=0, evicted_blobs=0, evicted_bytes=0, refused=0
    )
    registry = node_registry(NodeCollector(lambda: replace(figures(), space=space)), BuildMetrics())
    written = {line.split()[2] for line in generate_latest(registry).decode().splitlines() if line.startswith("# TYPE")}
    section = README.read_text().split("### Metrics\n", 1)[1].split("\n## ", 1)[0]
    assert set(re.findall(r"`(mesh_\w+)", section)) == written


def test_a_real_nodes_metrics_pass_promtool_and_keep_every_digit(node: NodeProcess, home: Path, tmp_path: Path) -> None:
    """After a job and a blob of 1,234,567 bytes (``{:g}`` wrote 1.23457e+06), the unsigned
    /metrics of a real node lints clean, counts the blob's bytes exactly and has the build
    families (no samples: no builds yet)."""
    if PROMTOOL is None:
        pytest.skip("promtool is missing (Debian package prometheus; `make test` installs it)")
    src = tmp_path / "input"
    src.mkdir()
    (src / "f").write_text("x\n")
    with LocalStore(home / "cas") as store:
        snapshot = str(ingest(store, src))
    key = load_key(node.home)
    assert key is not None
    with NodeClient(node.url, key=key) as client:
        for _ in client.submit_and_follow({"tasks": [{"name": "t", "argv": ["true"], "input": snapshot}]}):
            pass
    before = scrape(node.url)["mesh_store_bytes_written_total"]
    blob = secrets.token_bytes(1_234_567)
    put = httpx.put(f"{node.url}/v1/blobs/{Digest.of(blob)}", content=blob, auth=MeshAuth(key), trust_env=False)
    assert put.status_code in (200, 201), put.text

    response = httpx.get(node.url + "/metrics", trust_env=False)
    assert response.status_code == 200
    assert response.headers["content-type"] == CONTENT_TYPE_LATEST
    samples = parse(response.text)
    assert samples["mesh_store_bytes_written_total"] - before == 1_234_567
    assert samples['mesh_jobs{state="succeeded"}'] == 1 and samples["mesh_tasks_run_total"] == 1
    assert "# TYPE mesh_builds_total counter\n" in response.text
    assert "# TYPE mesh_build_duration_seconds histogram\n" in response.text
    assert not any(name.startswith("mesh_build") for name in samples)
    for accept in ACCEPTS:
        odd = httpx.get(node.url + "/metrics", headers={"accept": accept}, trust_env=False)
        assert (odd.status_code, odd.headers["content-type"]) == (200, CONTENT_TYPE_LATEST), accept
    lint = subprocess.run([PROMTOOL, "check", "metrics"], input=response.text, capture_output=True, text=True)
    assert (lint.returncode, lint.stdout, lint.stderr) == (0, "", ""), lint
