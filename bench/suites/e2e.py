"""Suite ``e2e``: how many 720p25 channels the whole pipeline carries on this machine, per model.

The stack is started as ``vap up`` starts it (bench/pipeline/stack.py: embedded NATS and PostgreSQL, decoder
agent, inference, tracker, control storing every result in PostgreSQL) and one gRPC StreamDetections
subscriber (tracked, empty frames included) reads every channel. Each channel is a scenario reading
vtest-720p25 from one simulated RTSP camera on loopback, sampled by its decoder to ``FPS`` frames/s (11: a
little above the 10/s target, so that an occasional dropped frame does not decide the result).

Per run of N channels: after the channels deliver and a warm-up, a window of ``seconds``:
- ``det_fps_per_channel_min``: the lowest frames/s any channel delivered to the subscriber over the window;
- ``p50_ms`` / ``p99_ms``: subscriber arrival - FrameInfo.capture_time_ns (the decoder's wall clock when it
  had the frame), over all frames of all channels;
- ``cpu_pct``: CPU of the pipeline's processes over the window (percent of one core; 200 = both cores of a
  2-core machine), i.e. decoder agent + decoders, inference, tracker, control, NATS, PostgreSQL; the camera
  and this process (the subscriber) are in ``cpu_rtsp`` / ``cpu_bench``, everything else on the machine in
  ``cpu_other`` (other users of a shared machine);
- ``rss_mb``: RSS summed over the same processes at the end of the window;
- ``ok``: det_fps_per_channel_min >= 10 and p99 <= 200 ms (DESIGN.md targets).
Extra keys: per-service CPU (``cpu_<service>``), median per-frame stage times from the messages
(``inf_queue_ms``, ``inf_pre_ms``, ``inf_model_ms``, ``inf_post_ms``, ``capture_to_tracker_ms``,
``tracker_to_subscriber_ms``, ``batch_mean``), frames inference dropped (``inf_dropped``), ``load1``, and
``cpu_ms_per_frame``: the pipeline's CPU time per frame delivered, which other load on the machine moves
far less than the rates (capacity of an idle machine ~ cores x 1000 / cpu_ms_per_frame frames/s).

Run as root, the suite lowers its nice value as the decode suite does (the stack's processes inherit it), so
that other work on a shared machine disturbs the runs less; ``nice`` is in every row.

Search per model: N = 1, 2, 4, ... doubling while ok, then bisection between the last ok and the first
failing N; every run is a row, so the rows that decide the maximum (last ok N, first failing N) are in the
table. Quick: 4 s warm-up and 10 s windows; full: 10 s and 30 s.
Targets (DESIGN.md): >= 4 channels with NanoDet, >= 8 with SSDLite person. ``VAP_BENCH_E2E_MODELS=a,b``
searches other models instead (e.g. a faster variant; no target).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.harness import Row, Suite, register
from bench.pipeline import procstats
from bench.pipeline.prom import scrape, total
from bench.pipeline.stack import BenchStack, running_stack
from bench.pipeline.subscriber import DetectionSubscriber, percentile
from bench.suites.decode import raise_priority
from vap_common import aio
from vap_proto.v1 import scenario_pb2

# Model -> DESIGN.md target channels. $VAP_BENCH_E2E_MODELS (comma-separated names) runs others instead,
# e.g. a faster variant of one of these, with no target.
TARGETS = {"nanodet-m-416-int8": 4, "ssdlite-mbv2-person-300": 8}
_CHOSEN = [m for m in os.environ.get("VAP_BENCH_E2E_MODELS", "").split(",") if m]
MODELS = {name: TARGETS.get(name, 0) for name in _CHOSEN or TARGETS}
FPS = 11.0
MIN_DET_FPS = 10.0
MAX_P99_MS = 200.0
MAX_CHANNELS = 32
PIPELINE = ("decoder", "inference", "tracker", "control", "nats", "postgres")


async def _until(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.2)
    return True


async def measure(
    bs: BenchStack, sub: DetectionSubscriber, model: str, channels: int, warmup: float, seconds: float
) -> Row:
    """One run: ``channels`` scenarios of ``model``; the row (see the module docstring)."""
    sids = await bs.add_channels(channels, model, FPS)
    try:
        await bs.wait_status(sids, [scenario_pb2.SCENARIO_STATUS_ACTIVE], 120)
        seen: set[str] = set()

        def all_delivering() -> bool:
            seen.update(k for k, v in sub.peek().arrivals.items() if v)
            return seen.issuperset(sids)

        if not await _until(all_delivering, 60):
            # Measured all the same: a channel that delivers nothing is a failed run, not a broken suite.
            print(
                f"  {channels - len(seen & set(sids))} channel(s) delivered nothing within 60 s", flush=True
            )
        await asyncio.sleep(warmup)
        sub.take()
        pids = bs.service_pids()
        procstats.machine_busy_pct()  # starts psutil's machine-wide interval
        start = procstats.sample(pids, {"bench": os.getpid()})
        dropped0 = total(scrape(bs.metrics_port("inference")), "vap_inference_frames_dropped")
        await asyncio.sleep(seconds)
        got = sub.take()
        end = procstats.sample(pids, {"bench": os.getpid()})
        busy_pct = procstats.machine_busy_pct() * (os.cpu_count() or 1)
        dropped1 = total(scrape(bs.metrics_port("inference")), "vap_inference_frames_dropped")
    finally:
        await bs.remove_channels(sids)
    if sub.error:
        raise RuntimeError(f"subscriber failed: {sub.error}")
    rates = [got.rate(sid) for sid in sids]
    cpu = procstats.cpu_pct(start, end)
    ours = sum(cpu.values())
    pipeline_cpu = sum(cpu.get(s, 0.0) for s in PIPELINE)
    p99 = percentile(got.latency_ms, 0.99)
    det_min = min(rates)
    row: Row = {
        "model": model,
        "channels": channels,
        "det_fps_per_channel_min": round(det_min, 2),
        "p50_ms": round(percentile(got.latency_ms, 0.50), 1),
        "p99_ms": round(p99, 1),
        "cpu_pct": round(pipeline_cpu, 1),
        "rss_mb": round(sum(end.rss_mb.get(s, 0.0) for s in PIPELINE), 1),
        "ok": det_min >= MIN_DET_FPS and p99 <= MAX_P99_MS,
        "det_fps_per_channel_mean": round(sum(rates) / len(rates), 2),
        "cpu_ms_per_frame": round(pipeline_cpu * 10 / max(sum(rates), 1e-9), 2),
        "window_s": round(got.seconds, 1),
        **{f"cpu_{name}": round(value, 1) for name, value in sorted(cpu.items())},
        "cpu_other": round(max(0.0, busy_pct - ours), 1),
        **{f"rss_{name}_mb": round(value, 1) for name, value in sorted(end.rss_mb.items())},
        **got.stage_medians(),
        "inf_dropped": int(dropped1 - dropped0),
        "subscriber_dropped": got.dropped_total,
        "load1": round(os.getloadavg()[0], 2),
    }
    return row


async def search(
    bs: BenchStack, sub: DetectionSubscriber, model: str, warmup: float, seconds: float
) -> list[Row]:
    """Rows of the doubling-then-bisection search for the largest ok N."""
    rows: list[Row] = []
    results: dict[int, bool] = {}

    async def run(n: int) -> bool:
        row = await measure(bs, sub, model, n, warmup, seconds)
        print(f"  {row}", flush=True)
        rows.append(row)
        results[n] = bool(row["ok"])
        return results[n]

    n = 1
    while n <= MAX_CHANNELS and await run(n):
        n *= 2
    good = max((k for k, ok in results.items() if ok), default=0)
    bad = min((k for k, ok in results.items() if not ok), default=MAX_CHANNELS + 1)
    while bad - good > 1:
        mid = (good + bad) // 2
        if await run(mid):
            good = mid
        else:
            bad = mid
    return rows


async def _run(quick: bool) -> list[Row]:
    warmup, seconds = (4.0, 10.0) if quick else (10.0, 30.0)
    nice = raise_priority()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="vap-bench-e2e-") as tmp:
        async with running_stack(Path(tmp), list(MODELS)) as bs:
            sub = DetectionSubscriber(bs.stub, bs.metadata)
            await sub.start()
            try:
                for model in MODELS:
                    rows += [r | {"nice": nice} for r in await search(bs, sub, model, warmup, seconds)]
            finally:
                await sub.close()
    return rows


def run(quick: bool) -> list[Row]:
    from bench.pipeline.stack import missing_reason

    if reason := missing_reason(list(MODELS)):
        raise RuntimeError(f"suite e2e cannot run here: {reason}")
    return aio.run(_run(quick))


def max_channels(rows: list[Row], model: str) -> int:
    """The largest N that was ok, with the first failing N above it (the search's answer)."""
    ok = [r["channels"] for r in rows if r["model"] == model and r["ok"]]
    return max(ok, default=0)


def summarize(rows: list[Row]) -> list[str]:
    lines = []
    for model, target in MODELS.items():
        mine = [r for r in rows if r["model"] == model]
        if not mine:
            continue
        best = max_channels(rows, model)
        failing = [r for r in mine if not r["ok"] and r["channels"] > best]
        first_bad = min(failing, key=lambda r: r["channels"]) if failing else None
        why = ""
        if first_bad is not None:
            why = (
                f"; at {first_bad['channels']}: {first_bad['det_fps_per_channel_min']} det/s min, "
                f"p99 {first_bad['p99_ms']} ms, cpu {first_bad['cpu_pct']} % + other "
                f"{first_bad['cpu_other']} %"
            )
        if not target:
            lines.append(
                f"{model}: {best} channel(s) at >= {MIN_DET_FPS:.0f} det/s and p99 <= "
                f"{MAX_P99_MS:.0f} ms (no target){why}"
            )
            continue
        verdict = "met" if best >= target else "MISSED"
        lines.append(
            f"target {model}: >= {target} channels at >= {MIN_DET_FPS:.0f} det/s and p99 <= "
            f"{MAX_P99_MS:.0f} ms: {best} channel(s) - {verdict}{why}"
        )
    busy = max((r.get("cpu_other", 0.0) for r in rows), default=0.0)
    if busy > 20:
        lines.append(f"warning: other processes used up to {busy:.0f} % CPU while measuring: figures are low")
    return lines


register(
    Suite(
        name="e2e",
        description=f"channels of 720p25 at {FPS:g} fps the whole pipeline carries, per model",
        run=run,
        columns=(
            "model",
            "channels",
            "det_fps_per_channel_min",
            "p50_ms",
            "p99_ms",
            "cpu_pct",
            "rss_mb",
            "ok",
            "cpu_inference",
            "cpu_decoder",
            "cpu_other",
        ),
        summarize=summarize,
        calibrate=True,
    )
)
