"""The full check of a model file the build tools fetched or built: file and sha256 (vap_models), then its
signature and a probe inference with ONNX Runtime on the CPU.

A detector is checked, preprocessed for calibration and run for the agreement check exactly as the
inference service runs it: its input format, output decoding and NMS are that service's code, so the
build tools do not import it but are given it as a ``DetectorRuntime`` (vap_inference.modelfiles has the
implementation; ``python -m vap_stack.models`` and the service pass it in). The embedder needs nothing but
ONNX Runtime and is probed here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from vap_models.catalogue import ModelKind, ModelSpec
from vap_models.session import open_session
from vap_models.verify import ModelVerificationError, verify_file

__all__ = ["DetectorRuntime", "verify_model"]

U8 = npt.NDArray[np.uint8]
F32 = npt.NDArray[np.float32]


class DetectorRuntime(Protocol):
    """What the build tools need a detector to do; every method loads ``path`` as ``spec`` on the CPU."""

    def probe(self, spec: ModelSpec, path: Path, sha256: str, *, threads: int) -> None:
        """Signature and probe inference (with the batch probe) as at the service's load; raises
        ModelVerificationError naming what is wrong."""
        ...

    def input_tensors(
        self, spec: ModelSpec, path: Path, images: list[U8]
    ) -> tuple[str, list[npt.NDArray[Any]]]:
        """The model's input name and each BGR image preprocessed as the service feeds it (batch 1)."""
        ...

    def person_boxes(self, spec: ModelSpec, path: Path, images: list[U8]) -> list[F32]:
        """The person boxes (x1, y1, x2, y2 in image pixels) found on each BGR image."""
        ...


def verify_model(
    spec: ModelSpec, path: Path, runtime: DetectorRuntime, *, check_hash: bool = True, threads: int = 1
) -> str:
    """Full check: file, signature, probe inference (and the batch probe for detectors). Returns the
    sha256. Used by the fetch command; the inference service does the same at load."""
    digest = verify_file(spec, path, check_hash=check_hash)
    if spec.kind is ModelKind.DETECTOR:
        runtime.probe(spec, path, digest, threads=threads)
    else:
        _probe_embedder(spec, path, threads)
    return digest


def _probe_embedder(spec: ModelSpec, path: Path, threads: int) -> None:
    try:
        session = open_session(path, threads=threads, spin=False, quiet=True)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
        raise ModelVerificationError(
            f"model {spec.name!r}: {path} is not a loadable ONNX model: {exc}"
        ) from exc
    inputs = session.get_inputs()
    shape = list(inputs[0].shape) if len(inputs) == 1 else []
    if len(shape) != 4 or shape[1] != 3:
        described = [(i.name, i.type, list(i.shape)) for i in inputs]
        raise ModelVerificationError(f"model {spec.name!r}: expected one [N,3,H,W] input, got {described}")
    x = np.zeros((2, 3, spec.input_height, spec.input_width), np.float32)
    try:
        feat = np.asarray(session.run(None, {inputs[0].name: x})[0])
    except Exception as exc:
        raise ModelVerificationError(f"model {spec.name!r}: probe inference failed: {exc}") from exc
    if feat.ndim != 2 or feat.shape[0] != 2:
        raise ModelVerificationError(f"model {spec.name!r}: probe gave output {feat.shape}, expected [2, D]")
