"""bench accuracy's metric code on tiny hand-made cases, where the right answer is known by hand."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.accuracy.crossings import Crossing, Line, track_crossings
from bench.accuracy.gt import motfile, review
from bench.accuracy.metrics import (
    Pred,
    count_scores,
    detection_scores,
    event_f1,
    identity_scores,
    match_frames,
    occupancy_error,
    person_lookup,
)

A_BOX = (100.0, 100.0, 140.0, 200.0)
B_BOX = (300.0, 100.0, 340.0, 200.0)


def two_people(frames: int = 10) -> list[motfile.GtBox]:
    return [motfile.GtBox(f, 1, *A_BOX) for f in range(frames)] + [
        motfile.GtBox(f, 2, *B_BOX) for f in range(frames)
    ]


def test_a_swap_halfway_gives_idf1_one_half_and_two_switches() -> None:
    # Track 7 follows A for 5 frames then B; track 8 the other way round.
    preds = [Pred(f, 7 if f < 5 else 8, A_BOX) for f in range(10)] + [
        Pred(f, 8 if f < 5 else 7, B_BOX) for f in range(10)
    ]
    matches = match_frames(two_people(), preds, range(10))
    scores = identity_scores(matches)
    # Best one-to-one id pairing keeps 5 of 10 frames per person: IDTP 10, IDFP 10, IDFN 10 -> 20/40.
    assert scores["idf1"] == pytest.approx(0.5)
    assert scores["id_switches"] == 2
    assert scores["mota"] == pytest.approx(1 - 2 / 20)
    assert scores["ids_per_person"] == 2.0
    assert detection_scores(matches)["det_f1"] == 1.0


def test_perfect_tracking_scores_one_everywhere() -> None:
    preds = [Pred(g.frame, 10 + g.id, g.box) for g in two_people()]
    scores = identity_scores(match_frames(two_people(), preds, range(10)))
    assert scores["idf1"] == pytest.approx(1.0) and scores["hota"] == pytest.approx(1.0, abs=1e-6)
    assert (scores["id_switches"], scores["ids_per_person"]) == (0, 1.0)


def test_ignored_people_neither_help_nor_hurt() -> None:
    gt = [motfile.GtBox(0, 1, *A_BOX), motfile.GtBox(0, 2, *B_BOX, scored=False)]
    on_ignored = [Pred(0, 1, A_BOX), Pred(0, 2, B_BOX)]
    missed_ignored = [Pred(0, 1, A_BOX)]
    for preds in (on_ignored, missed_ignored):
        s = detection_scores(match_frames(gt, preds, [0]))
        assert (s["det_precision"], s["det_recall"]) == (1.0, 1.0)
    false_box = [Pred(0, 1, A_BOX), Pred(0, 3, (500.0, 100.0, 540.0, 200.0))]
    s = detection_scores(match_frames(gt, false_box, [0]))
    assert (s["det_precision"], s["det_recall"]) == (0.5, 1.0)


def test_only_analysed_frames_are_scored() -> None:
    preds = [Pred(f, 1, A_BOX) for f in range(0, 10, 5)] + [Pred(f, 2, B_BOX) for f in range(0, 10, 5)]
    s = detection_scores(match_frames(two_people(), preds, [0, 5]))
    assert s["det_recall"] == 1.0


def test_a_double_count_gives_the_known_count_accuracy() -> None:
    true = [
        Crossing("L1", 1, 10, "a_to_b"),
        Crossing("L1", 2, 20, "a_to_b"),
        Crossing("L1", 1, 30, "b_to_a"),
        Crossing("L1", 2, 40, "b_to_a"),
    ]
    # Person 1's id broke at the line and the new id counted him again.
    counted = [*true, Crossing("L1", 9, 12, "a_to_b")]
    scores = count_scores(counted, true, ["L1"])
    assert scores["count_accuracy"] == pytest.approx(0.75)
    assert scores["lines"] == {
        "L1": {"a_to_b": {"counted": 3, "true": 2}, "b_to_a": {"counted": 2, "true": 2}}
    }
    same_person = {1: 1, 2: 2, 9: 1}
    f1 = event_f1(counted, true, lambda track, _frame: same_person.get(track), window=25)
    assert f1 == pytest.approx(2 * 0.8 * 1.0 / 1.8)  # precision 4/5, recall 4/4


def test_event_f1_needs_the_right_person_and_time() -> None:
    true = [Crossing("L1", 1, 100, "a_to_b")]
    assert event_f1([Crossing("L1", 5, 110, "a_to_b")], true, lambda _t, _f: 1, 25) == 1.0
    assert event_f1([Crossing("L1", 5, 130, "a_to_b")], true, lambda _t, _f: 1, 25) == 0.0  # too late
    assert event_f1([Crossing("L1", 5, 100, "a_to_b")], true, lambda _t, _f: 2, 25) == 0.0  # someone else
    assert event_f1([Crossing("L1", 5, 100, "b_to_a")], true, lambda _t, _f: 1, 25) == 0.0  # other way


def test_person_lookup_takes_the_person_the_track_covered_near_the_frame() -> None:
    preds = [Pred(f, 7 if f < 5 else 8, A_BOX) for f in range(10)] + [
        Pred(f, 8 if f < 5 else 7, B_BOX) for f in range(10)
    ]
    person_of = person_lookup(match_frames(two_people(), preds, range(10)), window=1)
    assert (person_of(7, 1), person_of(7, 8), person_of(99, 1)) == (1, 2, None)


VERTICAL = Line("L", (384.0, 0.0), (384.0, 500.0))  # p1 above p2: side B (right of p1->p2) is -x


def walk(xs: list[float], y: float = 250.0) -> list[tuple[int, tuple[float, float]]]:
    return [(f, (x, y)) for f, x in enumerate(xs)]


def test_crossings_count_a_settled_crossing_once_and_never_jitter() -> None:
    across = walk([300.0 + 10 * i for i in range(20)])  # left to right, stays right
    assert track_crossings(1, across, VERTICAL) == [Crossing("L", 1, 9, "b_to_a")]
    jitter = walk([380.0, 390.0, 378.0, 389.0, 379.0, 391.0] * 4)  # steps over and back every frame
    assert track_crossings(1, jitter, VERTICAL) == []
    u_turn = walk([340.0, 360.0, 380.0, 395.0, 400.0, 390.0, 370.0, 350.0] + [340.0] * 10)
    assert track_crossings(1, u_turn, VERTICAL) == []
    beside_the_end = walk([300.0 + 10 * i for i in range(20)], y=520.0)  # below the segment's end
    assert track_crossings(1, beside_the_end, VERTICAL) == []
    leaves_right_after = walk([360.0, 370.0, 380.0, 395.0, 405.0])  # crosses, then the track ends
    assert track_crossings(1, leaves_right_after, VERTICAL) == [Crossing("L", 1, 3, "b_to_a")]
    there_and_back = walk([300.0 + 10 * i for i in range(20)] + [490.0 - 10 * i for i in range(20)])
    assert [c.direction for c in track_crossings(1, there_and_back, VERTICAL)] == ["b_to_a", "a_to_b"]


def test_occupancy_error_per_analysed_frame() -> None:
    def inside(x: float, _y: float) -> bool:
        return x < 200

    preds = [Pred(0, 1, A_BOX), Pred(1, 1, B_BOX)]  # frame 1: A missed, a box outside the zone instead
    assert occupancy_error(two_people(2), preds, [0, 1], inside) == pytest.approx(0.5)


def test_gt_file_round_trip(tmp_path: Path) -> None:
    boxes = [motfile.GtBox(0, 1, 10.0, 20.0, 50.0, 120.0), motfile.GtBox(794, 3, 1.5, 2.5, 30.5, 90.5, False)]
    motfile.write(tmp_path / "gt.txt", boxes)
    assert (tmp_path / "gt.txt").read_text().splitlines()[1] == "795,3,1.5,2.5,29.0,88.0,0,-1,-1,-1"
    assert motfile.read(tmp_path / "gt.txt") == boxes


def test_review_splits_merges_drops_adds_and_fills_gaps() -> None:
    box = (100.0, 100.0, 140.0, 200.0)
    draft = [(f, 1, box, True) for f in range(0, 10)] + [(f, 2, box, True) for f in range(14, 20)]
    draft += [(f, 3, (400.0, 100.0, 440.0, 200.0), True) for f in range(0, 20)]
    rv = review.Review(
        split={"3": [10]},
        drop=["3@10"],
        persons={"P": ["1", "2"], "Q": ["3"], "R": []},
        add={"R": {0: [600.0, 100.0, 640.0, 200.0], 4: [640.0, 100.0, 680.0, 200.0]}},
    )
    gt, labels, unclaimed = review.apply(draft, rv)
    by = {(labels[g.id], g.frame): g for g in gt}
    assert unclaimed == []
    assert sorted({labels[g.id] for g in gt}) == ["P", "Q", "R"]
    assert all(("P", f) in by for f in range(20))  # 10-13 filled by interpolation
    assert ("Q", 9) in by and ("Q", 10) not in by  # the dropped part after the split
    assert by[("R", 2)].x1 == pytest.approx(620.0)  # keyframes interpolated


def test_replay_tracks_two_walkers_with_one_id_each() -> None:
    from bench.accuracy.replay import replay
    from vap_tracker.bytetrack import TrackerConfig

    frames = list(range(0, 100, 5))  # a 5 fps run of a 25 fps clip
    raw = []
    for f in frames:
        raw.append([f, 100.0 + f, 100.0, 140.0 + f, 200.0, 0.9])  # walks right, 1 px per file frame
        raw.append([f, 600.0 - f, 300.0, 640.0 - f, 400.0, 0.8])  # walks left
    preds = replay({"frames": frames, "raw": raw}, TrackerConfig())
    gt = [motfile.GtBox(f, 1, 100.0 + f, 100.0, 140.0 + f, 200.0) for f in frames]
    gt += [motfile.GtBox(f, 2, 600.0 - f, 300.0, 640.0 - f, 400.0) for f in frames]
    scores = identity_scores(match_frames(gt, preds, frames))
    assert scores["ids_per_person"] == 1.0 and scores["id_switches"] == 0
    assert scores["idf1"] > 0.9  # a new track is shown from its second hit


def test_replay_settings_are_typed_and_checked() -> None:
    from bench.accuracy.replay import parse_settings

    got = parse_settings(["match_iou_threshold=0.1", "min_hits=3", "fuse_score=false"])
    assert got == {"match_iou_threshold": 0.1, "min_hits": 3, "fuse_score": False}
    with pytest.raises(SystemExit, match="unknown TrackerConfig field"):
        parse_settings(["no_such_field=1"])
