"""Directional line crossing: one count per track and direction, robust to jitter on the line.

Per track the evaluator remembers the side it was last *firmly* on (at least ``min_crossing_distance`` from
the line) and the anchor point there. A crossing is counted when the anchor is firmly on the other side
and the straight movement from that remembered point passes through the segment itself (not beside one of
its ends). So:

- jitter inside the band around the line never counts (the side only changes outside the band);
- a U-turn that reaches the line but not past the band counts nothing;
- a track lost on one side and found again on the other counts once (its state survives the loss);
- each direction counts at most once per track (DESIGN.md: no double counts per track), so a person who
  dithers across a doorway is one "in" and at most one "out".

Only tracks matched in the frame are evaluated: a LOST track's box is a prediction, and counting a
prediction would count people who turned back while hidden.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from vap_proto.v1 import analytics_pb2
from vap_tracker.analytics.geometry import crosses_segment, signed_distance

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

A_TO_B = analytics_pb2.CROSSING_DIRECTION_A_TO_B
B_TO_A = analytics_pb2.CROSSING_DIRECTION_B_TO_A


@dataclass(slots=True)
class _LineTrack:
    side: int  # -1 = A, +1 = B
    point: F64  # anchor where the track was last firmly on ``side``
    counted: set[int] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class Crossing:
    track_id: int
    direction: int  # CrossingDirection


class LineEvaluator:
    def __init__(self, line: analytics_pb2.Line) -> None:
        self.p1 = np.array([line.p1.x, line.p1.y], dtype=np.float64)
        self.p2 = np.array([line.p2.x, line.p2.y], dtype=np.float64)
        self.min_distance = float(line.min_crossing_distance)
        wanted = {d for d in line.counted_directions if d != analytics_pb2.CROSSING_DIRECTION_UNSPECIFIED}
        self.directions = wanted or {A_TO_B, B_TO_A}
        self.total = {A_TO_B: 0, B_TO_A: 0}
        self._tracks: dict[int, _LineTrack] = {}

    def update(self, track_ids: I64, anchors: F64) -> list[Crossing]:
        """Evaluate the anchors of the tracks matched in this frame; returns the counted crossings."""
        out: list[Crossing] = []
        if len(track_ids) == 0:
            return out
        dist = signed_distance(anchors, self.p1, self.p2)
        firm = np.abs(dist) >= self.min_distance if self.min_distance > 0 else dist != 0.0
        for k in firm.nonzero()[0].tolist():
            tid = int(track_ids[k])
            side = 1 if dist[k] > 0 else -1
            point = anchors[k]
            state = self._tracks.get(tid)
            if state is None:
                self._tracks[tid] = _LineTrack(side, point)
                continue
            if side != state.side and crosses_segment(state.point, point, self.p1, self.p2):
                direction = A_TO_B if side > 0 else B_TO_A
                if direction not in state.counted:
                    state.counted.add(direction)
                    if direction in self.directions:
                        self.total[direction] += 1
                        out.append(Crossing(tid, direction))
            state.side = side
            state.point = point
        return out

    def forget(self, track_id: int) -> None:
        self._tracks.pop(track_id, None)

    def merge(self, young: int, old: int) -> None:
        """ReID re-attachment: ``young`` continues ``old``. Directions counted under either id stay counted
        (no second count for the same person); the position is the young track's, the more recent."""
        y = self._tracks.pop(young, None)
        o = self._tracks.get(old)
        if y is None:
            return
        if o is not None:
            y.counted |= o.counted
        self._tracks[old] = y
