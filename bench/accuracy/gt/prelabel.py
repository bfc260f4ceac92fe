"""Machine pre-labels: the strongest detection VAP can run offline, on every frame of the clip.

NanoDet-m 416 in float32 on the whole frame and on four overlapping tiles of it (each tile ~0.93 of the
model's input, so people are ~1.7x bigger than in the whole-frame pass), at a low threshold. A tile's box
that touches an inner tile edge is cut by it and dropped (the whole-frame pass or the neighbouring tile sees
that person whole); the rest are merged by NMS. Output: one line per box, ``frame,x1,y1,x2,y2,score``
(0-based frames).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import numpy.typing as npt

from vap_inference.backends.onnxruntime import OrtBackend
from vap_inference.detector import Detector
from vap_inference.nms import class_aware_nms
from vap_inference.testing import model_path
from vap_models.catalogue import NANODET

F32 = npt.NDArray[np.float32]
THRESHOLD = 0.3
PERSON = 0
EDGE_PX = 4  # a box this close to an inner tile edge is cut by the tile


def frames(video: Path) -> Iterator[npt.NDArray[np.uint8]]:
    with av.open(str(video)) as container:
        for frame in container.decode(video=0):
            yield np.asarray(frame.to_ndarray(format="bgr24"), np.uint8)


def tiles(width: int, height: int) -> list[tuple[int, int, int, int]]:
    """2x2 tiles of 7/12 of each side: they overlap by a sixth, more than a walker's width."""
    tw, th = width * 7 // 12, height * 7 // 12
    return [(x, y, x + tw, y + th) for y in (0, height - th) for x in (0, width - tw)]


def detect_frame(detector: Detector, image: npt.NDArray[np.uint8]) -> tuple[F32, F32]:
    h, w = image.shape[:2]
    options = detector.options(confidence=THRESHOLD, class_ids=[PERSON])
    boxes: list[F32] = []
    scores: list[F32] = []
    whole, _ = detector.detect_image(image, options)
    boxes.append(whole.boxes)
    scores.append(whole.scores)
    for x1, y1, x2, y2 in tiles(w, h):
        dets, _ = detector.detect_image(np.ascontiguousarray(image[y1:y2, x1:x2]), options)
        b = dets.boxes + np.array([x1, y1, x1, y1], np.float32)
        cut = np.zeros(len(b), bool)
        if x1 > 0:
            cut |= b[:, 0] <= x1 + EDGE_PX
        if x2 < w:
            cut |= b[:, 2] >= x2 - EDGE_PX
        if y1 > 0:
            cut |= b[:, 1] <= y1 + EDGE_PX
        if y2 < h:
            cut |= b[:, 3] >= y2 - EDGE_PX
        boxes.append(b[~cut])
        scores.append(dets.scores[~cut])
    all_boxes, all_scores = np.concatenate(boxes), np.concatenate(scores)
    keep = class_aware_nms(all_boxes, all_scores, np.zeros(len(all_boxes), np.int64), 0.55)
    return all_boxes[keep], all_scores[keep]


def run(video: Path, out: Path) -> int:
    detector = Detector(NANODET, OrtBackend(model_path(NANODET), threads=2, batch_cap=1), max_batch=1)
    detector.load()
    lines = []
    for index, image in enumerate(frames(video)):
        boxes, scores = detect_frame(detector, image)
        for (x1, y1, x2, y2), s in zip(boxes.tolist(), scores.tolist(), strict=True):
            lines.append(f"{index},{x1:.1f},{y1:.1f},{x2:.1f},{y2:.1f},{s:.3f}")
        if index % 100 == 0:
            print(f"prelabel: frame {index}, {len(boxes)} boxes", flush=True)
    out.write_text("\n".join(lines) + "\n")
    return index + 1
