"""What a user would otherwise pick, fed VAP's own raw detections: `trackers`' ByteTrack and OC-SORT with
supervision's LineZone counting (bottom-centre anchor, as VAP counts). Same detections, same frames: the
rows differ only by tracking and counting."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from bench.accuracy.crossings import Crossing, Line
from bench.accuracy.metrics import Pred

PEERS = ("bytetrack", "ocsort")


def _tracker(name: str, fps: float) -> Any:
    from trackers import ByteTrackTracker, OCSORTTracker

    # Defaults except the frame rate, and the buffer in seconds (1 s) as the defaults assume 30 fps.
    buffer = max(1, round(fps))
    if name == "bytetrack":
        return ByteTrackTracker(frame_rate=fps, lost_track_buffer=buffer)
    return OCSORTTracker(frame_rate=fps, lost_track_buffer=buffer)


def _line_zones(lines: Sequence[Line]) -> dict[str, tuple[Any, dict[str, str]]]:
    """supervision LineZones for the lines, and which of its in/out is our a_to_b (found by walking a
    synthetic person across each line from side A to side B, so no convention is assumed)."""
    import supervision as sv

    zones = {}
    for line in lines:
        (x1, y1), (x2, y2) = line.p1, line.p2
        mx, my = (x1 + x2) / 2, (y1 + y2) / 2
        nx, ny = -(y2 - y1), x2 - x1  # points to side B (right of p1 -> p2, y down)
        norm = float(np.hypot(nx, ny)) or 1.0
        nx, ny = nx / norm * 30, ny / norm * 30
        probe = sv.LineZone(
            sv.Point(x1, y1), sv.Point(x2, y2), triggering_anchors=[sv.Position.BOTTOM_CENTER]
        )
        got_in = got_out = False
        for k in range(-3, 4):
            cx, cy = mx + nx * k / 3, my + ny * k / 3
            det = sv.Detections(
                xyxy=np.array([[cx - 10, cy - 60, cx + 10, cy]], np.float32),
                class_id=np.zeros(1, int),
                tracker_id=np.array([1]),
            )
            crossed_in, crossed_out = probe.trigger(det)
            got_in |= bool(crossed_in.any())
            got_out |= bool(crossed_out.any())
        mapping = {"in": "a_to_b", "out": "b_to_a"} if got_in else {"in": "b_to_a", "out": "a_to_b"}
        assert got_in != got_out, f"cannot tell supervision's direction on line {line.id}"
        zones[line.id] = (
            sv.LineZone(sv.Point(x1, y1), sv.Point(x2, y2), triggering_anchors=[sv.Position.BOTTOM_CENTER]),
            mapping,
        )
    return zones


def run_peer(
    name: str, raw: Sequence[Pred], frames: Sequence[int], fps: float, lines: Sequence[Line]
) -> tuple[list[Pred], list[Crossing]]:
    import supervision as sv

    tracker = _tracker(name, fps)
    zones = _line_zones(lines)
    by_frame: dict[int, list[Pred]] = defaultdict(list)
    for p in raw:
        by_frame[p.frame].append(p)
    tracked: list[Pred] = []
    crossings: list[Crossing] = []
    for f in sorted(set(frames)):
        mine = by_frame.get(f, [])
        det = sv.Detections(
            xyxy=np.array([p.box for p in mine], np.float32).reshape(-1, 4),
            confidence=np.array([p.score for p in mine], np.float32),
            class_id=np.zeros(len(mine), int),
        )
        out = tracker.update(det)
        ids = np.asarray(out.tracker_id, dtype=np.int64)
        shown = ids >= 0
        out = out[shown]
        for box, tid in zip(out.xyxy.tolist(), out.tracker_id.tolist(), strict=True):
            x1, y1, x2, y2 = box
            tracked.append(Pred(f, int(tid), (x1, y1, x2, y2)))
        for line_id, (zone, mapping) in zones.items():
            crossed_in, crossed_out = zone.trigger(out)
            for k in np.flatnonzero(crossed_in):
                crossings.append(Crossing(line_id, int(out.tracker_id[k]), f, mapping["in"]))
            for k in np.flatnonzero(crossed_out):
                crossings.append(Crossing(line_id, int(out.tracker_id[k]), f, mapping["out"]))
    return tracked, crossings
