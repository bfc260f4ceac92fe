"""TensorRT 10 backend: an engine built from the ONNX file, cached on disk, run with pycuda memory.

Build (``EngineBuilder``): explicit-batch network parsed by ``trt.OnnxParser``; one optimization profile
whose batch axis spans 1..max_batch (opt = the batch the service forms most often) for inputs with a
dynamic batch, and whose other dynamic axes are pinned to the size the preprocessor feeds; FP16 when
``builder.platform_has_fast_fp16``. The serialized engine is cached under a key made of the GPU (name and
compute capability), the TensorRT version, the model's sha256 and the build options, because an engine
only runs on the GPU model and TensorRT version it was built with.

Run (``TrtBackend``): pinned (page-locked) host buffers and device buffers sized for max_batch, allocated
once; per call: copy the input host->device, ``set_input_shape`` for the actual batch,
``execute_async_v3`` on our stream, copy outputs device->host, synchronise. Tensor addresses are set once
(buffers never move). The CUDA context is pushed around every call because the detector runs in worker
threads.

Everything importing tensorrt/pycuda is inside functions: this module imports (and its pure helpers are
unit-tested) on machines without them.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from vap_common.logs import get_logger
from vap_inference.backends.base import BackendError, Dim, TensorInfo
from vap_proto.v1 import detection_pb2, inference_pb2

_log = get_logger("vap.inference.tensorrt")

WORKSPACE_BYTES = 1 << 30


def unavailable_reason() -> str | None:
    """None when tensorrt and pycuda import and a CUDA device exists, else why not (for logs and skips)."""
    try:
        import tensorrt  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install raising OSError on its libraries
        return f"tensorrt cannot be imported: {exc}"
    try:
        import pycuda.driver as cuda
    except Exception as exc:
        return f"pycuda cannot be imported: {exc}"
    try:
        cuda.init()
        if cuda.Device.count() == 0:
            return "no CUDA device"
    except Exception as exc:
        return f"CUDA is not usable: {exc}"
    return None


# --- pure helpers (unit-tested without a GPU) -------------------------------------------------------------


@dataclass(frozen=True)
class GpuIdentity:
    name: str
    compute_capability: tuple[int, int]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "unknown"


def engine_cache_key(
    *, gpu: GpuIdentity, trt_version: str, model_sha256: str, max_batch: int, fp16: bool
) -> str:
    """File name of the cached engine: everything that makes an engine unusable elsewhere is in it."""
    major, minor = gpu.compute_capability
    precision = "fp16" if fp16 else "fp32"
    return (
        f"{model_sha256[:16]}-{_slug(gpu.name)}-sm{major}{minor}-trt{_slug(trt_version)}"
        f"-b{max_batch}-{precision}.engine"
    )


@dataclass(frozen=True)
class ProfileShapes:
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


def profile_shapes(
    shape: tuple[Dim, ...], *, max_batch: int, opt_batch: int, fixed_dims: dict[int, int]
) -> ProfileShapes | None:
    """Optimization-profile shapes of one input; None when the input has no dynamic axis.

    Axis 0 (batch) spans 1..max_batch with ``opt_batch`` in between. Other dynamic axes must be given in
    ``fixed_dims`` (axis -> size, from the preprocessor): they are pinned (min = opt = max), since the
    service always feeds the network size.
    """
    dynamic = [i for i, d in enumerate(shape) if not (isinstance(d, int) and d > 0)]
    if not dynamic:
        return None
    rows: list[tuple[int, int, int]] = []  # (min, opt, max) per axis
    for axis, dim in enumerate(shape):
        if isinstance(dim, int) and dim > 0:
            rows.append((dim, dim, dim))
        elif axis == 0:
            rows.append((1, max(1, min(opt_batch, max_batch)), max_batch))
        elif axis in fixed_dims:
            size = fixed_dims[axis]
            rows.append((size, size, size))
        else:
            raise BackendError(f"dynamic axis {axis} of shape {list(shape)} has no size to pin it to")
    lo, opt, hi = zip(*rows, strict=True)
    return ProfileShapes(tuple(lo), tuple(opt), tuple(hi))


def gpu_has_fast_fp16(compute_capability: tuple[int, int]) -> bool:
    """Fast native FP16 by compute capability: Volta (7.0) and newer, plus the Pascal/Maxwell parts with
    full-rate FP16 (P100 6.0, Jetson TX1 5.3 / TX2 6.2). Consumer Pascal (6.1) runs FP16 at 1/64 rate.
    Used where TensorRT no longer answers the question (platform_has_fast_fp16 is deprecated since 10.5:
    "query data type support from CUDA directly")."""
    return compute_capability >= (7, 0) or compute_capability in {(5, 3), (6, 0), (6, 2)}


def buffer_nbytes(shape: tuple[int, ...], dtype: np.dtype[Any], max_batch: int) -> int:
    """Bytes of a buffer holding ``shape`` at the largest batch (a dynamic batch axis, -1, counts as
    max_batch; a fixed axis 0 stays what it is)."""
    dims = [max_batch if (i == 0 and d < 0) else d for i, d in enumerate(shape)]
    if any(d < 0 for d in dims):
        raise BackendError(f"shape {list(shape)} has a dynamic axis other than the batch")
    return int(np.prod(dims, dtype=np.int64)) * np.dtype(dtype).itemsize


# --- engine building ---------------------------------------------------------------------------------------


class EngineBuilder:
    def __init__(self, cache_dir: Path, *, fp16: bool = True, workspace_bytes: int = WORKSPACE_BYTES) -> None:
        self.cache_dir = cache_dir
        self.fp16 = fp16
        self.workspace_bytes = workspace_bytes

    def engine_bytes(
        self,
        onnx_path: Path,
        model_sha256: str,
        gpu: GpuIdentity,
        *,
        max_batch: int,
        fixed_dims: dict[int, int],
    ) -> tuple[bytes, bool]:
        """(serialized engine, fp16 used) from the cache, or built now and cached."""
        import tensorrt as trt

        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        # BuilderFlag.FP16 exists in TensorRT 10 (weakly typed networks); 11 dropped it for strong typing.
        fp16 = self.fp16 and gpu_has_fast_fp16(gpu.compute_capability) and hasattr(trt.BuilderFlag, "FP16")
        key = engine_cache_key(
            gpu=gpu, trt_version=trt.__version__, model_sha256=model_sha256, max_batch=max_batch, fp16=fp16
        )
        path = self.cache_dir / key
        if path.is_file():
            _log.info("tensorrt engine from cache", engine=str(path))
            return path.read_bytes(), fp16
        _log.info("building tensorrt engine (minutes on first use)", model=onnx_path.name, fp16=fp16)
        # TensorRT 10 networks are always explicit-batch (the flag is deprecated and 0 means that).
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse(onnx_path.read_bytes()):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise BackendError(f"{onnx_path.name}: TensorRT's ONNX parser failed: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.workspace_bytes)
        if fp16:
            config.set_flag(trt.BuilderFlag.FP16)
        profile = builder.create_optimization_profile()
        has_dynamic = False
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            shape = tuple(int(d) for d in tensor.shape)
            shapes = profile_shapes(
                shape, max_batch=max_batch, opt_batch=max(1, max_batch // 2), fixed_dims=fixed_dims
            )
            if shapes is not None:
                profile.set_shape(tensor.name, shapes.min, shapes.opt, shapes.max)
                has_dynamic = True
        if has_dynamic:
            config.add_optimization_profile(profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise BackendError(f"{onnx_path.name}: TensorRT could not build an engine (see its log above)")
        data = bytes(serialized)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)  # atomic: a crashed build never leaves a truncated engine under the real name
        path.with_suffix(".json").write_text(
            json.dumps({"model": onnx_path.name, "sha256": model_sha256, "gpu": gpu.name, "fp16": fp16})
            + "\n"
        )
        return data, fp16


# --- runtime -----------------------------------------------------------------------------------------------


@dataclass
class _Binding:
    info: TensorInfo
    is_input: bool
    host: npt.NDArray[Any]  # page-locked, sized for max_batch
    device: Any  # pycuda DeviceAllocation


class TrtBackend:
    def __init__(
        self,
        onnx_path: Path,
        *,
        model_sha256: str,
        cache_dir: Path,
        max_batch: int = 8,
        fixed_dims: dict[int, int] | None = None,
        fp16: bool = True,
        device_index: int = 0,
        metadata: dict[str, str] | None = None,
    ) -> None:
        """``metadata``: the ONNX file's custom metadata (read by the caller with ONNX Runtime; engines do
        not keep it), e.g. Ultralytics' ``names`` and ``imgsz`` for dynamic-shape YOLO exports."""
        self.metadata = dict(metadata or {})
        import pycuda.driver as cuda
        import tensorrt as trt

        cuda.init()
        device = cuda.Device(device_index)
        self._ctx = device.retain_primary_context()
        self._ctx.push()
        ok = False
        try:
            major, minor = device.compute_capability()
            gpu = GpuIdentity(str(device.name()), (int(major), int(minor)))
            data, used_fp16 = EngineBuilder(cache_dir, fp16=fp16).engine_bytes(
                onnx_path, model_sha256, gpu, max_batch=max_batch, fixed_dims=fixed_dims or {}
            )
            self._logger = trt.Logger(trt.Logger.WARNING)
            self._runtime = trt.Runtime(self._logger)
            self._engine = self._runtime.deserialize_cuda_engine(data)
            if self._engine is None:
                raise BackendError(f"{onnx_path.name}: cached TensorRT engine could not be deserialized")
            self._context = self._engine.create_execution_context()
            self._stream = cuda.Stream()
            self._bindings: list[_Binding] = []
            self._max_batch = max_batch
            for i in range(self._engine.num_io_tensors):
                name = self._engine.get_tensor_name(i)
                is_input = self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
                shape = tuple(int(d) for d in self._engine.get_tensor_shape(name))
                dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(name)))
                if is_input and shape and shape[0] > 0:
                    self._max_batch = min(self._max_batch, shape[0])  # a fixed batch caps us
                nbytes = buffer_nbytes(self._resolve(shape, fixed_dims or {}), dtype, max_batch)
                host = cuda.pagelocked_empty(nbytes // dtype.itemsize, dtype)
                dev = cuda.mem_alloc(max(1, nbytes))
                self._context.set_tensor_address(name, int(dev))
                info_shape: tuple[Dim, ...] = tuple(d if d > 0 else None for d in shape)
                self._bindings.append(_Binding(TensorInfo(name, info_shape, dtype), is_input, host, dev))
            ok = True
        finally:
            self._ctx.pop()
            if not ok:
                self._ctx.detach()  # release our reference to the primary context
        self.path = onnx_path
        self.backend_kind = detection_pb2.INFERENCE_BACKEND_TENSORRT
        self.concurrent_runs = False  # one execution context, stream and set of device buffers
        self.precision = (
            inference_pb2.MODEL_PRECISION_FP16 if used_fp16 else inference_pb2.MODEL_PRECISION_FP32
        )
        self.inputs = [b.info for b in self._bindings if b.is_input]
        self.outputs = [b.info for b in self._bindings if not b.is_input]
        self._lock = threading.Lock()

    @staticmethod
    def _resolve(shape: tuple[int, ...], fixed_dims: dict[int, int]) -> tuple[int, ...]:
        """Engine shapes keep -1 for dynamic axes; pin the non-batch ones like the profile did."""
        return tuple(fixed_dims.get(i, d) if (d < 0 and i > 0) else d for i, d in enumerate(shape))

    @property
    def max_batch(self) -> int:
        return self._max_batch

    def run(self, feed: dict[str, npt.NDArray[np.generic]]) -> list[npt.NDArray[np.generic]]:
        import pycuda.driver as cuda

        with self._lock:
            self._ctx.push()
            try:
                for b in self._bindings:
                    if not b.is_input:
                        continue
                    array = feed[b.info.name]
                    n = array.size
                    np.copyto(b.host[:n], array.reshape(-1), casting="same_kind")
                    if not self._context.set_input_shape(b.info.name, tuple(array.shape)):
                        raise BackendError(f"{self.path.name}: input shape {array.shape} outside the profile")
                    cuda.memcpy_htod_async(b.device, b.host[:n], self._stream)
                if not self._context.execute_async_v3(self._stream.handle):
                    raise BackendError(f"{self.path.name}: TensorRT execution failed")
                results = []
                for b in self._bindings:
                    if b.is_input:
                        continue
                    shape = tuple(int(d) for d in self._context.get_tensor_shape(b.info.name))
                    n = int(np.prod(shape, dtype=np.int64))
                    cuda.memcpy_dtoh_async(b.host[:n], b.device, self._stream)
                    results.append((b.host, n, shape))
                self._stream.synchronize()
                # Copies: the pinned buffers are reused by the next call while results live on.
                return [host[:n].reshape(shape).copy() for host, n, shape in results]
            finally:
                self._ctx.pop()

    def close(self) -> None:
        self._ctx.push()
        try:
            for b in self._bindings:
                b.device.free()
            self._bindings.clear()
            del self._context, self._engine
        finally:
            self._ctx.pop()
            self._ctx.detach()
