"""Class-aware NMS: same-class overlaps are suppressed, other classes never suppress each other."""

from __future__ import annotations

import numpy as np

from vap_inference.nms import class_aware_nms


def test_class_aware_suppression_and_order() -> None:
    boxes = np.array([[0, 0, 100, 100], [5, 5, 105, 105], [0, 0, 100, 100], [300, 300, 350, 350]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.95], np.float32)
    classes = np.array([0, 0, 2, 0])
    kept = class_aware_nms(boxes, scores, classes, 0.5)
    # Box 1 overlaps box 0 of its class (IoU ~0.9) and goes; box 2 overlaps box 0 too but is a car.
    assert kept.tolist() == [3, 0, 2]
    assert class_aware_nms(boxes, scores, classes, 0.5, max_detections=2).tolist() == [3, 0]
    assert class_aware_nms(boxes, scores, classes, 0.95).tolist() == [3, 0, 1, 2]


def test_empty_input() -> None:
    kept = class_aware_nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64), 0.5)
    assert kept.shape == (0,)
