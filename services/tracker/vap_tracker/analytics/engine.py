"""The analytics of one channel: its rules, evaluated on every tracked frame, swappable while it runs.

``set_settings`` takes a new AnalyticsSettings at any time (a ScenarioConfig with a newer revision): a rule
whose definition did not change keeps its state (who is on which side, who is inside since when), a changed
rule starts afresh (old per-track state would refer to other geometry) but keeps its open count interval,
a removed rule publishes its open interval, an added rule starts with the next frame.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from vap_proto.v1 import analytics_pb2, common_pb2, frame_pb2
from vap_tracker.analytics.counts import RuleCounter
from vap_tracker.analytics.geometry import anchor_points
from vap_tracker.analytics.lines import LineEvaluator
from vap_tracker.analytics.zones import ZoneEvaluator, ZoneEvent
from vap_tracker.bytetrack import FrameTracks
from vap_tracker.track import State

F64 = npt.NDArray[np.float64]
Bool = npt.NDArray[np.bool_]

DEFAULT_INTERVAL_NS = 60 * 1_000_000_000
_EVENT_NAMESPACE = uuid.UUID("6f1c7b3e-2a0d-4d8e-9a53-5c7f0e2b9d41")
_CONFIRMED = int(State.CONFIRMED)
_REMOVED = int(State.REMOVED)


@dataclass(frozen=True, slots=True)
class TrackView:
    """One frame's tracks with what the analytics need besides the arrays."""

    tracks: FrameTracks
    class_names: Mapping[int, str]
    global_ids: Mapping[int, int]


class _Rule:
    def __init__(self, rule: analytics_pb2.AnalyticsRule, counter: RuleCounter) -> None:
        self.rule = rule
        self.counter = counter
        self.evaluator: LineEvaluator | ZoneEvaluator = (
            LineEvaluator(rule.line) if rule.WhichOneof("kind") == "line" else ZoneEvaluator(rule.zone)
        )
        self.class_ids = frozenset(rule.class_ids)
        self.class_names = frozenset(rule.class_names)

    def selects(self, class_ids: npt.NDArray[np.int64], names: Mapping[int, str]) -> Bool:
        if not self.class_ids and not self.class_names:
            return np.ones(len(class_ids), dtype=bool)
        return np.array(
            [c in self.class_ids or names.get(c, "") in self.class_names for c in class_ids.tolist()],
            dtype=bool,
        )


def _interval_ns(settings: analytics_pb2.AnalyticsSettings) -> int:
    if settings.HasField("count_interval"):
        ns = settings.count_interval.seconds * 1_000_000_000 + settings.count_interval.nanos
        if ns > 0:
            return int(ns)
    return DEFAULT_INTERVAL_NS


class AnalyticsEngine:
    def __init__(
        self, scenario_id: str, channel_id: str, settings: analytics_pb2.AnalyticsSettings | None = None
    ) -> None:
        self.scenario_id = scenario_id
        self.channel_id = channel_id
        self._rules: dict[str, _Rule] = {}
        self._interval_ns = DEFAULT_INTERVAL_NS
        self._last_frame = frame_pb2.FrameInfo(channel_id=channel_id, scenario_id=scenario_id)
        if settings is not None:
            self.set_settings(settings)

    @property
    def rule_ids(self) -> list[str]:
        return list(self._rules)

    def occupancy(self, rule_id: str) -> int:
        ev = self._rules[rule_id].evaluator
        return ev.occupancy if isinstance(ev, ZoneEvaluator) else 0

    def line_totals(self, rule_id: str) -> dict[int, int]:
        ev = self._rules[rule_id].evaluator
        return {int(k): v for k, v in ev.total.items()} if isinstance(ev, LineEvaluator) else {}

    # ------------------------------------------------------------------------------------------------
    def set_settings(self, settings: analytics_pb2.AnalyticsSettings) -> list[analytics_pb2.IntervalCounts]:
        """Swap in new rules; returns the open intervals of rules that were removed (or whose counts had
        to restart because the interval length or the rule kind changed)."""
        closed: list[analytics_pb2.IntervalCounts] = []
        interval = _interval_ns(settings)
        new_rules: dict[str, _Rule] = {}
        for rule in settings.rules:
            kind = rule.WhichOneof("kind")
            if kind is None or not rule.rule_id:
                continue  # nothing to evaluate; control validates rules, this only stays safe
            old = self._rules.pop(rule.rule_id, None)
            if old is not None and old.rule == rule and interval == self._interval_ns:
                new_rules[rule.rule_id] = old
                continue
            if old is not None and old.counter.kind == kind and interval == self._interval_ns:
                counter = old.counter
            else:
                if old is not None and (c := old.counter.close()) is not None:
                    closed.append(c)
                counter = RuleCounter(self.scenario_id, self.channel_id, rule.rule_id, kind, interval)
            new_rules[rule.rule_id] = _Rule(rule, counter)
        for gone in self._rules.values():
            if (c := gone.counter.close()) is not None:
                closed.append(c)
        self._rules = new_rules
        self._interval_ns = interval
        return closed

    def close(self) -> list[analytics_pb2.IntervalCounts]:
        """The scenario stops: publish every open interval."""
        return [c for r in self._rules.values() if (c := r.counter.close()) is not None]

    # ------------------------------------------------------------------------------------------------
    def process(
        self, frame: frame_pb2.FrameInfo, view: TrackView
    ) -> tuple[list[analytics_pb2.AnalyticsEvent], list[analytics_pb2.IntervalCounts]]:
        """Evaluate every enabled rule on one tracked frame: (events, closed intervals)."""
        self._last_frame = frame
        events: list[analytics_pb2.AnalyticsEvent] = []
        closed: list[analytics_pb2.IntervalCounts] = []
        t = view.tracks
        now = frame.capture_time_ns
        matched = (t.state == _CONFIRMED) & (t.frames_since_update == 0)
        removed = (t.state == _REMOVED).nonzero()[0]
        live = t.track_id[t.state != _REMOVED]
        row_of = {int(tid): k for k, tid in enumerate(t.track_id.tolist())}
        for r in self._rules.values():
            if r.rule.disabled:
                continue
            if (c := r.counter.advance(now)) is not None:
                closed.append(c)
            sel = (matched & r.selects(t.class_id, view.class_names)).nonzero()[0]
            boxes = self._geometry_boxes(r.rule, t.box[sel], frame)
            anchors = anchor_points(boxes, r.rule.anchor)
            ids = t.track_id[sel]
            ev = r.evaluator
            if isinstance(ev, LineEvaluator):
                for crossing in ev.update(ids, anchors, boxes[:, 3] - boxes[:, 1], now / 1e9):
                    r.counter.crossing(crossing.direction)
                    events.append(
                        self._line_event(frame, r, crossing.track_id, crossing.direction, view, row_of)
                    )
                for k in removed.tolist():
                    ev.forget(int(t.track_id[k]))
            else:
                zone_events = ev.update(now, ids, anchors, live)
                for k in removed.tolist():
                    if (exit_event := ev.remove(int(t.track_id[k]))) is not None:
                        zone_events.append(exit_event)
                for ze in zone_events:
                    self._count_zone(r.counter, ze)
                    events.append(self._zone_event(frame, r, ze, view, row_of))
                r.counter.zone_frame(ev.occupancy)
        return events, closed

    def merge(
        self, young: int, old: int, view: TrackView | None = None
    ) -> list[analytics_pb2.AnalyticsEvent]:
        """ReID re-attached track ``young`` to ``old``: carry its rule state over (see LineEvaluator.merge
        and ZoneEvaluator.merge). Returns the zone events that keeps the visits balanced."""
        events: list[analytics_pb2.AnalyticsEvent] = []
        frame = self._last_frame
        for r in self._rules.values():
            ev = r.evaluator
            if isinstance(ev, LineEvaluator):
                ev.merge(young, old)
                continue
            for ze in ev.merge(young, old, frame.capture_time_ns):
                if not r.rule.disabled:
                    if r.counter.is_open:  # counted only inside an open interval
                        self._count_zone(r.counter, ze)
                    events.append(self._zone_event(frame, r, ze, view, {}))
        return events

    # ------------------------------------------------------------------------------------------------
    @staticmethod
    def _geometry_boxes(rule: analytics_pb2.AnalyticsRule, boxes: F64, frame: frame_pb2.FrameInfo) -> F64:
        if rule.normalized_coordinates and frame.width > 0 and frame.height > 0:
            scale = np.array([frame.width, frame.height, frame.width, frame.height], dtype=np.float64)
            out: F64 = boxes / scale
            return out
        return boxes

    @staticmethod
    def _count_zone(counter: RuleCounter, ze: ZoneEvent) -> None:
        w = counter.window
        if ze.kind == "enter":
            w.enters += 1
        elif ze.kind == "exit":
            w.exits += 1
            w.dwell_ms_sum += ze.dwell_ms
        elif ze.kind == "loitering":
            w.loitering += 1

    def _base_event(
        self,
        frame: frame_pb2.FrameInfo,
        r: _Rule,
        track_id: int,
        kind: str,
        view: TrackView | None,
        row_of: Mapping[int, int],
    ) -> analytics_pb2.AnalyticsEvent:
        key = (
            f"{frame.scenario_id}/{frame.channel_id}/{frame.stream_epoch}/{frame.sequence}/"
            f"{r.rule.rule_id}/{track_id}/{kind}"
        )
        event = analytics_pb2.AnalyticsEvent(
            event_id=str(uuid.uuid5(_EVENT_NAMESPACE, key)),
            scenario_id=self.scenario_id,
            channel_id=self.channel_id,
            rule_id=r.rule.rule_id,
            rule_name=r.rule.name,
            track_id=track_id,
            event_time_ns=frame.capture_time_ns,
            frame_sequence=frame.sequence,
            stream_epoch=frame.stream_epoch,
        )
        if view is not None:
            event.global_id = view.global_ids.get(track_id, 0)
            k = row_of.get(track_id)
            if k is not None:
                t = view.tracks
                cls = int(t.class_id[k])
                event.class_id = cls
                event.class_name = view.class_names.get(cls, "")
                x1, y1, x2, y2 = (float(v) for v in t.box[k])
                event.box.CopyFrom(common_pb2.BoundingBox(x1=x1, y1=y1, x2=x2, y2=y2))
        return event

    def _line_event(
        self,
        frame: frame_pb2.FrameInfo,
        r: _Rule,
        track_id: int,
        direction: int,
        view: TrackView,
        row_of: Mapping[int, int],
    ) -> analytics_pb2.AnalyticsEvent:
        event = self._base_event(frame, r, track_id, f"line:{direction}", view, row_of)
        line = r.rule.line
        a_to_b = direction == analytics_pb2.CROSSING_DIRECTION_A_TO_B
        label = (line.a_to_b_label or "a_to_b") if a_to_b else (line.b_to_a_label or "b_to_a")
        ev = r.evaluator
        assert isinstance(ev, LineEvaluator)
        event.line_crossing.CopyFrom(
            analytics_pb2.LineCrossing(
                direction=direction,  # type: ignore[arg-type]
                direction_label=label,
                total_a_to_b=ev.total[analytics_pb2.CROSSING_DIRECTION_A_TO_B],
                total_b_to_a=ev.total[analytics_pb2.CROSSING_DIRECTION_B_TO_A],
            )
        )
        return event

    def _zone_event(
        self,
        frame: frame_pb2.FrameInfo,
        r: _Rule,
        ze: ZoneEvent,
        view: TrackView | None,
        row_of: Mapping[int, int],
    ) -> analytics_pb2.AnalyticsEvent:
        event = self._base_event(frame, r, ze.track_id, f"zone:{ze.kind}", view, row_of)
        if ze.kind == "enter":
            event.zone_enter.occupancy = ze.occupancy
        elif ze.kind == "exit":
            event.zone_exit.occupancy = ze.occupancy
            event.zone_exit.enter_time_ns = ze.enter_ns
            event.zone_exit.dwell_ms = ze.dwell_ms
        elif ze.kind == "dwell":
            event.zone_dwell.enter_time_ns = ze.enter_ns
            event.zone_dwell.dwell_ms = ze.dwell_ms
            event.zone_dwell.occupancy = ze.occupancy
        else:
            event.loitering.enter_time_ns = ze.enter_ns
            event.loitering.dwell_ms = ze.dwell_ms
            event.loitering.threshold_ms = ze.threshold_ms
        return event
