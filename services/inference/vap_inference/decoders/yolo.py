"""Ultralytics YOLOv8 / YOLO11 detection exports: one output [N, 4 + nc, A] (A anchors, e.g. 8400 at 640):
rows 0-3 are the box centre x, y, width, height in input pixels, rows 4.. the class scores (already
sigmoid, no objectness). Input float32 [N, 3, H, W], RGB / 255, letterboxed centred with grey 114
(Ultralytics' own preprocessing). NMS-exported (end2end, [N, 300, 6]) models are refused with a clear error.
"""

from __future__ import annotations

import ast
from typing import Self

import numpy as np

from vap_inference.backends.base import TensorInfo
from vap_inference.decoders.base import I64, Outputs, RawDetections, best_class
from vap_inference.preprocess import InputFormat, Layout
from vap_models import ModelVerificationError
from vap_models.labels import COCO80

DEFAULT_SIZE = 640


def input_format(width: int, height: int) -> InputFormat:
    return InputFormat(
        width=width,
        height=height,
        layout=Layout.NCHW_FLOAT,
        rgb=True,
        keep_ratio=True,
        center=True,
        pad_value=114,
        scale=(1 / 255, 1 / 255, 1 / 255),
    )


def input_size(inputs: list[TensorInfo], metadata: dict[str, str]) -> tuple[int, int]:
    """(width, height) from the input shape, else from Ultralytics' ``imgsz`` metadata, else 640."""
    if len(inputs) != 1 or inputs[0].dtype != np.float32 or len(inputs[0].shape) != 4:
        got = [(i.name, i.dtype.name, list(i.shape)) for i in inputs]
        raise ModelVerificationError(f"YOLO expects one float32 [N,3,H,W] input, the model has {got}")
    inp = inputs[0]
    if inp.fixed(1) not in (3, None):
        raise ModelVerificationError(f"YOLO input {inp.name} {list(inp.shape)} must have 3 channels")
    h, w = inp.fixed(2), inp.fixed(3)
    if h and w:
        return w, h
    try:
        size = ast.literal_eval(metadata.get("imgsz", "None"))
    except (ValueError, SyntaxError):
        size = None
    if isinstance(size, list | tuple) and len(size) == 2:
        return int(size[1]), int(size[0])
    return DEFAULT_SIZE, DEFAULT_SIZE


def metadata_names(metadata: dict[str, str]) -> tuple[str, ...] | None:
    """Labels from Ultralytics' ``names`` metadata ("{0: 'person', ...}"), if present and readable."""
    raw = metadata.get("names")
    if not raw:
        return None
    try:
        names = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return None
    if isinstance(names, dict) and names:
        return tuple(str(names[i]) for i in sorted(names))
    return None


def class_names(metadata: dict[str, str], num_classes: int) -> tuple[str, ...]:
    """Labels from the metadata, else COCO-80 when nc is 80, else class_<i>."""
    names = metadata_names(metadata)
    if names is not None and len(names) == num_classes:
        return names
    if num_classes == len(COCO80):
        return COCO80
    return tuple(f"class_{i}" for i in range(num_classes))


def num_classes(outputs: list[TensorInfo], known: int | None = None) -> int:
    """Classes of the export: from the output shape, or (dynamic exports name every axis) ``known``, the
    number of labels configured or found in the metadata. The probe inference checks it either way."""
    if len(outputs) != 1 or len(outputs[0].shape) != 3:
        got = [(o.name, list(o.shape)) for o in outputs]
        raise ModelVerificationError(
            f"YOLO detection export must have one [N, 4+nc, anchors] output, got {got}"
        )
    out = outputs[0]
    c, a = out.fixed(1), out.fixed(2)
    if c is not None and a is not None and a == 6 and c != 6:
        raise ModelVerificationError(
            f"YOLO output {out.name} {list(out.shape)} looks like an end-to-end (NMS) export; export the "
            "detection model without nms=True"
        )
    if c is None and known:
        return known
    if c is None or c <= 4:
        raise ModelVerificationError(
            f"YOLO output {out.name} {list(out.shape)}: dimension 1 must be 4 + number of classes"
        )
    return c - 4


class YoloDecoder:
    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes

    @classmethod
    def bind(cls, outputs: list[TensorInfo], expected_classes: int) -> YoloDecoder:
        nc = num_classes(outputs, expected_classes)
        if nc != expected_classes:
            raise ModelVerificationError(
                f"YOLO output has {nc} classes but {expected_classes} class names are configured"
            )
        return cls(nc)

    def resized(self, width: int, height: int) -> Self:
        return self  # fixed input size

    def check_outputs(self, outputs: Outputs, batch: int) -> None:
        out = outputs[0]
        if out.ndim != 3 or out.shape[0] != batch or out.shape[1] != 4 + self.num_classes:
            raise ModelVerificationError(
                f"YOLO output {out.shape}, expected ({batch}, {4 + self.num_classes}, anchors)"
            )

    def decode(self, outputs: Outputs, index: int, threshold: float, classes: I64 | None) -> RawDetections:
        pred = outputs[0][index]  # (4 + nc, A)
        ids, conf = best_class(np.asarray(pred[4:], np.float32), classes, axis=0)
        cols = np.flatnonzero(conf > threshold)
        if len(cols) == 0:
            return RawDetections.empty()
        cx, cy, w, h = (np.asarray(pred[i, cols], np.float32) for i in range(4))
        boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1).astype(np.float32)
        return RawDetections(boxes, conf[cols], ids[cols])
