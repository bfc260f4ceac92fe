"""TensorRT backend: the pure-Python parts everywhere (engine cache key, optimization-profile shapes,
buffer sizing, backend selection), the engine build and run only where tensorrt, pycuda and a GPU exist."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vap_inference.backends import tensorrt as trt_backend
from vap_inference.backends.base import BackendError
from vap_inference.backends.tensorrt import GpuIdentity, buffer_nbytes, engine_cache_key, profile_shapes

GPU = GpuIdentity("NVIDIA GeForce RTX 4090", (8, 9))
SHA = "a4c29d541891" + "0" * 52


def test_cache_key_names_everything_an_engine_depends_on() -> None:
    key = engine_cache_key(gpu=GPU, trt_version="10.3.0", model_sha256=SHA, max_batch=8, fp16=True)
    assert key == "a4c29d5418910000-nvidia-geforce-rtx-4090-sm89-trt10-3-0-b8-fp16.engine"
    others = {
        engine_cache_key(
            gpu=GpuIdentity("NVIDIA A100", (8, 0)),
            trt_version="10.3.0",
            model_sha256=SHA,
            max_batch=8,
            fp16=True,
        ),
        engine_cache_key(gpu=GPU, trt_version="10.4.0", model_sha256=SHA, max_batch=8, fp16=True),
        engine_cache_key(gpu=GPU, trt_version="10.3.0", model_sha256="f" * 64, max_batch=8, fp16=True),
        engine_cache_key(gpu=GPU, trt_version="10.3.0", model_sha256=SHA, max_batch=4, fp16=True),
        engine_cache_key(gpu=GPU, trt_version="10.3.0", model_sha256=SHA, max_batch=8, fp16=False),
    }
    assert key not in others and len(others) == 5
    assert "/" not in engine_cache_key(
        gpu=GpuIdentity("a/b c", (7, 5)), trt_version="10", model_sha256=SHA, max_batch=1, fp16=False
    )


def test_profile_shapes() -> None:
    # YOLO export with a dynamic batch (and dynamic H, W pinned to the preprocessor's size).
    shapes = profile_shapes(("batch", 3, "h", "w"), max_batch=8, opt_batch=4, fixed_dims={2: 640, 3: 640})
    assert shapes is not None
    assert (shapes.min, shapes.opt, shapes.max) == ((1, 3, 640, 640), (4, 3, 640, 640), (8, 3, 640, 640))
    # SSDLite: NHWC uint8 with N, H, W dynamic.
    shapes = profile_shapes((-1, -1, -1, 3), max_batch=4, opt_batch=2, fixed_dims={1: 300, 2: 300})
    assert shapes is not None and shapes.max == (4, 300, 300, 3) and shapes.min == (1, 300, 300, 3)
    # NanoDet: fully static, no profile (the engine runs batch 1).
    assert profile_shapes((1, 3, 416, 416), max_batch=8, opt_batch=4, fixed_dims={}) is None
    with pytest.raises(BackendError, match="no size to pin"):
        profile_shapes((-1, 3, -1, 416), max_batch=8, opt_batch=4, fixed_dims={})


def test_buffer_sizes() -> None:
    assert buffer_nbytes((-1, 3, 416, 416), np.dtype(np.float32), 8) == 8 * 3 * 416 * 416 * 4
    assert buffer_nbytes((1, 3, 416, 416), np.dtype(np.float32), 8) == 3 * 416 * 416 * 4  # fixed batch stays
    assert buffer_nbytes((-1, 100, 4), np.dtype(np.float32), 4) == 4 * 100 * 4 * 4
    assert buffer_nbytes((-1, 300, 300, 3), np.dtype(np.uint8), 2) == 2 * 300 * 300 * 3
    with pytest.raises(BackendError):
        buffer_nbytes((-1, -1, 4), np.dtype(np.float32), 4)


def test_fast_fp16_by_compute_capability() -> None:
    assert trt_backend.gpu_has_fast_fp16((8, 9)) and trt_backend.gpu_has_fast_fp16((7, 0))
    assert trt_backend.gpu_has_fast_fp16((6, 0)) and not trt_backend.gpu_has_fast_fp16((6, 1))
    assert not trt_backend.gpu_has_fast_fp16((5, 2))


def test_unavailable_reason_is_explicit() -> None:
    reason = trt_backend.unavailable_reason()
    assert reason is None or any(w in reason for w in ("tensorrt", "pycuda", "CUDA"))


def test_auto_backend_falls_back_to_onnxruntime_without_a_gpu(models_dir: Path) -> None:
    if trt_backend.unavailable_reason() is None:
        pytest.skip("a GPU with TensorRT is present: auto picks TensorRT here")
    from vap_inference.manager import ModelManager
    from vap_inference.settings import InferenceSettings
    from vap_proto.v1 import detection_pb2

    auto = ModelManager(
        InferenceSettings.load(
            None, models_dir=models_dir, backend="auto", default_model="ssdlite-mbv2-person-300"
        )
    )
    assert auto.get("").backend.backend_kind == detection_pb2.INFERENCE_BACKEND_ONNXRUNTIME_CPU
    forced = ModelManager(InferenceSettings.load(None, models_dir=models_dir, backend="tensorrt"))
    with pytest.raises(BackendError, match="backend 'tensorrt' requested but"):
        forced.get("")


@pytest.mark.gpu
def test_tensorrt_engine_builds_caches_and_matches_onnxruntime(models_dir: Path, tmp_path: Path) -> None:
    reason = trt_backend.unavailable_reason()
    if reason is not None:
        pytest.skip(f"TensorRT test needs an NVIDIA GPU: {reason}")
    from vap_inference.backends.onnxruntime import OrtBackend
    from vap_inference.detector import Detector
    from vap_inference.testing import video_frames
    from vap_models.catalogue import NANODET, SSDLITE
    from vap_models.verify import sha256_file

    frame = video_frames((200,))[200]
    path = models_dir / NANODET.filename
    sha = sha256_file(path)
    trt = trt_backend.TrtBackend(
        path, model_sha256=sha, cache_dir=tmp_path, max_batch=4, fixed_dims={2: 416, 3: 416}
    )
    assert len(list(tmp_path.glob("*.engine"))) == 1
    gpu = Detector(NANODET, trt, sha256=sha, max_batch=4).load()
    cpu = Detector(NANODET, OrtBackend(path), max_batch=4).load()
    on_gpu, _ = gpu.detect_image(frame)
    on_cpu, _ = cpu.detect_image(frame)
    assert abs(int((on_gpu.class_ids == 0).sum()) - int((on_cpu.class_ids == 0).sum())) <= 1
    # Second load comes from the cache (no rebuild): same single engine file.
    trt_backend.TrtBackend(
        path, model_sha256=sha, cache_dir=tmp_path, max_batch=4, fixed_dims={2: 416, 3: 416}
    ).close()
    assert len(list(tmp_path.glob("*.engine"))) == 1
    ssd_path = models_dir / SSDLITE.filename
    try:
        ssd = trt_backend.TrtBackend(
            ssd_path,
            model_sha256=sha256_file(ssd_path),
            cache_dir=tmp_path,
            max_batch=4,
            fixed_dims={1: 300, 2: 300},
        )
    except BackendError as exc:
        pytest.skip(f"TensorRT cannot build the TF-exported SSDLite graph here: {exc}")
    det = Detector(SSDLITE, ssd, max_batch=4).load()
    assert det.max_batch >= 1
