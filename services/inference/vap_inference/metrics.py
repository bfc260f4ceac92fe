"""Prometheus metrics of the inference service (scraped from the runtime's metrics port).

Labels are model names and fixed reasons/stages only (never channel ids with credentials, never unbounded).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import Counter, Gauge, Histogram

FRAMES_RECEIVED = Counter("vap_inference_frames_received", "FrameRefs received from the bus", ["model"])
FRAMES_PUBLISHED = Counter("vap_inference_frames_published", "FrameDetections published", ["model"])
FRAMES_DROPPED = Counter(
    "vap_inference_frames_dropped",
    "Frames not inferred or whose results were discarded. reason: superseded (a newer frame of the channel "
    "arrived first), stale (older than the staleness bound), overwritten (the ring slot was rewritten "
    "before or during inference), error (unreadable ring, failed inference), model_unavailable, "
    "malformed (a message that is not a FrameRef; model label empty)",
    ["model", "reason"],
)
BATCH_SIZE = Histogram(
    "vap_inference_batch_size",
    "Frames per inference batch",
    ["model"],
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32, 64),
)
QUEUE_DEPTH = Gauge(
    "vap_inference_queue_depth", "Frames waiting for a batch (one per channel at most)", ["model"]
)
STAGE_SECONDS = Histogram(
    "vap_inference_stage_seconds",
    "Latency per frame and stage: queue_wait, preprocess, inference (whole batch), postprocess",
    ["model", "stage"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0),
)
DETECT_REQUESTS = Counter("vap_inference_detect_requests", "gRPC Detect requests by status code", ["code"])

STAGES = ("queue_wait", "preprocess", "inference", "postprocess")


@dataclass(frozen=True, slots=True)
class ModelMetrics:
    """One model's labelled children, looked up once: ``labels()`` takes a lock and builds a key tuple
    per call, a cost the per-frame paths (receive, publish, stage timings) need not pay each time."""

    model: str
    received: Counter
    published: Counter
    queue_depth: Gauge
    batch_size: Histogram
    stages: dict[str, Histogram]
    _dropped: dict[str, Counter] = field(default_factory=dict)

    def dropped(self, reason: str) -> Counter:
        child = self._dropped.get(reason)
        if child is None:
            child = self._dropped[reason] = FRAMES_DROPPED.labels(self.model, reason)
        return child


_BY_MODEL: dict[str, ModelMetrics] = {}


def for_model(model: str) -> ModelMetrics:
    m = _BY_MODEL.get(model)
    if m is None:
        m = _BY_MODEL[model] = ModelMetrics(
            model,
            FRAMES_RECEIVED.labels(model),
            FRAMES_PUBLISHED.labels(model),
            QUEUE_DEPTH.labels(model),
            BATCH_SIZE.labels(model),
            {stage: STAGE_SECONDS.labels(model, stage) for stage in STAGES},
        )
    return m


API_REFUSED = Counter(
    "vap_inference_api_refused_total", "Detect/ListModels calls refused with UNAUTHENTICATED"
)
