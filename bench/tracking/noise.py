"""Detections with controlled noise, made from MOT ground truth.

motmetrics ships ground truth only (no frames, no detector output), so the detector is simulated. The noise
model, per noise level (all fixed-seed numpy Generator draws, in a fixed order):

- occlusion gaps: each ground-truth identity, when not already hidden, starts a gap with probability
  ``gap_rate`` per frame; a gap lasts a uniform whole number of frames in [gap_min, gap_max] and removes
  every detection of that identity meanwhile (a person behind a pillar or another person);
- missed detections: every remaining box is dropped with probability ``miss_rate`` (10-30 %);
- box jitter: each edge moves by N(0, jitter x box width) horizontally, N(0, jitter x box height)
  vertically, independently per frame;
- scores: a kept box scores U(0.6, 1.0), except with probability ``hard_rate`` (partly hidden, blurred)
  U(0.15, 0.6), i.e. below the trackers' high-score threshold;
- false positives: Poisson(``fp_rate``) boxes per frame, sized like a random ground-truth box (x U(0.5,
  1.2)), placed uniformly over the ground truth's extent, scoring U(0.1, 0.6) with probability 0.8 and
  U(0.6, 0.9) otherwise.

Both trackers get exactly the same arrays, frame by frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

SEQUENCES = ("TUD-Campus", "TUD-Stadtmitte")
FPS = 25.0  # both TUD sequences are 25 frames/s


@dataclass(frozen=True)
class NoiseLevel:
    name: str
    jitter: float
    miss_rate: float
    gap_rate: float
    gap_min: int
    gap_max: int
    fp_rate: float
    hard_rate: float


NOISE_LEVELS = (
    NoiseLevel(
        "low", jitter=0.03, miss_rate=0.10, gap_rate=0.01, gap_min=3, gap_max=8, fp_rate=0.5, hard_rate=0.1
    ),
    NoiseLevel(
        "high", jitter=0.06, miss_rate=0.30, gap_rate=0.02, gap_min=5, gap_max=15, fp_rate=2.0, hard_rate=0.2
    ),
)


@dataclass(frozen=True)
class GroundTruth:
    """One MOT sequence: per frame (1-based, contiguous) the ids and boxes (x1, y1, x2, y2)."""

    name: str
    frames: list[tuple[I64, F64]]


@dataclass(frozen=True)
class FrameDets:
    boxes: F64  # (M, 4) x1, y1, x2, y2
    scores: F64  # (M,)


def _motmetrics_data() -> Path:
    import motmetrics

    return Path(motmetrics.__file__).resolve().parent / "data"


def load_ground_truth(name: str) -> GroundTruth:
    rows = np.loadtxt(_motmetrics_data() / name / "gt.txt", delimiter=",", ndmin=2)
    last = int(rows[:, 0].max())
    frames: list[tuple[I64, F64]] = []
    for frame in range(1, last + 1):
        sel = rows[rows[:, 0] == frame]
        boxes = np.stack((sel[:, 2], sel[:, 3], sel[:, 2] + sel[:, 4], sel[:, 3] + sel[:, 5]), axis=1)
        frames.append((sel[:, 1].astype(np.int64), boxes.reshape(-1, 4)))
    return GroundTruth(name, frames)


def noisy_detections(gt: GroundTruth, level: NoiseLevel, seed: int) -> list[FrameDets]:
    rng = np.random.default_rng(seed)
    all_boxes = np.concatenate([b for _, b in gt.frames if len(b)])
    sizes = all_boxes[:, 2:4] - all_boxes[:, 0:2]
    lo, hi = all_boxes[:, 0:2].min(axis=0), all_boxes[:, 2:4].max(axis=0)
    hidden_until: dict[int, int] = {}
    out: list[FrameDets] = []
    for index, (ids, boxes) in enumerate(gt.frames):
        keep = np.ones(len(ids), dtype=bool)
        for k, ident in enumerate(ids.tolist()):
            if hidden_until.get(ident, -1) >= index:
                keep[k] = False
            elif rng.random() < level.gap_rate:
                hidden_until[ident] = index + int(rng.integers(level.gap_min, level.gap_max + 1)) - 1
                keep[k] = False
        keep &= rng.random(len(ids)) >= level.miss_rate
        tp = boxes[keep]
        w, h = tp[:, 2] - tp[:, 0], tp[:, 3] - tp[:, 1]
        tp = tp + rng.normal(0.0, level.jitter, tp.shape) * np.stack((w, h, w, h), axis=1)
        hard = rng.random(len(tp)) < level.hard_rate
        tp_scores = np.where(hard, rng.uniform(0.15, 0.6, len(tp)), rng.uniform(0.6, 1.0, len(tp)))
        n_fp = int(rng.poisson(level.fp_rate))
        fp_size = sizes[rng.integers(0, len(sizes), n_fp)] * rng.uniform(0.5, 1.2, (n_fp, 1))
        fp_xy = rng.uniform(lo, np.maximum(hi - fp_size, lo + 1.0), (n_fp, 2)) if n_fp else np.empty((0, 2))
        fp = np.concatenate((fp_xy, fp_xy + fp_size), axis=1)
        fp_scores = np.where(rng.random(n_fp) < 0.8, rng.uniform(0.1, 0.6, n_fp), rng.uniform(0.6, 0.9, n_fp))
        det = np.concatenate((tp, fp))
        scores = np.concatenate((tp_scores, fp_scores))
        order = rng.permutation(len(det))  # detectors give no identity order
        out.append(FrameDets(det[order], scores[order]))
    return out
