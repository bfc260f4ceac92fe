"""Properties of the track state machine over arbitrary detection streams (hypothesis): whatever the
detector does, tracks move only along legal transitions, ids are unique and never reused, a track is
CONFIRMED only after min_hits matches, a REMOVED track is reported once and never comes back, and no
detection feeds two tracks."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vap_tracker.bytetrack import ChannelTracker, TrackerConfig
from vap_tracker.track import State, is_legal

# A frame: up to 6 objects drawn from a small world, each maybe present, with a score.
_object = st.tuples(
    st.integers(0, 5),  # which of 6 scripted people (positions follow from the frame index)
    st.floats(0.05, 1.0),  # score
    st.floats(-8.0, 8.0),  # jitter
)
_frame = st.lists(_object, max_size=6)
_stream = st.lists(_frame, min_size=1, max_size=60)
_config = st.builds(
    TrackerConfig,
    min_hits=st.integers(1, 4),
    tentative_max_misses=st.integers(0, 2),
    lost_timeout_s=st.floats(0.05, 1.0),
    match_iou_threshold=st.floats(0.1, 0.6),
)


def _boxes(frame_index: int, frame: list[tuple[int, float, float]]) -> tuple[np.ndarray, np.ndarray]:
    boxes, scores = [], []
    for person, score, jitter in frame:
        cx = 60 + person * 90 + 3 * frame_index * (1 if person % 2 else -1) + jitter
        cy = 200 + 20 * person
        boxes.append([cx - 20, cy - 50, cx + 20, cy + 50])
        scores.append(score)
    return np.array(boxes, dtype=float).reshape(-1, 4), np.array(scores, dtype=float)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=_stream, config=_config)
def test_track_lifecycle_invariants(
    stream: list[list[tuple[int, float, float]]], config: TrackerConfig
) -> None:
    tracker = ChannelTracker(config)
    last_state: dict[int, State] = {}
    removed: set[int] = set()
    max_id = 0
    for k, frame in enumerate(stream):
        boxes, scores = _boxes(k, frame)
        out = tracker.update(boxes, scores)
        ids = out.track_id.tolist()
        assert len(ids) == len(set(ids)), "a track appears twice in one frame"
        assert all(i >= 1 for i in ids)
        matched = out.det_index[out.det_index >= 0].tolist()
        assert len(matched) == len(set(matched)), "one detection fed two tracks"
        for tid, st_, hits, since in zip(
            ids, out.state.tolist(), out.hits.tolist(), out.frames_since_update.tolist(), strict=True
        ):
            state = State(st_)
            assert tid not in removed, "a removed track came back"
            before = last_state.get(tid)
            if before is None:
                assert tid > max_id, "a new track reused an id"
                max_id = tid
                assert state in (State.TENTATIVE, State.CONFIRMED)
                assert state != State.CONFIRMED or config.min_hits == 1
            else:
                assert is_legal(before, state), f"{before.name} -> {state.name}"
            if state == State.CONFIRMED:
                assert hits >= config.min_hits
                assert since == 0
            if state == State.REMOVED:
                removed.add(tid)
            last_state[tid] = state
        # Every live track (not removed) is reported in every frame until it ends.
        live = {t for t, s in last_state.items() if s != State.REMOVED}
        assert live == set(ids) - removed
        assert set(tracker.live_ids().tolist()) == live


@settings(max_examples=60, deadline=None)
@given(stream=_stream)
def test_same_input_gives_same_tracks(stream: list[list[tuple[int, float, float]]]) -> None:
    """Deterministic: replaying a stream gives identical ids, states and boxes (no hidden randomness)."""
    a, b = ChannelTracker(), ChannelTracker()
    for k, frame in enumerate(stream):
        boxes, scores = _boxes(k, frame)
        oa, ob = a.update(boxes, scores), b.update(boxes, scores)
        assert oa.track_id.tolist() == ob.track_id.tolist()
        assert oa.state.tolist() == ob.state.tolist()
        np.testing.assert_array_equal(oa.box, ob.box)
