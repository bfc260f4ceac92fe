"""The handoff benchmark's transports, measured for real against the session's embedded nats-server with a
few frames each: every frame sent arrives once, in order, with a positive latency and a valid view."""

from __future__ import annotations

import pytest

from bench.handoff.common import RESOLUTIONS, Phases
from bench.handoff.transports import RING_CHANNEL, TransportSpec, by_name
from bench.suites.shmring import _measure, _row, floor_lines
from vap_shmring import ring_name

TINY = Phases(3, 20, 5.0, 0.001, 30, 2.0, 4)


def _spec(name: str, nats_url: str) -> TransportSpec:
    return TransportSpec(
        name=name, resolution=RESOLUTIONS[0], nats_url=nats_url, ring_name=ring_name(RING_CHANNEL)
    )


@pytest.mark.parametrize("name", ["nats-floor", "shmring+nats"])
def test_transport_delivers_every_frame_once(name: str, nats_url: str) -> None:
    transport = by_name(name)
    result, marks = _measure(transport, _spec(name, nats_url), TINY)
    assert marks.end == len(result.latencies_ns)  # nothing lost, nothing twice
    assert all(lat > 0 for lat in result.latencies_ns)
    assert all(result.valid)
    row = _row(transport, RESOLUTIONS[0], (result, marks))
    assert row["samples"] == 20 and row["p50_ms"] is not None and row["p50_ms"] > 0


def test_floor_line_compares_the_ring_with_the_floor() -> None:
    rows = [
        {"transport": "nats-floor", "resolution": "720p", "p50_ms": 0.18, "p99_ms": 0.4},
        {"transport": "shmring+nats", "resolution": "720p", "p50_ms": 0.38, "p99_ms": 0.7},
    ]
    assert floor_lines(rows) == [
        "INFO  720p: nats-floor p50 0.180 / p99 0.400 ms; shmring+nats adds p50 +0.200 ms"
    ]
