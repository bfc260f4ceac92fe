"""Suite ``inference``: detector speed per model, backend, batch size and thread count.

Each row times the whole per-frame path the service runs: preprocessing from I420 planes (what decoders
put in the ring) of vtest-576p25 frames, the model run, decoding + NMS. ``ms_per_frame`` = median time of
one batch / batch size; ``fps`` = 1000 / ms_per_frame (one detector, one batch in flight). Batch sizes 1,
4 and 8 where the model's load-time probe allows them (NanoDet-m runs frame by frame only).

Models: the shipped NanoDet-m 416 and SSDLite person 300 (from $VAP_MODELS_DIR / .vap/models), the INT8
build of NanoDet (``nanodet-m-416-int8``, the service's default) and SSDLite without its NMS subgraph
(``ssdlite-mbv2-person-300-raw``) from the derived-model cache (vap_models.locate; built on a miss by
vap_modelbuild.derive), and a YOLOv8n exported from its YAML by Ultralytics when that is installed (random
weights: speed only), or the file named by $VAP_BENCH_YOLO. Backends: ONNX Runtime on the CPU; TensorRT
where it can run.

Backends: ``onnxruntime-cpu`` (no thread spinning, square input), ``onnxruntime-cpu-spin``
(InferenceSettings.spin = true), ``onnxruntime-cpu-rect`` (NanoDet with rectangular inputs, the service's
default: these 4:3 frames run at 416x320), ``tensorrt``.

Rows: ``{"model", "backend", "batch", "threads", "ms_per_frame", "fps", "best_ms", "infer_ms", "pre_ms",
"post_ms", "cpu_ms", "samples", "load1"}`` (medians per frame; best_ms: the fastest batch per frame; cpu_ms:
process CPU time per frame; load1: the 1-minute load average when the row was measured).
Target (DESIGN.md / issue #4): NanoDet on ONNX Runtime <= 30 ms per frame on the 2-core box.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from bench.harness import Row, Suite, register

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from vap_inference.backends.base import Backend
    from vap_inference.detector import Detector
    from vap_models.catalogue import ModelSpec

    Frame = tuple[tuple[npt.NDArray[np.uint8], ...], int, int]  # I420 planes, width, height

NANODET_TARGET_MS = 30.0


def _yolo_model(work: Path) -> Path | None:
    given = os.environ.get("VAP_BENCH_YOLO")
    if given:
        return Path(given)
    if importlib.util.find_spec("ultralytics") is None:
        return None
    os.environ.setdefault("YOLO_CONFIG_DIR", str(work / "ultralytics"))
    os.environ["YOLO_OFFLINE"] = "1"
    # Imported by name: ultralytics is optional (not a project dependency) and has no type information.
    yolo_cls = importlib.import_module("ultralytics").YOLO

    cwd = Path.cwd()
    os.chdir(work)
    try:
        exported = Path(
            yolo_cls("yolov8n.yaml").export(format="onnx", imgsz=640, dynamic=True, simplify=False)
        )
    finally:
        os.chdir(cwd)
    return exported if exported.is_absolute() else work / exported


def _configs(work: Path) -> Iterator[tuple[ModelSpec, Path]]:
    from vap_common.paths import models_dir
    from vap_inference.modelfiles import locate_model
    from vap_models import ModelVerificationError
    from vap_models.catalogue import NANODET, NANODET_INT8, SSDLITE, SSDLITE_RAW, yolo_spec

    for spec in (NANODET, NANODET_INT8, SSDLITE, SSDLITE_RAW):
        try:
            # Derived models (INT8) come from their cache, built there on a miss (seconds).
            path, _ = locate_model(spec, models_dir())
        except ModelVerificationError as exc:
            print(f"skipping {spec.name}: {exc}")
            continue
        yield spec, path
    try:
        yolo = _yolo_model(work)
    except Exception as exc:  # an export problem must not cost the other rows
        print(f"skipping yolo: export failed: {exc}")
        yolo = None
    if yolo is not None:
        yield yolo_spec("yolov8n-640" if "VAP_BENCH_YOLO" not in os.environ else yolo.stem, yolo), yolo


def _measure(detector: Detector, batch: int, frames: list[Frame], seconds: float) -> Row:
    from vap_proto.v1.frame_pb2 import PixelFormat

    i420 = PixelFormat.PIXEL_FORMAT_I420
    options = detector.default_options()
    totals: list[float] = []
    cpu: list[float] = []
    pre: list[float] = []
    infer: list[float] = []
    post: list[float] = []
    deadline = time.monotonic() + seconds
    iteration = 0
    while iteration < 5 or (time.monotonic() < deadline and iteration < 2000):
        c0 = time.process_time()
        t0 = time.perf_counter()
        lbs = []
        for k in range(batch):
            planes, w, h = frames[(iteration * batch + k) % len(frames)]
            lbs.append(detector.preprocessor.from_planes(k, planes, i420, w, h))
        t1 = time.perf_counter()
        outputs = detector.run(batch)
        t2 = time.perf_counter()
        for k in range(batch):
            detector.postprocess(outputs, k, lbs[k], options)
        t3 = time.perf_counter()
        c3 = time.process_time()
        if iteration >= 3:  # warm-up: first runs allocate and tune
            totals.append(t3 - t0)
            cpu.append(c3 - c0)
            pre.append(t1 - t0)
            infer.append(t2 - t1)
            post.append(t3 - t2)
        iteration += 1
    ms = statistics.median(totals) * 1000 / batch
    return {
        "batch": batch,
        "ms_per_frame": round(ms, 2),
        "fps": round(1000 / ms, 1),
        # The fastest batch: close to the uncontended figure when other processes share the cores.
        "best_ms": round(min(totals) * 1000 / batch, 2),
        "infer_ms": round(statistics.median(infer) * 1000 / batch, 2),
        "pre_ms": round(statistics.median(pre) * 1000 / batch, 2),
        "post_ms": round(statistics.median(post) * 1000 / batch, 2),
        # CPU time of this process (all its threads) per frame: what a frame costs the machine, and far
        # less inflated than wall time when other processes share the cores.
        "cpu_ms": round(statistics.median(cpu) * 1000 / batch, 2),
        "samples": len(totals),
    }


def _backends(
    spec: ModelSpec, path: Path, threads: list[int], work: Path
) -> list[tuple[str, int, Callable[[], Backend]]]:
    """(backend name, threads, factory) for every backend that can run here."""
    from vap_inference.backends import tensorrt as trt_backend
    from vap_inference.backends.onnxruntime import OrtBackend
    from vap_models.verify import sha256_file

    # The service's default (no spinning, see backends/onnxruntime.py) for every thread count, and
    # spinning at 2 threads: faster on an idle machine, much slower on a busy one.
    spins = [(t, False) for t in threads] + [(2, True)]
    out: list[tuple[str, int, Callable[[], Backend]]] = [
        (
            "onnxruntime-cpu-spin" if spin else "onnxruntime-cpu",
            t,
            functools.partial(OrtBackend, path, threads=t, batch_cap=8, spin=spin),
        )
        for t, spin in spins
    ]
    if spec.rect_stride:  # the service's default for NanoDet: rectangular inputs (4:3 frames: 416x320)
        out += [
            (
                "onnxruntime-cpu-rect",
                t,
                functools.partial(OrtBackend, path, threads=t, batch_cap=8, flexible_input=True),
            )
            for t in threads
        ]
    if trt_backend.unavailable_reason() is None:
        fixed, metadata = _fixed(spec, path)
        factory = functools.partial(
            trt_backend.TrtBackend,
            path,
            model_sha256=sha256_file(path),
            cache_dir=work / "engines",
            max_batch=8,
            fixed_dims=fixed,
            metadata=metadata,
        )
        out.append(("tensorrt", 0, factory))
    return out


def run(quick: bool) -> list[Row]:
    import cv2

    from vap_inference.backends import tensorrt as trt_backend
    from vap_inference.detector import Detector
    from vap_inference.testing import bgr_to_planes, video_frames
    from vap_proto.v1.frame_pb2 import PixelFormat

    cv2.setNumThreads(1)  # as the service does (InferenceSettings.opencv_threads)
    source = video_frames((0, 100, 200, 400, 600, 700, 750, 790))
    frames: list[Frame] = [
        (tuple(bgr_to_planes(img, PixelFormat.PIXEL_FORMAT_I420)), img.shape[1], img.shape[0])
        for img in source.values()
    ]
    seconds = 2.0 if quick else 6.0
    thread_counts = [2] if quick else [1, 2]
    trt_reason = trt_backend.unavailable_reason()
    if trt_reason:
        print(f"tensorrt rows skipped: {trt_reason}")
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="vap-bench-inference-") as tmp:
        work = Path(tmp)
        for spec, path in _configs(work):
            for backend_name, threads, factory in _backends(spec, path, thread_counts, work):
                detector = Detector(spec, factory(), max_batch=8).load()
                for batch in (1, 4, 8):
                    if batch > detector.max_batch:
                        continue
                    with detector.lock:
                        row = _measure(detector, batch, frames, seconds)
                    row = {"model": detector.name, "backend": backend_name, "threads": threads, **row}
                    # Other processes on a 2-core box inflate every figure: keep the 1-minute load with it.
                    row["load1"] = round(os.getloadavg()[0], 2)
                    print(f"  {row}", flush=True)
                    rows.append(row)
                detector.close()
    return rows


def _fixed(spec: ModelSpec, path: Path) -> tuple[dict[int, int], dict[str, str]]:
    """The non-batch input sizes TensorRT's profile pins (from the family's input format), and the file's
    metadata (engines do not keep it)."""
    from vap_inference import decoders
    from vap_inference.backends.onnxruntime import OrtBackend
    from vap_inference.preprocess import Layout

    probe = OrtBackend(path, threads=1)
    metadata = probe.metadata
    _, fmt, _ = decoders.bind(spec, probe.inputs, probe.outputs, metadata)
    probe.close()
    if fmt.layout is Layout.NCHW_FLOAT:
        return {2: fmt.height, 3: fmt.width}, metadata
    return {1: fmt.height, 2: fmt.width}, metadata


def summarize(rows: list[Row]) -> list[str]:
    lines = []
    nanodet = [
        r
        for r in rows
        if "nanodet" in r["model"] and r["backend"].startswith("onnxruntime") and r["threads"] == 2
    ]
    if nanodet:
        best = min(nanodet, key=lambda r: r["ms_per_frame"])
        verdict = "met" if best["ms_per_frame"] <= NANODET_TARGET_MS else "MISSED"
        per_model = ", ".join(
            f"{m} {min(r['ms_per_frame'] for r in nanodet if r['model'] == m):.1f} ms"
            for m in sorted({r["model"] for r in nanodet})
        )
        lines.append(
            f"target NanoDet on ONNX Runtime (2 threads) <= {NANODET_TARGET_MS:.0f} ms/frame: "
            f"{verdict} ({per_model})"
        )
    else:
        lines.append("target NanoDet <= 30 ms/frame: not measured (model file absent)")
    busy = max((r.get("load1", 0.0) for r in rows), default=0.0)
    cores = os.cpu_count() or 1
    if busy > 0.75 * cores:
        lines.append(
            f"warning: load average reached {busy} on {cores} cores while measuring: figures are inflated"
        )
    return lines


register(
    Suite(
        name="inference",
        description="detector ms per frame and frames/s per model, backend, batch size and thread count",
        run=run,
        columns=(
            "model",
            "backend",
            "batch",
            "threads",
            "ms_per_frame",
            "fps",
            "best_ms",
            "infer_ms",
            "pre_ms",
            "post_ms",
            "cpu_ms",
            "load1",
        ),
        summarize=summarize,
        calibrate=True,
    )
)
