"""Counters from the services' Prometheus endpoints (the text format, parsed by prometheus_client)."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections import defaultdict

from prometheus_client.parser import text_string_to_metric_families


def scrape(port: int, timeout: float = 5.0) -> dict[str, float]:
    """The samples of ``http://127.0.0.1:PORT/metrics`` summed over their labels, except ``reason``: keyed
    ``name`` or ``name{reason=R}``. Counters' ``_created`` timestamps are left out. Empty when the endpoint
    does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as reply:
            text = reply.read().decode()
    except (OSError, urllib.error.URLError):
        return {}
    out: dict[str, float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.endswith("_created"):
                continue
            key = s.name
            reason = s.labels.get("reason")
            if reason is not None:
                key = f"{s.name}{{reason={reason}}}"
            out[key] += float(s.value)
    return dict(out)


def total(metrics: dict[str, float], prefix: str) -> float:
    """Sum of the samples whose key starts with ``prefix`` (all reasons of a labelled counter)."""
    return sum(v for k, v in metrics.items() if k.startswith(prefix))
