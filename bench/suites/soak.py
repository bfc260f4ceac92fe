"""Suite ``soak``: the whole pipeline at a steady load for ``--minutes`` (default 60; quick: 1.5), watching
memory for a trend and counting what got lost.

The stack is bench/pipeline/stack.py's (as ``vap up`` starts it); ``CHANNELS`` channels of vtest-720p25 from
one simulated RTSP camera, SSDLite person at ``FPS``, one gRPC StreamDetections subscriber (tracked), results
stored by the control service in PostgreSQL. Memory of every service's process tree is sampled every
``interval`` seconds (10; quick: 3).

Rows, one per service (decoder = agent + decoder processes, inference, tracker, control, nats, postgres):
``{"service", "rss_start_mb", "rss_end_mb", "rss_slope_mb_h", "pss_start_mb", "pss_end_mb", "pss_slope_mb_h",
"uss_slope_mb_h", "pss_tail_slope_mb_h", "pss_trace_mb", "cpu_pct", "ok"}``; slopes are least-squares
fits (MB per hour) of the tree's RSS, PSS and private memory (USS) over the samples after the first
``WARMUP_FRACTION`` of the run (models' arenas, PostgreSQL's buffers and JetStream fill up once);
``pss_tail_slope_mb_h`` is the PSS slope over the last ``TAIL_FRACTION`` of the run, ``pss_trace_mb`` the PSS
at every tenth of it. ``ok``: PSS tail slope < ``MAX_SLOPE_MB_H``. The tail, because a leak keeps its rate to
the end of the run while a cache that fills once levels off: PostgreSQL's shared buffers fill page by page as
the results tables grow, up to their fixed 128 MB (90-minute run: full after ~27 minutes, flat after).
PSS, not RSS: a tree's RSS counts a shared page once per process that touched it, so PostgreSQL's tree "grows"
by its fixed-size shared buffers once per backend as the backends touch them (45-minute run: RSS +855 MB/h,
USS -19 MB/h) and the rings, mapped by decoders and inference, count twice; PSS counts every page once and
still shows a leak of private or shared memory.
A quick run is too short for a slope to mean much: it checks that the suite works.

Then one row ``service = "pipeline"``: ``minutes``, ``channels``, ``frames`` (reaching the subscriber),
``det_fps_per_channel_min``, ``p99_ms``, frames dropped by the decoders (``dropped_decoder``: ring/publish
drops), by inference (``dropped_inference``, with ``dropped_inference_<reason>``), by the control inbox
(``dropped_inbox``) and for the subscriber (``dropped_subscriber``), and source ``reconnects`` - all deltas
of the services' Prometheus counters over the soak.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.harness import Row, Suite, register
from bench.pipeline import procstats
from bench.pipeline.prom import scrape, total
from bench.pipeline.stack import BenchStack, running_stack
from bench.pipeline.subscriber import DetectionSubscriber, percentile
from vap_common import aio
from vap_proto.v1 import scenario_pb2

MODEL = "ssdlite-mbv2-person-300"
CHANNELS = 2
FPS = 10.0
DEFAULT_MINUTES = 60.0
QUICK_MINUTES = 1.5
WARMUP_FRACTION = 0.2
TAIL_FRACTION = 1 / 3
MAX_SLOPE_MB_H = 10.0
SERVICES = ("decoder", "inference", "tracker", "control", "nats", "postgres")
_minutes: float | None = None


def configure(args: argparse.Namespace) -> None:
    global _minutes  # noqa: PLW0603 - the one option of this suite, set from the command line
    _minutes = args.minutes


def slope_mb_h(times_s: list[float], values_mb: list[float]) -> float:
    """Least-squares slope of ``values_mb`` over ``times_s``, in MB per hour (0 for fewer than 2 points)."""
    if len(times_s) < 2:
        return 0.0
    return float(np.polyfit(np.asarray(times_s), np.asarray(values_mb), 1)[0]) * 3600


def memory_trend(times_s: list[float], values_mb: list[float]) -> dict[str, float | list[float] | bool]:
    """Trend of one service's PSS samples: slope after the warm-up, slope over the tail (the verdict), and the
    value at every tenth of the run so a reader sees whether a rise levels off."""
    n = len(times_s)
    skip = int(n * WARMUP_FRACTION)
    tail = min(n - 2, int(n * (1 - TAIL_FRACTION))) if n >= 2 else 0
    tail_slope = slope_mb_h(times_s[tail:], values_mb[tail:])
    trace = [round(values_mb[min(n - 1, round(i * (n - 1) / 10))], 1) for i in range(11)] if n else []
    return {
        "pss_slope_mb_h": round(slope_mb_h(times_s[skip:], values_mb[skip:]), 1),
        "pss_tail_slope_mb_h": round(tail_slope, 1),
        "pss_trace_mb": trace,
        "ok": tail_slope < MAX_SLOPE_MB_H,
    }


def counters(bs: BenchStack) -> dict[str, float]:
    decoder = scrape(bs.metrics_port("decoder"))
    inference = scrape(bs.metrics_port("inference"))
    control = scrape(bs.metrics_port("control"))
    out = {
        "dropped_decoder": total(decoder, "vap_decoder_frames_dropped"),
        "reconnects": total(decoder, "vap_decoder_reconnects"),
        "dropped_inference": total(inference, "vap_inference_frames_dropped"),
        "dropped_inbox": total(control, "vap_control_inbox_dropped"),
    }
    for key, value in inference.items():
        if key.startswith("vap_inference_frames_dropped") and "reason=" in key:
            out[f"dropped_inference_{key.split('reason=', 1)[1].rstrip('}')}"] = value
    return out


async def _run(quick: bool, minutes: float) -> list[Row]:
    interval = 3.0 if quick else 10.0
    with tempfile.TemporaryDirectory(prefix="vap-bench-soak-") as tmp:
        async with running_stack(Path(tmp), [MODEL]) as bs:
            sub = DetectionSubscriber(bs.stub, bs.metadata)
            await sub.start()
            sids = await bs.add_channels(CHANNELS, MODEL, FPS)
            try:
                await bs.wait_status(sids, [scenario_pb2.SCENARIO_STATUS_ACTIVE], 120)
                await asyncio.sleep(5.0)
                sub.take()
                before = counters(bs)
                pids = bs.service_pids()
                first = procstats.sample(pids)
                times: list[float] = []
                rss: dict[str, list[float]] = {s: [] for s in SERVICES}
                uss: dict[str, list[float]] = {s: [] for s in SERVICES}
                pss: dict[str, list[float]] = {s: [] for s in SERVICES}
                latencies: list[float] = []
                arrivals: dict[str, int] = dict.fromkeys(sids, 0)
                t0 = time.monotonic()
                end_at = t0 + minutes * 60
                next_report = t0 + 60
                while time.monotonic() < end_at:
                    await asyncio.sleep(min(interval, max(0.0, end_at - time.monotonic())))
                    now = time.monotonic()
                    times.append(now - t0)
                    for name in SERVICES:
                        pid = pids.get(name)
                        rss[name].append(procstats.tree_rss_mb(pid) if pid else 0.0)
                        private = procstats.tree_private_mb(pid) if pid else (0.0, 0.0)
                        uss[name].append(private[0])
                        pss[name].append(private[1])
                    got = sub.take()
                    # Latencies of the whole soak would grow without bound: keep a thinned sample.
                    latencies += got.latency_ms[:: max(1, len(got.latency_ms) // 50)]
                    for sid in sids:
                        arrivals[sid] += len(got.arrivals.get(sid, ()))
                    if now >= next_report:
                        print(f"  {(now - t0) / 60:.0f}/{minutes:g} min", flush=True)
                        next_report += 60
                elapsed = time.monotonic() - t0
                last = procstats.sample(pids)
                after = counters(bs)
                subscriber_dropped = sub.take().dropped_total
            finally:
                await sub.close()
                await bs.remove_channels(sids)
    cpu = procstats.cpu_pct(first, last)
    skip = int(len(times) * WARMUP_FRACTION)
    rows: list[Row] = []
    for name in SERVICES:
        if not rss[name]:
            continue
        trend = memory_trend(times, pss[name])
        rows.append(
            {
                "service": name,
                "rss_start_mb": round(rss[name][0], 1),
                "rss_end_mb": round(rss[name][-1], 1),
                "rss_slope_mb_h": round(slope_mb_h(times[skip:], rss[name][skip:]), 1),
                "pss_start_mb": round(pss[name][0], 1),
                "pss_end_mb": round(pss[name][-1], 1),
                "pss_slope_mb_h": trend["pss_slope_mb_h"],
                "uss_slope_mb_h": round(slope_mb_h(times[skip:], uss[name][skip:]), 1),
                "pss_tail_slope_mb_h": trend["pss_tail_slope_mb_h"],
                "pss_trace_mb": trend["pss_trace_mb"],
                "cpu_pct": round(cpu.get(name, 0.0), 1),
                "ok": trend["ok"],
            }
        )
    lost = {key: int(after.get(key, 0.0) - before.get(key, 0.0)) for key in after}
    rows.append(
        {
            "service": "pipeline",
            "minutes": round(elapsed / 60, 1),
            "channels": CHANNELS,
            "frames": sum(arrivals.values()),
            "det_fps_per_channel_min": round(min(arrivals.values()) / elapsed, 2),
            "p99_ms": round(percentile(latencies, 0.99), 1),
            **lost,
            "dropped_subscriber": subscriber_dropped,
            "load1": round(os.getloadavg()[0], 2),
        }
    )
    return rows


def run(quick: bool) -> list[Row]:
    from bench.pipeline.stack import missing_reason

    if reason := missing_reason([MODEL]):
        raise RuntimeError(f"suite soak cannot run here: {reason}")
    minutes = _minutes if _minutes is not None else (QUICK_MINUTES if quick else DEFAULT_MINUTES)
    return aio.run(_run(quick, minutes))


def summarize(rows: list[Row]) -> list[str]:
    services = [r for r in rows if "pss_slope_mb_h" in r]
    pipeline = next((r for r in rows if r["service"] == "pipeline"), None)
    if pipeline is None:
        return []
    worst = max(services, key=lambda r: r["pss_tail_slope_mb_h"]) if services else None
    met = all(r["ok"] for r in services)
    name = worst["service"] if worst else "-"
    slope = worst["pss_tail_slope_mb_h"] if worst else 0
    p = pipeline
    tail_min = p["minutes"] * TAIL_FRACTION
    lines = [
        f"target no memory growth trend over {p['minutes']} min (PSS slope over the last {tail_min:.3g} min "
        f"< {MAX_SLOPE_MB_H:.0f} MB/h per service; largest: {name} {slope} MB/h) - "
        f"{'met' if met else 'MISSED'}",
        f"lost: decoder {p.get('dropped_decoder', 0)}, inference {p.get('dropped_inference', 0)}, "
        f"inbox {p.get('dropped_inbox', 0)}, subscriber {p.get('dropped_subscriber', 0)}; "
        f"reconnects {p.get('reconnects', 0)}",
    ]
    if pipeline["minutes"] < 20:
        lines.append("note: a run this short shows that the suite works; slopes need --minutes 60")
    return lines


register(
    Suite(
        name="soak",
        description="steady load for --minutes: PSS/RSS slope per service, dropped frames, reconnects",
        run=run,
        columns=(
            "service",
            "rss_start_mb",
            "rss_end_mb",
            "rss_slope_mb_h",
            "pss_slope_mb_h",
            "uss_slope_mb_h",
            "pss_tail_slope_mb_h",
            "cpu_pct",
            "ok",
            "minutes",
            "frames",
            "det_fps_per_channel_min",
            "dropped_decoder",
            "dropped_inference",
            "reconnects",
        ),
        summarize=summarize,
        configure=configure,
    )
)
