"""Prometheus metrics of the tracker service (exposed by vap_common.runtime's HTTP endpoint)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

FRAMES = Counter("vap_tracker_frames_total", "Frames tracked", ["channel"])
TRACK_SECONDS = Histogram(
    "vap_tracker_frame_seconds",
    "Time spent in tracking, ReID bookkeeping and analytics per frame",
    buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05),
)
LIVE_TRACKS = Gauge("vap_tracker_live_tracks", "Live tracks (tentative, confirmed, lost)", ["channel"])
EVENTS = Counter("vap_tracker_events_total", "Analytics events published", ["channel", "kind"])
REID_CROPS = Counter(
    "vap_tracker_reid_crops_total",
    "ReID crops by outcome (embedded, stale: slot overwritten before copy; skipped_busy: batches not sent)",
    ["outcome"],
)
ATTRIBUTE_CROPS = Counter(
    "vap_tracker_attribute_crops_total",
    "Attribute crops by outcome (classified; no_face: no usable face in it; stale: slot overwritten before"
    " copy; skipped_busy: batches not sent)",
    ["outcome"],
)
REATTACHED = Counter("vap_tracker_reid_reattached_total", "Tracks re-attached by ReID", ["channel"])
BAD_MESSAGES = Counter(
    "vap_tracker_bad_messages_total", "Messages that could not be parsed", ["subject_kind"]
)
