"""Polygon zones: enter, exit, occupancy, periodic dwell reports and loitering.

Per track: whether it is inside (after ``min_presence`` of the anchor being inside or outside, against
flicker at the border), when it entered, when the next dwell report is due and whether loitering was
reported in this visit. Presence is judged on matched tracks only; a LOST track keeps its last presence
(a person hidden behind a shelf is still in the aisle), dwell and loitering keep running for it, and when
it is REMOVED while inside an exit is emitted with the time it was last seen.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from vap_proto.v1 import analytics_pb2
from vap_tracker.analytics.geometry import points_in_polygon

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
Bool = npt.NDArray[np.bool_]


def _duration_ns(has: bool, seconds: int, nanos: int) -> int | None:
    return seconds * 1_000_000_000 + nanos if has else None


@dataclass(slots=True)
class _ZoneTrack:
    inside: bool = False
    pending_since_ns: int | None = None  # first frame of a presence change not yet confirmed
    enter_ns: int = 0
    last_seen_ns: int = 0
    next_dwell_ns: int | None = None
    loitered: bool = False


@dataclass(frozen=True, slots=True)
class ZoneEvent:
    kind: str  # "enter" | "exit" | "dwell" | "loitering"
    track_id: int
    occupancy: int
    enter_ns: int = 0
    dwell_ms: int = 0
    threshold_ms: int = 0


class ZoneEvaluator:
    def __init__(self, zone: analytics_pb2.Zone) -> None:
        self.polygon = np.array([[p.x, p.y] for p in zone.polygon], dtype=np.float64).reshape(-1, 2)
        self.loiter_ns = _duration_ns(
            zone.HasField("loitering_threshold"),
            zone.loitering_threshold.seconds,
            zone.loitering_threshold.nanos,
        )
        self.dwell_every_ns = _duration_ns(
            zone.HasField("dwell_report_interval"),
            zone.dwell_report_interval.seconds,
            zone.dwell_report_interval.nanos,
        )
        if self.dwell_every_ns is not None and self.dwell_every_ns <= 0:
            self.dwell_every_ns = None
        self.min_presence_ns = (
            _duration_ns(zone.HasField("min_presence"), zone.min_presence.seconds, zone.min_presence.nanos)
            or 0
        )
        self._tracks: dict[int, _ZoneTrack] = {}

    @property
    def occupancy(self) -> int:
        return sum(1 for t in self._tracks.values() if t.inside)

    def update(self, now_ns: int, matched_ids: I64, anchors: F64, live_ids: I64) -> list[ZoneEvent]:
        """Presence of the tracks matched in this frame (``anchors``), then the time-driven events of every
        live track inside."""
        events: list[ZoneEvent] = []
        if len(self.polygon) >= 3 and len(matched_ids):
            inside_now = points_in_polygon(anchors, self.polygon)
            for tid, raw in zip(matched_ids.tolist(), inside_now.tolist(), strict=True):
                state = self._tracks.get(tid)
                if state is None:
                    if not raw:
                        continue  # outside and never inside: nothing to remember
                    state = self._tracks[tid] = _ZoneTrack()
                state.last_seen_ns = now_ns
                self._presence(tid, state, raw, now_ns, events)
        live = set(live_ids.tolist())
        for tid, state in self._tracks.items():
            if state.inside and tid in live:
                self._timers(tid, state, now_ns, events)
        # Tracks that are outside, settled and not pending carry no information: drop them.
        for tid in [t for t, s in self._tracks.items() if not s.inside and s.pending_since_ns is None]:
            del self._tracks[tid]
        return events

    def _presence(self, tid: int, s: _ZoneTrack, raw: bool, now_ns: int, events: list[ZoneEvent]) -> None:
        if raw == s.inside:
            s.pending_since_ns = None
            return
        if s.pending_since_ns is None:
            s.pending_since_ns = now_ns
        if now_ns - s.pending_since_ns < self.min_presence_ns:
            return
        since = s.pending_since_ns
        s.pending_since_ns = None
        if raw:
            s.inside = True
            s.enter_ns = since
            s.loitered = False
            s.next_dwell_ns = since + self.dwell_every_ns if self.dwell_every_ns else None
            events.append(ZoneEvent("enter", tid, self.occupancy, enter_ns=since))
        else:
            s.inside = False
            events.append(self._exit_event(tid, s, since))

    def _exit_event(self, tid: int, s: _ZoneTrack, left_ns: int) -> ZoneEvent:
        return ZoneEvent(
            "exit",
            tid,
            self.occupancy,
            enter_ns=s.enter_ns,
            dwell_ms=max(0, (left_ns - s.enter_ns) // 1_000_000),
        )

    def _timers(self, tid: int, s: _ZoneTrack, now_ns: int, events: list[ZoneEvent]) -> None:
        dwell_ns = now_ns - s.enter_ns
        if self.loiter_ns is not None and not s.loitered and dwell_ns >= self.loiter_ns:
            s.loitered = True
            events.append(
                ZoneEvent(
                    "loitering",
                    tid,
                    self.occupancy,
                    enter_ns=s.enter_ns,
                    dwell_ms=dwell_ns // 1_000_000,
                    threshold_ms=self.loiter_ns // 1_000_000,
                )
            )
        if s.next_dwell_ns is not None and self.dwell_every_ns and now_ns >= s.next_dwell_ns:
            events.append(
                ZoneEvent("dwell", tid, self.occupancy, enter_ns=s.enter_ns, dwell_ms=dwell_ns // 1_000_000)
            )
            while s.next_dwell_ns <= now_ns:  # one report per frame even after a long gap
                s.next_dwell_ns += self.dwell_every_ns

    def remove(self, track_id: int) -> ZoneEvent | None:
        """The track ended: an exit (at the time it was last seen) if it was inside."""
        s = self._tracks.pop(track_id, None)
        if s is None or not s.inside:
            return None
        s.inside = False
        return self._exit_event(track_id, s, s.last_seen_ns)

    def merge(self, young: int, old: int, now_ns: int) -> list[ZoneEvent]:
        """ReID re-attachment: ``young`` continues ``old``. Events keep every id's visits balanced (each
        enter gets its exit) and the occupancy right:

        - both inside: the young id's visit closes (exit), the old visit goes on;
        - only the young inside: the young visit closes and the old id enters (with the young enter time);
        - only the old inside: the person was seen outside since, so the old visit closes;
        """
        events: list[ZoneEvent] = []
        y = self._tracks.pop(young, None)
        o = self._tracks.get(old)
        y_in = y is not None and y.inside
        o_in = o is not None and o.inside
        if y is not None and y_in:
            y.inside = False
            events.append(self._exit_event(young, y, now_ns))
        if o is not None and o_in and not y_in:
            o.inside = False
            del self._tracks[old]
            events.append(self._exit_event(old, o, o.last_seen_ns))
        elif y is not None and y_in and not o_in:
            y.inside = True
            self._tracks[old] = y
            events.append(ZoneEvent("enter", old, self.occupancy, enter_ns=y.enter_ns))
        return events
