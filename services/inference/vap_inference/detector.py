"""A loaded detection model: backend + preprocessor + decoder + NMS, verified and batch-probed at load.

Load-time checks (``Detector.load``):
1. signature: the backend's input/output tensors fit the model family (decoders.bind);
2. probe: one inference on a synthetic image; outputs must have the shapes the decoder reads and be finite;
3. batch: when the runtime accepts batch > 1, the same images are run as one batch and one by one; if the
   results differ (NanoDet-m's TF.js conversion is such a model: batch 1 is baked into its reshapes) or the
   batch run fails, the model runs frame by frame (max_batch = 1). The service finds out, never assumes.
"""

from __future__ import annotations

import copy
import threading
import time
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt

from vap_common.logs import get_logger
from vap_inference import decoders
from vap_inference.backends.base import Backend, BackendError
from vap_inference.decoders.base import Outputs
from vap_inference.nms import class_aware_nms
from vap_inference.preprocess import Letterbox, Preprocessor
from vap_models import ModelSpec, ModelVerificationError
from vap_proto.v1 import detection_pb2, inference_pb2

_log = get_logger("vap.inference.detector")

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
U8 = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class FrameOptions:
    """Per-scenario (or per-request) postprocessing settings, resolved against one model's labels."""

    confidence: float
    nms_iou: float
    classes: I64 | None = None  # allowed class ids, sorted; None = all
    max_detections: int = 300


@dataclass(frozen=True, slots=True)
class Detections:
    """Final detections of one frame, boxes in original-frame pixels, highest score first."""

    boxes: F32
    scores: F32
    class_ids: I64

    def __len__(self) -> int:
        return len(self.scores)


@dataclass
class Timings:
    preprocess_us: int = 0
    inference_us: int = 0
    postprocess_us: int = 0
    queue_wait_us: int = 0


@dataclass
class BatchProbe:
    max_batch: int
    reason: str
    max_abs_diff: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)


def _us(start_ns: int, end_ns: int) -> int:
    return max(0, (end_ns - start_ns) // 1000)


def probe_images(count: int, width: int, height: int) -> list[U8]:
    """Deterministic, different-looking BGR test images: gradients, blocks and noise, so that every
    output of a model carries signal (all-zero inputs would compare equal on a broken batch too)."""
    rng = np.random.default_rng(12345)
    yy, xx = np.mgrid[0:height, 0:width]
    images = []
    for k in range(count):
        img = np.empty((height, width, 3), np.uint8)
        img[..., 0] = (xx * (k + 1) * 255 // max(1, width)) % 256
        img[..., 1] = (yy * (k + 2) * 255 // max(1, height)) % 256
        img[..., 2] = ((xx + yy) * (k + 3)) % 256
        for _ in range(4):
            x0, y0 = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
            img[y0 : y0 + height // 3, x0 : x0 + width // 6] = rng.integers(0, 256, 3, dtype=np.uint8)
        noise = rng.integers(0, 24, img.shape, dtype=np.uint8)
        images.append(np.ascontiguousarray(img // 2 + noise))
    return images


class Detector:
    def __init__(self, spec: ModelSpec, backend: Backend, *, sha256: str = "", max_batch: int = 8) -> None:
        metadata = getattr(backend, "metadata", {})
        self.spec, self.input_format, self.decoder = decoders.bind(
            spec, backend.inputs, backend.outputs, metadata if isinstance(metadata, dict) else {}
        )
        self.backend = backend
        self.sha256 = sha256
        self.input_name = backend.inputs[0].name
        self.capacity = max(1, min(backend.max_batch, max_batch))
        self.preprocessor = Preprocessor(self.input_format, self.capacity)
        self.max_batch = 1  # until the probe says more
        self.batch_probe = BatchProbe(1, "not probed")
        # One user of the buffers at a time: the batch worker and gRPC Detect share this detector.
        self.lock = threading.Lock()
        self.class_names = self.spec.class_names
        self._class_index = {n: i for i, n in enumerate(self.class_names)}

    @property
    def name(self) -> str:
        return self.spec.name

    # --- load-time verification ------------------------------------------------------------------------

    def load(self) -> Detector:
        """Probe inference and batch check (see module docstring). Raises ModelVerificationError."""
        with self.lock:
            images = probe_images(max(2, self.capacity), self.input_format.width, self.input_format.height)
            try:
                self.preprocessor.from_bgr(0, images[0])
                single = self.backend.run({self.input_name: self.preprocessor.inputs(1)})
            except BackendError as exc:
                raise ModelVerificationError(f"model {self.name!r}: probe inference failed: {exc}") from exc
            try:
                self.decoder.check_outputs(single, 1)
            except ModelVerificationError as exc:
                raise ModelVerificationError(f"model {self.name!r}: probe inference: {exc}") from exc
            if not all(np.all(np.isfinite(o)) for o in single if o.dtype.kind == "f"):
                raise ModelVerificationError(f"model {self.name!r}: probe inference gave NaN/inf outputs")
            self.decoder.decode(single, 0, self.default_options().confidence, None)
            rect = self._probe_rect(images[0])
            self.batch_probe = self._probe_batch(images)
            self.max_batch = self.batch_probe.max_batch
        _log.info(
            "model loaded",
            model=self.name,
            max_batch=self.max_batch,
            batch_probe=self.batch_probe.reason,
            input=f"{self.input_format.width}x{self.input_format.height}",
            rectangular_input=rect,
        )
        return self

    def _probe_rect(self, image: U8) -> str:
        """For a rectangular input format: one inference on a 16:9 image at its reduced size, whose outputs
        must have the shapes the decoder expects for that size. Where that fails the model goes back to
        the square input (logged), never to wrong boxes."""
        fmt = self.input_format
        if not fmt.stride:
            return "no"
        wide = np.ascontiguousarray(image[: max(1, fmt.width * 9 // 16)])
        try:
            self.preprocessor.from_bgr(0, wide)
            size = self.preprocessor.size
            outputs = self.backend.run({self.input_name: self.preprocessor.inputs(1)})
            self.decoder.resized(*size).check_outputs(outputs, 1)
        except (BackendError, ModelVerificationError) as exc:
            _log.warning("rectangular input failed its probe: square input", model=self.name, error=str(exc))
            self.input_format = replace(fmt, stride=0)
            self.preprocessor = Preprocessor(self.input_format, self.capacity)
            return f"no (probe failed: {exc})"
        return f"yes (16:9 at {size[0]}x{size[1]})"

    def _probe_batch(self, images: list[U8]) -> BatchProbe:
        n = self.capacity
        if n <= 1:
            return BatchProbe(
                1, f"the runtime accepts batch 1 only (input {self.input_name} has a fixed batch)"
            )
        alone: list[Outputs] = []
        for k in range(n):
            self.preprocessor.from_bgr(0, images[k])
            alone.append([o.copy() for o in self.backend.run({self.input_name: self.preprocessor.inputs(1)})])
        for k in range(n):
            self.preprocessor.from_bgr(k, images[k])
        try:
            batched = self.backend.run({self.input_name: self.preprocessor.inputs(n)})
        except BackendError as exc:
            return BatchProbe(1, f"batch {n} failed to run ({exc}); running frame by frame")
        # FP16 engines round differently per batch size; FP32 runs must agree to float noise.
        fp16 = self.backend.precision == inference_pb2.MODEL_PRECISION_FP16
        rtol, atol = (2e-2, 2e-2) if fp16 else (1e-3, 1e-4)
        worst = 0.0
        for k in range(n):
            for out_b, out_1 in zip(batched, alone[k], strict=True):
                if out_b.shape[0] != n or out_b.shape[1:] != out_1.shape[1:]:
                    return BatchProbe(
                        1, f"batch {n} gave output shape {out_b.shape} (alone: {out_1.shape}); frame by frame"
                    )
                a = np.asarray(out_b[k], np.float64)
                b = np.asarray(out_1[0], np.float64)
                scale = max(1.0, float(np.abs(b).max(initial=0.0)))
                diff = float(np.abs(a - b).max(initial=0.0))
                worst = max(worst, diff)
                if not np.allclose(a, b, rtol=rtol, atol=atol * scale):
                    return BatchProbe(
                        1,
                        f"batch {n} results differ from one-by-one results (max abs diff {diff:.3g}); "
                        "running frame by frame",
                        worst,
                    )
        return BatchProbe(n, f"batch {n} matches one-by-one results (max abs diff {worst:.3g})", worst)

    def lane(self) -> Detector:
        """Another user of this loaded model for running batches in parallel: the same backend, decoder
        and probe results, its own input buffers and lock. Where the backend cannot run concurrently the
        detector itself is returned (its lock then serialises the callers). Closing stays with ``self``."""
        if not self.backend.concurrent_runs:
            return self
        other = copy.copy(self)
        other.preprocessor = Preprocessor(self.input_format, self.capacity)
        other.lock = threading.Lock()
        return other

    # --- options ------------------------------------------------------------------------------------------

    def default_options(self) -> FrameOptions:
        return FrameOptions(self.spec.default_confidence, self.spec.default_nms_iou)

    def options(
        self,
        *,
        confidence: float | None = None,
        nms_iou: float | None = None,
        class_ids: list[int] | tuple[int, ...] = (),
        class_names: list[str] | tuple[str, ...] = (),
        max_detections: int = 0,
    ) -> FrameOptions:
        """Options from a scenario's or request's settings; unknown class names/ids are ignored (a filter
        that names only unknown classes keeps nothing, rather than everything)."""
        classes: I64 | None = None
        if class_ids or class_names:
            wanted = {i for i in class_ids if 0 <= i < len(self.class_names)}
            wanted |= {self._class_index[n] for n in class_names if n in self._class_index}
            classes = np.array(sorted(wanted), np.int64)
        return FrameOptions(
            confidence=self.spec.default_confidence if confidence is None else float(confidence),
            nms_iou=self.spec.default_nms_iou if nms_iou is None else float(nms_iou),
            classes=classes,
            max_detections=max_detections or 300,
        )

    # --- the per-batch path (caller holds self.lock) -------------------------------------------------------

    def run(self, count: int) -> Outputs:
        """Infer the first ``count`` prepared batch slots."""
        if count > self.max_batch:
            raise ValueError(f"batch of {count} > max batch {self.max_batch} of {self.name}")
        return self.backend.run({self.input_name: self.preprocessor.inputs(count)})

    def postprocess(
        self,
        outputs: Outputs,
        index: int,
        letterbox: Letterbox,
        options: FrameOptions,
        source_width: int = 0,
        source_height: int = 0,
    ) -> Detections:
        if options.classes is not None and len(options.classes) == 0:
            raw = decoders.RawDetections.empty()
        else:
            # The input size of this batch (rectangular inputs): the decoder's grids must match it.
            decoder = self.decoder.resized(*self.preprocessor.size)
            raw = decoder.decode(outputs, index, options.confidence, options.classes)
        keep = class_aware_nms(raw.boxes, raw.scores, raw.class_ids, options.nms_iou, options.max_detections)
        boxes = letterbox.to_source(raw.boxes[keep], source_width, source_height)
        return Detections(boxes, raw.scores[keep], raw.class_ids[keep])

    # --- one image, whole path (gRPC Detect, tests) ---------------------------------------------------------

    def detect_image(self, image: U8, options: FrameOptions | None = None) -> tuple[Detections, Timings]:
        """Detect on one BGR image, boxes in its pixels."""
        opts = options or self.default_options()
        timings = Timings()
        t0 = time.perf_counter_ns()
        with self.lock:
            t1 = time.perf_counter_ns()
            lb = self.preprocessor.from_bgr(0, image)
            t2 = time.perf_counter_ns()
            outputs = self.run(1)
            t3 = time.perf_counter_ns()
            dets = self.postprocess(outputs, 0, lb, opts)
            t4 = time.perf_counter_ns()
        timings.queue_wait_us = _us(t0, t1)
        timings.preprocess_us = _us(t1, t2)
        timings.inference_us = _us(t2, t3)
        timings.postprocess_us = _us(t3, t4)
        return dets, timings

    # --- catalogue -------------------------------------------------------------------------------------

    def info(self, *, is_default: bool = False) -> inference_pb2.ModelInfo:
        return inference_pb2.ModelInfo(
            name=self.name,
            family=self.spec.family,  # type: ignore[arg-type]
            input_width=self.input_format.width,
            input_height=self.input_format.height,
            class_names=list(self.class_names),
            max_batch_size=self.max_batch,
            backend=self.backend.backend_kind,
            precision=self.backend.precision,
            sha256=self.sha256,
            is_default=is_default,
            loaded=True,
            default_confidence_threshold=self.spec.default_confidence,
        )

    def to_proto(self, dets: Detections) -> list[detection_pb2.Detection]:
        out = []
        for box, score, cls in zip(
            dets.boxes.tolist(), dets.scores.tolist(), dets.class_ids.tolist(), strict=True
        ):
            d = detection_pb2.Detection(class_id=cls, class_name=self.class_names[cls], confidence=score)
            d.box.x1, d.box.y1, d.box.x2, d.box.y2 = box
            out.append(d)
        return out

    def close(self) -> None:
        self.backend.close()
