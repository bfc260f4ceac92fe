"""SSDLite (TF Object Detection API export) outputs: ``num_detections`` [N], ``detection_boxes`` [N,K,4] as
(ymin, xmin, ymax, xmax) in 0..1 of the input image, ``detection_scores`` [N,K], ``detection_classes``
[N,K] (1-based: 1 = person). The graph resizes to 300x300 and normalises by itself, so the input is raw
RGB uint8; we hand it the frame already stretched to 300x300 (what the graph would do anyway, but from a
much smaller image).

The same graph with its NMS subgraph cut off (``ssdlite-mbv2-person-300-raw``, vap_modelbuild/graph_fixes.py)
has ``raw_detection_boxes`` [N,A,4] (ymin, xmin, ymax, xmax in 0..1, already decoded from the anchors by the
graph) and ``raw_detection_scores`` [N,A,1+C] (sigmoid, background first) for every anchor A:
``SsdLiteRawDecoder`` thresholds those and leaves the suppression to VAP's class-aware NMS. That build also
drops the graph's per-image resize Loop (a no-op for 300x300 input) and so takes exactly [N, 300, 300, 3].
"""

from __future__ import annotations

from typing import Self

import numpy as np

from vap_inference.backends.base import TensorInfo
from vap_inference.decoders.base import I64, Outputs, RawDetections, best_class
from vap_inference.preprocess import InputFormat, Layout
from vap_models import ModelVerificationError

_NAMES = ("num_detections", "detection_boxes", "detection_scores", "detection_classes")
_RAW_NAMES = ("raw_detection_boxes", "raw_detection_scores")


def input_format(width: int, height: int) -> InputFormat:
    return InputFormat(width=width, height=height, layout=Layout.NHWC_UINT8, rgb=True, keep_ratio=False)


class SsdLiteDecoder:
    def __init__(self, index: dict[str, int], width: int, height: int, num_classes: int) -> None:
        self._num, self._boxes = index["num_detections"], index["detection_boxes"]
        self._scores, self._classes = index["detection_scores"], index["detection_classes"]
        self._size = np.array([width, height, width, height], np.float32)
        self.num_classes = num_classes

    @classmethod
    def bind(
        cls, inputs: list[TensorInfo], outputs: list[TensorInfo], width: int, height: int, num_classes: int
    ) -> SsdLiteDecoder | SsdLiteRawDecoder:
        if len(inputs) != 1 or inputs[0].dtype != np.uint8 or len(inputs[0].shape) != 4:
            got = [(i.name, i.dtype.name, list(i.shape)) for i in inputs]
            raise ModelVerificationError(
                f"SSDLite expects one uint8 [N,H,W,3] image input, the model has {got}"
            )
        if inputs[0].fixed(3) not in (3, None):
            raise ModelVerificationError(
                f"SSDLite input {inputs[0].name} is {list(inputs[0].shape)}: need 3 channels"
            )
        if (inputs[0].fixed(1) or height, inputs[0].fixed(2) or width) != (height, width):
            raise ModelVerificationError(
                f"SSDLite input {inputs[0].name} is {list(inputs[0].shape)}: fixed to another size than "
                f"the model's {width}x{height}"
            )
        index: dict[str, int] = {}
        for i, out in enumerate(outputs):
            base = out.name.split(":")[0]
            if base in _NAMES or base in _RAW_NAMES:
                index[base] = i
        if all(n in index for n in _RAW_NAMES):
            return SsdLiteRawDecoder(index, width, height, num_classes)
        missing = [n for n in _NAMES if n not in index]
        if missing:
            raise ModelVerificationError(
                f"SSDLite outputs {[o.name for o in outputs]} lack {missing} (TF Object Detection API names)"
            )
        return cls(index, width, height, num_classes)

    def resized(self, width: int, height: int) -> Self:
        return self  # fixed input size

    def check_outputs(self, outputs: Outputs, batch: int) -> None:
        boxes, scores, classes = outputs[self._boxes], outputs[self._scores], outputs[self._classes]
        k = boxes.shape[1] if boxes.ndim == 3 else -1
        if boxes.shape != (batch, k, 4) or scores.shape != (batch, k) or classes.shape != (batch, k):
            raise ModelVerificationError(
                f"SSDLite outputs boxes {boxes.shape}, scores {scores.shape}, classes {classes.shape}: "
                f"expected ({batch}, K, 4), ({batch}, K), ({batch}, K)"
            )

    def decode(self, outputs: Outputs, index: int, threshold: float, classes: I64 | None) -> RawDetections:
        n = int(np.asarray(outputs[self._num][index]).reshape(-1)[0])
        scores = np.asarray(outputs[self._scores][index][:n], np.float32)
        ids = np.asarray(outputs[self._classes][index][:n]).astype(np.int64) - 1  # 1-based label map
        keep = (scores > threshold) & (ids >= 0) & (ids < self.num_classes)
        if classes is not None:
            keep &= np.isin(ids, classes)
        yxyx = np.asarray(outputs[self._boxes][index][:n][keep], np.float32)
        boxes = yxyx[:, [1, 0, 3, 2]] * self._size
        return RawDetections(boxes, scores[keep], ids[keep])


class SsdLiteRawDecoder:
    """Outputs of the graph without its NMS subgraph: every anchor's decoded box and class scores."""

    def __init__(self, index: dict[str, int], width: int, height: int, num_classes: int) -> None:
        self._boxes, self._scores = index["raw_detection_boxes"], index["raw_detection_scores"]
        self._size = np.array([width, height, width, height], np.float32)
        self.num_classes = num_classes

    def resized(self, width: int, height: int) -> Self:
        return self  # fixed input size

    def check_outputs(self, outputs: Outputs, batch: int) -> None:
        boxes, scores = outputs[self._boxes], outputs[self._scores]
        anchors = boxes.shape[1] if boxes.ndim == 3 else -1
        if boxes.shape != (batch, anchors, 4) or scores.shape != (batch, anchors, 1 + self.num_classes):
            raise ModelVerificationError(
                f"SSDLite raw outputs boxes {boxes.shape}, scores {scores.shape}: expected ({batch}, A, 4) "
                f"and ({batch}, A, {1 + self.num_classes}) (background first)"
            )

    def decode(self, outputs: Outputs, index: int, threshold: float, classes: I64 | None) -> RawDetections:
        scores = np.asarray(outputs[self._scores][index], np.float32)[:, 1:]  # drop the background column
        ids, conf = best_class(scores, classes, axis=1)
        keep = np.flatnonzero(conf > threshold)
        if len(keep) == 0:
            return RawDetections.empty()
        yxyx = np.clip(np.asarray(outputs[self._boxes][index][keep], np.float32), 0.0, 1.0)
        boxes = yxyx[:, [1, 0, 3, 2]] * self._size
        return RawDetections(boxes, conf[keep], ids[keep])
