"""NanoDet (GFL head) outputs: per stride a score tensor [N, HW, nc] (already sigmoid) and a box tensor
[N, HW, 4 * bins]. For each side (left, top, right, bottom) the bins are a distribution: softmax over them,
expected bin index x stride = distance from the cell's centre ((col + 0.5) * stride, (row + 0.5) * stride)
to that edge, as NanoDet's GFL head defines its points. (shared/models/README.md says the cell's top-left
corner; decoded that way every box sits half a cell up and left: ~8 px at 576 lines, IoU with hand-drawn
boxes 0.51 instead of 0.84 on the hand-counted vtest frames.) The TF.js conversion leaves the outputs
unnamed, so they are matched by shape: grid size tells the stride, the last dimension tells scores (nc)
from boxes (4 * bins).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from vap_inference.backends.base import TensorInfo
from vap_inference.decoders.base import F32, I64, Outputs, RawDetections, best_class
from vap_inference.preprocess import InputFormat, Layout
from vap_models import ModelVerificationError

STRIDES = (8, 16, 32, 64)
# BGR, letterboxed with 0, normalised per channel (README: NanoDet-m 416 facts).
MEAN_BGR = (103.53, 116.28, 123.675)
STD_BGR = (57.375, 57.12, 58.395)


def input_format(width: int, height: int, stride: int = 0) -> InputFormat:
    """``stride`` > 0: rectangular inputs (the model loaded with free spatial dimensions)."""
    return InputFormat(
        width=width,
        height=height,
        layout=Layout.NCHW_FLOAT,
        rgb=False,
        keep_ratio=True,
        center=False,
        pad_value=0,
        mean=MEAN_BGR,
        scale=tuple(1.0 / s for s in STD_BGR),  # type: ignore[arg-type]
        stride=stride,
    )


@dataclass(frozen=True)
class _Level:
    stride: int
    grid_w: int
    score_output: int
    box_output: int
    bins: int
    anchors_x: F32
    anchors_y: F32

    @staticmethod
    def make(stride: int, width: int, height: int, score_output: int, box_output: int, bins: int) -> _Level:
        """The level of ``stride`` for a ``width`` x ``height`` input (grid = ceil(side / stride))."""
        gw, gh = math.ceil(width / stride), math.ceil(height / stride)
        idx = np.arange(gw * gh)
        return _Level(
            stride=stride,
            grid_w=gw,
            score_output=score_output,
            box_output=box_output,
            bins=bins,
            anchors_x=(((idx % gw) + 0.5) * stride).astype(np.float32),
            anchors_y=(((idx // gw) + 0.5) * stride).astype(np.float32),
        )


class NanoDetDecoder:
    def __init__(self, levels: list[_Level] | None, num_classes: int, width: int, height: int) -> None:
        self.levels = levels
        self.num_classes = num_classes
        self.width = width
        self.height = height
        self._resized: dict[tuple[int, int], NanoDetDecoder] = {}

    def resized(self, width: int, height: int) -> NanoDetDecoder:
        """The decoder for a rectangular input of ``width`` x ``height``: the same outputs and bins, the
        grids of that size (cached: a service sees a few sizes)."""
        if (width, height) == (self.width, self.height):
            return self
        found = self._resized.get((width, height))
        if found is None:
            levels = [
                _Level.make(lv.stride, width, height, lv.score_output, lv.box_output, lv.bins)
                for lv in self._bound()
            ]
            found = self._resized[(width, height)] = NanoDetDecoder(levels, self.num_classes, width, height)
        return found

    def _bound(self) -> list[_Level]:
        if self.levels is None:
            raise ModelVerificationError("NanoDet decoder used before its outputs were bound (probe first)")
        return self.levels

    @classmethod
    def bind(
        cls, inputs: list[TensorInfo], outputs: list[TensorInfo], width: int, height: int, num_classes: int
    ) -> NanoDetDecoder:
        if len(inputs) != 1:
            raise ModelVerificationError(f"NanoDet expects 1 input, the model has {len(inputs)}")
        inp = inputs[0]
        if inp.dtype != np.float32 or len(inp.shape) != 4:
            raise ModelVerificationError(
                f"NanoDet input must be float32 [N,3,H,W]; {inp.name} is {inp.dtype} {list(inp.shape)}"
            )
        # Each side fixed to the spec's size, or free (a dynamic export; the rectangular-input load).
        if any(inp.fixed(axis) not in (want, None) for axis, want in ((1, 3), (2, height), (3, width))):
            raise ModelVerificationError(
                f"NanoDet input {inp.name} is {list(inp.shape)}, expected [N,3,{height},{width}]"
            )
        shapes = [(o.fixed(1), o.fixed(2)) if len(o.shape) == 3 else (None, None) for o in outputs]
        if any(len(o.shape) != 3 for o in outputs):
            raise ModelVerificationError(
                f"NanoDet outputs must be [N, HW, C]; got {[list(o.shape) for o in outputs]}"
            )
        decoder = cls(None, num_classes, width, height)
        if all(hw is not None and c is not None for hw, c in shapes):
            decoder.levels = decoder._bind_shapes([(int(hw or 0), int(c or 0)) for hw, c in shapes])
        # else: the file leaves HW/C symbolic (the TF.js conversion does; ONNX Runtime fills them in only
        # when the input shape is fully fixed): bind on the probe inference's real outputs.
        return decoder

    def _bind_shapes(self, shapes: list[tuple[int, int]]) -> list[_Level]:
        """Stride levels from the (HW, C) of each output, in output order."""
        width, height, num_classes = self.width, self.height, self.num_classes
        by_area: dict[int, dict[str, tuple[int, int]]] = {}
        for index, (hw, last) in enumerate(shapes):
            kind = "scores" if last == num_classes else "boxes" if last % 4 == 0 else ""
            if not kind:
                raise ModelVerificationError(
                    f"NanoDet output {index} [N, {hw}, {last}]: last dim is neither {num_classes} classes "
                    "nor 4 x bins"
                )
            by_area.setdefault(hw, {})[kind] = (index, last)
        levels = []
        for stride in STRIDES:
            gw, gh = math.ceil(width / stride), math.ceil(height / stride)
            pair = by_area.pop(gw * gh, None)
            if pair is None:
                continue
            if set(pair) != {"scores", "boxes"}:
                raise ModelVerificationError(f"NanoDet stride {stride}: need a score and a box output")
            levels.append(
                _Level.make(stride, width, height, pair["scores"][0], pair["boxes"][0], pair["boxes"][1] // 4)
            )
        if not levels or by_area:
            raise ModelVerificationError(
                f"NanoDet outputs {[[hw, c] for hw, c in shapes]} do not form stride levels of a "
                f"{width}x{height} input"
            )
        return levels

    def check_outputs(self, outputs: Outputs, batch: int) -> None:
        if self.levels is None:
            if any(o.ndim != 3 for o in outputs):
                raise ModelVerificationError(
                    f"NanoDet outputs {[o.shape for o in outputs]} are not [N, HW, C]"
                )
            self.levels = self._bind_shapes([(int(o.shape[1]), int(o.shape[2])) for o in outputs])
        for level in self.levels:
            s, b = outputs[level.score_output], outputs[level.box_output]
            hw = len(level.anchors_x)
            if s.shape != (batch, hw, self.num_classes) or b.shape != (batch, hw, 4 * level.bins):
                raise ModelVerificationError(
                    f"NanoDet stride {level.stride}: outputs {s.shape} and {b.shape}, expected "
                    f"({batch}, {hw}, {self.num_classes}) and ({batch}, {hw}, {4 * level.bins})"
                )

    def decode(self, outputs: Outputs, index: int, threshold: float, classes: I64 | None) -> RawDetections:
        boxes, scores, ids = [], [], []
        for level in self._bound():
            score_map = outputs[level.score_output][index]
            cls, conf = best_class(np.asarray(score_map, np.float32), classes, axis=1)
            cells = np.flatnonzero(conf > threshold)
            if len(cells) == 0:
                continue
            dist = outputs[level.box_output][index][cells].reshape(-1, 4, level.bins).astype(np.float32)
            dist = np.exp(dist - dist.max(axis=2, keepdims=True))
            dist /= dist.sum(axis=2, keepdims=True)
            edges = (dist @ np.arange(level.bins, dtype=np.float32)) * level.stride  # (n, 4): l, t, r, b
            ax, ay = level.anchors_x[cells], level.anchors_y[cells]
            boxes.append(
                np.stack([ax - edges[:, 0], ay - edges[:, 1], ax + edges[:, 2], ay + edges[:, 3]], 1)
            )
            scores.append(conf[cells])
            ids.append(cls[cells])
        if not boxes:
            return RawDetections.empty()
        return RawDetections(
            np.concatenate(boxes).astype(np.float32, copy=False),
            np.concatenate(scores),
            np.concatenate(ids).astype(np.int64, copy=False),
        )
