"""Prometheus metrics of the web gateway (served on the runtime's metrics port). No per-camera labels."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

WATCHED = Gauge("vap_web_watched_cameras", "Cameras with at least one live viewer (frames are encoded)")
VIEWERS = Gauge("vap_web_viewers", "Open live-view WebSockets")
FRAMES = Counter(
    "vap_web_frames_total", "Live frames by outcome (sent, stale = overwritten before read)", ["result"]
)
ENCODE_SECONDS = Histogram(
    "vap_web_encode_seconds",
    "Ring slot to JPEG, in the worker thread",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
)
FRAMES_REPLACED = Counter(
    "vap_web_frames_replaced_total", "Frames replaced by a newer one before a slow browser took them"
)
LOGINS = Counter("vap_web_logins_total", "Login attempts by result", ["result"])
VIEWERS_REFUSED = Counter(
    "vap_web_viewers_refused_total",
    "Live viewers closed because the control API no longer accepts their token",
)
