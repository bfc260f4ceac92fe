"""Runtimes that execute a model: ONNX Runtime (CPU, CUDA provider when present) and TensorRT 10."""

from vap_inference.backends.base import Backend, BackendError, TensorInfo

__all__ = ["Backend", "BackendError", "TensorInfo"]
