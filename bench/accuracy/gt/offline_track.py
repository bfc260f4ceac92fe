"""Offline tracking of the pre-labels into draft identities: what the reviewers start from.

Offline means it may look at the whole clip:
1. static objects out: a box that sits at one place (IoU >= STATIC_IOU) in more than STATIC_FRAMES frames of
   the clip is a thing (cone, sign, bollard), not a person (people here stand still for at most ~5 s);
2. frame-to-frame association (Hungarian) on IoU against a constant-velocity prediction *and* appearance
   (cosine similarity of the box's embedding to the track's running mean), so two people walking side by
   side keep their own ids; tracks wait up to MAX_GAP frames without a box;
3. stitching: a track that ends is joined to one that starts within STITCH_GAP frames near where the first
   was heading, at a similar height and with a similar look (the usual offline tracklet linking);
4. gaps filled by linear interpolation; tracks with fewer than MIN_BOXES boxes dropped.
The review (review.py) fixes what is left. Output rows: ``(frame, track, x1, y1, x2, y2, detected)``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from scipy.optimize import linear_sum_assignment

from vap_modelbuild.derive import iou_matrix as box_ious

F64 = npt.NDArray[np.float64]
F32 = npt.NDArray[np.float32]
MIN_IOU = 0.2
BIRTH_SCORE = 0.5  # a new track needs a confident box; weaker boxes (down to the pre-label threshold) only
# continue tracks (ByteTrack's two stages): flicker on things rarely starts a track
MIN_LOOK = 0.55  # cosine similarity below which a box is not the track's person, whatever the overlap
LOOK_WEIGHT = 0.5
MAX_GAP = 25  # frames (1 s at 25 fps) a track waits for its person
MIN_BOXES = 8
STATIC_IOU = 0.6
STATIC_FRAMES = 250  # 10 s
STITCH_GAP = 40
STITCH_DISTANCE = 0.6  # of the box height, between predicted and found centre
STITCH_LOOK = 0.7


def iou_matrix(a: F64, b: F64) -> F64:
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    return box_ious(a, b)


@dataclass
class _Track:
    id: int
    boxes: dict[int, F64] = field(default_factory=dict)
    look: F32 | None = None
    looks: int = 0

    def predict(self, frame: int) -> F64:
        frames = sorted(self.boxes)
        last = frames[-1]
        if len(frames) < 2:
            return self.boxes[last]
        prev = frames[max(0, len(frames) - 5)]  # velocity over up to 4 steps: steadier than 1
        velocity = (self.boxes[last] - self.boxes[prev]) / (last - prev)
        return np.asarray(self.boxes[last] + velocity * (frame - last))

    def add_look(self, vec: F32) -> None:
        # Running mean: the person's look over the whole track, not the last (maybe occluded) crop.
        self.looks += 1
        mean = vec if self.look is None else self.look + (vec - self.look) / self.looks
        self.look = (mean / (np.linalg.norm(mean) + 1e-9)).astype(np.float32)


def remove_static(detections: dict[int, F64]) -> dict[int, F64]:
    """Boxes that overlap boxes at the same place in more than STATIC_FRAMES frames, removed (columns beyond
    the box, e.g. the score, are kept)."""
    frames = sorted(detections)
    if not frames:
        return {}
    all_boxes = np.concatenate([detections[f][:, :4] for f in frames])
    owner = np.concatenate([np.full(len(detections[f]), f) for f in frames])
    out: dict[int, F64] = {}
    for f in frames:
        boxes = detections[f]
        iou = iou_matrix(boxes[:, :4], all_boxes)
        keep = np.array(
            [len(set(owner[iou[i] >= STATIC_IOU].tolist())) <= STATIC_FRAMES for i in range(len(boxes))], bool
        )
        out[f] = boxes[keep] if len(boxes) else boxes
    return out


def _similar(a: _Track, b: _Track) -> float:
    if a.look is None or b.look is None:
        return 1.0
    return float(a.look @ b.look)


def _stitch(tracks: list[_Track]) -> list[_Track]:
    """Join a track that ends to the best track that starts soon after near its predicted position."""
    tracks = sorted(tracks, key=lambda t: min(t.boxes))
    joined = True
    while joined:
        joined = False
        for a in tracks:
            end = max(a.boxes)
            best: tuple[float, _Track] | None = None
            for b in tracks:
                start = min(b.boxes)
                if b is a or not 0 < start - end <= STITCH_GAP:
                    continue
                predicted, found = a.predict(start), b.boxes[start]
                h = max(predicted[3] - predicted[1], 1.0)
                centre = np.hypot(*((predicted[:2] + predicted[2:]) / 2 - (found[:2] + found[2:]) / 2))
                size = abs((found[3] - found[1]) - h) / h
                look = _similar(a, b)
                score = centre / h + size - look
                ok = centre / h <= STITCH_DISTANCE and size <= 0.3 and look >= STITCH_LOOK
                if ok and (best is None or score < best[0]):
                    best = (score, b)
            if best is not None:
                b = best[1]
                a.boxes.update(b.boxes)
                if b.look is not None:
                    for _ in range(b.looks):
                        a.add_look(b.look)
                tracks.remove(b)
                joined = True
                break
    return tracks


def track(
    detections: dict[int, F64],
    frame_count: int,
    looks: Callable[[int, F64], F32] | None = None,
) -> list[tuple[int, int, F64, bool]]:
    """``detections``: per frame (N, 5) boxes with their scores; ``looks(frame, boxes)``: one L2-normalised
    embedding per box (None: association by IoU alone)."""
    detections = remove_static(detections)
    active: list[_Track] = []
    done: list[_Track] = []
    next_id = 1
    for frame in range(frame_count):
        scored = detections.get(frame, np.zeros((0, 5)))
        boxes, scores = scored[:, :4], scored[:, 4]
        vecs = looks(frame, boxes) if looks is not None and len(boxes) else None
        active_now = [t for t in active if frame - max(t.boxes) <= MAX_GAP]
        done += [t for t in active if t not in active_now]
        active = active_now
        predicted = np.array([t.predict(frame) for t in active]).reshape(-1, 4)
        iou = iou_matrix(predicted, boxes)
        similarity = np.ones_like(iou)
        if vecs is not None:
            for r, t in enumerate(active):
                if t.look is not None:
                    similarity[r] = vecs @ t.look
        allowed = (iou >= MIN_IOU) & (similarity >= MIN_LOOK)
        cost = -(iou + LOOK_WEIGHT * similarity) + np.where(allowed, 0.0, 1e3)
        matched: set[int] = set()
        if cost.size:
            for r, c in zip(*linear_sum_assignment(cost), strict=True):
                if allowed[r, c]:
                    active[r].boxes[frame] = boxes[c]
                    if vecs is not None:
                        active[r].add_look(vecs[c])
                    matched.add(int(c))
        for c in range(len(boxes)):
            if c not in matched and scores[c] >= BIRTH_SCORE:
                t = _Track(next_id, {frame: boxes[c]})
                if vecs is not None:
                    t.add_look(vecs[c])
                active.append(t)
                next_id += 1
    done += active
    done = _stitch([t for t in done if len(t.boxes) >= 3])
    rows_out: list[tuple[int, int, F64, bool]] = []
    for t in done:
        if len(t.boxes) < MIN_BOXES:
            continue
        frames = sorted(t.boxes)
        for a, b in itertools.pairwise(frames):
            rows_out.append((a, t.id, t.boxes[a], True))
            for f in range(a + 1, b):  # linear interpolation through the gap
                w = (f - a) / (b - a)
                rows_out.append((f, t.id, (1 - w) * t.boxes[a] + w * t.boxes[b], False))
        rows_out.append((frames[-1], t.id, t.boxes[frames[-1]], True))
    rows_out.sort(key=lambda r: (r[0], r[1]))
    return rows_out
