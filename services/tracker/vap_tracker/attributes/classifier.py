"""One ONNX image classifier: what its input wants (size, channel order, normalisation), what its outputs
mean (labels, or groups of classes summed into one label: age years into age groups), checked at load.

A file that is missing, not ONNX, or whose signature does not fit the configuration raises
``ClassifierLoadError`` naming the classifier and what is wrong, at load, never at the first crop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import numpy.typing as npt

from vap_models.session import open_session

F32 = npt.NDArray[np.float32]
U8 = npt.NDArray[np.uint8]


class ClassifierLoadError(ValueError):
    """A classifier that cannot be used; the message names it and says why."""


@dataclass(frozen=True)
class ClassifierConfig:
    # Attribute name reported on tracks, e.g. "gender".
    name: str
    path: Path
    # What the network looks at: an aligned face chip found inside the person crop, or the person crop.
    crop: Literal["face", "person"] = "face"
    input_width: int = 32
    input_height: int = 32
    channel_order: Literal["rgb", "bgr"] = "rgb"
    # Input = (pixel - mean) / std, per channel in the network's channel order, pixels 0..255.
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (255.0, 255.0, 255.0)
    # One label per output class, in output order; or, with ``groups``, the group labels.
    labels: tuple[str, ...] = ()
    # label -> (first, last) output class, inclusive: probabilities of those classes are summed.
    groups: dict[str, tuple[int, int]] = field(default_factory=dict)
    # The graph outputs logits: apply a softmax.
    softmax: bool = False
    # Below this mean probability of the winning label the track's attribute stays "unknown".
    min_confidence: float = 0.6

    @property
    def output_labels(self) -> tuple[str, ...]:
        return tuple(self.groups) if self.groups else self.labels


def _error(cfg: ClassifierConfig, what: str) -> ClassifierLoadError:
    return ClassifierLoadError(f"attribute classifier {cfg.name!r} ({cfg.path}): {what}")


class OnnxClassifier:
    """Thread-compatible: one worker thread calls ``probabilities``."""

    def __init__(self, config: ClassifierConfig, threads: int = 1) -> None:
        self.config = cfg = config
        if not cfg.output_labels:
            raise _error(cfg, "no labels configured")
        if not cfg.path.is_file():
            raise _error(cfg, "no such file")
        try:
            self._session: Any = open_session(cfg.path, threads=threads)
        except Exception as exc:  # onnxruntime raises its own types for every kind of bad file
            raise _error(cfg, f"not a loadable ONNX model: {str(exc)[:300]}") from exc
        self._check_signature()
        self._mean = np.asarray(cfg.mean, dtype=np.float32)
        self._std = np.asarray(cfg.std, dtype=np.float32)
        probe = self.probabilities([np.zeros((cfg.input_height, cfg.input_width, 3), np.uint8)])
        if probe.shape != (1, len(cfg.output_labels)) or not np.isfinite(probe).all():
            raise _error(cfg, f"probe inference gave {probe.shape}, expected (1, {len(cfg.output_labels)})")

    def _check_signature(self) -> None:
        cfg = self.config
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if len(inputs) != 1 or not outputs:
            raise _error(
                cfg, f"has {len(inputs)} inputs and {len(outputs)} outputs; expected one image input"
            )
        shape = list(inputs[0].shape)
        if inputs[0].type != "tensor(float)" or len(shape) != 4 or shape[1] != 3:
            raise _error(
                cfg, f"input {inputs[0].name} is {inputs[0].type} {shape}; expected float [N, 3, H, W]"
            )
        if all(isinstance(d, int) for d in shape[2:]) and shape[2:] != [cfg.input_height, cfg.input_width]:
            raise _error(
                cfg, f"input is {shape[3]}x{shape[2]}, configured {cfg.input_width}x{cfg.input_height}"
            )
        out_shape = list(outputs[0].shape)
        classes = out_shape[-1] if out_shape else None
        if cfg.groups:
            needed = max(last for _, last in cfg.groups.values()) + 1
            if isinstance(classes, int) and classes < needed:
                raise _error(cfg, f"output has {classes} classes, groups need {needed}")
        elif isinstance(classes, int) and classes != len(cfg.labels):
            raise _error(cfg, f"output has {classes} classes, {len(cfg.labels)} labels configured")
        self._input_name: str = inputs[0].name
        self._output_name: str = outputs[0].name

    def probabilities(self, chips: list[U8]) -> F32:
        """(len(chips), len(output_labels)) label probabilities of RGB uint8 chips of any size."""
        cfg = self.config
        size = (cfg.input_width, cfg.input_height)
        batch = np.empty((len(chips), cfg.input_height, cfg.input_width, 3), dtype=np.float32)
        for k, chip in enumerate(chips):
            img = chip if chip.shape[1::-1] == size else cv2.resize(chip, size, interpolation=cv2.INTER_AREA)
            batch[k] = img[:, :, ::-1] if cfg.channel_order == "bgr" else img
        batch -= self._mean
        batch /= self._std
        out = np.asarray(
            self._session.run([self._output_name], {self._input_name: batch.transpose(0, 3, 1, 2).copy()})[0],
            dtype=np.float32,
        ).reshape(len(chips), -1)
        if cfg.softmax:
            out = np.exp(out - out.max(axis=1, keepdims=True))
            out /= out.sum(axis=1, keepdims=True)
        if cfg.groups:
            out = np.stack([out[:, a : b + 1].sum(axis=1) for a, b in cfg.groups.values()], axis=1)
        result: F32 = out.astype(np.float32)
        return result
