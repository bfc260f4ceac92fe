"""One accuracy run: the clip through VAP as `vap up` runs it, results taken from the API.

The stack (bench.pipeline.stack: embedded NATS and PostgreSQL, decoder agent, inference, tracker, control)
gets one scenario per configuration: the file ``vtest-576p25.mp4`` as a file source played once at its real
rate (``realtime``, no loop), the configuration's model, analysed fps and thresholds, and the lines and zone
to score. Subscriptions opened before the scenario starts collect, from the public API, the tracked frames
(StreamDetections tracked=true), the raw detections (tracked=false, for the detection scores and the peer
trackers) and the analytics events (StreamEvents). Frames are mapped to file frames by their pts.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from bench.accuracy.crossings import Crossing
from bench.accuracy.metrics import Pred
from bench.pipeline import procstats
from bench.pipeline.stack import BenchStack
from vap_proto.v1 import analytics_pb2, control_pb2, scenario_pb2
from vap_stack.config import Camera, LineRule, ZoneRule

FILE_FPS = 25
PIPELINE = ("decoder", "inference", "tracker", "control", "nats", "postgres")
S = scenario_pb2.ScenarioStatus


@dataclass(frozen=True)
class Config:
    name: str
    model: str
    fps: float
    confidence: float | None = None
    reference: bool = False
    reid: bool = False  # the scenario's appearance re-identification (re-attaches lost tracks)


@dataclass
class RunResult:
    config: Config
    tracked: list[Pred] = field(default_factory=list)  # track ids as VAP gave them
    raw: list[Pred] = field(default_factory=list)  # track 0
    frames: set[int] = field(default_factory=set)  # file frames the pipeline analysed
    crossings: list[Crossing] = field(default_factory=list)
    cpu_ms_per_frame: float = 0.0
    tracker_ms_per_frame: float = 0.0  # the tracker service's part of cpu_ms_per_frame
    cpu_other: float = 0.0
    seconds: float = 0.0


def _frame(pts_us: int) -> int:
    return round(pts_us * FILE_FPS / 1e6)


async def _collect(stream: Any, sink: list[Any]) -> None:
    with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
        async for item in stream:
            sink.append(item)


async def run_config(
    bs: BenchStack, video: str, config: Config, lines: Sequence[LineRule], zones: Sequence[ZoneRule]
) -> RunResult:
    cam = Camera(
        id=f"acc-{uuid.uuid4().hex[:8]}",
        url=video,
        fps=config.fps,
        model=config.model,
        confidence=config.confidence,
        reid=config.reid,
        lines=list(lines),
        zones=list(zones),
    )
    spec = cam.scenario(video, site=bs.stack.config.site)
    spec.source.realtime, spec.source.loop = True, False
    stub, md = bs.stub, bs.metadata
    created = await stub.CreateScenario(
        control_pb2.CreateScenarioRequest(scenario=spec), metadata=md, timeout=30
    )
    sid = created.scenario.id
    tracked: list[control_pb2.StreamDetectionsResponse] = []
    raw: list[control_pb2.StreamDetectionsResponse] = []
    events: list[control_pb2.StreamEventsResponse] = []
    streams = [
        stub.StreamDetections(
            control_pb2.StreamDetectionsRequest(scenario_ids=[sid], tracked=True, include_empty=True),
            metadata=md,
        ),
        stub.StreamDetections(
            control_pb2.StreamDetectionsRequest(scenario_ids=[sid], tracked=False, include_empty=True),
            metadata=md,
        ),
        stub.StreamEvents(control_pb2.StreamEventsRequest(scenario_ids=[sid]), metadata=md),
    ]
    sinks: list[list[Any]] = [tracked, raw, events]
    tasks = [asyncio.create_task(_collect(s, sink)) for s, sink in zip(streams, sinks, strict=True)]
    result = RunResult(config)
    try:
        await asyncio.sleep(0.5)  # subscriptions in place before the first frame
        pids = bs.service_pids()
        procstats.machine_busy_pct()
        start = procstats.sample(pids, {"bench": os.getpid()})
        t0 = time.monotonic()
        await stub.StartScenario(control_pb2.StartScenarioRequest(scenario_id=sid), metadata=md, timeout=30)
        # Played once at its real rate: done when the results stop coming after the clip's length.
        last_count, last_change = 0, time.monotonic()
        while time.monotonic() - t0 < 120:
            await asyncio.sleep(0.5)
            if len(tracked) != last_count:
                last_count, last_change = len(tracked), time.monotonic()
            elif tracked and time.monotonic() - last_change > 4.0 and time.monotonic() - t0 > 20:
                break
        end = procstats.sample(pids, {"bench": os.getpid()})
        busy = procstats.machine_busy_pct() * (os.cpu_count() or 1)
        result.seconds = time.monotonic() - t0
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(grpc.aio.AioRpcError):
            await stub.StopScenario(control_pb2.StopScenarioRequest(scenario_id=sid), metadata=md, timeout=30)
            await bs.wait_status([sid], (S.SCENARIO_STATUS_INACTIVE, S.SCENARIO_STATUS_FAILED), 60)
            await stub.DeleteScenario(
                control_pb2.DeleteScenarioRequest(scenario_id=sid), metadata=md, timeout=30
            )
    seq_frame: dict[tuple[int, int], int] = {}
    for item in tracked:
        info = item.frame.frame
        f = _frame(info.pts_us)
        seq_frame[(info.stream_epoch, info.sequence)] = f
        result.frames.add(f)
        for d in item.frame.detections:
            b = d.box
            result.tracked.append(Pred(f, int(d.track_id), (b.x1, b.y1, b.x2, b.y2), d.confidence))
    for item in raw:
        f = _frame(item.frame.frame.pts_us)
        for d in item.frame.detections:
            b = d.box
            result.raw.append(Pred(f, 0, (b.x1, b.y1, b.x2, b.y2), d.confidence))
    for got in events:
        ev = got.event
        if ev.WhichOneof("kind") != "line_crossing":
            continue
        at = seq_frame.get((ev.stream_epoch, ev.frame_sequence))
        if at is None:
            continue
        a_to_b = ev.line_crossing.direction == analytics_pb2.CROSSING_DIRECTION_A_TO_B
        result.crossings.append(Crossing(ev.rule_id, int(ev.track_id), at, "a_to_b" if a_to_b else "b_to_a"))
    cpu = procstats.cpu_pct(start, end)
    pipeline = sum(v for k, v in cpu.items() if k in PIPELINE)
    elapsed = result.seconds
    result.cpu_ms_per_frame = pipeline * 10 * elapsed / max(len(result.frames), 1)
    result.tracker_ms_per_frame = cpu.get("tracker", 0.0) * 10 * elapsed / max(len(result.frames), 1)
    result.cpu_other = max(0.0, busy - sum(cpu.values()))
    return result
