"""Scoring with motmetrics (CLEAR MOT and identity metrics) over several seeds of one configuration."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from bench.tracking.noise import FPS, GroundTruth, NoiseLevel, noisy_detections
from bench.tracking.runners import Runner


def _motmetrics() -> Any:
    # motmetrics 1.4 still calls np.asfarray, which numpy 2 removed. Restored here, for the bench only.
    if not hasattr(np, "asfarray"):
        np.asfarray = lambda a, dtype=np.float64: np.asarray(a, dtype=dtype)  # type: ignore[attr-defined]
    import motmetrics

    return motmetrics


def run_sequence(gt: GroundTruth, level: NoiseLevel, seed: int, runner: Runner) -> Any:
    """One accumulator: the runner over the seed's noisy detections, scored at IoU >= 0.5."""
    mm = _motmetrics()
    acc = mm.MOTAccumulator(auto_id=True)
    for (gt_ids, gt_boxes), dets in zip(gt.frames, noisy_detections(gt, level, seed), strict=True):
        ids, boxes = runner.step(dets.boxes, dets.scores)
        dist = mm.distances.iou_matrix(_xywh(gt_boxes), _xywh(boxes), max_iou=0.5)
        acc.update(gt_ids.tolist(), ids.tolist(), dist)
    return acc


def _xywh(boxes: Any) -> Any:
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate((b[:, 0:2], b[:, 2:4] - b[:, 0:2]), axis=1)


def score(
    gt: GroundTruth, level: NoiseLevel, seeds: Sequence[int], make_runner: Callable[[float], Runner]
) -> dict[str, float]:
    """MOTA, IDF1 and identity switches over all seeds together (motmetrics' OVERALL: counts summed)."""
    mm = _motmetrics()
    accs = [run_sequence(gt, level, seed, make_runner(FPS)) for seed in seeds]
    summary = mm.metrics.create().compute_many(
        accs,
        metrics=["mota", "idf1", "num_switches"],
        names=[str(s) for s in seeds],
        generate_overall=True,
    )
    overall = summary.loc["OVERALL"]
    return {
        "mota": float(overall["mota"]),
        "idf1": float(overall["idf1"]),
        "id_switches": int(overall["num_switches"]),
    }
