"""The tracker's building blocks do what the textbook versions do, only faster, and the tracker keeps
identities the way a user expects: through crossings, gaps and re-appearance, never reusing an id."""

from __future__ import annotations

import numpy as np
import pytest

from vap_tracker.association import assign, assign_edges, iou_matrix, iou_pairs_t
from vap_tracker.bytetrack import ChannelTracker, TrackerConfig
from vap_tracker.kalman import BatchKalman, KalmanParams, boxes_to_xywh
from vap_tracker.track import State


def _full_kalman(zs: np.ndarray, p: KalmanParams) -> np.ndarray:
    """Reference: the classic 8x8 constant-velocity Kalman filter, one measurement at a time."""
    f = np.eye(8)
    f[:4, 4:] = np.eye(4)
    h = np.eye(4, 8)
    x = np.concatenate((zs[0], np.zeros(4)))
    size = lambda v: np.array([v[2], v[3], v[2], v[3]])  # noqa: E731
    s0 = size(zs[0])
    cov = np.diag(np.concatenate(((p.std_init_position * s0) ** 2, (p.std_init_velocity * s0) ** 2)))
    out = [x[:4].copy()]
    for z in zs[1:]:
        s = size(x)
        q = np.diag(np.concatenate(((p.std_position * s) ** 2, (p.std_velocity * s) ** 2)))
        x = f @ x
        cov = f @ cov @ f.T + q
        r = np.diag((p.std_measurement * size(z)) ** 2)
        k = cov @ h.T @ np.linalg.inv(h @ cov @ h.T + r)
        x = x + k @ (z - h @ x)
        cov = (np.eye(8) - k @ h) @ cov
        out.append(x[:4].copy())
    return np.array(out)


def test_decoupled_kalman_equals_the_full_filter() -> None:
    rng = np.random.default_rng(3)
    params = KalmanParams()
    kf = BatchKalman(params)
    # Three tracks at once, 40 frames of noisy constant-velocity motion.
    truth = np.array([[100.0, 200.0, 40.0, 100.0], [300.0, 120.0, 60.0, 150.0], [500.0, 400.0, 30.0, 70.0]])
    vel = np.array([[2.0, 0.5, 0.0, 0.1], [-1.0, 1.5, 0.2, 0.0], [0.5, -2.0, 0.0, 0.0]])
    zs = np.stack([truth + k * vel + rng.normal(0, 2, truth.shape) for k in range(40)])  # (T, N, 4)
    state = kf.initiate(zs[0].T.copy())
    got = [state[0:4].T.copy()]
    for z in zs[1:]:
        kf.predict(state[0:4], state[4:8], state[8:12], state[12:16], state[16:20], 1.0)
        kf.update(state, z.T.copy())
        got.append(state[0:4].T.copy())
    got_arr = np.stack(got)
    for n in range(3):
        np.testing.assert_allclose(got_arr[:, n], _full_kalman(zs[:, n], params), rtol=1e-9, atol=1e-9)


def test_iou_pairs_and_sparse_assignment_agree_with_the_dense_versions() -> None:
    rng = np.random.default_rng(5)
    for _ in range(300):
        a = rng.uniform(0, 200, (int(rng.integers(0, 15)), 2))
        b = rng.uniform(0, 200, (int(rng.integers(0, 15)), 2))
        a = np.concatenate((a, a + rng.uniform(5, 60, a.shape)), axis=1)
        b = np.concatenate((b, b + rng.uniform(5, 60, b.shape)), axis=1)
        dense = iou_matrix(a, b)
        r, c, v = iou_pairs_t(np.ascontiguousarray(a.T), np.ascontiguousarray(b.T), 0.1)
        assert sorted(zip(r.tolist(), c.tolist(), strict=True)) == sorted(
            zip(*(dense >= 0.1).nonzero(), strict=True)
        )
        np.testing.assert_allclose(v, dense[r, c])
        cost = np.where(dense >= 0.1, 1.0 - dense, 1e6)
        rows, cols, _, _ = assign(cost, 1.0)
        er, ec = assign_edges(r, c, 1.0 - v, 1.0)

        assert _total(cost, er, ec) == pytest.approx(_total(cost, rows, cols))
        assert len(set(er.tolist())) == len(er) and len(set(ec.tolist())) == len(ec)


def _total(cost: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> float:
    """The objective both solvers minimise: matched costs plus half the limit (1.0) per unmatched side."""
    unmatched = cost.shape[0] + cost.shape[1] - 2 * len(rows)
    return float(cost[rows, cols].sum() + 0.5 * unmatched)


def _box(cx: float, cy: float, w: float = 40, h: float = 100) -> list[float]:
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def test_two_people_crossing_paths_keep_their_ids() -> None:
    tracker = ChannelTracker()
    ids_left, ids_right = set(), set()
    for k in range(60):
        # One walks right, the other left, on nearly the same row: their boxes overlap mid-way.
        a, b = _box(100 + 6 * k, 200), _box(460 - 6 * k, 210)
        out = tracker.update(np.array([a, b]), np.array([0.9, 0.9]))
        shown = (out.state == State.CONFIRMED) & (out.frames_since_update == 0)
        for tid, det in zip(out.track_id[shown], out.det_index[shown], strict=True):
            (ids_right if det == 0 else ids_left).add(int(tid))
    assert len(ids_right) == 1 and len(ids_left) == 1 and ids_right != ids_left


def test_a_person_hidden_for_half_a_second_comes_back_with_the_same_id() -> None:
    tracker = ChannelTracker(TrackerConfig(lost_timeout_s=1.0))
    seen: dict[int, list[int]] = {}
    for k in range(70):
        hidden = 30 <= k < 42  # 12 frames at 25 fps
        boxes = np.empty((0, 4)) if hidden else np.array([_box(100 + 4 * k, 240)])
        out = tracker.update(boxes, np.full(len(boxes), 0.9))
        for tid, st in zip(out.track_id.tolist(), out.state.tolist(), strict=True):
            seen.setdefault(tid, []).append(st)
    assert list(seen) == [1]
    states = seen[1]
    assert State.LOST in states and states[-1] == State.CONFIRMED


def test_a_lost_track_is_removed_after_the_timeout_and_its_id_is_never_reused() -> None:
    tracker = ChannelTracker(TrackerConfig(lost_timeout_s=0.4))
    for k in range(5):
        tracker.update(np.array([_box(100 + k, 100)]), np.array([0.9]))
    removed_at = None
    for k in range(20):
        out = tracker.update(np.empty((0, 4)), np.empty(0))
        if len(out) and out.state[0] == State.REMOVED:
            removed_at = k
            break
    assert removed_at is not None and 9 <= removed_at <= 11  # 0.4 s at 25 fps, +-1 frame
    out = tracker.update(np.array([_box(100, 100)]), np.array([0.9]))
    assert out.track_id.tolist() == [2]


def test_low_score_detections_keep_a_track_alive_but_never_start_one() -> None:
    tracker = ChannelTracker()
    for k in range(5):
        tracker.update(np.array([_box(100 + 2 * k, 100)]), np.array([0.9]))
    # A half-hidden person scores 0.3: the second association stage keeps the track matched.
    for k in range(5, 15):
        out = tracker.update(np.array([_box(100 + 2 * k, 100), _box(400, 300)]), np.array([0.3, 0.3]))
        assert out.track_id.tolist() == [1] and out.frames_since_update.tolist() == [0]


def test_detections_of_another_class_do_not_continue_a_track() -> None:
    tracker = ChannelTracker()
    for _ in range(5):
        tracker.update(np.array([_box(100, 100)]), np.array([0.9]), np.array([0]))
    out = tracker.update(np.array([_box(100, 100)]), np.array([0.9]), np.array([2]))
    states = dict(zip(out.track_id.tolist(), out.state.tolist(), strict=True))
    assert states[1] == State.LOST and states[2] == State.TENTATIVE


def test_timestamps_drive_the_motion_model() -> None:
    # 10 fps stream with timestamps: the person moves 10 px per frame = 100 px/s.
    tracker = ChannelTracker(TrackerConfig(ref_fps=25.0))
    for k in range(30):
        out = tracker.update(
            np.array([_box(100 + 10 * k, 100)]), np.array([0.9]), timestamp_s=1000.0 + k / 10
        )
    assert out.velocity[0, 0] == pytest.approx(100.0, rel=0.05)
    assert boxes_to_xywh(out.box.T)[0, 0] == pytest.approx(100 + 290, abs=1e-6)


def test_settings_come_from_yaml_and_environment(
    tmp_path: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vap_tracker.settings import TrackerServiceSettings

    config = tmp_path / "vap.yaml"  # type: ignore[operator]
    config.write_text("tracker:\n  tracker:\n    min_hits: 3\n  reid:\n    embedder: hsv\n")
    monkeypatch.setenv("VAP_TRACKER_TRACKER__LOST_TIMEOUT_S", "2.5")
    settings = TrackerServiceSettings.load(config)
    assert settings.tracker.config().min_hits == 3
    assert settings.tracker.config().lost_timeout_s == 2.5
    assert settings.reid.embedder == "hsv"


def _look(k: int, dim: int = 8) -> np.ndarray:
    """A unit appearance vector per person (what vap_tracker.appearance computes from pixels)."""
    v = np.full(dim, 0.1, np.float32)
    v[k] = 1.0
    return v / np.linalg.norm(v)


def test_appearance_reattaches_a_person_who_turned_back_while_hidden_at_5_fps() -> None:
    """At 5 fps a person hidden for a second who turned round meanwhile reappears far from the prediction:
    motion alone gives a new id, the look brings the old one back. Someone else appearing there (another
    look) is not taken for them."""

    def run(config: TrackerConfig, look_back: int) -> set[int]:
        tracker = ChannelTracker(config)
        ids: set[int] = set()
        for k in range(25):
            # Walks right 40 px a frame, hidden for frames 8-12, comes back at x=350 walking left.
            x = 100 + 40 * k if k < 8 else None if k < 13 else 350 - 30 * (k - 13)
            boxes = np.empty((0, 4)) if x is None else np.array([_box(x, 240)])
            feats = np.repeat(_look(0 if k < 8 else look_back)[None], len(boxes), axis=0)
            out = tracker.update(boxes, np.full(len(boxes), 0.9), timestamp_s=k / 5.0, features=feats)
            ids |= set(out.track_id[(out.state == State.CONFIRMED) & (out.frames_since_update == 0)].tolist())
        return ids

    motion_only = TrackerConfig(appearance_veto=0, appearance_weight=0, appearance_reattach=0)
    assert run(TrackerConfig(), look_back=0) == {1}
    assert run(motion_only, look_back=0) == {1, 2}  # the cue is what brings the id back
    assert run(TrackerConfig(), look_back=3) == {1, 2}  # a different person gets a new id


def test_appearance_veto_keeps_a_track_off_a_different_looking_detection() -> None:
    tracker = ChannelTracker()
    for k in range(5):
        tracker.update(np.array([_box(100 + 10 * k, 240)]), np.array([0.9]), features=_look(0)[None])
    # Someone else steps exactly where the track is predicted: same place, other clothes.
    out = tracker.update(np.array([_box(150, 240)]), np.array([0.9]), features=_look(5)[None])
    matched = out.track_id[out.frames_since_update == 0].tolist()
    assert 1 not in matched and tracker.state_of(1) == State.LOST
    # Without features (a stale frame) the same detection continues the track by position.
    tracker = ChannelTracker()
    for k in range(5):
        tracker.update(np.array([_box(100 + 10 * k, 240)]), np.array([0.9]), features=_look(0)[None])
    out = tracker.update(np.array([_box(150, 240)]), np.array([0.9]))
    assert out.track_id[out.frames_since_update == 0].tolist() == [1]


def test_appearance_features_stay_with_their_tracks_through_removals_and_merges() -> None:
    """The per-track feature store stays aligned with the tracks as tracks are born, removed and
    re-attached (a misaligned store would compare a track with someone else's look)."""
    rng = np.random.default_rng(3)
    tracker = ChannelTracker(TrackerConfig(lost_timeout_s=0.2, lost_min_frames=1))
    for k in range(200):
        n = int(rng.integers(0, 6))
        people = rng.choice(8, size=n, replace=False)
        boxes = np.array([_box(60 * p + 40 + rng.normal(0, 2), 240) for p in people]).reshape(-1, 4)
        feats = np.array([_look(int(p)) for p in people], np.float32).reshape(-1, 8)
        tracker.update(boxes, np.full(n, 0.9), timestamp_s=k / 5.0, features=feats)
        assert tracker._feat.shape[0] == tracker._f.shape[1]
        for col in range(tracker._f.shape[1]):
            box = tracker._f[20:24, col]
            person = round(((box[0] + box[2]) / 2 - 40) / 60)
            if tracker._i[4, col] == 0 and 0 <= person < 8:  # matched this frame: its look is that person's
                assert int(np.argmax(tracker._feat[col])) == person
