"""One gRPC StreamDetections subscriber (tracked results, empty frames included, so every processed frame
counts), recording per scenario when each frame arrived and its latency from capture.

Latency = arrival wall clock - ``FrameInfo.capture_time_ns`` (the decoder's wall clock when it had the frame):
both clocks are this machine's. Per frame it also keeps the stage figures the messages carry: the inference
stats (queue wait, preprocess, model run, postprocess, batch size) and capture -> tracker publish.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import statistics
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc

from vap_proto.v1 import control_pb2, control_pb2_grpc


@dataclass
class Received:
    """What arrived since the last ``take``: per scenario arrival times (monotonic s) and latencies (ms)."""

    started: float
    ended: float = 0.0
    arrivals: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    latency_ms: list[float] = field(default_factory=list)
    # Stage figures per frame, ms: inference queue wait, preprocess, model run, postprocess; capture ->
    # tracker publish; tracker publish -> subscriber.
    stages: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    batch_sizes: list[int] = field(default_factory=list)
    dropped_total: int = 0

    @property
    def seconds(self) -> float:
        return max(self.ended - self.started, 1e-9)

    def rate(self, scenario_id: str) -> float:
        """Frames per second that reached the subscriber for this scenario over the window."""
        return len(self.arrivals.get(scenario_id, ())) / self.seconds

    def stage_medians(self) -> dict[str, float]:
        out = {name: round(statistics.median(v), 2) for name, v in self.stages.items() if v}
        if self.batch_sizes:
            out["batch_mean"] = round(statistics.fmean(self.batch_sizes), 2)
        return out


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q * len(ordered))))
    return ordered[rank - 1]


class DetectionSubscriber:
    def __init__(
        self,
        stub: control_pb2_grpc.ControlServiceAsyncStub,
        metadata: Sequence[tuple[str, str]],
        *,
        keep_latencies: bool = True,
    ) -> None:
        self._stub = stub
        self._metadata = tuple(metadata)
        self._keep = keep_latencies
        self._current = Received(time.monotonic())
        self._task: asyncio.Task[None] | None = None
        self.frames_total = 0
        self.error: str | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._read(), name="bench-subscriber")
        await asyncio.sleep(0)

    async def _read(self) -> None:
        request = control_pb2.StreamDetectionsRequest(tracked=True, include_empty=True)
        try:
            async for item in self._stub.StreamDetections(request, metadata=self._metadata):
                self._record(item)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                self.error = f"{exc.code().name}: {exc.details()}"

    def _record(self, item: control_pb2.StreamDetectionsResponse) -> None:
        now = time.monotonic()
        now_ns = time.time_ns()
        frame = item.frame
        info = frame.frame
        cur = self._current
        cur.arrivals[info.scenario_id].append(now)
        cur.dropped_total = item.dropped_total
        self.frames_total += 1
        if not self._keep or not info.capture_time_ns:
            return
        cur.latency_ms.append((now_ns - info.capture_time_ns) / 1e6)
        if frame.publish_time_ns:
            cur.stages["capture_to_tracker_ms"].append((frame.publish_time_ns - info.capture_time_ns) / 1e6)
            cur.stages["tracker_to_subscriber_ms"].append((now_ns - frame.publish_time_ns) / 1e6)
        if frame.HasField("stats"):
            s = frame.stats
            cur.stages["inf_queue_ms"].append(s.queue_wait_us / 1000)
            cur.stages["inf_pre_ms"].append(s.preprocess_us / 1000)
            cur.stages["inf_model_ms"].append(s.inference_us / 1000)
            cur.stages["inf_post_ms"].append(s.postprocess_us / 1000)
            cur.batch_sizes.append(s.batch_size)

    def peek(self) -> Received:
        """The current window, still filling."""
        return self._current

    def take(self) -> Received:
        """What arrived since the previous take (or the start), and start a new window."""
        out = self._current
        out.ended = time.monotonic()
        self._current = Received(out.ended, dropped_total=out.dropped_total)
        return out

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
