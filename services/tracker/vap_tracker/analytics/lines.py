"""Directional line crossing: every crossing of a person counted once, robust to jitter and to id breaks.

Per track the evaluator remembers the side it was last *firmly* on and the anchor point there. A side is
firm beyond a band around the line: ``min_crossing_distance`` or, when larger, ``JITTER_BAND`` of the box
height (a detector's box bottom wanders by several percent of a person's height from frame to frame, in
pixels or normalised units alike). A crossing is counted when the anchor is firmly on the other side and
the straight movement from the remembered point passes through the segment itself (not beside one of its
ends). So:

- jitter inside the band never counts (the side only changes outside it); a person standing on the line
  counts nothing;
- a crossing counts once the person has stayed on the new side for ``SETTLE_S`` (the event comes that
  much later): two people whose ids swap for a frame as they pass at the line cross and cross back, and
  that counts nothing;
- a U-turn that reaches the line but not past the band counts nothing;
- a person who crosses and later crosses back counts once per crossing (the hand counts' rule), each side
  change at most once: no double count for one crossing;
- a track lost on one side and found again on the other counts once (its state survives the loss);
- an id break near the line does not count the person again or lose the crossing: a track seen for the
  first time within a box height of where another track of this line vanished less than ``HANDOFF_S`` ago
  takes over that track's side and point (the tracker's re-attachment failed, the count must not).

Only tracks matched in the frame are evaluated, and only CONFIRMED ones (the engine selects them): a LOST
track's box is a prediction, and counting a prediction would count people who turned back while hidden.
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


JITTER_BAND = 0.1  # of the box height
HANDOFF_S = 2.0
SETTLE_S = 0.3


@dataclass(slots=True)
class _LineTrack:
    side: int  # -1 = A, +1 = B
    point: F64  # anchor where the track was last firmly on ``side``
    seen_s: float = 0.0  # time of the last frame the track was evaluated in
    pending: int = 0  # direction of a crossing waiting to settle (0 = none)
    pending_s: float = 0.0  # when it happened
    in_band: bool = False  # the latest anchor was inside the band (not firmly on either side)
    last: F64 = field(default_factory=lambda: np.zeros(2))  # its anchor then
    height: float = 0.0  # its box height then


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
        self._ended: set[int] = set()  # removed by the tracker, state kept for a hand-off
        self._pending: set[int] = set()  # tracks with a crossing waiting to settle
        self.handoffs = 0  # tracks that took over a vanished track's state (id breaks near the line)

    def update(
        self, track_ids: I64, anchors: F64, heights: F64 | None = None, now_s: float = 0.0
    ) -> list[Crossing]:
        """Evaluate the anchors of the tracks matched in this frame (``heights``: their box heights, for
        the jitter band and the hand-off distance; ``now_s``: the frame time); returns the crossings."""
        out: list[Crossing] = []
        if self._ended:
            self._prune(now_s)
        if self._pending:
            out += self._settle(now_s)
        if len(track_ids) == 0:
            return out
        dist = signed_distance(anchors, self.p1, self.p2)
        hs = np.zeros(len(track_ids)) if heights is None else np.asarray(heights, dtype=np.float64)
        band = np.maximum(self.min_distance, JITTER_BAND * hs)
        firm = (np.abs(dist) >= band) & (dist != 0.0)
        present = {int(tid) for tid in track_ids.tolist()}
        for k in range(len(track_ids)):
            tid = int(track_ids[k])
            point = anchors[k]
            state = self._tracks.get(tid)
            if state is None:
                state = self._handoff(point, float(hs[k]), now_s, present)
                if state is None:
                    if not firm[k]:
                        continue
                    state = _LineTrack(1 if dist[k] > 0 else -1, point)
                self._tracks[tid] = state
                if state.pending:
                    self._pending.add(tid)
            state.seen_s, state.last, state.height = now_s, point, float(hs[k])
            state.in_band = not firm[k]
            if not firm[k]:
                continue
            side = 1 if dist[k] > 0 else -1
            if side != state.side:
                if state.pending:  # back before the crossing settled: it never happened
                    state.pending = 0
                    self._pending.discard(tid)
                elif crosses_segment(state.point, point, self.p1, self.p2):
                    state.pending, state.pending_s = (A_TO_B if side > 0 else B_TO_A), now_s
                    self._pending.add(tid)
            state.side = side
            state.point = point
        return out

    def _settle(self, now_s: float) -> list[Crossing]:
        """Count the pending crossings whose track stayed on the new side for SETTLE_S (seen there since,
        or not seen at all: no sign of turning back). One last seen back in the band waits: it either
        settles on the new side again or goes back, and then the crossing never happened."""
        out = []
        due = [
            t
            for t in self._pending
            if now_s - self._tracks[t].pending_s >= SETTLE_S - 1e-9 and not self._tracks[t].in_band
        ]
        for tid in due:
            state = self._tracks[tid]
            self._pending.discard(tid)
            direction = analytics_pb2.CrossingDirection.ValueType(state.pending)
            state.pending = 0
            if direction in self.directions:
                self.total[direction] += 1
                out.append(Crossing(tid, direction))
        return out

    def _handoff(self, point: F64, height: float, now_s: float, present: set[int]) -> _LineTrack | None:
        """The state of the track that vanished nearest to ``point`` within a box height and HANDOFF_S
        (it is handed over: the old id gets a fresh state should it come back), or None."""
        best, best_d = None, float("inf")
        for tid, state in self._tracks.items():
            if tid in present or not 0.0 < now_s - state.seen_s <= HANDOFF_S:
                continue
            reach = max(height, state.height)
            d = float(np.hypot(*(point - state.last)))
            if reach > 0 and d <= reach and d < best_d:
                best, best_d = tid, d
        if best is None:
            return None
        self.handoffs += 1
        self._ended.discard(best)
        self._pending.discard(best)  # a crossing waiting to settle moves with the state (re-added below)
        return self._tracks.pop(best)

    def forget(self, track_id: int) -> None:
        """The tracker removed the track. Its state is kept for HANDOFF_S after it was last seen (a
        successor near where it vanished takes it over), then dropped."""
        if track_id in self._tracks:
            self._ended.add(track_id)

    def _prune(self, now_s: float) -> None:
        for tid in [t for t in self._ended if now_s - self._tracks[t].seen_s > HANDOFF_S]:
            if tid not in self._pending:
                del self._tracks[tid]
                self._ended.discard(tid)

    def merge(self, young: int, old: int) -> None:
        """ReID re-attachment: ``young`` continues ``old``; the position is the young track's (the more
        recent), so a crossing between the two ids is counted once."""
        y = self._tracks.pop(young, None)
        if y is None:
            return
        self._ended.discard(young)
        self._ended.discard(old)
        if young in self._pending:
            self._pending.discard(young)
            self._pending.add(old)
        elif old in self._pending:
            self._pending.discard(old)
        self._tracks[old] = y
