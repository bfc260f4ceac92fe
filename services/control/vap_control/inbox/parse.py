"""The inbox's first step: result messages from NATS into a typed Batch.

Each ``(subject, payload)`` is sorted by the subject's kind (detections, tracks, events, counts) and decoded.
Messages that cannot be parsed, and results that name no scenario of a control service, are dropped and
counted; the same frame twice in one fetch is kept once. Storing the batch is ``repo.results.store``,
fetching and acknowledging it ``inbox.consume``.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from google.protobuf.message import DecodeError

from vap_common import subjects
from vap_control import metrics
from vap_proto.v1 import analytics_pb2, detection_pb2, frame_pb2, tracking_pb2

EventKind = analytics_pb2.EventKind
EVENT_KINDS: dict[str, int] = {
    "line_crossing": EventKind.EVENT_KIND_LINE_CROSSING,
    "zone_enter": EventKind.EVENT_KIND_ZONE_ENTER,
    "zone_exit": EventKind.EVENT_KIND_ZONE_EXIT,
    "zone_dwell": EventKind.EVENT_KIND_ZONE_DWELL,
    "loitering": EventKind.EVENT_KIND_LOITERING,
}

_M = TypeVar("_M", detection_pb2.FrameDetections, tracking_pb2.TrackedFrame)
FrameKey = tuple[uuid.UUID, int, str, int, int]  # scenario, capture_time_ns, channel, epoch, sequence


def event_kind(event: analytics_pb2.AnalyticsEvent) -> int:
    which = event.WhichOneof("kind")
    return EVENT_KINDS.get(which or "", EventKind.EVENT_KIND_UNSPECIFIED)


@dataclass
class Batch:
    """Parsed messages of one fetch, ready for the database."""

    frames: dict[FrameKey, detection_pb2.FrameDetections] = field(default_factory=dict)
    tracked: dict[FrameKey, tracking_pb2.TrackedFrame] = field(default_factory=dict)
    events: list[tuple[uuid.UUID, analytics_pb2.AnalyticsEvent]] = field(default_factory=list)
    counts: list[tuple[uuid.UUID, analytics_pb2.IntervalCounts]] = field(default_factory=list)
    duplicates_in_batch: int = 0
    dropped: int = 0

    def __len__(self) -> int:
        return len(self.frames) + len(self.tracked) + len(self.events) + len(self.counts)


def _scenario_uuid(raw: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(raw)
    except ValueError:
        return None  # not a scenario of any control service (e.g. a channel run outside a scenario)


def parse(messages: Sequence[tuple[str, bytes]], *, store_tracks: bool, count: bool = True) -> Batch:
    """Sort ``(subject, payload)`` pairs into a Batch; unparsable or scenario-less messages are dropped."""
    batch = Batch()
    for subject, payload in messages:
        try:
            kind = subjects.parse(subject).kind
        except ValueError:
            batch.dropped += 1
            continue
        if count:
            metrics.INBOX_MESSAGES.labels(kind).inc()
        try:
            if kind == subjects.DETECTIONS:
                fd = detection_pb2.FrameDetections.FromString(payload)
                _add_frame(batch.frames, batch, fd.frame, fd)
            elif kind == subjects.TRACKS:
                if not store_tracks:
                    continue
                tf = tracking_pb2.TrackedFrame.FromString(payload)
                _add_frame(batch.tracked, batch, tf.frame, tf)
            elif kind == subjects.EVENTS:
                ev = analytics_pb2.AnalyticsEvent.FromString(payload)
                sid = _scenario_uuid(ev.scenario_id)
                if sid is None or not ev.event_id:
                    batch.dropped += 1
                    continue
                batch.events.append((sid, ev))
            elif kind == subjects.COUNTS:
                ic = analytics_pb2.IntervalCounts.FromString(payload)
                sid = _scenario_uuid(ic.scenario_id)
                if sid is None or ic.WhichOneof("counts") is None:
                    batch.dropped += 1
                    continue
                batch.counts.append((sid, ic))
        except DecodeError:
            batch.dropped += 1
    return batch


def _add_frame(target: dict[FrameKey, _M], batch: Batch, info: frame_pb2.FrameInfo, message: _M) -> None:
    sid = _scenario_uuid(info.scenario_id)
    if sid is None or not info.channel_id:
        batch.dropped += 1
        return
    key: FrameKey = (sid, info.capture_time_ns, info.channel_id, info.stream_epoch, info.sequence)
    if key in target:
        batch.duplicates_in_batch += 1  # the same frame twice in one fetch (a producer retry)
        return
    target[key] = message
