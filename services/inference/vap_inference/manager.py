"""Which models this service can run, loading them (verified, batch-probed) once, on first use.

Backend choice per model: ``tensorrt`` when asked for (or ``auto`` and a usable GPU), else ONNX Runtime.
With ``auto`` a model TensorRT cannot build (an unsupported operator) falls back to ONNX Runtime with a
warning; with ``tensorrt`` it is an error.
"""

from __future__ import annotations

import threading
from pathlib import Path

from vap_common.logs import get_logger
from vap_inference import decoders
from vap_inference.backends.base import Backend, BackendError
from vap_inference.backends.onnxruntime import OrtBackend
from vap_inference.detector import Detector
from vap_inference.errors import UnknownModelError
from vap_inference.modelfiles import locate_model
from vap_inference.preprocess import Layout
from vap_inference.settings import InferenceSettings
from vap_models import BUILTIN_MODELS, ModelKind, ModelSpec, ModelVerificationError, yolo_spec
from vap_proto.v1 import inference_pb2

_log = get_logger("vap.inference.models")


class ModelManager:
    def __init__(self, settings: InferenceSettings) -> None:
        self.settings = settings
        self.models_dir = settings.resolved_models_dir()
        self.specs: dict[str, ModelSpec] = {s.name: s for s in BUILTIN_MODELS if s.kind is ModelKind.DETECTOR}
        for user in settings.user_models:
            self.specs[user.name] = yolo_spec(
                user.name,
                user.path,
                class_names=tuple(user.class_names),
                confidence=user.confidence_threshold,
                nms_iou=user.nms_iou_threshold,
            )
        if settings.default_model not in self.specs:
            raise UnknownModelError(
                f"default model {settings.default_model!r} is not known: {sorted(self.specs)}"
            )
        self.default_name = settings.default_model
        self._detectors: dict[str, Detector] = {}
        self._errors: dict[str, str] = {}
        self._locks: dict[str, threading.Lock] = {name: threading.Lock() for name in self.specs}

    def resolve(self, name: str) -> str:
        """The model name for a request/scenario value ("" = the default); UnknownModelError otherwise."""
        name = name or self.default_name
        if name not in self.specs:
            raise UnknownModelError(f"unknown model {name!r}; known: {', '.join(sorted(self.specs))}")
        return name

    def loaded(self, name: str) -> Detector | None:
        return self._detectors.get(name)

    def get(self, name: str) -> Detector:
        """The loaded detector (loading it now if needed: seconds; call from a worker thread)."""
        name = self.resolve(name)
        detector = self._detectors.get(name)
        if detector is not None:
            return detector
        with self._locks[name]:
            detector = self._detectors.get(name)
            if detector is None:
                try:
                    detector = self._load(self.specs[name])
                except (ModelVerificationError, BackendError) as exc:
                    self._errors[name] = str(exc)
                    raise
                self._errors.pop(name, None)
                self._detectors[name] = detector
        return detector

    def _load(self, spec: ModelSpec) -> Detector:
        # Shipped/user models from the models directory; derived ones (INT8) from their cache, built there
        # on a miss (modelfiles.py).
        path, sha = locate_model(spec, self.models_dir)
        s = self.settings
        ort_backend = self._ort(path, flexible_input=spec.rect_stride > 0 and s.rect_input)
        backend: Backend = ort_backend
        if s.backend in ("auto", "tensorrt"):
            from vap_inference.backends import tensorrt as trt_backend

            reason = trt_backend.unavailable_reason()
            if reason is not None:
                if s.backend == "tensorrt":
                    raise BackendError(f"backend 'tensorrt' requested but {reason}")
            else:
                # Bind with ONNX Runtime first: the family tells the input size to pin in the profile.
                _, fmt, _ = decoders.bind(spec, ort_backend.inputs, ort_backend.outputs, ort_backend.metadata)
                fixed = (
                    {2: fmt.height, 3: fmt.width}
                    if fmt.layout is Layout.NCHW_FLOAT
                    else {1: fmt.height, 2: fmt.width}
                )
                try:
                    trt = trt_backend.TrtBackend(
                        path,
                        model_sha256=sha,
                        cache_dir=s.resolved_engine_cache(),
                        max_batch=s.max_batch,
                        fixed_dims=fixed,
                        fp16=s.fp16,
                        metadata=ort_backend.metadata,
                    )
                except Exception as exc:
                    if s.backend == "tensorrt":
                        raise BackendError(f"{spec.name}: TensorRT engine failed: {exc}") from exc
                    _log.warning("tensorrt failed, using onnxruntime", model=spec.name, error=str(exc))
                else:
                    backend.close()
                    backend = trt
        try:
            return Detector(spec, backend, sha256=sha, max_batch=s.max_batch).load()
        except Exception:
            backend.close()
            raise

    def _ort(self, path: Path, *, flexible_input: bool) -> OrtBackend:
        s = self.settings
        return OrtBackend(
            path,
            threads=s.threads,
            use_cuda=True,  # when this onnxruntime build has it (vap_models.session picks the providers)
            batch_cap=s.max_batch,
            spin=s.spin,
            flexible_input=flexible_input,
        )

    def infos(self) -> list[inference_pb2.ModelInfo]:
        """Every detection model, default first; unloaded ones with what the spec knows."""
        out = []
        for name in sorted(self.specs, key=lambda n: (n != self.default_name, n)):
            detector = self._detectors.get(name)
            if detector is not None:
                out.append(detector.info(is_default=name == self.default_name))
                continue
            spec = self.specs[name]
            out.append(
                inference_pb2.ModelInfo(
                    name=name,
                    family=spec.family,  # type: ignore[arg-type]
                    input_width=spec.input_width,
                    input_height=spec.input_height,
                    class_names=list(spec.class_names),
                    is_default=name == self.default_name,
                    loaded=False,
                    default_confidence_threshold=spec.default_confidence,
                )
            )
        return out

    def error(self, name: str) -> str | None:
        return self._errors.get(name)

    def close(self) -> None:
        for detector in self._detectors.values():
            detector.close()
        self._detectors.clear()
