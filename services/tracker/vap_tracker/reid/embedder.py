"""Appearance embeddings of object crops: L2-normalised vectors whose dot product is the cosine similarity.

- ``OnnxEmbedder``: mobilenetv2-embed-1280.onnx (input ``images`` N x 3 x 224 x 224 RGB, /255, ImageNet
  mean/std; output ``feat`` N x 1280). ImageNet features, not trained for ReID (models README): one cue
  among motion and IoU, so it only re-attaches tracks that motion already makes plausible.
- ``HsvHistogramEmbedder``: hue/saturation and value histograms of the upper and lower half of the crop
  (shirt and trousers), the fallback when the model file or onnxruntime is missing; as good as the ONNX
  features on people in a rough test (models README) and ~50x cheaper.
- ``FusedEmbedder`` (the default when the model is there): both, each L2-normalised and weighted by
  sqrt(1/2), so the cosine similarity is the mean of the two cosines. The CNN features alone separate
  people poorly (same person ~0.86-0.91, different people up to ~0.84 on our test scenes); the colour cue
  pulls different people apart (~0.25-0.47) while the CNN keeps shape and texture in the decision.

Both take BGR uint8 crops of any size, as a batch; both are safe to call from one worker thread.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
import numpy.typing as npt

from vap_common.logs import get_logger
from vap_common.paths import models_dir
from vap_models.catalogue import EMBEDDER
from vap_models.session import open_session

F32 = npt.NDArray[np.float32]
U8 = npt.NDArray[np.uint8]

MODEL_FILE = EMBEDDER.filename  # mobilenetv2-embed-1280.onnx, from the model catalogue
_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32) * 255.0
_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32) * 255.0
_log = get_logger("vap.tracker.reid")


class Embedder(Protocol):
    name: str
    dim: int
    # Cosine similarity above which two crops are taken for the same object (per embedder: the
    # similarity scales of histogram and CNN features differ).
    default_threshold: float

    def embed(self, crops: list[U8]) -> F32:
        """(len(crops), dim) float32, rows L2-normalised."""
        ...


def _normalise(x: F32) -> F32:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    out: F32 = (x / np.maximum(norms, 1e-12)).astype(np.float32)
    return out


class HsvHistogramEmbedder:
    name = "hsv-histogram"
    dim = 2 * (16 * 4 + 8)
    default_threshold = 0.8

    def embed(self, crops: list[U8]) -> F32:
        out = np.zeros((len(crops), self.dim), dtype=np.float32)
        for k, crop in enumerate(crops):
            if crop.size == 0:
                continue
            hsv = cv2.cvtColor(crop, cv2.COLOR_BGR2HSV)
            half = max(1, hsv.shape[0] // 2)
            parts = []
            for region in (hsv[:half], hsv[half:] if hsv.shape[0] > 1 else hsv):
                hs = cv2.calcHist([region], [0, 1], None, [16, 4], [0, 180, 0, 256]).ravel()
                v = cv2.calcHist([region], [2], None, [8], [0, 256]).ravel()
                total = max(float(region.shape[0] * region.shape[1]), 1.0)
                # Square roots (Hellinger): a big uniform area should not drown the other colours.
                parts += [np.sqrt(hs / total), np.sqrt(v / total)]
            out[k] = np.concatenate(parts)
        return _normalise(out)


class OnnxEmbedder:
    name = "mobilenetv2-embed-1280"
    dim = 1280
    default_threshold = 0.85

    def __init__(self, path: Path, *, threads: int = 1, max_batch: int = 8) -> None:
        # One thread by default: the embedding worker must not take the cores inference runs on.
        self._session: Any = open_session(path, threads=threads)
        self._input = self._session.get_inputs()[0].name
        self._max_batch = max_batch

    def embed(self, crops: list[U8]) -> F32:
        if not crops:
            return np.zeros((0, self.dim), dtype=np.float32)
        outs = []
        for start in range(0, len(crops), self._max_batch):
            chunk = crops[start : start + self._max_batch]
            batch = np.stack([cv2.resize(c, (224, 224), interpolation=cv2.INTER_LINEAR) for c in chunk])
            rgb = batch[..., ::-1].astype(np.float32)
            rgb -= _MEAN
            rgb /= _STD
            (feat,) = self._session.run(None, {self._input: np.ascontiguousarray(rgb.transpose(0, 3, 1, 2))})
            outs.append(np.asarray(feat, dtype=np.float32))
        return _normalise(np.concatenate(outs))


class FusedEmbedder:
    name = "mobilenetv2+hsv"
    default_threshold = 0.8

    def __init__(self, cnn: OnnxEmbedder, colour: HsvHistogramEmbedder | None = None) -> None:
        self.cnn = cnn
        self.colour = colour or HsvHistogramEmbedder()
        self.dim = cnn.dim + self.colour.dim

    def embed(self, crops: list[U8]) -> F32:
        half = np.float32(np.sqrt(0.5))
        out: F32 = np.concatenate((self.cnn.embed(crops) * half, self.colour.embed(crops) * half), axis=1)
        return out


def make_embedder(kind: str = "auto", model_path: Path | None = None, *, threads: int = 1) -> Embedder:
    """``kind``: "hsv"; "onnx" (the CNN alone, required); "fused" (CNN + colour, required); or "auto":
    fused when the model file (models_dir()/mobilenetv2-embed-1280.onnx) and onnxruntime are there,
    otherwise the HSV histogram, with the reason logged."""
    if kind == "hsv":
        return HsvHistogramEmbedder()
    path = model_path or models_dir() / MODEL_FILE
    reason = None
    if not path.is_file():
        reason = f"model file {path} not found (set VAP_MODELS_DIR or fetch the models)"
    else:
        try:
            cnn = OnnxEmbedder(path, threads=threads)
            return cnn if kind == "onnx" else FusedEmbedder(cnn)
        except Exception as exc:  # onnxruntime missing or the file unusable
            reason = f"cannot load {path}: {exc}"
    if kind in ("onnx", "fused"):
        raise RuntimeError(f"ONNX embedder requested but unavailable: {reason}")
    _log.warning("ReID falls back to the HSV colour histogram", reason=reason)
    return HsvHistogramEmbedder()
