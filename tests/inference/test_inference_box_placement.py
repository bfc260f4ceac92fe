"""Boxes where people are: detections against boxes drawn by hand (no detector involved) on vtest frames.

NanoDet's GFL head measures box edges from each cell's centre. Decoding from the cell's top-left corner (as
the model notes once said) put every box half a cell up and left: mean IoU with the hand boxes 0.51, and
line-crossing anchors ~8 px off. Decoded from the centre: 0.84.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vap_inference.detector import Detector
from vap_inference.testing import video_frames

HAND = json.loads((Path(__file__).parent / "data" / "vtest576_hand_boxes.json").read_text())["frames"]


def _iou(a: list[float], b: list[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0


@pytest.mark.parametrize("which", ["nanodet", "nanodet_int8"])
def test_nanodet_boxes_sit_on_the_hand_drawn_people(which: str, request: pytest.FixtureRequest) -> None:
    detector: Detector = request.getfixturevalue(which)
    frames = video_frames(tuple(int(k) for k in HAND))
    ious, offsets = [], []
    for key, boxes in HAND.items():
        dets, _ = detector.detect_image(frames[int(key)], detector.options(confidence=0.35, class_ids=[0]))
        found = dets.boxes.tolist()
        for hand in boxes:
            best = max(found, key=lambda d: _iou(hand, d), default=None)
            if best is not None and _iou(hand, best) > 0.3:
                ious.append(_iou(hand, best))
                offsets.append([h - d for h, d in zip(hand, best, strict=True)])
    assert len(ious) >= 38  # of 46 hand boxes: the far walker and the head behind the car are hard
    assert float(np.mean(ious)) >= 0.75, f"mean IoU {np.mean(ious):.2f}: boxes are misplaced"
    # No systematic shift: the median edge offset stays within a few pixels on every side.
    assert np.all(np.abs(np.median(np.array(offsets), axis=0)) <= 4.0), np.median(np.array(offsets), axis=0)
