"""ONNX Runtime backend: the CPU execution provider (the 2-core target), CUDA when onnxruntime-gpu is there.

The session comes from the model library's factory (vap_models.session: threads, sequential graph,
``ORT_ENABLE_ALL``, provider choice). Spinning: by default ONNX Runtime's pool threads busy-wait between
operators; on the 2-core target the decoders, the tracker and this service share the cores, and spinning
threads then take CPU from the very work they wait for: NanoDet measured 150-185 ms per frame spinning
against 65-85 ms not spinning with other processes busy (load 4-5). Off unless ``spin=True``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt

from vap_inference.backends.base import BackendError, Dim, TensorInfo
from vap_models.session import open_session
from vap_proto.v1 import detection_pb2, inference_pb2

# ONNX element type strings as onnxruntime reports them.
_DTYPES: dict[str, type[np.generic]] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
}


def _info(arg: object) -> TensorInfo:
    name = str(getattr(arg, "name", ""))
    type_name = str(getattr(arg, "type", ""))
    raw_shape = getattr(arg, "shape", None) or []
    shape: tuple[Dim, ...] = tuple(d if isinstance(d, int | str) else None for d in raw_shape)
    if type_name not in _DTYPES:
        raise BackendError(f"tensor {name!r} has unsupported element type {type_name}")
    return TensorInfo(name, shape, np.dtype(_DTYPES[type_name]))


def with_free_spatial_dims(path: Path) -> bytes:
    """The model at ``path`` with the height and width of its NCHW image input made symbolic (and its
    outputs' sizes left to inference), serialised: a fully convolutional graph converted with a fixed input
    size then runs at any size its strides allow (rectangular inputs, preprocess.py)."""
    import onnx

    model = onnx.load(str(path))
    inputs = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    dims = inputs[0].type.tensor_type.shape.dim if inputs else []
    if len(dims) != 4:
        raise BackendError(f"{path.name}: a free input size needs one NCHW image input")
    for axis, name in ((2, "height"), (3, "width")):
        dims[axis].Clear()
        dims[axis].dim_param = name
    for output in model.graph.output:
        for index, dim in enumerate(output.type.tensor_type.shape.dim):
            if dim.HasField("dim_value"):
                dim.Clear()
                dim.dim_param = f"{output.name}_{index}"
    del model.graph.value_info[:]  # shapes recorded for the fixed size; ONNX Runtime infers them again
    return bytes(model.SerializeToString())


class OrtBackend:
    def __init__(
        self,
        path: Path,
        *,
        threads: int = 2,
        use_cuda: bool = False,
        batch_cap: int = 8,
        spin: bool = False,
        flexible_input: bool = False,
    ) -> None:
        """``threads``: intra-op threads, 0 = onnxruntime's default (all cores). ``flexible_input``: load with
        the image input's height and width free (with_free_spatial_dims)."""
        try:
            source: Path | bytes = with_free_spatial_dims(path) if flexible_input else path
            self._session = open_session(
                source, threads=threads, accelerator="cuda" if use_cuda else "cpu", spin=spin, quiet=True
            )
        except BackendError:
            raise
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
            raise BackendError(f"{path.name}: onnxruntime cannot load it: {exc}") from exc
        self.path = path
        self.threads = threads
        self.providers = list(self._session.get_providers())
        cuda = self.providers[0] == "CUDAExecutionProvider"
        self.backend_kind = (
            detection_pb2.INFERENCE_BACKEND_ONNXRUNTIME_CUDA
            if cuda
            else detection_pb2.INFERENCE_BACKEND_ONNXRUNTIME_CPU
        )
        self.precision = inference_pb2.MODEL_PRECISION_FP32
        self.inputs = [_info(i) for i in self._session.get_inputs()]
        self.outputs = [_info(o) for o in self._session.get_outputs()]
        self._output_names = [o.name for o in self.outputs]
        self._batch_cap = max(1, batch_cap)
        # InferenceSession.run is thread-safe; with intra_op_num_threads=1 each call runs on its caller's
        # thread, so parallel lanes use the cores without the intra-op threads' hand-offs.
        self.concurrent_runs = True

    @property
    def max_batch(self) -> int:
        fixed = self.inputs[0].fixed(0) if self.inputs and self.inputs[0].shape else None
        return fixed if fixed is not None else self._batch_cap

    @property
    def metadata(self) -> dict[str, str]:
        """The file's custom metadata (Ultralytics writes ``names``, ``imgsz``, ``task``)."""
        return dict(self._session.get_modelmeta().custom_metadata_map)

    def run(self, feed: dict[str, npt.NDArray[np.generic]]) -> list[npt.NDArray[np.generic]]:
        try:
            outputs = self._session.run(self._output_names, feed)
        except Exception as exc:
            raise BackendError(f"{self.path.name}: inference failed: {exc}") from exc
        return [np.asarray(o) for o in outputs]

    def close(self) -> None:
        # The session frees its memory when collected; dropping our reference is all there is to do.
        del self._session
