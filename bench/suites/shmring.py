"""Suite ``shmring``: one-way frame handoff latency and throughput, ring versus the alternatives.

Rows: ``{"transport", "resolution", "p50_ms", "p99_ms", "fps", "samples", "stale"}``. The DESIGN.md
targets for ``shmring+nats`` (p50 <= 0.2 ms, p99 <= 0.5 ms at every resolution, largest p50 <= 1.2x the
smallest, >= 50x faster than ``mp.queue`` at 1080p) are checked and printed after the table.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import tempfile
import time
from multiprocessing.connection import Connection, wait
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import numpy as np

from bench.handoff.common import (
    FULL,
    QUICK,
    RESOLUTIONS,
    AckWaiter,
    PhaseMarks,
    Phases,
    ReaderResult,
    Resolution,
    drive_reader,
    drive_writer,
)
from bench.handoff.transports import RING_CHANNEL, Transport, TransportSpec, by_name, transports
from bench.harness import Row, Suite, register
from vap_common import aio
from vap_common.embedded import EmbeddedServers
from vap_shmring import ring_name

_READY_TIMEOUT_S = 30.0


def _reader_main(
    name: str, spec: TransportSpec, side: Any, ack: Connection, out: Connection, ready: Event
) -> None:
    async def main() -> ReaderResult:
        reader = by_name(name).make_reader(spec, side)
        await reader.open()
        ready.set()
        try:
            return await drive_reader(reader, ack)
        finally:
            await reader.close()

    out.send(aio.run(main()))


def _wait_ready(ready: Event, reader_sentinel: int) -> bool:
    """True once the reader is ready; False when it died or took too long."""
    deadline = time.monotonic() + _READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if ready.wait(0.05):
            return True
        if wait([reader_sentinel], timeout=0):
            return False
    return False


def _side_channel(ctx: Any, kind: str, phases: Phases) -> tuple[Any, Any]:
    """(writer end, reader end) of the transport's side channel."""
    if kind == "queue":
        queue = ctx.Queue(maxsize=phases.window + 1)
        return queue, queue
    if kind == "pipe":
        receiving, sending = ctx.Pipe(duplex=False)
        return sending, receiving
    return None, None


def _measure(transport: Transport, spec: TransportSpec, phases: Phases) -> tuple[ReaderResult, PhaseMarks]:
    ctx = mp.get_context("spawn")
    ack_recv, ack_send = ctx.Pipe(duplex=False)
    out_recv, out_send = ctx.Pipe(duplex=False)
    ready = ctx.Event()
    writer_side, reader_side = _side_channel(ctx, transport.side_channel, phases)
    source = np.random.default_rng(7).integers(0, 256, spec.resolution.shape, dtype=np.uint8)

    async def run_writer() -> PhaseMarks:
        # The writer opens first: a ring must exist before its reader can attach by name.
        writer = transport.make_writer(spec, writer_side)
        await writer.open()
        reader = ctx.Process(
            target=_reader_main,
            args=(transport.name, spec, reader_side, ack_send, out_send, ready),
            daemon=True,
        )
        reader.start()
        try:
            loop = asyncio.get_running_loop()
            if not await loop.run_in_executor(None, _wait_ready, ready, reader.sentinel):
                raise RuntimeError(f"{transport.name} reader exited or did not start in {_READY_TIMEOUT_S} s")
            acks = AckWaiter(ack_recv)
            try:
                return await drive_writer(writer, source, acks, phases)
            finally:
                acks.close()
        finally:
            await writer.close()
            reader.join(timeout=_READY_TIMEOUT_S)
            if reader.is_alive():
                reader.kill()

    marks = aio.run(run_writer())
    if not out_recv.poll(_READY_TIMEOUT_S):
        raise RuntimeError(f"{transport.name} reader sent no result")
    result: ReaderResult = out_recv.recv()
    return result, marks


def _percentiles(result: ReaderResult, start: int, stop: int) -> tuple[float | None, float | None, int]:
    latencies = [
        lat for lat, ok in zip(result.latencies_ns[start:stop], result.valid[start:stop], strict=True) if ok
    ]
    if not latencies:
        return None, None, 0
    lat_ms = np.asarray(latencies, dtype=np.float64) / 1e6
    p50, p99 = np.percentile(lat_ms, [50, 99])
    return round(float(p50), 4), round(float(p99), 4), len(latencies)


def _row(transport: Transport, resolution: Resolution, measured: tuple[ReaderResult, PhaseMarks]) -> Row:
    result, marks = measured
    p50, p99, samples = _percentiles(result, marks.warmup, marks.hot)
    p50_hot, p99_hot, _ = _percentiles(result, marks.hot, marks.throughput)
    held = result.held_at_ns[marks.throughput : marks.end]
    fps = (len(held) - 1) / ((held[-1] - held[0]) / 1e9) if len(held) > 1 and held[-1] > held[0] else 0.0
    return {
        "transport": transport.name,
        "resolution": resolution.name,
        "p50_ms": p50,
        "p99_ms": p99,
        "fps": round(fps, 1),
        "p50_hot_ms": p50_hot,
        "p99_hot_ms": p99_hot,
        "samples": samples,
        "stale": result.valid.count(False),
    }


def check_targets(rows: list[Row]) -> list[tuple[str, bool]]:
    """DESIGN.md's frame-handoff targets, each as (description with figures, met)."""
    ring = {r["resolution"]: r for r in rows if r["transport"] == "shmring+nats" and r["p50_ms"] is not None}
    queue = {r["resolution"]: r for r in rows if r["transport"] == "mp.queue" and r["p50_ms"] is not None}
    checks: list[tuple[str, bool]] = []
    for res, r in ring.items():
        checks.append((f"shmring+nats {res}: p50 {r['p50_ms']:.3f} ms <= 0.2", r["p50_ms"] <= 0.2))
        checks.append((f"shmring+nats {res}: p99 {r['p99_ms']:.3f} ms <= 0.5", r["p99_ms"] <= 0.5))
    if len(ring) > 1:
        p50s = [r["p50_ms"] for r in ring.values()]
        flat = max(p50s) / min(p50s)
        checks.append((f"shmring+nats flat: largest p50 / smallest = {flat:.2f} <= 1.2", flat <= 1.2))
    if "1080p" in ring and "1080p" in queue:
        speedup = queue["1080p"]["p50_ms"] / ring["1080p"]["p50_ms"]
        checks.append((f"1080p: mp.queue p50 / shmring+nats p50 = {speedup:.0f}x >= 50", speedup >= 50))
    return checks


def floor_lines(rows: list[Row]) -> list[str]:
    """How far ``shmring+nats`` is above ``nats-floor`` (two wake-ups through nats-server, nothing else)."""
    floor = {r["resolution"]: r for r in rows if r["transport"] == "nats-floor" and r["p50_ms"] is not None}
    ring = {r["resolution"]: r for r in rows if r["transport"] == "shmring+nats" and r["p50_ms"] is not None}
    lines = []
    for res in ring.keys() & floor.keys():
        f, r = floor[res], ring[res]
        lines.append(
            f"INFO  {res}: nats-floor p50 {f['p50_ms']:.3f} / p99 {f['p99_ms']:.3f} ms; "
            f"shmring+nats adds p50 {r['p50_ms'] - f['p50_ms']:+.3f} ms"
        )
    return sorted(lines)


def run(quick: bool) -> list[Row]:
    phases = QUICK if quick else FULL
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="vap-bench-") as data_dir, EmbeddedServers() as servers:
        endpoints = servers.start(Path(data_dir), need_postgres=False)
        for transport in transports():
            reason = transport.missing()
            if reason:
                print(f"skipping {transport.name}: {reason}", flush=True)
                continue
            for resolution in RESOLUTIONS:
                spec = TransportSpec(
                    name=transport.name,
                    resolution=resolution,
                    nats_url=endpoints.nats_url or "",
                    ring_name=ring_name(RING_CHANNEL),
                    # Unique per run: a killed earlier run may have left its iceoryx2 service behind.
                    service_name=f"vap-bench/{os.getpid()}/{resolution.name}",
                )
                row = _row(transport, resolution, _measure(transport, spec, phases))
                print(f"  {row['transport']:<14} {row['resolution']:<6} p50 {row['p50_ms']} ms", flush=True)
                rows.append(row)
    return rows


def summarize(rows: list[Row]) -> list[str]:
    checks = [f"{'PASS' if met else 'FAIL'}  {description}" for description, met in check_targets(rows)]
    return checks + floor_lines(rows)


register(
    Suite(
        name="shmring",
        description="one-way frame handoff (writer has frame -> reader holds numpy view), p50/p99 and fps",
        run=run,
        columns=(
            "transport",
            "resolution",
            "p50_ms",
            "p99_ms",
            "fps",
            "p50_hot_ms",
            "p99_hot_ms",
            "samples",
            "stale",
        ),
        summarize=summarize,
    )
)
