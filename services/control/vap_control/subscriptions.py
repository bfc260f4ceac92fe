"""Live subscriptions: one NATS subscription per stream kind, fanned out to every gRPC subscriber.

Each subscriber has its own bounded queue. The bus callback never waits for a subscriber: when a queue is full
its oldest message is dropped and counted for that subscriber only (the newest is what a live view wants), so
a slow reader cannot slow the pipeline, the bus connection or the other readers. The count travels with every
item (``dropped_total``).

Detections come from ``vap.detections.*`` (raw inference output) or, for ``tracked`` subscribers, from
``vap.tracks.*`` converted to detections with track ids. Every message also feeds the per-channel live
figures of ListChannels (``LiveStats``).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from vap_common import subjects
from vap_common.logs import get_logger
from vap_common.tasks import cancel_and_wait
from vap_control import metrics
from vap_control.bus import NatsConnection
from vap_control.inbox.parse import event_kind
from vap_proto.v1 import analytics_pb2, control_pb2, detection_pb2, tracking_pb2

_log = get_logger("vap.control.subscriptions")

T = TypeVar("T")
TS = tracking_pb2.TrackState


class Subscriber(Generic[T]):
    """A bounded queue that drops its oldest item when full and counts the drops."""

    def __init__(self, maxlen: int, stream: str) -> None:
        self._items: deque[T] = deque()
        self._maxlen = maxlen
        self._stream = stream
        self._ready = asyncio.Event()
        self.dropped = 0
        self.closed = False

    def offer(self, item: T) -> None:
        if len(self._items) >= self._maxlen:
            self._items.popleft()
            self.dropped += 1
            metrics.SUBSCRIBER_DROPPED.labels(self._stream).inc()
        self._items.append(item)
        self._ready.set()

    def close(self) -> None:
        self.closed = True
        self._ready.set()

    async def get(self) -> tuple[T, int] | None:
        """The oldest queued item and the drops so far; None once closed."""
        while not self._items:
            if self.closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft(), self.dropped

    def __len__(self) -> int:
        return len(self._items)


@dataclass(frozen=True, slots=True)
class DetectionFilter:
    scenario_ids: frozenset[str]
    class_ids: frozenset[int]
    class_names: frozenset[str]
    min_confidence: float
    tracked: bool
    include_empty: bool

    @classmethod
    def from_request(cls, request: control_pb2.StreamDetectionsRequest) -> DetectionFilter:
        return cls(
            frozenset(request.scenario_ids),
            frozenset(request.class_ids),
            frozenset(request.class_names),
            request.min_confidence,
            request.tracked,
            request.include_empty,
        )

    def wants(self, det: detection_pb2.Detection) -> bool:
        if det.confidence < self.min_confidence:
            return False
        if not self.class_ids and not self.class_names:
            return True
        return det.class_id in self.class_ids or det.class_name in self.class_names

    def apply(self, frame: detection_pb2.FrameDetections) -> detection_pb2.FrameDetections | None:
        """The frame with only the wanted detections; None when nothing is left (unless include_empty)."""
        if self.scenario_ids and frame.frame.scenario_id not in self.scenario_ids:
            return None
        kept = [d for d in frame.detections if self.wants(d)]
        if not kept and not self.include_empty:
            return None
        if len(kept) == len(frame.detections):
            return frame  # shared, read-only from here on
        out = detection_pb2.FrameDetections(
            frame=frame.frame, detections=kept, publish_time_ns=frame.publish_time_ns
        )
        if frame.HasField("stats"):
            out.stats.CopyFrom(frame.stats)
        return out


@dataclass(frozen=True, slots=True)
class EventFilter:
    scenario_ids: frozenset[str]
    kinds: frozenset[int]
    rule_ids: frozenset[str]

    @classmethod
    def from_request(cls, request: control_pb2.StreamEventsRequest) -> EventFilter:
        return cls(frozenset(request.scenario_ids), frozenset(request.kinds), frozenset(request.rule_ids))

    def wants(self, event: analytics_pb2.AnalyticsEvent) -> bool:
        return (
            (not self.scenario_ids or event.scenario_id in self.scenario_ids)
            and (not self.kinds or event_kind(event) in self.kinds)
            and (not self.rule_ids or event.rule_id in self.rule_ids)
        )


def tracked_to_detections(tracked: tracking_pb2.TrackedFrame) -> detection_pb2.FrameDetections:
    """Tracks matched in this frame as detections with track ids (LOST tracks are predictions, REMOVED ones
    are gone: neither is a detection of this frame)."""
    out = detection_pb2.FrameDetections(frame=tracked.frame, publish_time_ns=tracked.publish_time_ns)
    if tracked.HasField("inference"):
        out.stats.CopyFrom(tracked.inference)
    for t in tracked.tracks:
        if t.frames_since_update != 0 or t.state not in (TS.TRACK_STATE_TENTATIVE, TS.TRACK_STATE_CONFIRMED):
            continue
        det = out.detections.add(
            class_id=t.class_id, class_name=t.class_name, confidence=t.confidence, track_id=t.track_id
        )
        det.box.CopyFrom(t.box)
        if t.global_id:
            det.global_id = t.global_id
        det.attributes.extend(t.attributes)
    return out


@dataclass
class _ChannelWindow:
    detections: deque[float] = field(default_factory=deque)  # monotonic arrival times
    latencies: deque[tuple[float, float]] = field(default_factory=deque)  # (arrival, ms) of tracked results
    detection_latencies: deque[tuple[float, float]] = field(default_factory=deque)


class LiveStats:
    """Per-channel detection rate and capture-to-result latency over the last ``window_s`` seconds."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._channels: dict[str, _ChannelWindow] = {}

    def _prune(self, w: _ChannelWindow, now: float) -> None:
        edge = now - self.window_s
        while w.detections and w.detections[0] < edge:
            w.detections.popleft()
        for q in (w.latencies, w.detection_latencies):
            while q and q[0][0] < edge:
                q.popleft()

    def record(self, channel_id: str, capture_ns: int, publish_ns: int, *, tracked: bool) -> None:
        now = time.monotonic()
        w = self._channels.setdefault(channel_id, _ChannelWindow())
        latency_ms = (publish_ns - capture_ns) / 1e6 if capture_ns and publish_ns else None
        if tracked:
            if latency_ms is not None:
                w.latencies.append((now, latency_ms))
        else:
            w.detections.append(now)
            if latency_ms is not None:
                w.detection_latencies.append((now, latency_ms))
        self._prune(w, now)

    def snapshot(self, channel_id: str) -> tuple[float, float, float]:
        """(detection fps, p50 ms, p99 ms): latency of tracked results, else of detections."""
        w = self._channels.get(channel_id)
        if w is None:
            return 0.0, 0.0, 0.0
        self._prune(w, time.monotonic())
        fps = len(w.detections) / self.window_s
        values = sorted(ms for _, ms in (w.latencies or w.detection_latencies))
        if not values:
            return fps, 0.0, 0.0
        return fps, _percentile(values, 0.50), _percentile(values, 0.99)


def _percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of a non-empty sorted list."""
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


class FanOut:
    def __init__(self, bus: NatsConnection, *, queue_size: int, stats: LiveStats) -> None:
        self._bus = bus
        self._queue_size = queue_size
        self.stats = stats
        self._detections: dict[Subscriber[detection_pb2.FrameDetections], DetectionFilter] = {}
        self._events: dict[Subscriber[analytics_pb2.AnalyticsEvent], EventFilter] = {}
        self._subs: list[Subscription] = []
        self._task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._subscribe(), name="vap-control-fanout")

    async def _subscribe(self) -> None:
        nc = await self._bus.wait_connected()
        self._subs = [
            await nc.subscribe(subjects.all_detections(), cb=self._on_detections),
            await nc.subscribe(subjects.all_tracks(), cb=self._on_tracks),
            await nc.subscribe(subjects.all_events(), cb=self._on_events),
        ]
        await nc.flush()
        self.ready.set()

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        for detections in self._detections:
            detections.close()
        for events in self._events:
            events.close()

    # --- subscribers ----------------------------------------------------------------------------------------

    def add_detections(self, flt: DetectionFilter) -> Subscriber[detection_pb2.FrameDetections]:
        sub: Subscriber[detection_pb2.FrameDetections] = Subscriber(self._queue_size, "detections")
        self._detections[sub] = flt
        metrics.SUBSCRIBERS.labels("detections").set(len(self._detections))
        return sub

    def remove_detections(self, sub: Subscriber[detection_pb2.FrameDetections]) -> None:
        self._detections.pop(sub, None)
        metrics.SUBSCRIBERS.labels("detections").set(len(self._detections))

    def add_events(self, flt: EventFilter) -> Subscriber[analytics_pb2.AnalyticsEvent]:
        sub: Subscriber[analytics_pb2.AnalyticsEvent] = Subscriber(self._queue_size, "events")
        self._events[sub] = flt
        metrics.SUBSCRIBERS.labels("events").set(len(self._events))
        return sub

    def remove_events(self, sub: Subscriber[analytics_pb2.AnalyticsEvent]) -> None:
        self._events.pop(sub, None)
        metrics.SUBSCRIBERS.labels("events").set(len(self._events))

    # --- bus callbacks: parse once, filter per subscriber, never await a subscriber -------------------------

    async def _on_detections(self, msg: Msg) -> None:
        try:
            frame = detection_pb2.FrameDetections.FromString(msg.data)
        except Exception:
            return
        self.stats.record(
            frame.frame.channel_id, frame.frame.capture_time_ns, frame.publish_time_ns, tracked=False
        )
        self._fan_detections(frame, tracked=False)

    async def _on_tracks(self, msg: Msg) -> None:
        try:
            tracked = tracking_pb2.TrackedFrame.FromString(msg.data)
        except Exception:
            return
        self.stats.record(
            tracked.frame.channel_id, tracked.frame.capture_time_ns, tracked.publish_time_ns, tracked=True
        )
        if any(f.tracked for f in self._detections.values()):
            self._fan_detections(tracked_to_detections(tracked), tracked=True)

    def _fan_detections(self, frame: detection_pb2.FrameDetections, *, tracked: bool) -> None:
        metrics.FANOUT_MESSAGES.labels("tracks" if tracked else "detections").inc()
        for sub, flt in list(self._detections.items()):
            if flt.tracked != tracked:
                continue
            item = flt.apply(frame)
            if item is not None:
                sub.offer(item)

    async def _on_events(self, msg: Msg) -> None:
        if not self._events:
            return
        try:
            event = analytics_pb2.AnalyticsEvent.FromString(msg.data)
        except Exception:
            return
        metrics.FANOUT_MESSAGES.labels("events").inc()
        for sub, flt in list(self._events.items()):
            if flt.wants(event):
                sub.offer(event)
