"""What the browser gets: plain JSON-ready dicts built from the API's protobuf messages.

Only the fields the pages draw are copied, one by one, so nothing else of a message (and never a source URL
with credentials) can reach a page by accident; free text that may quote a URL (status reasons, decoder
errors) goes through ``redact_text`` as well, although the control API redacts too.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from vap_common.counts import WINDOW_MINUTES, totals
from vap_common.redact import redact_text
from vap_proto.v1 import (
    analytics_pb2,
    common_pb2,
    control_pb2,
    detection_pb2,
    health_pb2,
    scenario_pb2,
)

Json = dict[str, Any]


def _enum(name: str, prefix: str) -> str:
    return name.removeprefix(prefix)


def scenario_status(value: scenario_pb2.ScenarioStatus.ValueType) -> str:
    return _enum(scenario_pb2.ScenarioStatus.Name(value), "SCENARIO_STATUS_")


def channel_state(value: health_pb2.ChannelState.ValueType) -> str:
    return _enum(health_pb2.ChannelState.Name(value), "CHANNEL_STATE_")


def camera(scenario: scenario_pb2.Scenario, channel: control_pb2.ChannelStatus | None) -> Json:
    """One row of the camera list: identity, lifecycle, channel health and live figures."""
    health = channel.health if channel is not None else scenario.health
    return {
        "id": scenario.id,
        "name": scenario.name,
        "camera": scenario.labels.get("camera", ""),
        "site": scenario.labels.get("site", ""),
        "status": scenario_status(scenario.status),
        "status_reason": redact_text(scenario.status_reason),
        "source": redact_text(scenario.source.redacted_url),
        "model": scenario.pipeline.model,
        "state": channel_state(health.state),
        "reason": redact_text(health.reason),
        "reconnects": health.reconnect_count,
        "decode_fps": round(health.fps, 2),
        "width": health.width,
        "height": health.height,
        "detection_fps": round(channel.detection_fps, 2) if channel is not None else 0.0,
        "latency_p50_ms": round(channel.latency_p50_ms, 1) if channel is not None else 0.0,
    }


def _xy(p: common_pb2.Point) -> list[float]:
    # float32 on the wire: 0.05 arrives as 0.05000000074505806
    return [round(p.x, 5), round(p.y, 5)]


def rule(r: analytics_pb2.AnalyticsRule) -> Json:
    """A line or zone as the live view draws it (points normalised or in source-frame pixels)."""
    out: Json = {
        "id": r.rule_id,
        "name": r.name or r.rule_id,
        "disabled": r.disabled,
        "normalized": r.normalized_coordinates,
        "classes": list(r.class_names),
    }
    if r.WhichOneof("kind") == "line":
        out["kind"] = "line"
        out["points"] = [_xy(r.line.p1), _xy(r.line.p2)]
        out["labels"] = [r.line.a_to_b_label or "a_to_b", r.line.b_to_a_label or "b_to_a"]
    else:
        out["kind"] = "zone"
        out["points"] = [_xy(p) for p in r.zone.polygon]
    return out


def camera_detail(scenario: scenario_pb2.Scenario, channel: control_pb2.ChannelStatus | None) -> Json:
    """The camera row plus what the live view needs to draw: rules and the count interval."""
    out = camera(scenario, channel)
    out["rules"] = [rule(r) for r in scenario.analytics.rules]
    interval = scenario.analytics.count_interval
    out["count_interval_s"] = interval.seconds + interval.nanos / 1e9
    return out


def tracks(frame: detection_pb2.FrameDetections) -> list[Json]:
    """The frame's detections (track id, class, score, box in source-frame pixels, the track's attribute
    votes by name, e.g. gender), tracked ones first."""
    out = []
    for d in frame.detections:
        out.append(
            {
                "id": d.track_id if d.HasField("track_id") else None,
                "global_id": d.global_id if d.HasField("global_id") else None,
                "cls": d.class_name or str(d.class_id),
                "conf": round(d.confidence, 3),
                "box": [round(d.box.x1, 1), round(d.box.y1, 1), round(d.box.x2, 1), round(d.box.y2, 1)],
                "attrs": {a.name: a.value for a in d.attributes},
            }
        )
    out.sort(key=lambda t: (t["id"] is None, t["id"] or 0))
    return out


def event(ev: analytics_pb2.AnalyticsEvent) -> Json:
    kind = ev.WhichOneof("kind") or ""
    out: Json = {
        "kind": kind,
        "rule_id": ev.rule_id,
        "rule_name": ev.rule_name or ev.rule_id,
        "track_id": ev.track_id,
        "cls": ev.class_name,
        "time_ms": ev.event_time_ns // 1_000_000,
    }
    if kind == "line_crossing":
        out["label"] = ev.line_crossing.direction_label
    elif kind == "zone_exit":
        out["dwell_ms"] = ev.zone_exit.dwell_ms
    elif kind == "loitering":
        out["dwell_ms"] = ev.loitering.dwell_ms
    return out


class RunningCounts:
    """What the live view shows next to the picture: each line's counts over the same window as the camera
    list (the last WINDOW_MINUTES, from QueryCounts, so both pages and the API agree exactly), and each
    zone's current occupancy as its newest event reports it."""

    def __init__(self) -> None:
        self.lines: dict[str, list[int]] = {}
        self.zones: dict[str, int] = {}

    def apply(self, ev: analytics_pb2.AnalyticsEvent) -> bool:
        """Update a zone from one event; True when its figure changed (line events change the counts, which
        come from the next query)."""
        kind = ev.WhichOneof("kind")
        if kind in ("zone_enter", "zone_exit", "zone_dwell"):
            occupancy = int(getattr(ev, kind).occupancy)
            changed = self.zones.get(ev.rule_id) != occupancy
            self.zones[ev.rule_id] = occupancy
            return changed
        return False

    def set_lines(self, summed: dict[str, Json]) -> bool:
        """Take the line counts of ``summed`` (rows of ``summed()``); True when a figure changed."""
        lines = {r: [row["a_to_b"], row["b_to_a"]] for r, row in summed.items() if row["kind"] == "line"}
        changed = lines != self.lines
        self.lines = lines
        return changed

    def as_json(self) -> Json:
        return {
            "type": "counts",
            "window_minutes": WINDOW_MINUTES,
            "lines": dict(self.lines),
            "zones": dict(self.zones),
        }


def interval_counts(counts: Iterable[analytics_pb2.IntervalCounts]) -> list[Json]:
    out = []
    for c in counts:
        row: Json = {"start_ms": c.interval_start_ns // 1_000_000, "rule_id": c.rule_id}
        if c.WhichOneof("counts") == "line":
            row |= {"kind": "line", "a_to_b": c.line.a_to_b, "b_to_a": c.line.b_to_a}
        else:
            row |= {
                "kind": "zone",
                "enters": c.zone.enters,
                "exits": c.zone.exits,
                "max_occupancy": c.zone.max_occupancy,
            }
        out.append(row)
    return out


def summed(counts: Iterable[analytics_pb2.IntervalCounts]) -> dict[str, Json]:
    """Counts per rule over ``counts`` (the camera list's and the live view's last hour)."""
    out: dict[str, Json] = {}
    for rule_id, t in totals(list(counts)).items():
        keys = ("a_to_b", "b_to_a") if t.kind == "line" else ("enters", "exits")
        out[rule_id] = {"kind": t.kind, **{key: getattr(t, key) for key in keys}}
    return out
