"""The contract between a model family's output tensors and the detector."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
Outputs = list[npt.NDArray[np.generic]]


@dataclass(frozen=True, slots=True)
class RawDetections:
    """Candidates of one frame before NMS: boxes (x1, y1, x2, y2) in network-input pixels."""

    boxes: F32
    scores: F32
    class_ids: I64

    @staticmethod
    def empty() -> RawDetections:
        return RawDetections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))

    def __len__(self) -> int:
        return len(self.scores)


class Decoder(Protocol):
    def check_outputs(self, outputs: Outputs, batch: int) -> None:
        """Raise ModelVerificationError when a run's outputs do not have the shapes this decoder reads."""
        ...

    def resized(self, width: int, height: int) -> Decoder:
        """The decoder for outputs of a ``width`` x ``height`` input (rectangular inputs; families whose
        outputs do not depend on the input size return themselves)."""
        ...

    def decode(self, outputs: Outputs, index: int, threshold: float, classes: I64 | None) -> RawDetections:
        """Candidates of batch slot ``index`` with score > ``threshold``; ``classes``: the allowed class ids
        (sorted), None = all. Filtering here, before NMS, keeps the per-frame work small."""
        ...


def best_class(scores: F32, classes: I64 | None, axis: int) -> tuple[I64, F32]:
    """Per candidate: the best allowed class id and its score, from a scores matrix whose ``axis`` is
    the class axis."""
    if classes is not None:
        scores = np.take(scores, classes, axis=axis)
    best = np.argmax(scores, axis=axis)
    conf = np.take_along_axis(scores, np.expand_dims(best, axis), axis=axis).squeeze(axis)
    ids = classes[best] if classes is not None else best.astype(np.int64)
    return ids, conf.astype(np.float32, copy=False)
