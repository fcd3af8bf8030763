"""Reading a node's ``/metrics`` in tests: samples by name and labels, parsed by prometheus_client."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families


def parse(text: str) -> dict[str, float]:
    """The samples of a Prometheus text exposition, keyed as they are written: ``name`` or
    ``name{label="value",...}`` (labels sorted)."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            found[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return found


def scrape(url: str) -> dict[str, float]:
    """The samples of ``GET /metrics`` of the node at ``url`` (unsigned, as Prometheus sends it)."""
    response = httpx.get(url + "/metrics", timeout=10, trust_env=False)
    response.raise_for_status()
    return parse(response.text)
