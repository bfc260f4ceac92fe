"""Counts per rule and interval (IntervalCounts), aligned to multiples of the interval length.

An interval closes when the first frame at or after its end arrives (a stream that stalls for an hour
closes its open interval with the next frame, without emitting an empty interval for every hour in
between), when its rule is removed, and when the scenario stops; then its counts are published once.

Each published interval says exactly which span its counts cover, so that the control service can tell the
events an interval counted from those it did not (QueryCounts adds the latter, so counts and events always
agree): the first interval of a counter starts at its first frame, not at the aligned start, and an
interval closed early (rule removed or changed, scenario stopped) ends just after its last frame. A
scenario stopped and started again within one interval thus stores two intervals with different starts
instead of the second colliding with the first.
"""

from __future__ import annotations

from dataclasses import dataclass

from vap_proto.v1 import analytics_pb2


@dataclass(slots=True)
class _Window:
    start_ns: int
    a_to_b: int = 0
    b_to_a: int = 0
    enters: int = 0
    exits: int = 0
    loitering: int = 0
    max_occupancy: int = 0
    occupancy_sum: int = 0
    frames: int = 0
    dwell_ms_sum: int = 0


class RuleCounter:
    """Counts of one rule; ``kind`` is "line" or "zone"."""

    def __init__(self, scenario_id: str, channel_id: str, rule_id: str, kind: str, interval_ns: int) -> None:
        if interval_ns <= 0:
            raise ValueError("count interval must be > 0")
        self.scenario_id = scenario_id
        self.channel_id = channel_id
        self.rule_id = rule_id
        self.kind = kind
        self.interval_ns = interval_ns
        self._w: _Window | None = None
        self._started = False  # the first window starts at the first frame, later ones aligned
        self._last_ns = 0  # time of the last frame seen

    def advance(self, now_ns: int) -> analytics_pb2.IntervalCounts | None:
        """Move to the interval containing ``now_ns``; returns the interval that closed, if any."""
        start = now_ns - now_ns % self.interval_ns
        closed = None
        if self._w is not None and start > self._w.start_ns - self._w.start_ns % self.interval_ns:
            closed = self.close(early=False)
        if self._w is None:
            self._w = _Window(start if self._started else now_ns)
            self._started = True
        self._last_ns = now_ns
        return closed

    @property
    def is_open(self) -> bool:
        return self._w is not None

    @property
    def window(self) -> _Window:
        assert self._w is not None, "advance() first"
        return self._w

    def crossing(self, direction: int) -> None:
        if direction == analytics_pb2.CROSSING_DIRECTION_A_TO_B:
            self.window.a_to_b += 1
        elif direction == analytics_pb2.CROSSING_DIRECTION_B_TO_A:
            self.window.b_to_a += 1

    def zone_frame(self, occupancy: int) -> None:
        w = self.window
        w.frames += 1
        w.occupancy_sum += occupancy
        w.max_occupancy = max(w.max_occupancy, occupancy)

    def close(self, *, early: bool = True) -> analytics_pb2.IntervalCounts | None:
        """Publish the open interval (if any) and start afresh. ``early``: the counter stops before the
        interval's end (rule or scenario stopped), so the interval ends just after the last frame."""
        w, self._w = self._w, None
        if w is None:
            return None
        end = w.start_ns - w.start_ns % self.interval_ns + self.interval_ns
        if early:
            end = min(end, max(self._last_ns + 1, w.start_ns + 1))
        out = analytics_pb2.IntervalCounts(
            scenario_id=self.scenario_id,
            channel_id=self.channel_id,
            rule_id=self.rule_id,
            interval_start_ns=w.start_ns,
            interval_end_ns=end,
        )
        if self.kind == "line":
            out.line.a_to_b = w.a_to_b
            out.line.b_to_a = w.b_to_a
        else:
            z = out.zone
            z.enters, z.exits, z.loitering, z.max_occupancy = w.enters, w.exits, w.loitering, w.max_occupancy
            z.mean_occupancy = w.occupancy_sum / w.frames if w.frames else 0.0
            z.mean_dwell_ms = w.dwell_ms_sum // w.exits if w.exits else 0
        return out
