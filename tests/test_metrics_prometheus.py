"""A real Prometheus (Debian's prometheus 2.42) scrapes a real node's /metrics.

Prometheus may reach for the network on its own, so it and the node run in one network
namespace of their own (tests/netns.py: its only link is a bridge connected to nothing) and
talk over that namespace's loopback; the test reads Prometheus' HTTP API from inside it too.
tests/test_metrics.py lints the same text with promtool.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.netns import Lan, require_namespaces
from tests.nodeutil import node_env, wait_for

PROMETHEUS = shutil.which("prometheus")
#: Ports inside the test's own namespace, where nothing else listens.
NODE_PORT, PROMETHEUS_PORT = 7474, 9090
CONFIG = """\
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: mesh
    static_configs:
      - targets: ["127.0.0.1:{port}"]
"""
#: Prints the body at argv[1] (no proxy: the namespace has none to reach); fails on an error.
FETCH = (
    "import sys, urllib.request as r; "
    "print(r.build_opener(r.ProxyHandler({})).open(sys.argv[1], timeout=5).read().decode(), end='')"
)

#: Stores a random blob of argv[3] bytes at the node at argv[1], signed with the key of home argv[2].
PUT = """\
import secrets, sys, httpx
from mesh.cas.digest import Digest
from mesh.wire.auth import load_key
from mesh.wire.client import MeshAuth
blob = secrets.token_bytes(int(sys.argv[3]))
url = f"{sys.argv[1]}/v1/blobs/{Digest.of(blob)}"
httpx.put(url, content=blob, auth=MeshAuth(load_key(sys.argv[2])), trust_env=False).raise_for_status()
"""
#: The blob's size: more digits than ``{:g}`` kept.
BLOB = 1_234_567


def fetch(lan: Lan, url: str) -> str | None:
    """The body at ``url`` as seen from inside the namespace, or None if it does not answer."""
    done = lan.run(0, [sys.executable, "-c", FETCH, url], timeout=30)
    return done.stdout if done.returncode == 0 else None


def api(lan: Lan, path: str) -> Any:
    """The ``data`` of a Prometheus API answer, or None while Prometheus does not answer."""
    body = fetch(lan, f"http://127.0.0.1:{PROMETHEUS_PORT}{path}")
    if body is None:
        return None
    answer = json.loads(body)
    assert answer["status"] == "success", answer
    return answer["data"]


def values(lan: Lan, expr: str) -> list[str] | None:
    """The values of an instant query (as Prometheus writes them), or None while it has none."""
    data = api(lan, "/api/v1/query?query=" + quote(expr))
    return [result["value"][1] for result in data["result"]] if data and data["result"] else None


def test_a_real_prometheus_scrapes_a_node_on_loopback(tmp_path: Path) -> None:
    require_namespaces("a real Prometheus scraping a node")
    if PROMETHEUS is None:
        pytest.skip("prometheus is missing (Debian package prometheus; `make test` installs it)")
    home = tmp_path / "home"
    home.mkdir()
    config = tmp_path / "prometheus.yml"
    config.write_text(CONFIG.replace("{port}", str(NODE_PORT)))
    with Lan(1) as lan:
        argv = [sys.executable, "-m", "mesh", "up", "--listen", f"127.0.0.1:{NODE_PORT}", "--slots", "3"]
        node = lan.spawn(0, argv, env=node_env(str(home)))
        prometheus = None
        try:
            node_url = f"http://127.0.0.1:{NODE_PORT}"
            wait_for(lambda: fetch(lan, node_url + "/health"), timeout=60, what="the node in the namespace")
            prometheus = lan.spawn(
                0,
                [
                    PROMETHEUS,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{PROMETHEUS_PORT}",
                ],
            )
            up = wait_for(lambda: values(lan, 'up{job="mesh"}'), timeout=60, what="Prometheus' first scrape")
            assert up == ["1"]
            targets = api(lan, "/api/v1/targets")["activeTargets"]
            assert [(t["scrapeUrl"], t["health"], t["lastError"]) for t in targets] == [
                (node_url + "/metrics", "up", "")
            ]
            assert values(lan, "mesh_slots") == ["3"]
            assert values(lan, 'mesh_peers{state="alive"}') == ["0"]
            assert values(lan, "mesh_tasks_run_total") == ["0"]
            assert values(lan, "mesh_builds_total") is None  # the families, with no builds: no series
            metadata = api(lan, "/api/v1/metadata")
            assert metadata["mesh_builds_total"][0]["type"] == "counter"
            assert metadata["mesh_build_duration_seconds"][0]["type"] == "histogram"

            # 1,234,567 more bytes written: ``{:g}`` wrote 1.23457e+06, which Prometheus read as 1234570
            (before_text,) = values(lan, "mesh_store_bytes_written_total") or ["missing"]
            before = int(before_text)
            put = lan.run(0, [sys.executable, "-c", PUT, node_url, str(home), str(BLOB)], env=node_env(str(home)))
            assert put.returncode == 0, put.stderr
            after = wait_for(
                lambda: [v for v in values(lan, "mesh_store_bytes_written_total") or [] if v != before_text],
                timeout=30,
                what="Prometheus to scrape the bytes written",
            )
            assert after == [str(before + BLOB)]
        finally:
            if prometheus is not None:
                prometheus.stop()
            node.stop()
