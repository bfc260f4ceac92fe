"""Line crossing counts on scripted trajectories, through the whole per-channel pipeline (detections in,
events out), as a counting camera over a doorway would see them."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vap_proto.v1 import analytics_pb2
from vap_tracker.bytetrack import TrackerConfig
from vap_tracker.pipeline import ChannelPipeline
from vap_tracker.testing import Walker, detections, line_path, line_rule, scenario_config, waypoints

A_TO_B = analytics_pb2.CROSSING_DIRECTION_A_TO_B
B_TO_A = analytics_pb2.CROSSING_DIRECTION_B_TO_A
# A horizontal door line drawn left to right at y = 240: side A above, side B below.
DOOR = line_rule("door", (100, 240), (540, 240), min_distance=8.0)


def run(
    walkers: Sequence[Walker],
    frames: int,
    rules: Sequence[analytics_pb2.AnalyticsRule] = (DOOR,),
    jitter: float = 0.0,
) -> tuple[list[analytics_pb2.AnalyticsEvent], ChannelPipeline]:
    pipe = ChannelPipeline("s", "cam", TrackerConfig())
    pipe.apply(scenario_config("s", "cam", 1, rules))
    rng = np.random.default_rng(0)
    events = []
    for f in range(frames):
        events += pipe.process(detections(f, walkers, "cam", "s", jitter=jitter, rng=rng)).events
    return [e for e in events if e.HasField("line_crossing")], pipe


def directions(events: list[analytics_pb2.AnalyticsEvent]) -> list[tuple[int, int]]:
    return [(e.track_id, e.line_crossing.direction) for e in events]


def test_walking_down_through_the_door_counts_one_a_to_b_with_its_label_and_totals() -> None:
    events, _ = run([Walker(line_path((320, 150), (320, 350), 40))], 45)
    assert directions(events) == [(1, A_TO_B)]
    e = events[0]
    assert e.line_crossing.direction_label == "in"
    assert (e.line_crossing.total_a_to_b, e.line_crossing.total_b_to_a) == (1, 0)
    assert e.rule_id == "door" and e.class_name == "person" and e.scenario_id == "s" and e.channel_id == "cam"
    assert e.box.y2 > 240 + 8  # counted once firmly past the band, at the anchor (bottom centre)


def test_jitter_on_the_line_counts_nothing_extra() -> None:
    # Walks to the line, stands on it for 2 s with +-6 px jitter (inside the 8 px band), then goes down.
    path = line_path((320, 180), (320, 240), 20) + [(320, 240)] * 50 + line_path((320, 240), (320, 330), 20)
    events, _ = run([Walker(path)], len(path), jitter=3.0)
    assert directions(events) == [(1, A_TO_B)]


def test_a_u_turn_at_the_line_is_not_a_crossing() -> None:
    path = waypoints([(320, 150), (320, 244), (320, 150)], 25)  # touches the line, stays inside the band
    events, _ = run([Walker(path)], len(path))
    assert events == []


def test_crossing_and_coming_back_counts_every_crossing_once() -> None:
    # In, out, in, out again: four crossings by one track, each counted once (the hand counts' rule: a
    # person who crosses and later crosses back counts once per crossing).
    path = waypoints([(320, 180), (320, 300), (320, 180), (320, 300), (320, 180)], 20)
    events, pipe = run([Walker(path)], len(path) + 10)
    assert directions(events) == [(1, A_TO_B), (1, B_TO_A), (1, A_TO_B), (1, B_TO_A)]
    assert pipe.analytics.line_totals("door") == {A_TO_B: 2, B_TO_A: 2}


def test_a_crossing_taken_back_within_the_settle_time_counts_nothing() -> None:
    """Two people passing at the line whose boxes swap for a frame look like a crossing and a crossing
    back; nothing counts unless the new side holds for SETTLE_S."""
    down = line_path((320, 225), (320, 265), 5)
    # 0.2 s firmly below the line (y >= 248), then back up.
    flick = [(320.0, 225.0)] * 20 + down + [(320.0, 265.0)] * 2 + down[::-1] + [(320.0, 225.0)] * 20
    events, _ = run([Walker(flick)], len(flick))
    assert events == []


def test_standing_on_the_line_with_detector_jitter_counts_nothing() -> None:
    # Feet on the line for 4 s, box bottom jittering by a few percent of the person's height (no
    # min_crossing_distance: the band comes from the box height alone).
    bare = line_rule("door", (100, 240), (540, 240))
    path = [(320.0, 240.0)] * 100
    events, _ = run([Walker(path)], len(path), rules=[bare], jitter=3.0)
    assert events == []


def test_an_id_break_at_the_line_counts_the_person_once() -> None:
    """The tracker loses the person just before the line and starts a new id just after it (motion and
    appearance both failed, e.g. a long occlusion at the door): the new id takes over the old one's side,
    so the crossing is counted once, and a break after the line does not count it again."""
    config = TrackerConfig(
        appearance_veto=0, appearance_weight=0, appearance_reattach=0, lost_timeout_s=0.1, lost_min_frames=1
    )
    for hidden in (range(17, 24), range(23, 30)):  # the break before / after the line (y = 240 at ~20)
        pipe = ChannelPipeline("s", "cam", config)
        pipe.apply(scenario_config("s", "cam", 1, [DOOR]))
        w = Walker(line_path((320, 150), (320, 350), 45), hidden=set(hidden))
        events = []
        for f in range(55):
            events += [
                e for e in pipe.process(detections(f, [w], "cam", "s")).events if e.HasField("line_crossing")
            ]
        ids = {e.track_id for e in events}
        assert [e.line_crossing.direction for e in events] == [A_TO_B], hidden
        assert pipe.tracker.next_id > 2, "the scene must break the id for the test to mean anything"
        assert len(ids) == 1


def test_two_people_in_opposite_directions_are_counted_separately() -> None:
    down = Walker(line_path((250, 150), (250, 350), 40))
    up = Walker(line_path((400, 350), (400, 150), 40), shirt=(0, 200, 0))
    events, _ = run([down, up], 45)
    assert sorted(d for _, d in directions(events)) == [A_TO_B, B_TO_A]
    assert len({tid for tid, _ in directions(events)}) == 2


def test_passing_beside_the_end_of_the_segment_is_not_a_crossing() -> None:
    events, _ = run([Walker(line_path((600, 150), (600, 350), 40))], 45)  # the door ends at x = 540
    assert events == []


def test_a_track_lost_before_the_line_and_found_after_it_counts_once_with_its_id() -> None:
    # Hidden for 10 frames (0.4 s) exactly while crossing: the count happens when it is found again.
    w = Walker(line_path((320, 150), (320, 350), 40), hidden=set(range(15, 25)))
    events, _ = run([w], 45)
    assert directions(events) == [(1, A_TO_B)]


def test_counted_directions_restrict_what_is_counted() -> None:
    only_out = line_rule("door", (100, 240), (540, 240), min_distance=8.0, directions=[B_TO_A])
    path = waypoints([(320, 180), (320, 300), (320, 180)], 20)
    events, pipe = run([Walker(path)], len(path), rules=[only_out])
    assert directions(events) == [(1, B_TO_A)]
    assert pipe.analytics.line_totals("door") == {A_TO_B: 0, B_TO_A: 1}
