"""The measuring parts of the pipeline benchmarks (bench/pipeline, bench/suites/soak|e2e): percentiles,
memory slopes, the Prometheus scrape, process-tree CPU, and the e2e search's verdict from its rows."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import prometheus_client
from hypothesis import given
from hypothesis import strategies as st

from bench.pipeline import procstats
from bench.pipeline.prom import scrape, total
from bench.pipeline.subscriber import percentile
from bench.suites.e2e import max_channels
from bench.suites.soak import memory_trend, slope_mb_h


@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=200), st.floats(0.0, 1.0))
def test_percentile_is_an_element_between_min_and_max(values: list[float], q: float) -> None:
    p = percentile(values, q)
    assert p in values
    assert min(values) <= p <= max(values)


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([], 0.99) == 0.0


@given(st.floats(-500, 500), st.floats(0, 1000))
def test_slope_of_a_line_is_its_rate_per_hour(mb_per_h: float, start: float) -> None:
    times = [i * 10.0 for i in range(50)]
    values = [start + mb_per_h * t / 3600 for t in times]
    assert abs(slope_mb_h(times, values) - mb_per_h) < 1e-6 * max(1.0, abs(mb_per_h)) + 1e-6


def test_slope_needs_two_points() -> None:
    assert slope_mb_h([1.0], [5.0]) == 0.0


def _soak_samples(mb_at_minute) -> tuple[list[float], list[float]]:  # type: ignore[no-untyped-def]
    times = [i * 10.0 for i in range(6 * 90)]  # 90 minutes, a sample every 10 s
    return times, [mb_at_minute(t / 60) for t in times]


def test_soak_passes_a_cache_that_fills_then_levels_off() -> None:
    # PostgreSQL's shared buffers: +200 MB/h for 35 minutes, then full.
    trend = memory_trend(*_soak_samples(lambda m: 44 + 200 * min(m, 35) / 60))
    assert trend["ok"]
    assert trend["pss_slope_mb_h"] > 10  # the post-warm-up slope still sees the fill...
    assert abs(trend["pss_tail_slope_mb_h"]) < 1e-6  # ...the verdict's tail does not
    assert trend["pss_trace_mb"][0] == 44 and trend["pss_trace_mb"][-1] == round(44 + 200 * 35 / 60, 1)


@given(st.floats(12, 500), st.floats(0, 60))
def test_soak_fails_a_leak_whenever_it_starts(mb_per_h: float, starts_at_minute: float) -> None:
    trend = memory_trend(*_soak_samples(lambda m: 100 + mb_per_h * max(0.0, m - starts_at_minute) / 60))
    assert not trend["ok"]
    assert trend["pss_tail_slope_mb_h"] > 10


def test_scrape_sums_labels_keeps_reasons_and_skips_created() -> None:
    registry = prometheus_client.CollectorRegistry()
    dropped = prometheus_client.Counter("t_frames_dropped", "x", ["reason", "model"], registry=registry)
    dropped.labels("stale", "a").inc(3)
    dropped.labels("stale", "b").inc(2)
    dropped.labels("superseded", "a").inc(4)
    server, thread = prometheus_client.start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        got = scrape(int(server.server_port))
    finally:
        server.shutdown()
        thread.join()
    assert got["t_frames_dropped_total{reason=stale}"] == 5
    assert total(got, "t_frames_dropped_total") == 9
    assert not any(k.endswith("_created") for k in got)


def test_scrape_of_nothing_is_empty() -> None:
    from vap_common.ports import free_port_block

    assert scrape(free_port_block(1), timeout=1.0) == {}


def test_tree_cpu_counts_children() -> None:
    busy = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\n"
    parent = subprocess.Popen(
        [sys.executable, "-c", f"import subprocess, sys; subprocess.run([sys.executable, '-c', {busy!r}])"]
    )
    try:
        deadline = time.monotonic() + 30
        seen = 0.0
        while parent.poll() is None and time.monotonic() < deadline:
            seen = max(seen, procstats.tree_cpu_s(parent.pid))
            time.sleep(0.05)
        assert seen >= 0.2  # the child's busy loop, charged to the parent's tree while it ran
        assert procstats.tree_rss_mb(os.getpid()) >= procstats.rss_mb(os.getpid()) > 0
    finally:
        parent.kill()
        parent.wait()


def test_max_channels_is_the_largest_ok_run() -> None:
    rows = [
        {"model": "m", "channels": 1, "ok": True},
        {"model": "m", "channels": 2, "ok": True},
        {"model": "m", "channels": 4, "ok": False},
        {"model": "m", "channels": 3, "ok": False},
        {"model": "other", "channels": 8, "ok": True},
    ]
    assert max_channels(rows, "m") == 2
    assert max_channels(rows, "absent") == 0


def test_pss_counts_a_shared_page_once_where_rss_counts_it_per_process() -> None:
    import mmap
    import signal

    size = 64 * 2**20
    shared = mmap.mmap(-1, size)  # anonymous MAP_SHARED: inherited by forked children
    shared.write(b"\x01" * size)
    ready_r, ready_w = os.pipe()
    child = os.fork()
    if child == 0:  # a process and its own child both read every page, then wait to be killed
        try:
            os.fork()
            sum(shared[i] for i in range(0, size, 4096))
            os.write(ready_w, b"x")
            time.sleep(60)
        finally:
            os._exit(0)
    try:
        assert len(os.read(ready_r, 1) + os.read(ready_r, 1)) == 2
        rss = procstats.tree_rss_mb(child)
        uss, pss = procstats.tree_private_mb(child)
        # Three processes share the 64 MB: RSS of the two-process tree counts it twice, PSS two thirds.
        assert rss - pss > 64
        assert uss < pss < rss
    finally:
        for proc in procstats.tree(child)[::-1]:
            os.kill(proc.pid, signal.SIGKILL)
        os.waitpid(child, 0)
        shared.close()
