"""Class-aware non-maximum suppression: boxes of different classes never suppress each other.

OpenCV's ``NMSBoxesBatched`` does exactly this in C++ (it offsets each class's boxes so that classes cannot
overlap, then runs one NMS), so there is no Python loop over classes or boxes.
"""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]


def class_aware_nms(
    boxes: F32,
    scores: F32,
    class_ids: npt.NDArray[np.integer],
    iou_threshold: float,
    max_detections: int = 0,
) -> I64:
    """Indices of the kept boxes (x1, y1, x2, y2), highest score first; at most ``max_detections``
    (0 = all)."""
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    xywh = np.empty((len(boxes), 4), np.float64)
    xywh[:, :2] = boxes[:, :2]
    xywh[:, 2:] = boxes[:, 2:] - boxes[:, :2]
    # The stubs say Sequence; the binding takes numpy arrays as they are (no per-box Python objects).
    kept = cv2.dnn.NMSBoxesBatched(
        xywh,  # type: ignore[arg-type]
        scores.astype(np.float32, copy=False),  # type: ignore[arg-type]
        class_ids.astype(np.int32, copy=False),  # type: ignore[arg-type]
        0.0,  # the decoders already applied the confidence threshold
        float(iou_threshold),
        # No top_k: OpenCV applies it to the candidates *before* suppression, not to what is kept.
    )
    idx = np.asarray(kept, np.int64).reshape(-1)
    # OpenCV returns them by descending score already; a stable sort makes that a guarantee.
    idx = idx[np.argsort(-scores[idx], kind="stable")]
    return idx[:max_detections] if max_detections > 0 else idx
