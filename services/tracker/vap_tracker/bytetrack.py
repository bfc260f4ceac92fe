"""The per-channel multi-object tracker: ByteTrack-style association with a batched Kalman filter.

One ``ChannelTracker`` per camera channel. Each ``update()`` takes one frame's detections as arrays and
returns every track of the frame as arrays (``FrameTracks``); it never touches protobuf or pixels, so the
bench and the service run the same code.

Association, in order (each stage an optimal gated assignment over the candidate pairs, see
association.assign_edges: uncontested pairs directly, contested blocks with scipy's solver):

1. high-score detections <-> CONFIRMED and LOST tracks, IoU with the Kalman prediction (weighted by the
   detection score);
2. low-score detections <-> CONFIRMED tracks left over (ByteTrack's second stage: a person half hidden
   gets a low score, and that is exactly when keeping the track alive matters);
3. remaining high-score detections <-> TENTATIVE tracks;
4. remaining high-score detections <-> remaining CONFIRMED/LOST tracks by *buffered* IoU, the buffer
   growing with the time since the last match (re-activation after an occlusion, when the constant-
   velocity prediction has drifted off the person);
5. remaining high-score detections <-> every track left over (TENTATIVE too), by *motion*: the
   Mahalanobis distance between the detection's (cx, cy, w, h) and the track's Kalman prediction, gated
   at ``motion_gate_chi2``. The filter's covariance grows with the time since the last match, so the gate
   widens with the frame interval: at 5 fps a walking person moves about a box width between frames, the
   IoU with the prediction is often zero (always for a new track, whose velocity is still unknown), and
   without this stage every such frame would start a new identity. At 25 fps stages 1-4 match almost
   everything and this stage rarely has work;
6. remaining high-score detections above ``new_track_threshold`` start TENTATIVE tracks.

Why struct-of-arrays, coordinate-major: a Python object per track costs microseconds per attribute touch
per frame; with all track fields as rows of two 2-D arrays (floats, ints; one column per track) every
per-frame step is a few vectorised numpy calls over contiguous rows whatever the number of tracks, and
adding/removing tracks is one concatenate/take per array.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np
import numpy.typing as npt

from vap_tracker.association import assign_edges, buffered_iou_matrix, iou_pairs_t
from vap_tracker.kalman import BatchKalman, KalmanParams, boxes_to_xywh, xywh_to_boxes
from vap_tracker.track import State

F64 = npt.NDArray[np.float64]
F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
Bool = npt.NDArray[np.bool_]

# Rows of the float array (one column per track).
_POS = slice(0, 4)  # Kalman state and covariance blocks, see kalman.py
_VEL = slice(4, 8)
_PP = slice(8, 12)
_PV = slice(12, 16)
_VV = slice(16, 20)
_KF = slice(0, 20)
_BOX = slice(20, 24)  # box reported for the frame: the matched detection, else the prediction
_SCORE = 24
_LAST_T = 25  # time (s) of the last match
_BORN_T = 26  # time (s) of the first match
_NF = 27
# Rows of the int array.
_ID = 0
_STATE = 1
_HITS = 2
_AGE = 3
_SINCE = 4  # frames since the last match
_CLS = 5
_CLS_VOTES = 6  # Boyer-Moore majority vote counter of _CLS
_DET = 7  # index of the detection matched in the current frame, -1 when none
_NI = 8

_TENTATIVE = int(State.TENTATIVE)
_CONFIRMED = int(State.CONFIRMED)
_LOST = int(State.LOST)
_REMOVED = int(State.REMOVED)


@dataclass(frozen=True, slots=True)
class TrackerConfig:
    """Thresholds and lifetimes. The new-track threshold and min_hits are ByteTrack's; the high-score
    threshold, the stage-1 IoU gate, the motion gate, the lost lifetime and the appearance settings were
    tuned with `bench accuracy`'s replay on the first half of vtest (frames < 400, NanoDet INT8 at 5 and
    10 analysed fps) and checked on the second half and at 4-12.5 fps (bench/README, issue 22); the
    tentative miss allowance and the Kalman noise on the bench's synthetic tuning seeds."""

    # NanoDet scores walking people 0.4-0.85 (YOLOX, ByteTrack's detector, higher): 0.5 keeps most of them
    # in the high-score stages.
    high_score_threshold: float = 0.5
    low_score_threshold: float = 0.1
    new_track_threshold: float = 0.7
    # Stage 1 (high detections vs confirmed/lost tracks): minimum IoU with the prediction.
    match_iou_threshold: float = 0.2
    # Stage 2 (low detections vs confirmed tracks): stricter, low-score boxes are often false positives.
    low_match_iou_threshold: float = 0.4
    # Stage 3 (remaining high detections vs tentative tracks).
    tentative_match_iou_threshold: float = 0.3
    # Stage 4 (re-activation): buffered IoU, buffer = min(base + per_frame * frames_lost, max) of the box
    # size on each side; the pair needs at least this buffered IoU.
    reactivate_iou_threshold: float = 0.4
    reactivate_buffer_base: float = 0.1
    reactivate_buffer_per_frame: float = 0.03
    reactivate_buffer_max: float = 0.6
    # Stage 5 (motion): squared Mahalanobis distance (4 degrees of freedom: cx, cy, w, h) between a
    # detection and a track's prediction under the filter's innovation covariance; 9.49 is the 95 %
    # quantile of chi-square(4), DeepSORT's gate; 40 is much wider: at 5-10 fps people change pace and
    # direction between frames more than a constant-velocity model expects, and the appearance veto keeps
    # the wide gate from taking the wrong person (without appearance 40 still did better than 9.49 on the
    # bench: IDF1 0.53 vs 0.38 at 5 fps). 0 disables the stage.
    motion_gate_chi2: float = 40.0
    min_hits: int = 2
    # Frames a TENTATIVE track may go unmatched before it is dropped (0 = ByteTrack: the next frame must
    # match). 1 lets a new track survive a single missed detection, common with real detectors.
    tentative_max_misses: int = 1
    lost_timeout_s: float = 2.0
    # ... but a LOST track always gets at least this many frame intervals (of the current frame rate) to be
    # found again: at 25 fps 1 s is 25 chances, at 5 fps only 5, too few for a detector that misses a
    # person for a few frames. 10 frames: 2 s at 5 fps, 4 s at 2.5 fps; no change above 10 fps.
    lost_min_frames: int = 10
    # Frame rate the noise model is expressed in; frames without timestamps are 1 / ref_fps apart.
    ref_fps: float = 25.0
    # Velocity of a LOST track decays by this factor per frame (1 = constant velocity). For scenes where
    # people often stop or turn while hidden; on the bench's walking pedestrians 1.0 did best.
    lost_velocity_decay: float = 1.0
    # Weight IoU by the detection score in stage 1 (ByteTrack's fuse_score): prefers confident boxes.
    fuse_score: bool = True
    # Never match a detection to a track of another class.
    class_aware: bool = True
    # Appearance (when update() gets per-detection features, L2-normalised; see vap_tracker.appearance):
    # each track keeps an exponential moving average of its detections' features (this weight on the old
    # one). A candidate pair whose cosine similarity is below ``appearance_veto`` is not matched in the
    # high-score stages (1, 3, 4, 5); above it, the similarity is mixed into the pair's weight with
    # ``appearance_weight``. At 5 fps two people passing each other are often equally close to a
    # prediction; their clothes are not. 0 turns each part off.
    appearance_ema: float = 0.9
    appearance_veto: float = 0.75
    appearance_weight: float = 0.5
    # Stage 4b: a remaining high detection re-attaches to a remaining CONFIRMED/LOST track whose appearance
    # is at least this similar and whose prediction is within ``appearance_reattach_chi2`` (a wide motion
    # gate: after an occlusion the prediction has drifted). 0 = off.
    appearance_reattach: float = 0.85
    appearance_reattach_chi2: float = 200.0
    kalman: KalmanParams = field(default_factory=KalmanParams)

    @property
    def uses_appearance(self) -> bool:
        """Whether update() makes use of detection features (so callers know to compute them)."""
        return self.appearance_veto > 0 or self.appearance_weight > 0 or self.appearance_reattach > 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.low_score_threshold <= self.high_score_threshold <= 1.0:
            raise ValueError("need 0 <= low_score_threshold <= high_score_threshold <= 1")
        if self.min_hits < 1:
            raise ValueError("min_hits must be >= 1")
        if self.lost_timeout_s <= 0:
            raise ValueError("lost_timeout_s must be > 0")
        if self.ref_fps <= 0:
            raise ValueError("ref_fps must be > 0")


@dataclass(frozen=True, slots=True)
class FrameTracks:
    """Every track of one frame: live ones (TENTATIVE, CONFIRMED, LOST) and those REMOVED in this frame.

    Element i of every array describes the same track. ``box`` (K, 4) is the matched detection, or the
    Kalman prediction for a track not matched in this frame. ``det_index`` is the index of the matched
    detection in the frame's input (-1 when none). ``merged_into`` is, for a REMOVED track that ReID
    re-attached to an older one, the older track's id (0 otherwise).
    """

    track_id: I64
    state: I64
    box: F64
    velocity: F64  # (K, 2) px/s of the box centre
    class_id: I64
    score: F64
    age: I64
    hits: I64
    frames_since_update: I64
    det_index: I64
    merged_into: I64

    def __len__(self) -> int:
        return len(self.track_id)

    def select(self, rows: I64 | Bool) -> FrameTracks:
        """The tracks at ``rows`` (indices or a mask)."""
        return FrameTracks(*(getattr(self, f.name)[rows] for f in fields(self)))


def concat_tracks(parts: list[FrameTracks]) -> FrameTracks:
    if len(parts) == 1:
        return parts[0]
    return FrameTracks(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(FrameTracks)))


class ChannelTracker:
    """Multi-object tracker of one channel. Not thread-safe: one caller feeds it frames in order."""

    def __init__(self, config: TrackerConfig | None = None) -> None:
        self._f = np.empty((_NF, 0))
        self._i = np.empty((_NI, 0), dtype=np.int64)
        # Appearance feature of each track (one row per track column; zeros = none yet), (N, D).
        self._feat: F32 = np.zeros((0, 0), np.float32)
        self._det_feat: F32 | None = None  # the current frame's detection features
        self._next_id = 1
        self._last_t: float | None = None
        self._t = 0.0
        self._frame = 0
        # Tracks ended between frames (ReID merges); reported as REMOVED with the next frame.
        self._pending: list[FrameTracks] = []
        # Set once a detection of a class other than 0 was seen: until then class gating has nothing to do.
        self._multi_class = False
        self.reconfigure(config or TrackerConfig())

    # ------------------------------------------------------------------------------------------------
    def reconfigure(self, config: TrackerConfig) -> None:
        """New thresholds and lifetimes take effect from the next frame; tracks and ids are kept."""
        self.config = config
        self._kf = BatchKalman(config.kalman)
        self._loosest_gate = min(
            config.match_iou_threshold, config.low_match_iou_threshold, config.tentative_match_iou_threshold
        )

    @property
    def frame_count(self) -> int:
        return self._frame

    @property
    def next_id(self) -> int:
        """The id the next new track will get (ids are never reused)."""
        return self._next_id

    @property
    def time_s(self) -> float:
        """Time of the last frame (its timestamp, or frames / ref_fps without timestamps)."""
        return self._t

    def live_ids(self) -> I64:
        ids: I64 = self._i[_ID].copy()
        return ids

    def state_of(self, track_id: int) -> State | None:
        cols = (self._i[_ID] == track_id).nonzero()[0]
        return State(int(self._i[_STATE, cols[0]])) if len(cols) else None

    def last_seen_s(self, track_id: int) -> float | None:
        """Time of the track's last match, or None when it is not live."""
        cols = (self._i[_ID] == track_id).nonzero()[0]
        return float(self._f[_LAST_T, cols[0]]) if len(cols) else None

    # ------------------------------------------------------------------------------------------------
    def update(
        self,
        boxes: F64,
        scores: F64,
        class_ids: I64 | None = None,
        timestamp_s: float | None = None,
        features: F32 | None = None,
    ) -> FrameTracks:
        """Track one frame. ``boxes`` (M, 4) x1, y1, x2, y2 in pixels; ``scores`` (M,); ``class_ids`` (M,)
        (all 0 when None); ``timestamp_s`` the capture time in seconds (frames are 1 / ref_fps apart when
        None); ``features`` (M, D) L2-normalised appearance of each detection, or None (no appearance cue
        in this frame). Returns all tracks of the frame."""
        cfg = self.config
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        m = len(boxes)
        classes = np.zeros(m, dtype=np.int64) if class_ids is None else np.asarray(class_ids, dtype=np.int64)
        self._det_feat = self._frame_features(features, m)
        dt = self._advance_clock(timestamp_s)
        f, i = self._f, self._i
        n = f.shape[1]
        state = i[_STATE]

        if n:
            i[_DET] = -1
            i[_AGE : _SINCE + 1] += 1  # age and frames since the last match
            if cfg.lost_velocity_decay < 1.0:
                lost = (state == _LOST).nonzero()[0]
                if len(lost):
                    f[_VEL, lost] *= cfg.lost_velocity_decay**dt
            self._kf.predict(f[_POS], f[_VEL], f[_PP], f[_PV], f[_VV], dt)
        pred = xywh_to_boxes(f[_POS])  # (4, N)

        # The (track, detection) pairs that pass the loosest IoU gate of stages 1-3, as 1-D edge arrays:
        # each stage is then a mask over about one edge per object, not an N x M block.
        if m and scores.min() >= cfg.low_score_threshold:  # the usual case: skip the copies
            valid = np.arange(m)
            det_t = np.ascontiguousarray(boxes.T)  # (4, V)
            det_scores, det_classes = scores, classes
        else:
            valid = (scores >= cfg.low_score_threshold).nonzero()[0]
            det_t = np.ascontiguousarray(boxes.take(valid, axis=0).T)
            det_scores = scores.take(valid)
            det_classes = classes.take(valid)
        is_high = det_scores >= cfg.high_score_threshold
        match = np.full(n, -1, dtype=np.int64)  # track column -> detection (index into valid)
        det_free = np.ones(len(valid), dtype=bool)
        # Python-level counts decide which stages can have work, so a clean frame (every track matched in
        # stage 1) skips the rest without further numpy calls.
        n_high = int(np.count_nonzero(is_high))
        n_low = len(valid) - n_high
        _, n_tentative, n_confirmed, n_lost = (
            np.bincount(state, minlength=4)[:4].tolist() if n else (0, 0, 0, 0)
        )
        n_pool = n_confirmed + n_lost
        m1 = m2 = m3 = m4 = 0
        if m and classes.any():
            self._multi_class = True

        if n and len(valid):
            er, ec, ev = iou_pairs_t(pred, det_t, self._loosest_gate)
            if cfg.class_aware and self._multi_class and len(er):
                same_class = i[_CLS].take(er) == det_classes.take(ec)
                if not same_class.all():
                    er, ec, ev = er[same_class], ec[same_class], ev[same_class]
            e_state = state.take(er)
            e_high = is_high.take(ec)
            # 1. high detections <-> confirmed + lost tracks.
            if n_pool and n_high:
                sel = ((e_state != _TENTATIVE) & e_high & (ev >= cfg.match_iou_threshold)).nonzero()[0]
                r1, c1, w = er.take(sel), ec.take(sel), ev.take(sel)
                if cfg.fuse_score:
                    w *= 0.5 + 0.5 * det_scores.take(c1)
                r1, c1, w = self._appearance(r1, c1, w, valid)
                m1 = self._match_edges(r1, c1, w, match, det_free)
            # 2. low detections <-> confirmed tracks still unmatched.
            if n_low and n_pool > m1:
                sel = (e_state == _CONFIRMED) & ~e_high & (ev >= cfg.low_match_iou_threshold)
                sel &= match.take(er) < 0
                m2 = self._match_edges(er[sel], ec[sel], ev[sel], match, det_free)
            # 3. remaining high detections <-> tentative tracks.
            if n_tentative and n_high > m1:
                sel = (e_state == _TENTATIVE) & e_high & (ev >= cfg.tentative_match_iou_threshold)
                sel &= det_free.take(ec)
                m3 = self._match_edges(*self._appearance(er[sel], ec[sel], ev[sel], valid), match, det_free)
            # 4. re-activation by buffered IoU: remaining high detections <-> remaining confirmed/lost.
            if n_pool > m1 + m2 and n_high > m1 + m3:
                rest = ((state != _TENTATIVE) & (match < 0)).nonzero()[0]
                high = (is_high & det_free).nonzero()[0]
                m4 = self._reactivate(rest, high, pred, det_t, det_classes, match, det_free, valid)
        # 5. motion-gated association: remaining high detections <-> every remaining track.
        if n and cfg.motion_gate_chi2 > 0 and n > m1 + m2 + m3 + m4 and n_high > m1 + m3 + m4:
            rest = (match < 0).nonzero()[0]
            high = (is_high & det_free).nonzero()[0]
            m5 = self._motion_match(rest, high, det_t, det_classes, match, det_free, valid)
        else:
            m5 = 0
        # 5b. appearance re-attachment: remaining high detections <-> remaining confirmed/lost tracks that
        # look the same, within a wide motion gate.
        if self._det_feat is not None and cfg.appearance_reattach > 0 and n > m1 + m2 + m3 + m4 + m5:
            rest = ((state != _TENTATIVE) & (match < 0)).nonzero()[0]
            high = (is_high & det_free).nonzero()[0]
            m5 += self._appearance_reattach(rest, high, det_t, det_classes, match, det_free, valid)
        # ... and low detections <-> confirmed tracks still unmatched (stage 2 by motion).
        if n_low and cfg.motion_gate_chi2 > 0 and n_confirmed > m1 + m2 + m5:
            rest = ((state == _CONFIRMED) & (match < 0)).nonzero()[0]  # matched in the last frame
            low = (~is_high & det_free).nonzero()[0]
            m5 += self._motion_match(rest, low, det_t, det_classes, match, det_free, valid, appearance=False)
        n_matched = m1 + m2 + m3 + m4 + m5

        if n_matched:
            matched = (match >= 0).nonzero()[0]
            cols = match.take(matched)  # detection columns, in the (4, V) layout of det_t
            self._apply_matches(
                matched, valid.take(cols), det_t.take(cols, axis=1), det_scores, det_classes, cols
            )
            self._remember_appearance(matched, valid.take(cols), det_scores.take(cols))

        # Lifecycle of the unmatched (a matched track has _SINCE == 0 now).
        if n > n_matched:
            unmatched = i[_SINCE] > 0
            missed = unmatched.nonzero()[0]
            f[_BOX, missed] = pred.take(missed, axis=1)  # an unmatched track is reported where predicted
            state[unmatched & (state == _CONFIRMED)] = _LOST
            state[unmatched & (state == _TENTATIVE) & (i[_SINCE] > cfg.tentative_max_misses)] = _REMOVED
            timeout = max(cfg.lost_timeout_s, cfg.lost_min_frames * dt / cfg.ref_fps)
            expired = (state == _LOST) & ((self._t - f[_LAST_T]) > timeout + 1e-9)
            state[expired] = _REMOVED

        # 6. new tracks from high detections nobody took.
        if n_high > m1 + m3 + m4 + m5:
            new = valid.take((is_high & det_free & (det_scores >= cfg.new_track_threshold)).nonzero()[0])
            if len(new):
                self._spawn(new, boxes, scores, classes)

        out = self._snapshot()
        removed = self._i[_STATE] == _REMOVED
        if removed.any():
            keep = (~removed).nonzero()[0]
            self._f = self._f.take(keep, axis=1)
            self._i = self._i.take(keep, axis=1)
            self._feat = self._feat.take(keep, axis=0)
        if self._pending:
            out = concat_tracks([*self._pending, out])
            self._pending.clear()
        return out

    # ------------------------------------------------------------------------------------------------
    def _advance_clock(self, timestamp_s: float | None) -> float:
        """Frame interval in reference intervals (> 0)."""
        self._frame += 1
        step = 1.0 / self.config.ref_fps
        t = self._t + step if timestamp_s is None else float(timestamp_s)
        if self._last_t is None:
            dt = 1.0
        elif t > self._last_t:
            dt = max((t - self._last_t) * self.config.ref_fps, 1e-3)
        else:
            # A clock that stands still or goes backwards (stream restart) counts as one frame.
            dt = 1.0
            t = self._last_t + step
        if timestamp_s is None:
            dt = 1.0  # exact, so the common fixed-rate case takes the fast path of the Kalman predict
        self._last_t = t
        self._t = t
        return dt

    @staticmethod
    def _match_edges(rows: I64, cols: I64, sim: F64, match: I64, det_free: Bool) -> int:
        """Optimal assignment over candidate pairs with similarity ``sim`` (cost 1 - sim, an unmatched
        track/detection pair costing 1, as ByteTrack's lapjv with cost_limit); records the matches and
        returns how many."""
        if len(rows) == 0:
            return 0
        r, c = assign_edges(rows, cols, 1.0 - sim, 1.0)
        match[r] = c
        det_free[c] = False
        return len(r)

    def _reactivate(
        self,
        rest: I64,
        high: I64,
        pred: F64,
        det_t: F64,
        det_classes: I64,
        match: I64,
        det_free: Bool,
        valid: I64,
    ) -> int:
        if len(rest) == 0 or len(high) == 0:
            return 0
        cfg = self.config
        buf = np.minimum(
            cfg.reactivate_buffer_base + cfg.reactivate_buffer_per_frame * self._i[_SINCE].take(rest),
            cfg.reactivate_buffer_max,
        )
        bsim = buffered_iou_matrix(pred.take(rest, axis=1).T, det_t.take(high, axis=1).T, buf)
        if cfg.class_aware:
            bsim[self._i[_CLS].take(rest)[:, None] != det_classes.take(high)[None, :]] = -1.0
        br, bc = (bsim >= cfg.reactivate_iou_threshold).nonzero()
        rows, cols, w = self._appearance(rest.take(br), high.take(bc), bsim[br, bc], valid)
        return self._match_edges(rows, cols, w, match, det_free)

    def _motion_d2(self, rest: I64, high: I64, det_t: F64, det_classes: I64) -> F64:
        """(R, H) squared Mahalanobis distances of detections ``high`` to the predictions of ``rest``."""
        cfg = self.config
        f = self._f
        pos = f[_POS].take(rest, axis=1)  # (4, R) predicted cx, cy, w, h
        var = self._kf.innovation_variance(pos, f[_PP].take(rest, axis=1))  # (4, R)
        z = boxes_to_xywh(det_t.take(high, axis=1))  # (4, H)
        diff = z[:, None, :] - pos[:, :, None]  # (4, R, H)
        diff *= diff
        diff /= var[:, :, None]
        d2: F64 = diff.sum(axis=0)  # (R, H)
        if cfg.class_aware and self._multi_class:
            d2[self._i[_CLS].take(rest)[:, None] != det_classes.take(high)[None, :]] = np.inf
        return d2

    def _motion_match(
        self,
        rest: I64,
        high: I64,
        det_t: F64,
        det_classes: I64,
        match: I64,
        det_free: Bool,
        valid: I64,
        *,
        appearance: bool = True,
    ) -> int:
        if len(rest) == 0 or len(high) == 0:
            return 0
        gate = self.config.motion_gate_chi2
        d2 = self._motion_d2(rest, high, det_t, det_classes)
        br, bc = (d2 <= gate).nonzero()
        if len(br) == 0:
            return 0
        rows, cols, sim = rest.take(br), high.take(bc), 1.0 - d2[br, bc] / gate
        if appearance:
            rows, cols, sim = self._appearance(rows, cols, sim, valid)
        return self._match_edges(rows, cols, sim, match, det_free)

    def _appearance_reattach(
        self, rest: I64, high: I64, det_t: F64, det_classes: I64, match: I64, det_free: Bool, valid: I64
    ) -> int:
        if len(rest) == 0 or len(high) == 0 or self._det_feat is None:
            return 0
        cfg = self.config
        d2 = self._motion_d2(rest, high, det_t, det_classes)
        br, bc = (d2 <= cfg.appearance_reattach_chi2).nonzero()
        if len(br) == 0:
            return 0
        rows, cols = rest.take(br), high.take(bc)
        a, known = self._similarity(rows, cols, valid)
        ok = known & (a >= cfg.appearance_reattach)
        return self._match_edges(rows[ok], cols[ok], a[ok], match, det_free)

    # -- appearance ---------------------------------------------------------------------------------------
    def _frame_features(self, features: F32 | None, m: int) -> F32 | None:
        """The frame's detection features as (M, D) float32, the track store sized to D; None = no cue."""
        if features is None or m == 0 or not self.config.uses_appearance:
            return None
        feats = np.asarray(features, dtype=np.float32).reshape(m, -1)
        if self._feat.shape[1] != feats.shape[1]:
            self._feat = np.zeros((self._f.shape[1], feats.shape[1]), np.float32)
        return feats

    def _similarity(self, rows: I64, cols: I64, valid: I64) -> tuple[F64, Bool]:
        """Cosine similarity of track columns ``rows`` and detections ``cols`` (indices into ``valid``),
        and whether the track has a feature at all."""
        assert self._det_feat is not None
        tf = self._feat.take(rows, axis=0)
        df = self._det_feat.take(valid.take(cols), axis=0)
        a: F64 = np.einsum("ij,ij->i", tf, df).astype(np.float64)
        known: Bool = np.einsum("ij,ij->i", tf, tf) > 0
        return a, known

    def _appearance(self, rows: I64, cols: I64, w: F64, valid: I64) -> tuple[I64, I64, F64]:
        """Candidate pairs after the appearance veto, with the appearance mixed into their weights."""
        cfg = self.config
        if self._det_feat is None or len(rows) == 0:
            return rows, cols, w
        a, known = self._similarity(rows, cols, valid)
        keep = ~known | (a >= cfg.appearance_veto)
        if cfg.appearance_weight > 0:
            lo = cfg.appearance_veto
            score = np.clip((a - lo) / max(1.0 - lo, 1e-6), 0.0, 1.0)
            w = np.where(known, (1.0 - cfg.appearance_weight) * w + cfg.appearance_weight * score, w)
        return rows[keep], cols[keep], w[keep]

    def _remember_appearance(self, cols: I64, det: I64, det_scores: F64) -> None:
        """Matched tracks ``cols`` take in the features of their detections ``det`` (input indices); only
        confident detections: a half-hidden person's crop is mostly someone else."""
        if self._det_feat is None:
            return
        confident = det_scores >= self.config.high_score_threshold
        cols, det = cols[confident], det[confident]
        if len(cols) == 0:
            return
        old = self._feat.take(cols, axis=0)
        new = self._det_feat.take(det, axis=0)
        known = np.einsum("ij,ij->i", old, old) > 0
        alpha = np.float32(self.config.appearance_ema)
        mixed = np.where(known[:, None], alpha * old + (1 - alpha) * new, new)
        norm = np.linalg.norm(mixed, axis=1, keepdims=True)
        self._feat[cols] = mixed / np.maximum(norm, 1e-12)

    def _apply_matches(
        self, cols: I64, det: I64, det_t: F64, det_scores: F64, det_classes: I64, det_cols: I64
    ) -> None:
        """Matched tracks ``cols`` take detections ``det`` (input indices): their boxes ``det_t`` (4, K,
        contiguous), and score and class at ``det_cols`` of ``det_scores``/``det_classes``."""
        # Work on one gathered copy of the matched columns and scatter it back once: two fancy-index
        # operations per array instead of two per field. When every track matched (``cols`` is then
        # 0..n-1, sorted and unique), work on the arrays themselves.
        every = len(cols) == self._f.shape[1]
        fm = self._f if every else self._f.take(cols, axis=1)
        im = self._i if every else self._i.take(cols, axis=1)
        self._kf.update(fm[_KF], boxes_to_xywh(det_t))
        fm[_BOX] = det_t
        fm[_SCORE] = det_scores.take(det_cols)
        fm[_LAST_T] = self._t
        im[_HITS] += 1
        im[_SINCE] = 0
        im[_DET] = det
        det_cls = det_classes.take(det_cols)
        same = im[_CLS] == det_cls
        if same.all():
            im[_CLS_VOTES] += 1
        else:
            # Boyer-Moore majority vote over the matched detections' classes.
            votes = im[_CLS_VOTES] + np.where(same, 1, -1)
            flip = votes <= 0
            im[_CLS] = np.where(flip, det_cls, im[_CLS])
            im[_CLS_VOTES] = np.where(flip, 1, votes)
        st = im[_STATE]
        st[(st == _LOST) | ((st == _TENTATIVE) & (im[_HITS] >= self.config.min_hits))] = _CONFIRMED
        if not every:
            self._f[:, cols] = fm
            self._i[:, cols] = im

    def _spawn(self, det: I64, boxes: F64, scores: F64, classes: I64) -> None:
        k = len(det)
        det_t = np.ascontiguousarray(boxes.take(det, axis=0).T)
        nf = np.empty((_NF, k))
        nf[_KF] = self._kf.initiate(boxes_to_xywh(det_t))
        nf[_BOX] = det_t
        nf[_SCORE] = scores.take(det)
        nf[_LAST_T] = self._t
        nf[_BORN_T] = self._t
        ni = np.zeros((_NI, k), dtype=np.int64)
        ni[_ID] = np.arange(self._next_id, self._next_id + k)
        self._next_id += k
        ni[_STATE] = _CONFIRMED if self.config.min_hits <= 1 else _TENTATIVE
        ni[_HITS] = 1
        ni[_AGE] = 1
        ni[_CLS] = classes.take(det)
        ni[_CLS_VOTES] = 1
        ni[_DET] = det
        self._f = np.concatenate((self._f, nf), axis=1)
        self._i = np.concatenate((self._i, ni), axis=1)
        feats = (
            self._det_feat.take(det, axis=0)
            if self._det_feat is not None
            else np.zeros((k, self._feat.shape[1]), np.float32)
        )
        self._feat = np.concatenate((self._feat, feats), axis=0)

    def _snapshot(self, cols: I64 | None = None) -> FrameTracks:
        f = self._f if cols is None else self._f.take(cols, axis=1)
        i = self._i.copy() if cols is None else self._i.take(cols, axis=1)
        return FrameTracks(
            track_id=i[_ID],
            state=i[_STATE],
            box=f[_BOX].T.copy(),
            velocity=f[4:6].T * self.config.ref_fps,
            class_id=i[_CLS],
            score=f[_SCORE].copy(),
            age=i[_AGE],
            hits=i[_HITS],
            frames_since_update=i[_SINCE],
            det_index=i[_DET],
            merged_into=np.zeros(i.shape[1], dtype=np.int64),
        )

    # ------------------------------------------------------------------------------------------------
    def reattach(self, young_id: int, old_id: int) -> bool:
        """ReID re-attachment: the object of track ``young_id`` is the one track ``old_id`` lost.

        ``old_id`` must be LOST, ``young_id`` live and not LOST, and the young track must have started
        after the old one was last matched (they never coexisted as matched tracks). The old track takes
        over the young one's motion state and last box and becomes CONFIRMED (LOST if the young one was not
        matched in the last frame); the young track ends and is reported REMOVED, with ``merged_into =
        old_id``, with the next frame. Returns False (and changes nothing) otherwise.
        """
        ids = self._i[_ID]
        yc = (ids == young_id).nonzero()[0]
        oc = (ids == old_id).nonzero()[0]
        if len(yc) == 0 or len(oc) == 0:
            return False
        y, o = int(yc[0]), int(oc[0])
        f, i = self._f, self._i
        if i[_STATE, o] != _LOST or i[_STATE, y] == _LOST:
            return False
        if f[_BORN_T, y] <= f[_LAST_T, o]:
            return False
        gone = self._snapshot(np.array([y]))
        gone.state[:] = _REMOVED
        gone.merged_into[:] = old_id
        self._pending.append(gone)
        born = f[_BORN_T, o]
        f[:, o] = f[:, y]
        f[_BORN_T, o] = born
        i[_HITS, o] += i[_HITS, y]
        i[_SINCE, o] = i[_SINCE, y]
        i[_DET, o] = i[_DET, y]
        i[_STATE, o] = _CONFIRMED if i[_SINCE, y] == 0 else _LOST
        if self._feat[y].any():
            self._feat[o] = self._feat[y]
        keep = np.ones(f.shape[1], dtype=bool)
        keep[y] = False
        self._f, self._i = f[:, keep], i[:, keep]
        self._feat = self._feat[keep]
        return True
