"""Accuracy metrics of one run against the ground truth: detections, identities, counts, zones.

Everything works on per-frame rows: ground truth ``GtBox`` (with its ignore flag) and predictions
``Pred(frame, track, box)`` (track 0 = an untracked detection). Only *analysed* frames are scored (a 5 fps
run is judged on the frames it analysed, not on the 20 of every 25 it never saw).

Ignore-flagged ground truth neither helps nor hurts: a prediction matched to it is removed before scoring
(as MOTChallenge removes boxes matched to its ignore regions), and it is never a miss.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.optimize import linear_sum_assignment

from bench.accuracy.crossings import Crossing
from bench.accuracy.gt.motfile import GtBox
from vap_modelbuild.derive import iou_matrix as box_ious

F64 = npt.NDArray[np.float64]
IOU = 0.5
# Person height buckets in pixels of the 576-line clip.
SMALL, LARGE = 64.0, 96.0  # a quarter of the scored people are below 69 px, a quarter above 93


@dataclass(frozen=True)
class Pred:
    frame: int
    track: int
    box: tuple[float, float, float, float]
    score: float = 1.0


def iou_matrix(a: Sequence[tuple[float, ...]], b: Sequence[tuple[float, ...]]) -> F64:
    if not a or not b:
        return np.zeros((len(a), len(b)))
    return box_ious(np.asarray(a, np.float64), np.asarray(b, np.float64))


def _match(gt: Sequence[GtBox], preds: Sequence[Pred]) -> list[tuple[int, int]]:
    """Pairs (gt index, pred index) at IoU >= IOU, maximising total IoU."""
    iou = iou_matrix([g.box for g in gt], [p.box for p in preds])
    if iou.size == 0:
        return []
    rows, cols = linear_sum_assignment(-iou)
    return [(int(r), int(c)) for r, c in zip(rows, cols, strict=True) if iou[r, c] >= IOU]


def bucket(height: float) -> str:
    return "small" if height < SMALL else "large" if height >= LARGE else "medium"


@dataclass
class FrameMatch:
    """One frame after removing predictions on ignored people: matches to scored people, misses, extras."""

    frame: int
    gt: list[GtBox]  # scored people
    preds: list[Pred]  # predictions not matched to an ignored person
    pairs: list[tuple[int, int]]  # (index in gt, index in preds)


def match_frames(gt: Iterable[GtBox], preds: Iterable[Pred], frames: Iterable[int]) -> list[FrameMatch]:
    gt_by: dict[int, list[GtBox]] = defaultdict(list)
    pr_by: dict[int, list[Pred]] = defaultdict(list)
    for g in gt:
        gt_by[g.frame].append(g)
    for p in preds:
        pr_by[p.frame].append(p)
    out = []
    for f in sorted(set(frames)):
        everyone, mine = gt_by[f], pr_by[f]
        pairs = _match(everyone, mine)
        on_ignored = {c for r, c in pairs if not everyone[r].scored}
        scored = [g for g in everyone if g.scored]
        kept = [p for i, p in enumerate(mine) if i not in on_ignored]
        out.append(FrameMatch(f, scored, kept, _match(scored, kept)))
    return out


def detection_scores(matches: Sequence[FrameMatch]) -> dict[str, float]:
    tp = sum(len(m.pairs) for m in matches)
    n_pred = sum(len(m.preds) for m in matches)
    n_gt = sum(len(m.gt) for m in matches)
    out = _prf(tp, n_pred, n_gt)
    for name in ("small", "medium", "large"):
        gt_in = sum(1 for m in matches for g in m.gt if bucket(g.y2 - g.y1) == name)
        tp_gt = sum(1 for m in matches for r, _ in m.pairs if bucket(m.gt[r].y2 - m.gt[r].y1) == name)
        pred_in = sum(1 for m in matches for p in m.preds if bucket(p.box[3] - p.box[1]) == name)
        tp_pred = sum(
            1 for m in matches for _, c in m.pairs if bucket(m.preds[c].box[3] - m.preds[c].box[1]) == name
        )
        out[f"det_recall_{name}"] = tp_gt / gt_in if gt_in else float("nan")
        out[f"det_precision_{name}"] = tp_pred / pred_in if pred_in else float("nan")
    return out


def _prf(tp: int, n_pred: int, n_true: int) -> dict[str, float]:
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_true if n_true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"det_precision": precision, "det_recall": recall, "det_f1": f1}


def identity_scores(matches: Sequence[FrameMatch]) -> dict[str, float]:
    """IDF1, MOTA and ID switches (motmetrics), HOTA (trackeval), ids per GT person."""
    import motmetrics as mm

    acc = mm.MOTAccumulator(auto_id=False)
    for m in matches:
        dist = 1 - iou_matrix([g.box for g in m.gt], [p.box for p in m.preds])
        dist[dist > 1 - IOU] = np.nan
        acc.update([g.id for g in m.gt], [p.track for p in m.preds], dist, frameid=m.frame)
    summary = mm.metrics.create().compute(acc, metrics=["idf1", "mota", "num_switches"], name="run")
    covering: dict[int, set[int]] = defaultdict(set)
    for m in matches:
        for r, c in m.pairs:
            covering[m.gt[r].id].add(m.preds[c].track)
    people = {g.id for m in matches for g in m.gt}
    ids_per_person = float(np.mean([len(covering[p]) for p in people])) if people else float("nan")
    return {
        "idf1": float(summary["idf1"].iloc[0]),
        "mota": float(summary["mota"].iloc[0]),
        "id_switches": int(summary["num_switches"].iloc[0]),
        "hota": hota(matches),
        "ids_per_person": ids_per_person,
    }


def hota(matches: Sequence[FrameMatch]) -> float:
    """HOTA (alpha-averaged) by trackeval's own implementation, on the ignore-filtered frames."""
    from trackeval.metrics import HOTA

    gt_ids = sorted({g.id for m in matches for g in m.gt})
    tr_ids = sorted({p.track for m in matches for p in m.preds})
    gi = {v: i for i, v in enumerate(gt_ids)}
    ti = {v: i for i, v in enumerate(tr_ids)}
    data = {
        "num_timesteps": len(matches),
        "num_gt_ids": len(gt_ids),
        "num_tracker_ids": len(tr_ids),
        "num_gt_dets": sum(len(m.gt) for m in matches),
        "num_tracker_dets": sum(len(m.preds) for m in matches),
        "gt_ids": [np.array([gi[g.id] for g in m.gt], int) for m in matches],
        "tracker_ids": [np.array([ti[p.track] for p in m.preds], int) for m in matches],
        "similarity_scores": [iou_matrix([g.box for g in m.gt], [p.box for p in m.preds]) for m in matches],
    }
    metric = HOTA()
    return float(np.mean(metric.eval_sequence(data)["HOTA"]))


def count_scores(
    counted: Sequence[Crossing], true: Sequence[Crossing], lines: Sequence[str]
) -> dict[str, object]:
    """Per line and direction counted vs true; count accuracy = 1 - sum|counted - true| / sum true."""
    per: dict[str, dict[str, dict[str, int]]] = {
        line: {d: {"counted": 0, "true": 0} for d in ("a_to_b", "b_to_a")} for line in lines
    }
    for c in counted:
        if c.line in per:
            per[c.line][c.direction]["counted"] += 1
    for c in true:
        if c.line in per:
            per[c.line][c.direction]["true"] += 1
    total_true = sum(v["true"] for d in per.values() for v in d.values())
    error = sum(abs(v["counted"] - v["true"]) for d in per.values() for v in d.values())
    return {"lines": per, "count_accuracy": 1 - error / total_true if total_true else float("nan")}


def event_f1(
    counted: Sequence[Crossing],
    true: Sequence[Crossing],
    person_of: Callable[[int, int], int | None],
    window: int,
) -> float:
    """A counted crossing matches a true one of the same line and direction by the same person (the GT id
    its track covered around that frame, ``person_of(track, frame)``) within ``window`` frames; one to one."""
    unmatched = list(true)
    tp = 0
    for c in sorted(counted, key=lambda c: c.frame):
        person = person_of(c.track, c.frame)
        candidates = [
            t
            for t in unmatched
            if (t.line, t.direction, t.track) == (c.line, c.direction, person)
            and abs(t.frame - c.frame) <= window
        ]
        if candidates:
            unmatched.remove(min(candidates, key=lambda t: abs(t.frame - c.frame)))
            tp += 1
    return _prf(tp, len(counted), len(true))["det_f1"]


def person_lookup(matches: Sequence[FrameMatch], window: int) -> Callable[[int, int], int | None]:
    """(track, frame) -> the GT person that track covered most within +-window frames of it, if any."""
    seen: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for m in matches:
        for r, c in m.pairs:
            seen[m.preds[c].track].append((m.frame, m.gt[r].id))

    def person_of(track: int, frame: int) -> int | None:
        near = [gid for f, gid in seen.get(track, []) if abs(f - frame) <= window]
        return Counter(near).most_common(1)[0][0] if near else None

    return person_of


def occupancy_error(
    gt: Iterable[GtBox], preds: Iterable[Pred], frames: Iterable[int], inside: Callable[[float, float], bool]
) -> float:
    """Mean absolute difference per analysed frame between people in the zone (GT, ignored people too:
    they are there) and tracked predictions in it; ``inside(x, y)`` says whether an anchor is in the zone."""
    g_count: Counter[int] = Counter()
    p_count: Counter[int] = Counter()
    for g in gt:
        if inside((g.x1 + g.x2) / 2, g.y2):
            g_count[g.frame] += 1
    for p in preds:
        if inside((p.box[0] + p.box[2]) / 2, p.box[3]):
            p_count[p.frame] += 1
    fs = sorted(set(frames))
    return float(np.mean([abs(g_count[f] - p_count[f]) for f in fs])) if fs else float("nan")
