"""Checks of a model file before it is used: present, not empty, the expected sha256 (ready copies of the
shipped models), loadable, the right signature, and a probe inference (detectors: ``Detector.load``).

Every failure is a ModelVerificationError whose message names the file, what was expected and what to do.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from vap_inference.errors import ModelVerificationError
from vap_inference.models.registry import ModelKind, ModelSpec

__all__ = [
    "ModelVerificationError",
    "conversion_record",
    "recorded_sha256",
    "sha256_file",
    "verify_file",
    "verify_model",
]

_FETCH_HINT = (
    "run `python -m vap_inference.models fetch` (or set VAP_MODELS_DIR to a directory of ready copies)"
)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def conversion_record(path: Path) -> Path:
    """Where the fetcher notes the sha256 of a model it converted itself (``<file>.sha256`` beside it)."""
    return path.with_name(path.name + ".sha256")


def recorded_sha256(path: Path) -> str | None:
    """The sha256 the fetcher recorded when it converted ``path`` and checked its signature and probe
    inference, or None. Converters are not bit-reproducible (TensorFlow, tf2onnx and PyTorch exports differ
    run to run), so a conversion made on this machine is known by this record, not by the reference hash."""
    try:
        text = conversion_record(path).read_text().split()
    except OSError:
        return None
    return text[0] if text else None


def verify_file(spec: ModelSpec, path: Path, *, check_hash: bool = True) -> str:
    """The file's sha256, after checking that it exists, is not empty and (``check_hash``, shipped models)
    matches the reference conversion or the record of a conversion made here."""
    if not path.is_file():
        raise ModelVerificationError(f"model {spec.name!r}: file {path} not found; {_FETCH_HINT}")
    if path.stat().st_size == 0:
        raise ModelVerificationError(f"model {spec.name!r}: file {path} is empty; {_FETCH_HINT}")
    digest = sha256_file(path)
    known = digest.startswith(spec.sha256_prefix) or digest == recorded_sha256(path)
    if check_hash and spec.sha256_prefix and not known:
        raise ModelVerificationError(
            f"model {spec.name!r}: {path} has sha256 {digest[:12]}..., expected {spec.sha256_prefix}... "
            f"or the one recorded when it was converted here (a different or corrupt file); "
            f"delete it and {_FETCH_HINT}"
        )
    return digest


def verify_model(spec: ModelSpec, path: Path, *, check_hash: bool = True, threads: int = 1) -> str:
    """Full check with ONNX Runtime on the CPU: file, signature, probe inference (and the batch probe for
    detectors). Returns the sha256. Used by the fetch command; the service does the same at load."""
    digest = verify_file(spec, path, check_hash=check_hash)
    from vap_inference.backends.base import BackendError
    from vap_inference.backends.onnxruntime import OrtBackend

    try:
        backend = OrtBackend(path, threads=threads, batch_cap=2)
    except BackendError as exc:
        raise ModelVerificationError(
            f"model {spec.name!r}: {path} is not a loadable ONNX model: {exc}"
        ) from exc
    try:
        if spec.kind is ModelKind.DETECTOR:
            from vap_inference.detector import Detector

            Detector(spec, backend, sha256=digest, max_batch=2).load()
        else:
            _probe_embedder(spec, backend)
    finally:
        backend.close()
    return digest


def _probe_embedder(spec: ModelSpec, backend: object) -> None:
    import numpy as np

    from vap_inference.backends.onnxruntime import OrtBackend

    assert isinstance(backend, OrtBackend)
    inp = backend.inputs
    if len(inp) != 1 or len(inp[0].shape) != 4 or inp[0].fixed(1) != 3:
        raise ModelVerificationError(f"model {spec.name!r}: expected one [N,3,H,W] input, got {inp}")
    x = np.zeros((2, 3, spec.input_height, spec.input_width), np.float32)
    try:
        (feat,) = backend.run({inp[0].name: x})[:1]
    except Exception as exc:
        raise ModelVerificationError(f"model {spec.name!r}: probe inference failed: {exc}") from exc
    if feat.ndim != 2 or feat.shape[0] != 2:
        raise ModelVerificationError(f"model {spec.name!r}: probe gave output {feat.shape}, expected [2, D]")
