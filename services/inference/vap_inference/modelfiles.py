"""The model files this service loads: located by the model library (vap_models) and, when a derived model
(the INT8 NanoDet, the default) is not in its cache yet, built on the spot by the build tools
(vap_modelbuild, seconds) — this service builds models at run time, so it is the one service that uses
them. The build tools run detectors through ``DetectorRuntime``; ``OrtDetectorRuntime`` is this service's
detector (preprocessing, decoding, NMS) on ONNX Runtime's CPU provider, also used by the fetch command
(``python -m vap_stack.models``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from vap_inference import decoders
from vap_inference.backends.base import BackendError
from vap_inference.backends.onnxruntime import OrtBackend
from vap_inference.detector import Detector
from vap_inference.preprocess import Preprocessor
from vap_modelbuild.derive import locate_or_build
from vap_models import ModelSpec, ModelVerificationError

__all__ = ["OrtDetectorRuntime", "locate_model"]

U8 = npt.NDArray[np.uint8]
F32 = npt.NDArray[np.float32]


class OrtDetectorRuntime:
    """This service's detector for the build tools (vap_modelbuild.checks.DetectorRuntime); each call
    loads the file, uses it and closes it."""

    def probe(self, spec: ModelSpec, path: Path, sha256: str, *, threads: int) -> None:
        try:
            backend = OrtBackend(path, threads=threads, batch_cap=2)
        except BackendError as exc:
            raise ModelVerificationError(
                f"model {spec.name!r}: {path} is not a loadable ONNX model: {exc}"
            ) from exc
        try:
            Detector(spec, backend, sha256=sha256, max_batch=2).load()
        finally:
            backend.close()

    def input_tensors(
        self, spec: ModelSpec, path: Path, images: list[U8]
    ) -> tuple[str, list[npt.NDArray[Any]]]:
        backend = OrtBackend(path, threads=1, batch_cap=1)
        try:
            _, fmt, _ = decoders.bind(spec, backend.inputs, backend.outputs, backend.metadata)
            name = backend.inputs[0].name
        finally:
            backend.close()
        pre = Preprocessor(fmt, 1)
        tensors = []
        for image in images:
            pre.from_bgr(0, image)
            tensors.append(pre.inputs(1).copy())
        return name, tensors

    def person_boxes(self, spec: ModelSpec, path: Path, images: list[U8]) -> list[F32]:
        detector = Detector(spec, OrtBackend(path, threads=2, batch_cap=1), max_batch=1).load()
        try:
            persons = detector.options(class_names=["person"])
            return [detector.detect_image(image, persons)[0].boxes for image in images]
        finally:
            detector.close()


def locate_model(spec: ModelSpec, models_dir: Path) -> tuple[Path, str]:
    """The file to load for ``spec`` and its sha256 (vap_models.locate_model), a missing derived model
    built first."""
    return locate_or_build(spec, models_dir, OrtDetectorRuntime())
