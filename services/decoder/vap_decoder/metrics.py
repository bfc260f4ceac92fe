"""Prometheus metrics of the decoder agent, per channel, made at scrape time from the latest ChannelHealth.

Decoder processes open no HTTP port of their own: they publish ChannelHealth (counters and rates) and the
agent, which receives them, exposes the figures. The only label is the channel id, never a URL (camera
credentials must not reach metric labels). Counters restart from 0 when a decoder process is restarted,
which Prometheus' rate() handles as a counter reset.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from vap_decoder.health import state_name
from vap_proto.v1.health_pb2 import ChannelHealth, ChannelState

_STATES = [s for s in ChannelState.values() if s != ChannelState.CHANNEL_STATE_UNSPECIFIED]

_COUNTERS: list[tuple[str, str, Callable[[ChannelHealth], float]]] = [
    ("vap_decoder_frames_decoded", "Frames decoded (kept and skipped).", lambda h: h.frames_decoded),
    ("vap_decoder_frames_published", "Frames written to the ring and published.", lambda h: h.frames_total),
    ("vap_decoder_frames_skipped", "Frames skipped by sampling (never copied).", lambda h: h.frames_skipped),
    (
        "vap_decoder_frames_dropped",
        "Frames written to the ring but not published (NATS unavailable).",
        lambda h: max(0, h.frames_dropped - h.frames_skipped),
    ),
    ("vap_decoder_decode_errors", "Corrupt packets and concealed frames.", lambda h: h.decode_errors),
    ("vap_decoder_reconnects", "Reconnect attempts of the source.", lambda h: h.reconnect_count),
    ("vap_decoder_process_restarts", "Restarts of crashed decoder processes.", lambda h: h.process_restarts),
]
_GAUGES: list[tuple[str, str, Callable[[ChannelHealth], float]]] = [
    ("vap_decoder_fps", "Published frames per second.", lambda h: h.fps),
    ("vap_decoder_decode_fps", "Decoded frames per second.", lambda h: h.decode_fps),
    ("vap_decoder_decode_ms", "Mean decoder time per decoded frame (ms).", lambda h: h.decode_ms),
    ("vap_decoder_write_ms", "Mean time to write a kept frame into the ring (ms).", lambda h: h.write_ms),
    ("vap_decoder_source_fps", "Frame rate announced by the source.", lambda h: h.source_fps),
]


class DecoderMetricsCollector(Collector):
    """Reads ``channels()`` (channel id -> latest health) and the worker counts at every scrape."""

    def __init__(
        self,
        channels: Callable[[], Iterable[tuple[str, ChannelHealth]]],
        workers: Callable[[], int],
        max_workers: int,
    ) -> None:
        self._channels = channels
        self._workers = workers
        self._max_workers = max_workers

    def collect(self) -> Iterator[Metric]:
        rows = list(self._channels())
        for name, doc, get in _COUNTERS:
            counter = CounterMetricFamily(name, doc, labels=["channel"])
            for channel, health in rows:
                counter.add_metric([channel], float(get(health)))
            yield counter
        for name, doc, get in _GAUGES:
            gauge = GaugeMetricFamily(name, doc, labels=["channel"])
            for channel, health in rows:
                gauge.add_metric([channel], float(get(health)))
            yield gauge
        state = GaugeMetricFamily(
            "vap_decoder_channel_state",
            "1 for the channel's current health state.",
            labels=["channel", "state"],
        )
        for channel, health in rows:
            for value in _STATES:
                state.add_metric([channel, state_name(value)], 1.0 if health.state == value else 0.0)
        yield state
        yield GaugeMetricFamily(
            "vap_decoder_workers", "Decoder processes supervised now.", value=self._workers()
        )
        yield GaugeMetricFamily(
            "vap_decoder_max_workers", "MAX_WORKERS of this agent.", value=self._max_workers
        )
